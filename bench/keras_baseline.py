"""In-process Keras baselines for the benchmark: model.predict, a graph function and XLA.

Prints one JSON object: median milliseconds per call for each way of running the same LSTM.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf


def median_ms(call, repeat: int) -> float:  # type: ignore[no-untyped-def]
    call()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return float(np.median(times) * 1e3)


def main(features: int, units: int, timesteps: int) -> dict[str, float]:
    inputs = keras.Input((None, features))
    layer = keras.layers.LSTM(units, return_sequences=True, return_state=True)
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).uniform(-1, 1, (1, timesteps, features)).astype(np.float32)
    h = np.zeros((1, units), np.float32)
    signature = [
        tf.TensorSpec([None, None, features]),
        tf.TensorSpec([None, units]),
        tf.TensorSpec([None, units]),
    ]

    def fn(x, h, c):  # type: ignore[no-untyped-def]
        return layer(x, initial_state=[h, c])

    graph = tf.function(fn, input_signature=signature)
    xla = tf.function(fn, input_signature=signature, jit_compile=True)
    return {
        "model.predict": median_ms(lambda: model.predict(x, verbose=0), 30),
        "tf.function": median_ms(lambda: [t.numpy() for t in graph(x, h, h)], 200),
        "tf.function (XLA)": median_ms(lambda: [t.numpy() for t in xla(x, h, h)], 200),
    }


if __name__ == "__main__":
    print(json.dumps(main(*(int(a) for a in sys.argv[1:4]))))
