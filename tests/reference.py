"""An independent LSTM in plain numpy on a layer's weights (Keras gate order i, f, c, o)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _hard_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.clip(x / 6.0 + 0.5, 0.0, 1.0)  # Keras 3 definition


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


class NumpyLstm:
    """``run(x, h0, c0) -> (sequence, h, c)`` for one sequence x of shape (T, F), in float64."""

    def __init__(
        self,
        kernel: np.ndarray,
        recurrent_kernel: np.ndarray,
        bias: np.ndarray | None,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
    ) -> None:
        self.kernel = np.asarray(kernel, np.float64)
        self.recurrent_kernel = np.asarray(recurrent_kernel, np.float64)
        self.bias = np.zeros(self.kernel.shape[1]) if bias is None else np.asarray(bias, np.float64)
        self.units = self.recurrent_kernel.shape[0]
        self.act = ACTIVATIONS[activation]
        self.rec_act = ACTIVATIONS[recurrent_activation]

    @classmethod
    def from_keras_layer(cls, layer) -> NumpyLstm:  # type: ignore[no-untyped-def]
        weights = layer.cell.get_weights()
        config = layer.get_config()
        return cls(
            weights[0],
            weights[1],
            weights[2] if config["use_bias"] else None,
            config["activation"],
            config["recurrent_activation"],
        )

    @classmethod
    def from_saved_model(cls, path) -> NumpyLstm:  # type: ignore[no-untyped-def]
        """From a ``.keras`` file whose only layer besides the input is an LSTM."""
        import keras

        model = keras.saving.load_model(path, compile=False)
        (layer,) = [lay for lay in model.layers if isinstance(lay, keras.layers.LSTM)]
        return cls.from_keras_layer(layer)

    def run(
        self, x: np.ndarray, h0: np.ndarray | None = None, c0: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = self.units
        h = np.zeros(u) if h0 is None else np.asarray(h0, np.float64)
        c = np.zeros(u) if c0 is None else np.asarray(c0, np.float64)
        outputs = []
        for xt in np.asarray(x, np.float64):
            z = xt @ self.kernel + h @ self.recurrent_kernel + self.bias
            i = self.rec_act(z[:u])
            f = self.rec_act(z[u : 2 * u])
            g = self.act(z[2 * u : 3 * u])
            o = self.rec_act(z[3 * u :])
            c = f * c + i * g
            h = o * self.act(c)
            outputs.append(h)
        return np.array(outputs), h, c
