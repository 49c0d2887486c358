"""Loading, checking, rebuilding and saving the served Keras LSTM."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np

from lstm_server.core.errors import ModelLoadError
from lstm_server.core.types import ModelInfo

DEFAULT_MODEL_NAME = "default-lstm"


def load_lstm(path: Path) -> keras.layers.LSTM:
    """Load a saved model whose recurrent core is one LSTM fed by the input; return that LSTM."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files.
        raise ModelLoadError(f"cannot load model file {path}: {exc}") from exc
    layers = [
        layer
        for layer in getattr(model, "layers", [])
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    if len(layers) != 1:
        names = ", ".join(f"{type(layer).__name__} '{layer.name}'" for layer in layers) or "none"
        raise ModelLoadError(
            f"model {path} must consist of a single keras.layers.LSTM fed by its input; "
            f"it has {len(layers)} layers: {names}"
        )
    (layer,) = layers
    if type(layer) is not keras.layers.LSTM:
        raise ModelLoadError(
            f"model {path} has a {type(layer).__name__} layer '{layer.name}'; "
            "lstm-serving serves a single keras.layers.LSTM"
        )
    if layer.go_backwards:
        raise ModelLoadError(
            f"LSTM layer '{layer.name}' in {path} has go_backwards=True, which cannot be served "
            "as a chain of steps"
        )
    return rebuild_for_serving(layer)


def rebuild_for_serving(layer: keras.layers.LSTM) -> keras.layers.LSTM:
    """The same LSTM (weights and configuration) with both flags set and no internal state."""
    config = layer.get_config()
    config.update(
        return_sequences=True,
        return_state=True,
        stateful=False,
        go_backwards=False,
        dropout=0.0,
        recurrent_dropout=0.0,
        zero_output_for_mask=False,
    )
    weights = layer.cell.get_weights()
    features = int(weights[0].shape[0])
    served = keras.layers.LSTM.from_config(config)
    served.build((None, None, features))
    served.cell.set_weights(weights)
    return served


def default_lstm(features: int, units: int, seed: int) -> keras.layers.LSTM:
    """A seeded LSTM of the given size: the embedded default model."""
    layer = keras.layers.LSTM(
        units,
        return_sequences=True,
        return_state=True,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 1),
        bias_initializer=keras.initializers.RandomUniform(-0.5, 0.5, seed=seed + 2),
        name="lstm",
    )
    layer.build((None, None, features))
    return layer


def save_model(layer: keras.layers.LSTM, path: Path) -> None:
    """Save the served LSTM as a ``.keras`` model: ``Input -> LSTM(both flags)``."""
    features = int(layer.cell.kernel.shape[0])
    inputs = keras.Input((None, features), name="x")
    clone = keras.layers.LSTM.from_config(layer.get_config())
    outputs = clone(inputs)
    clone.cell.set_weights(layer.cell.get_weights())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.keras")
    keras.Model(inputs, outputs).save(partial)
    os.replace(partial, path)  # readers never see a half-written file


def model_info(layer: keras.layers.LSTM, name: str) -> ModelInfo:
    """Describe the served LSTM; the version is a digest of its configuration and weights."""
    weights = [np.asarray(w, np.float32) for w in layer.cell.get_weights()]
    activation = keras.activations.serialize(layer.cell.activation)
    recurrent = keras.activations.serialize(layer.cell.recurrent_activation)
    described = {
        "units": layer.units,
        "features": int(weights[0].shape[0]),
        "activation": activation,
        "recurrent_activation": recurrent,
        "use_bias": layer.use_bias,
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for w in weights:
        digest.update(str(w.shape).encode())
        digest.update(np.ascontiguousarray(w).tobytes())
    return ModelInfo(
        name=name,
        version=f"sha256:{digest.hexdigest()[:16]}",
        input_features=int(weights[0].shape[0]),
        units=int(layer.units),
        activation=str(activation),
        recurrent_activation=str(recurrent),
        use_bias=bool(layer.use_bias),
    )
