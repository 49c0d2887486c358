"""A served chain (per-timestep layers and stacked LSTMs) in numpy: the fast path for small work.

Each layer becomes one numpy operation on (B, T, D) arrays that computes what Keras computes at
inference; ``keras_model.numpy_chain`` builds them from a model's layers, and a chain with a layer
it cannot express runs on TensorFlow alone. Checked against the TensorFlow path in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lstm_server.core.types import Array
from lstm_server.runtime.numpy_lstm import ACTIVATIONS, NumpyLstm


def softmax(x: Array) -> Array:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# Activations of Dense and Activation layers; the LSTM's own are in ``numpy_lstm.ACTIVATIONS``.
LAYER_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    **ACTIVATIONS,
    "softmax": softmax,
    "softplus": lambda x: np.logaddexp(np.float32(0), x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "silu": lambda x: x * ACTIVATIONS["sigmoid"](x),
    "swish": lambda x: x * ACTIVATIONS["sigmoid"](x),
}


@dataclass(frozen=True)
class Map:
    """A layer that maps each timestep's values to new ones."""

    function: Callable[[Array], Array]


@dataclass(frozen=True)
class Mask:
    """A layer that masks timesteps by their values (``Masking``); it also zeroes them."""

    mask_value: float


@dataclass(frozen=True)
class Embed:
    """``Embedding``: one id per timestep to its row of ``table``; id 0 masked if ``mask_zero``."""

    table: Array
    mask_zero: bool


Layer = Map | Mask | Embed | NumpyLstm


def dense(kernel: Array, bias: Array | None, activation: Callable[[Array], Array]) -> Map:
    def apply(x: Array) -> Array:
        y = x @ kernel
        return activation(y if bias is None else y + bias)

    return Map(apply)


def normalize(
    mean: Array | None,
    variance: Array | None,
    epsilon: float,
    gamma: Array | None,
    beta: Array | None,
) -> Map:
    """LayerNormalization (statistics of each timestep: ``mean`` None) or BatchNormalization
    (the moving statistics), then the learned scale and offset."""

    def apply(x: Array) -> Array:
        m = x.mean(axis=-1, keepdims=True) if mean is None else mean
        v = x.var(axis=-1, keepdims=True) if variance is None else variance
        y = (x - m) / np.sqrt(v + np.float32(epsilon))
        if gamma is not None:
            y = y * gamma
        return y if beta is None else y + beta

    return Map(apply)


class NumpyChain:
    """``run(x, lengths, h0, c0)`` with the TensorFlow runtime's contract, for a whole chain.

    States are the LSTM layers' states one after the other; each timestep's result is every
    LSTM's hidden output, then the output layers' values if the chain has output layers.
    """

    def __init__(self, layers: list[Layer], units: list[int], has_output_layers: bool) -> None:
        self.layers = layers
        self.bounds = np.cumsum([0, *units])
        self.has_output_layers = has_output_layers

    def run(self, x: Array, lengths: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
        steps = x.shape[1]
        mask: Array | None = None
        if bool((lengths < steps).any()):
            mask = np.arange(steps)[None, :] < lengths[:, None]
        y = x
        hidden: list[Array] = []
        hs: list[Array] = []
        cs: list[Array] = []
        for layer in self.layers:
            if isinstance(layer, NumpyLstm):
                k = len(hidden)
                part = slice(self.bounds[k], self.bounds[k + 1])
                y, h, c = layer.run_masked(y, mask, h0[:, part], c0[:, part])
                hidden.append(y)
                hs.append(h)
                cs.append(c)
            elif isinstance(layer, Map):
                y = layer.function(y)
            elif isinstance(layer, Mask):
                live = (y != np.float32(layer.mask_value)).any(axis=-1)
                mask = live if mask is None else mask & live
                y = y * live[..., None]
            else:
                ids = y[..., 0].astype(np.int64)
                if layer.mask_zero:
                    mask = ids != 0 if mask is None else mask & (ids != 0)
                y = layer.table[ids]
        if len(hidden) == 1 and not self.has_output_layers:
            return hidden[0], hs[0], cs[0]
        results = [*hidden, y] if self.has_output_layers else hidden
        return (
            np.concatenate(results, axis=-1),
            np.concatenate(hs, axis=-1),
            np.concatenate(cs, axis=-1),
        )
