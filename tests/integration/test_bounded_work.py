"""Bounded work per request: floods and oversized replies are refused before any work is spent on
them, large legal requests do not hold the event loop, and health checks answer meanwhile."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from lstm_client import LstmClient, LstmError
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.helpers import HealthProber, length_delimited, seq_msg
from tests.servers import ThreadedServer, free_port, settings

FLOOD = b"\x0a\x00" * 2_097_120  # 4 MiB of empty sequences: two million of them


@pytest.fixture(scope="module")
def served() -> Iterator[ThreadedServer]:
    server = ThreadedServer(
        settings(features=8, units=64, metrics_port=free_port(), max_response_bytes=16 * 2**20)
    )
    yield server
    server.stop()


def _timesteps_run(server: ThreadedServer) -> float:
    registry = server.server.metrics.registry
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "lstm_timesteps_total"
    )


def _raw_predict(channel: grpc.Channel, data: bytes) -> grpc.RpcError:
    call = channel.unary_unary("/lstm.v1.LstmService/Predict")
    with pytest.raises(grpc.RpcError) as caught:
        call(data, timeout=30)
    return caught.value


def test_a_flood_of_empty_sequences_is_refused_at_once_and_health_answers(served) -> None:
    with grpc.insecure_channel(served.target) as channel, HealthProber(served.target) as prober:
        errors = [_raw_predict(channel, FLOOD) for _ in range(6)]
    for error in errors:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sequences: has 65 or more entries, more than the limit 64" in error.details()
    assert prober.latencies, "no health probe completed"
    assert prober.failures == []
    with LstmClient(served.target) as client:  # still serving
        assert client.predict(np.ones((2, 8))).sequence.shape == (2, 64)


def test_a_flood_of_timesteps_inside_one_sequence_is_refused_unread(served) -> None:
    one_sequence = length_delimited(1, FLOOD[:-8])  # within the 4 MiB request limit
    with grpc.insecure_channel(served.target) as channel:
        error = _raw_predict(channel, one_sequence)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sequences[0].timesteps: has 10001 or more timesteps" in error.details()


def test_a_reply_over_the_limit_is_refused_before_it_is_computed(served, rng) -> None:
    x = rng.normal(size=(11, 10_000, 8)).astype(np.float32)  # 3.6 MB in, about 29 MB out
    before = _timesteps_run(served)
    with LstmClient(served.target, timeout=60) as client, pytest.raises(LstmError) as refused:
        client.predict(x)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than the limit max_response_bytes=16777216" in refused.value.details
    assert "use PredictStream" in refused.value.details
    assert _timesteps_run(served) == before  # refused before the model ran
    stub = pb_grpc.LstmServiceStub(grpc.insecure_channel(served.target))
    meta = stub.GetModelMetadata(pb.GetModelMetadataRequest())
    assert meta.limits.max_response_bytes == 16 * 2**20


def test_a_stream_message_over_the_limit_is_refused(served, rng) -> None:
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.LstmServiceStub(channel)
        request = pb.PredictRequest(
            sequences=[seq_msg(np.ones((2, 8)))], timesteps_per_message=100_000
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.PredictStream(request))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fewer timesteps_per_message" in refused.value.details()


def test_a_large_legal_reply_does_not_hold_up_health_checks(served, rng) -> None:
    x = rng.normal(size=(5, 10_000, 8)).astype(np.float32)  # about 13 MB out
    request = pb.PredictRequest(sequences=[seq_msg(s) for s in x])
    options = [("grpc.max_receive_message_length", 64 * 2**20)]
    replies: list[pb.PredictResponse] = []
    with (
        grpc.insecure_channel(served.target, options=options) as channel,
        HealthProber(served.target) as prober,
    ):
        stub = pb_grpc.LstmServiceStub(channel)
        for _ in range(2):
            threads = [
                threading.Thread(target=lambda: replies.append(stub.Predict(request, timeout=120)))
                for _ in range(2)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    assert [len(r.outputs) for r in replies] == [5] * 4
    assert prober.latencies
    assert prober.failures == []


def test_probes_answer_over_http(served) -> None:
    port = served.server.metrics_server.port
    for path in ("healthz", "readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as reply:
            assert reply.status == 200
