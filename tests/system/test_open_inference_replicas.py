"""Sequences of the Open Inference Protocol are sessions: two replicas sharing a real Redis serve
any request of any sequence, over gRPC and HTTP alike, and a retried request is applied once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from lstm_client import LstmClient

from tests.redis_server import RedisServer
from tests.servers import ThreadedServer, free_port, settings

ATOL = 1e-5


def _grpc_x(x: np.ndarray) -> list[triton_grpc.InferInput]:
    tensor = triton_grpc.InferInput("x", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(x[None])
    return [tensor]


def _http_x(x: np.ndarray) -> list[triton_http.InferInput]:
    tensor = triton_http.InferInput("x", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(x[None])
    return [tensor]


def test_a_sequence_switches_replicas_and_bindings_on_redis(tmp_path: Path, rng) -> None:
    redis = RedisServer(tmp_path)
    servers = [
        ThreadedServer(
            settings(features=3, units=5, seed=2, session_store=redis.url, http_port=free_port())
        )
        for _ in range(2)
    ]
    grpcs = [triton_grpc.InferenceServerClient(s.target) for s in servers]
    rests = [triton_http.InferenceServerClient(f"127.0.0.1:{s.server.http_port}") for s in servers]
    try:
        with LstmClient(servers[0].target) as client:
            name = client.metadata().name
            x = rng.normal(size=(8, 3)).astype(np.float32)
            whole = client.predict(x)
        outputs = []
        for t in range(8):
            replica = t % 2
            kwargs = {
                "sequence_id": "shared-1",
                "sequence_start": t == 0,
                "sequence_end": t == 7,
                "parameters": {"lstm_step_number": t + 1},
            }
            if t % 4 < 2:
                result = grpcs[replica].infer(name, _grpc_x(x[t : t + 1]), **kwargs)
                # a retry reaches the other replica: answered from the session, not reapplied
                if t < 7:
                    again = grpcs[1 - replica].infer(name, _grpc_x(x[t : t + 1]), **kwargs)
                    np.testing.assert_array_equal(
                        again.as_numpy("sequence"), result.as_numpy("sequence")
                    )
            else:
                result = rests[replica].infer(name, _http_x(x[t : t + 1]), **kwargs)
            outputs.append(result.as_numpy("sequence")[0])
        np.testing.assert_allclose(np.concatenate(outputs), whole.sequence, atol=ATOL)
        np.testing.assert_allclose(result.as_numpy("state_h")[0], whole.h, atol=ATOL)
        np.testing.assert_allclose(result.as_numpy("state_c")[0], whole.c, atol=ATOL)
    finally:
        for client in (*grpcs, *rests):
            client.close()
        for server in servers:
            server.stop()
        redis.stop()
