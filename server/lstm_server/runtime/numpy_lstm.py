"""An exact LSTM in numpy on the served weights: the fast path for small work.

TensorFlow's fixed cost per call (hundreds of microseconds) dominates single steps and tiny models;
this path costs microseconds there. It computes what Keras computes (gate order i, f, c, o; the same
activations) and is checked against the TensorFlow path in the tests for every activation it
supports; a model with any other activation always runs on TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lstm_server.core.types import Array

Activation = Callable[[Array], Array]


def _sigmoid(x: Array) -> Array:
    # Through tanh: the same function, without overflow warnings for large |x|.
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),  # Keras 3: relu6(x + 3) / 6
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
}


class NumpyLstm:
    """``run(x, lengths, h0, c0)`` with the same contract as the TensorFlow runtime."""

    def __init__(
        self,
        kernel: Array,
        recurrent_kernel: Array,
        bias: Array | None,
        activation: str,
        recurrent_activation: str,
    ) -> None:
        self.kernel = np.ascontiguousarray(kernel, np.float32)
        self.recurrent_kernel = np.ascontiguousarray(recurrent_kernel, np.float32)
        units = self.recurrent_kernel.shape[0]
        self.bias = (
            np.zeros(4 * units, np.float32) if bias is None else np.asarray(bias, np.float32)
        )
        self.units = units
        self.activation = ACTIVATIONS[activation]
        self.recurrent_activation = ACTIVATIONS[recurrent_activation]

    @staticmethod
    def supports(activation: str, recurrent_activation: str) -> bool:
        return activation in ACTIVATIONS and recurrent_activation in ACTIVATIONS

    def run(self, x: Array, lengths: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
        """Right-padded x (B, T, F) of the given lengths from states (B, units)."""
        steps = x.shape[1]
        ragged = bool((lengths < steps).any())
        mask = np.arange(steps)[None, :] < lengths[:, None] if ragged else None
        return self.run_masked(x, mask, h0, c0)

    def run_masked(
        self, x: Array, mask: Array | None, h0: Array, c0: Array
    ) -> tuple[Array, Array, Array]:
        """x (B, T, F) where ``mask`` (B, T), if given, says which timesteps count: a masked one
        leaves the state as it is and outputs the current h, as Keras' mask does."""
        rows, steps, _ = x.shape
        u = self.units
        # The input projection of every timestep at once; only the recurrence is sequential.
        projected = x.reshape(rows * steps, -1) @ self.kernel
        projected = projected.reshape(rows, steps, 4 * u) + self.bias
        h = np.array(h0, np.float32, copy=True)
        c = np.array(c0, np.float32, copy=True)
        sequence = np.zeros((rows, steps, u), np.float32)
        for t in range(steps):
            z = projected[:, t] + h @ self.recurrent_kernel
            gates = self.recurrent_activation(z)  # i, f and o; the c slot is recomputed below
            g = self.activation(z[:, 2 * u : 3 * u])
            c_next = gates[:, u : 2 * u] * c + gates[:, :u] * g
            h_next = gates[:, 3 * u :] * self.activation(c_next)
            if mask is not None:  # masked rows keep their state
                live = mask[:, t, None]
                c_next = np.where(live, c_next, c)
                h_next = np.where(live, h_next, h)
            c, h = c_next, h_next
            sequence[:, t] = h
        return sequence, h, c
