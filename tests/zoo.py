"""Models people train, built and saved as ``.keras`` files for the tests: the ones lstm-serving
serves (stacks, heads, embeddings, masks, the seq2seq decoder) and the ones it must refuse."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

F = 4  # features of the feature models
V = 11  # vocabulary of the token models


def _seeded(model: keras.Model, seed: int) -> keras.Model:
    """Give every weight seeded random values (biases and norms too, so mistakes show)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(np.float32) for w in weights])
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, variance = rng.normal(size=(2, layer.moving_mean.shape[0]))
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign((np.abs(variance) + 0.5).astype(np.float32))
    return model


def decoder() -> keras.Model:
    """The decoder of Keras' character-level seq2seq example."""
    x = keras.Input((None, F), name="decoder_inputs")
    h_in = keras.Input((6,), name="h_in")
    c_in = keras.Input((6,), name="c_in")
    seq, h, c = keras.layers.LSTM(6, return_sequences=True, return_state=True, name="dec")(
        x, initial_state=[h_in, c_in]
    )
    y = keras.layers.Dense(F, activation="softmax", name="head")(seq)
    return keras.Model([x, h_in, c_in], [y, h, c])


def regressor() -> keras.Model:
    return keras.Sequential(
        [keras.Input((None, F)), keras.layers.LSTM(5, return_sequences=True), keras.layers.Dense(1)]
    )


def two_layer_stack() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, F)),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.LSTM(3, return_sequences=True),
        ]
    )


def token_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(V, 3),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.Dense(V),
        ]
    )


def masked_token_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(V, 3, mask_zero=True),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(V, activation="softmax"),
        ]
    )


def masked_stack() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, F)),
            keras.layers.Masking(0.0),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(2),
        ]
    )


def normalized_stack() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, F)),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.LayerNormalization(),
            keras.layers.LSTM(4, return_sequences=True),
        ]
    )


def three_layers() -> keras.Model:
    """Different units per layer, activations of every kind, a classifier's last LSTM."""
    return keras.Sequential(
        [
            keras.Input((None, F)),
            keras.layers.LSTM(6, return_sequences=True, activation="relu"),
            keras.layers.LSTM(3, return_sequences=True, use_bias=False),
            keras.layers.LSTM(5, recurrent_activation="hard_sigmoid"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )


def per_timestep_layers() -> keras.Model:
    """Every other per-timestep layer, before, between and after the LSTMs."""
    return keras.Sequential(
        [
            keras.Input((None, F)),
            keras.layers.Rescaling(0.5, offset=0.1),
            keras.layers.Dense(6, activation="tanh"),
            keras.layers.Dropout(0.5),
            keras.layers.GaussianNoise(0.3),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.SpatialDropout1D(0.2),
            keras.layers.BatchNormalization(),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.TimeDistributed(keras.layers.Dense(3)),
            keras.layers.Activation("relu"),
        ]
    )


SERVED: dict[str, Callable[[], keras.Model]] = {
    "decoder": decoder,
    "regressor": regressor,
    "two_layer_stack": two_layer_stack,
    "token_model": token_model,
    "masked_token_model": masked_token_model,
    "masked_stack": masked_stack,
    "normalized_stack": normalized_stack,
    "three_layers": three_layers,
    "per_timestep_layers": per_timestep_layers,
}


def save(name: str, directory: Path, seed: int = 0) -> Path:
    path = directory / f"{name}.keras"
    _seeded(SERVED[name](), seed).save(path)
    return path


def stacked_lstm(units: tuple[int, ...], features: int, head: int, seed: int = 0) -> keras.Model:
    """An LSTM stack with a Dense head, seeded (the benchmark's model)."""
    layers: list[keras.layers.Layer] = [keras.Input((None, features))]
    layers += [keras.layers.LSTM(u, return_sequences=True) for u in units]
    layers.append(keras.layers.Dense(head))
    return _seeded(keras.Sequential(layers), seed)


# Refused models: how to build each, and what the refusal must say.


def _sequential(*layers: keras.layers.Layer, tokens: bool = False) -> keras.Model:
    first = keras.Input((None,), dtype="int32") if tokens else keras.Input((None, F))
    return keras.Sequential([first, *layers])


def _branching() -> keras.Model:
    x = keras.Input((None, F))
    seq = keras.layers.LSTM(3, return_sequences=True, name="trunk")(x)
    a = keras.layers.Dense(2, name="left")(seq)
    b = keras.layers.Dense(2, name="right")(seq)
    return keras.Model(x, [a, b])


def _two_inputs() -> keras.Model:
    x = keras.Input((None, F), name="x")
    z = keras.Input((None, F), name="z")
    seq = keras.layers.LSTM(3, return_sequences=True)(x)
    return keras.Model([x, z], [seq, keras.layers.Dense(2)(z)])


REFUSED: dict[str, tuple[Callable[[], keras.Model], str]] = {
    "bidirectional": (
        lambda: _sequential(
            keras.layers.Bidirectional(keras.layers.LSTM(2, return_sequences=True), name="bi")
        ),
        "Bidirectional layer 'bi' runs an RNN backwards",
    ),
    "go_backwards": (
        lambda: _sequential(keras.layers.LSTM(2, go_backwards=True, name="back")),
        "LSTM layer 'back' has go_backwards=True",
    ),
    "gru": (
        lambda: _sequential(keras.layers.GRU(2, name="gru")),
        "GRU layer 'gru' is a GRU; lstm-serving serves keras.layers.LSTM",
    ),
    "simple_rnn": (
        lambda: _sequential(
            keras.layers.LSTM(2, return_sequences=True), keras.layers.SimpleRNN(2, name="rnn")
        ),
        "SimpleRNN layer 'rnn' is a SimpleRNN",
    ),
    "conv1d": (
        lambda: _sequential(
            keras.layers.Conv1D(3, 2, name="conv"), keras.layers.LSTM(2, return_sequences=True)
        ),
        "Conv1D layer 'conv' mixes timesteps",
    ),
    "pooling": (
        lambda: _sequential(
            keras.layers.LSTM(2, return_sequences=True),
            keras.layers.MaxPooling1D(2, name="pool"),
        ),
        "MaxPooling1D layer 'pool' mixes timesteps",
    ),
    "attention": (lambda: _attention(), "layer 'attn' takes several tensors"),
    "lambda": (
        lambda: _sequential(
            keras.layers.LSTM(2, return_sequences=True),
            keras.layers.Lambda(lambda t: t * 2, name="double"),
        ),
        "Lambda layer 'double' runs arbitrary code",
    ),
    "flatten": (
        lambda: keras.Sequential(
            [
                keras.Input((5, F)),
                keras.layers.LSTM(2, return_sequences=True),
                keras.layers.Flatten(name="flat"),
            ]
        ),
        "Flatten layer 'flat' mixes timesteps",
    ),
    "branches": (_branching, "'trunk' feeds 2 layers (left, right); branches cannot be served"),
    "two_inputs": (_two_inputs, "it has 2 inputs that are not LSTM initial states (x, z)"),
}


def _attention() -> keras.Model:
    x = keras.Input((None, F))
    seq = keras.layers.LSTM(2, return_sequences=True, name="enc")(x)
    attended = keras.layers.Attention(name="attn")([seq, seq])
    return keras.Model(x, attended)


def save_refused(name: str, directory: Path) -> Path:
    path = directory / f"{name}.keras"
    REFUSED[name][0]().save(path)
    return path
