"""The served chain as Keras builds it: the default model, the LSTMs rebuilt for serving, the
chain saved as a ``.keras`` file, its description and digest, and its numpy twin."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np

from lstm_server.core.repository import DEFAULT_MODEL_NAME
from lstm_server.core.types import LayerInfo, ModelInfo
from lstm_server.runtime import numpy_chain as nc
from lstm_server.runtime.chain import Chain
from lstm_server.runtime.numpy_lstm import NumpyLstm


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


def default_chain(features: int, units: int, seed: int) -> Chain:
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
    return Chain(DEFAULT_MODEL_NAME, [layer], features)


def is_bare(chain: Chain) -> bool:
    """One LSTM fed by the input, nothing else: the tutorial's model."""
    return len(chain.layers) == 1


def save_chain(chain: Chain, path: Path) -> None:
    """Save the served chain as a ``.keras`` model: ``Input -> layers``, LSTMs with both flags
    (a bare LSTM's outputs are then Keras' ``[sequence, h, c]``)."""
    if chain.vocabulary_size:
        inputs = keras.Input((None,), dtype="int32", name="x")
    else:
        inputs = keras.Input((None, chain.features), name="x")
    y = inputs
    outputs: list[keras.KerasTensor] = []
    for layer in chain.layers:
        config = layer.get_config()
        if isinstance(layer, keras.layers.LSTM):
            config.update(return_sequences=True, return_state=is_bare(chain), stateful=False)
        clone = type(layer).from_config(config)
        result = clone(y)
        _layer_of(clone).set_weights(_layer_of(layer).get_weights())
        if isinstance(result, (list, tuple)):
            outputs, y = list(result), result[0]
        else:
            y = result
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.keras")
    keras.Model(inputs, outputs if is_bare(chain) else y).save(partial)
    os.replace(partial, path)  # readers never see a half-written file


def chain_info(chain: Chain, name: str) -> ModelInfo:
    """Describe the served chain; the version is a digest of its configuration and weights (for
    a bare LSTM, the same digest as servers that served only bare LSTMs gave it)."""
    lstms = chain.lstms
    top = lstms[-1]
    activation = keras.activations.serialize(top.cell.activation)
    recurrent = keras.activations.serialize(top.cell.recurrent_activation)
    if is_bare(chain):
        weights = [np.asarray(w, np.float32) for w in top.cell.get_weights()]
        described: dict[str, object] = {
            "units": top.units,
            "features": int(weights[0].shape[0]),
            "activation": activation,
            "recurrent_activation": recurrent,
            "use_bias": top.use_bias,
        }
    else:
        weights = [
            np.asarray(w, np.float32)
            for layer in chain.layers
            for w in _layer_of(layer).get_weights()
        ]
        described = {
            "chain": [
                {"type": type(layer).__name__, "config": _described_config(layer)}
                for layer in chain.layers
            ],
            "features": chain.features,
            "vocabulary_size": chain.vocabulary_size,
        }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    for w in weights:
        digest.update(str(w.shape).encode())
        digest.update(np.ascontiguousarray(w).tobytes())
    widths = _output_widths(chain)
    layers = tuple(
        LayerInfo(type(layer).__name__, layer.name, width, isinstance(layer, keras.layers.LSTM))
        for layer, width in zip(chain.layers, widths, strict=True)
    )
    return ModelInfo(
        name=name,
        version=f"sha256:{digest.hexdigest()[:16]}",
        input_features=0 if chain.vocabulary_size else chain.features,
        units=int(top.units),
        activation=str(activation),
        recurrent_activation=str(recurrent),
        use_bias=bool(top.use_bias),
        vocabulary_size=chain.vocabulary_size,
        lstm_units=tuple(int(layer.units) for layer in lstms) if len(lstms) > 1 else (),
        output_size=widths[-1] if chain.has_output_layers else 0,
        layers=layers,
    )


def _described_config(layer: keras.layers.Layer) -> dict[str, object]:
    config = dict(layer.get_config())
    config.pop("name", None)  # renaming a layer does not change the model
    return config


def _output_widths(chain: Chain) -> list[int]:
    """Values per timestep each layer outputs, found by running the chain on one timestep."""
    y = np.zeros((1, 1) if chain.vocabulary_size else (1, 1, chain.features), np.float32)
    if chain.vocabulary_size:
        y = y.astype(np.int32)
    widths = []
    for layer in chain.layers:
        if isinstance(layer, keras.layers.LSTM):  # a stateful one must not be called
            y = np.zeros((1, 1, layer.units), np.float32)
        else:
            y = layer(y, training=False)
        widths.append(int(y.shape[-1]))
    return widths


def _layer_of(layer: keras.layers.Layer) -> keras.layers.Layer:
    """Where a layer's weights are: an LSTM's cell (its layer may also hold stateful states)."""
    return layer.cell if isinstance(layer, keras.layers.LSTM) else layer


def served_lstms(chain: Chain) -> list[keras.layers.LSTM]:
    """Each LSTM of the chain rebuilt for serving, in order."""
    return [rebuild_for_serving(layer) for layer in chain.lstms]


def numpy_chain(chain: Chain) -> nc.NumpyChain | None:
    """The chain's numpy twin, or None when a layer has no exact numpy form here."""
    layers: list[nc.Layer] = []
    for layer in chain.layers:
        converted = _numpy_layer(layer)
        if converted is None:
            return None
        layers.append(converted)
    units = [int(layer.units) for layer in chain.lstms]
    return nc.NumpyChain(layers, units, chain.has_output_layers)


_IDENTITY = (
    "ActivityRegularization",
    "AlphaDropout",
    "Dropout",
    "GaussianDropout",
    "GaussianNoise",
    "Identity",
    "SpatialDropout1D",
)


def _activation(function: object) -> nc.Map | None:
    name = keras.activations.serialize(function)
    found = nc.LAYER_ACTIVATIONS.get(name) if isinstance(name, str) else None
    return None if found is None else nc.Map(found)


def _weights(layer: keras.layers.Layer) -> list[np.ndarray]:
    return [np.asarray(w, np.float32) for w in layer.get_weights()]


def _numpy_layer(layer: keras.layers.Layer) -> nc.Layer | None:
    kind = type(layer).__name__
    if isinstance(layer, keras.layers.LSTM):
        activation = keras.activations.serialize(layer.cell.activation)
        recurrent = keras.activations.serialize(layer.cell.recurrent_activation)
        if not NumpyLstm.supports(activation, recurrent):
            return None
        w = layer.cell.get_weights()
        return NumpyLstm(w[0], w[1], w[2] if layer.use_bias else None, activation, recurrent)
    if kind in _IDENTITY:
        return nc.Map(lambda x: x)
    if kind == "TimeDistributed":
        return _numpy_layer(layer.layer)
    if kind == "Dense":
        act = _activation(layer.activation)
        if act is None:
            return None
        w = _weights(layer)
        return nc.dense(w[0], w[1] if layer.use_bias else None, act.function)
    if kind == "Activation":
        return _activation(layer.activation)
    if kind == "Softmax":
        return nc.Map(nc.softmax)
    if kind == "Embedding":
        return nc.Embed(_weights(layer)[0], bool(layer.mask_zero))
    if kind == "Masking":
        return nc.Mask(float(layer.mask_value))
    if kind == "Rescaling":
        scale = np.asarray(layer.scale, np.float32)
        offset = np.asarray(layer.offset, np.float32)
        return nc.Map(lambda x: x * scale + offset)
    if kind == "LayerNormalization" and not getattr(layer, "rms_scaling", False):
        gamma = np.asarray(layer.gamma, np.float32) if layer.scale else None
        beta = np.asarray(layer.beta, np.float32) if layer.center else None
        return nc.normalize(None, None, layer.epsilon, gamma, beta)
    if kind == "BatchNormalization":
        gamma = np.asarray(layer.gamma, np.float32) if layer.scale else None
        beta = np.asarray(layer.beta, np.float32) if layer.center else None
        mean = np.asarray(layer.moving_mean, np.float32)
        variance = np.asarray(layer.moving_variance, np.float32)
        return nc.normalize(mean, variance, layer.epsilon, gamma, beta)
    return None
