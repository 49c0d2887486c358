"""Save the benchmark's stacked model: 32 features -> LSTM(128) -> LSTM(128) -> Dense(64).

Run as ``python bench/stack_model.py PATH`` (a subprocess of ``bench/run.py``, so the benchmark
itself never imports TensorFlow).
"""

from __future__ import annotations

import sys

import keras
import numpy as np


def main(path: str) -> None:
    model = keras.Sequential(
        [
            keras.Input((None, 32)),
            keras.layers.LSTM(128, return_sequences=True),
            keras.layers.LSTM(128, return_sequences=True),
            keras.layers.Dense(64),
        ]
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights(
            [rng.uniform(-0.2, 0.2, w.shape).astype(np.float32) for w in layer.get_weights()]
        )
    model.save(path)


if __name__ == "__main__":
    main(sys.argv[1])
