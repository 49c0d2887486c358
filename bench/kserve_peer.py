"""KServe's Python model server as the benchmark's peer: the same Keras LSTMs, served over its V2
gRPC API (the Open Inference Protocol) through an unmasked XLA function of the exact shape.

Run by ``bench/run.py`` in a venv of its own (``bench/kserve-requirements.txt``), as
``python bench/kserve_peer.py --grpc-port P --http-port Q``. It hosts two models: ``big``
(32 features, 128 units) and ``tiny`` (1 feature, 1 unit); each takes ``x`` (FP32
[batch, timesteps, features]) and answers ``sequence``, ``state_h`` and ``state_c`` as raw
tensor bytes, as KServe's clients send and receive them.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class LstmModel(Model):
    """``LSTM(units, return_sequences=True, return_state=True)`` from zero states."""

    def __init__(self, name: str, features: int, units: int) -> None:
        super().__init__(name)
        self.units = units
        layer = keras.layers.LSTM(units, return_sequences=True, return_state=True)
        layer.build((None, None, features))
        rng = np.random.default_rng(0)
        layer.set_weights(
            [rng.uniform(-0.2, 0.2, w.shape).astype(np.float32) for w in layer.get_weights()]
        )
        self.run = tf.function(
            lambda x, h, c: layer(x, initial_state=[h, c]), jit_compile=True, reduce_retracing=False
        )
        self.ready = True

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:  # type: ignore[override]
        x = payload.inputs[0].as_numpy()
        zeros = np.zeros((x.shape[0], self.units), np.float32)
        outputs = []
        results = self.run(x, zeros, zeros)
        for name, value in zip(("sequence", "state_h", "state_c"), results, strict=True):
            array = value.numpy()
            tensor = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
            tensor.set_data_from_numpy(array, binary_data=True)
            outputs.append(tensor)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args, _ = parser.parse_known_args()
    models = [LstmModel("big", 32, 128), LstmModel("tiny", 1, 1)]
    for model in models:  # compile the shapes the benchmark sends, as lstm-serving warms up
        for timesteps in (3, 100):
            features = 32 if model.name == "big" else 1
            x = np.zeros((1, timesteps, features), np.float32)
            zeros = np.zeros((1, model.units), np.float32)
            model.run(x, zeros, zeros)
    ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1).start(models)


if __name__ == "__main__":
    main()
