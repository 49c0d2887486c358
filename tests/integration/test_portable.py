"""Compiled functions named by their content: the same definitions get the same name in any
process, whatever it traced before, and compute what the traced function computes."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from lstm_server.runtime.portable import PortableFunction, canonical_library


def _traced(units: int) -> tf.types.experimental.ConcreteFunction:
    """An LSTM's function of (x, h0, c0), XLA-compiled: a while loop with its own functions.
    Its layer is named as a saved model's are: the name is part of what it computes."""
    layer = keras.layers.LSTM(units, return_sequences=True, return_state=True, name="served")
    layer.build((None, None, 4))
    layer.set_weights([np.full(w.shape, 0.1, np.float32) for w in layer.get_weights()])
    return tf.function(
        lambda x, h, c: layer(x, initial_state=[h, c]),
        input_signature=[
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, units], tf.float32),
            tf.TensorSpec([None, units], tf.float32),
        ],
        jit_compile=True,
    ).get_concrete_function()


def test_the_same_definitions_get_the_same_name_whatever_was_traced_before() -> None:
    first = canonical_library(_traced(8), "masked")
    for n in range(5):  # other traces move the counters the traced names carry
        tf.function(lambda x, n=n: x + n).get_concrete_function(tf.TensorSpec([None]))
    again = canonical_library(_traced(8), "masked")
    assert _traced(8).function_def.signature.name != again.function[0].signature.name
    assert [f.signature.name for f in again.function] == [f.signature.name for f in first.function]
    assert len(first.function) > 1  # the loop's body and condition came along, renamed
    assert canonical_library(_traced(16), "masked").function[0].signature.name != (
        first.function[0].signature.name
    )


def test_a_portable_function_computes_what_the_traced_one_does(rng) -> None:
    traced = _traced(8)
    portable = PortableFunction(canonical_library(traced, "exact"))
    assert portable.name.startswith("lstm_exact_")
    x = tf.constant(rng.normal(size=(3, 7, 4)).astype(np.float32))
    h = tf.constant(rng.normal(size=(3, 8)).astype(np.float32))
    c = tf.constant(rng.normal(size=(3, 8)).astype(np.float32))
    # The layer's variables are the traced function's captured inputs, passed after its own.
    results = portable(x, h, c, *traced.captured_inputs)
    for expected, got in zip(traced(x, h, c), results, strict=True):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
