"""Prometheus metrics on the real /metrics endpoint: exact counts, model and session metrics
(a real Prometheus scraping them is in the system tier)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.helpers import grpc_labels, scrape, scrape_settled, seq_msg, summed, value
from tests.servers import ThreadedServer, free_port, settings


@pytest.fixture(scope="module")
def metered() -> Iterator[ThreadedServer]:
    server = ThreadedServer(settings(features=2, units=3, metrics_port=free_port(), session_ttl=60))
    yield server
    server.stop()


@pytest.fixture
def metrics_url(metered: ThreadedServer) -> str:
    assert metered.server.metrics_server is not None
    return f"http://127.0.0.1:{metered.server.metrics_server.port}/metrics"


@pytest.fixture
def version(metered: ThreadedServer) -> dict[str, str]:
    """The labels of the one model version it serves."""
    [served] = metered.server.models.loaded()
    return {"model": served.name, "model_version": str(served.version)}


@pytest.fixture
def stub(metered: ThreadedServer) -> Iterator[pb_grpc.LstmServiceStub]:
    with grpc.insecure_channel(metered.target) as channel:
        yield pb_grpc.LstmServiceStub(channel)


def test_handled_counts_are_exact(stub, metrics_url: str, version: dict[str, str]) -> None:
    before = scrape(metrics_url)
    good = pb.PredictRequest(sequences=[seq_msg(np.ones((4, 2))), seq_msg(np.ones((2, 2)))])
    bad = pb.PredictRequest(sequences=[seq_msg(np.ones((4, 5)))])
    for _ in range(5):
        stub.Predict(good)
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.Predict(bad)
    after = scrape_settled(metrics_url, before, {"Predict": 8})
    labels = grpc_labels("Predict")

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("grpc_server_started_total") == 8
    assert delta("grpc_server_handled_total", grpc_code="OK") == 5
    assert delta("grpc_server_handled_total", grpc_code="INVALID_ARGUMENT") == 3
    assert delta("grpc_server_handling_seconds_count") == 8
    assert delta("grpc_server_msg_received_total") == 8
    assert delta("grpc_server_msg_sent_total") == 5

    def ran(name: str, **extra: str) -> float:  # by model version
        return value(after, name, **version, **extra) - value(before, name, **version, **extra)

    assert ran("lstm_sequences_total") == 10
    assert ran("lstm_timesteps_total") == 30
    assert ran("lstm_batch_size_count") == 5
    assert ran("lstm_inference_seconds_count") == 5
    assert ran("lstm_queue_seconds_count") == 5
    assert ran("lstm_model_executions_total") == 5
    assert ran("lstm_model_requests_total", outcome="success") == 5
    assert ran("lstm_model_requests_total", outcome="failure") == 3  # refused inputs
    assert ran("lstm_model_compute_seconds_total") > 0


def test_streaming_rpcs_count_each_message(stub, metrics_url: str) -> None:
    before = scrape(metrics_url)
    request = pb.PredictRequest(sequences=[seq_msg(np.ones((100, 2)))], timesteps_per_message=10)
    assert len(list(stub.PredictStream(request))) == 10
    x = seq_msg(np.ones((1, 2)))
    requests = [
        pb.SessionStreamRequest(
            open=pb.OpenSession(create=pb.CreateSessionRequest(), close_on_end=True)
        )
    ]
    requests += [
        pb.SessionStreamRequest(step=pb.SessionStep(input=x, step_number=n)) for n in (1, 2, 3)
    ]
    assert len(list(stub.StreamSession(iter(requests)))) == 4
    after = scrape_settled(metrics_url, before, {"PredictStream": 1, "StreamSession": 1})
    server_stream = grpc_labels("PredictStream", "server_stream")
    bidi = grpc_labels("StreamSession", "bidi_stream")

    def delta(name: str, labels: dict[str, str], **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("grpc_server_msg_received_total", server_stream) == 1
    assert delta("grpc_server_msg_sent_total", server_stream) == 10
    assert delta("grpc_server_handled_total", server_stream, grpc_code="OK") == 1
    assert delta("grpc_server_msg_received_total", bidi) == 4
    assert delta("grpc_server_msg_sent_total", bidi) == 4
    assert delta("grpc_server_handled_total", bidi, grpc_code="OK") == 1
    # a 100-timestep sequence streamed in chunks is still one sequence
    assert summed(after, "lstm_timesteps_total") - summed(before, "lstm_timesteps_total") == 103
    assert summed(after, "lstm_sequences_total") - summed(before, "lstm_sequences_total") == 4


def test_session_metrics(stub, metrics_url: str, version: dict[str, str]) -> None:
    before = scrape(metrics_url)
    x = seq_msg(np.ones((1, 2)))
    ids = [stub.CreateSession(pb.CreateSessionRequest()).session_id for _ in range(3)]
    short = stub.CreateSession(pb.CreateSessionRequest(ttl_seconds=1)).session_id
    for sid in ids:
        stub.Step(pb.StepRequest(session_id=sid, input=x, step_number=1))
    stub.Step(pb.StepRequest(session_id=ids[0], input=x, step_number=1))  # a retry
    stub.CloseSession(pb.CloseSessionRequest(session_id=ids[1]))
    with pytest.raises(grpc.RpcError):
        stub.GetSession(pb.GetSessionRequest(session_id="unknown"))
    mid = scrape(metrics_url)
    assert value(mid, "lstm_sessions_active") - value(before, "lstm_sessions_active") == 3
    time.sleep(1.6)  # the short session expires and the reaper (every 0.2 s) ends it
    after = scrape_settled(metrics_url, before, {"GetSession": 1, "CloseSession": 1})

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("lstm_sessions_created_total", **version) == 4
    assert delta("lstm_sessions_ended_total", reason="closed") == 1
    assert delta("lstm_sessions_ended_total", reason="expired") == 1
    assert delta("lstm_sessions_active") == 2
    assert delta("lstm_session_steps_total", **version) == 3
    assert delta("lstm_session_step_retries_total", **version) == 1
    requests = "lstm_model_requests_total"  # the model's statistics: steps and retries alike
    assert delta(requests, **version, outcome="success") == 4
    assert (
        delta("grpc_server_handled_total", **grpc_labels("GetSession"), grpc_code="NOT_FOUND") == 1
    )
    assert short not in json.dumps([k for k in after]), "no session id may appear in a label"


def test_model_info_and_process_metrics(metered, metrics_url: str) -> None:
    samples = scrape(metrics_url)
    [served] = metered.server.models.loaded()
    info = served.info
    labels = {"model": info.name, "model_version": "1", "version": info.version}
    assert value(samples, "lstm_model_info", **labels, units="3", features="2") == 1
    assert value(samples, "lstm_model_versions_loaded") == 1
    assert value(samples, "lstm_model_loads_total", model=info.name, outcome="loaded") == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in samples)


def test_steps_are_timed_one_by_one_and_refusals_counted_by_code(stub, metrics_url: str) -> None:
    before = scrape(metrics_url)
    x = seq_msg(np.ones((1, 2)))
    sid = stub.CreateSession(pb.CreateSessionRequest()).session_id
    stub.Step(pb.StepRequest(session_id=sid, input=x, step_number=1))
    with pytest.raises(grpc.RpcError):
        stub.Step(pb.StepRequest(session_id=sid, input=x, step_number=9))

    def messages() -> Iterator[pb.SessionStreamRequest]:
        yield pb.SessionStreamRequest(open=pb.OpenSession(resume_session_id=sid))
        for number in (2, 3, 7):  # 7: refused in-band, the stream goes on
            yield pb.SessionStreamRequest(step=pb.SessionStep(input=x, step_number=number))
        yield pb.SessionStreamRequest(step=pb.SessionStep(input=seq_msg(np.ones((1, 5)))))

    replies = list(stub.StreamSession(messages()))
    assert [r.WhichOneof("kind") for r in replies] == ["session", "step", "step", "error", "error"]
    after = scrape_settled(metrics_url, before, {"Step": 2, "StreamSession": 1})

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("lstm_session_step_seconds_count", grpc_method="Step") == 2
    assert delta("lstm_session_step_seconds_count", grpc_method="StreamSession") == 4
    refused = "lstm_session_steps_refused_total"
    assert delta(refused, grpc_method="Step", code="FAILED_PRECONDITION") == 1
    assert delta(refused, grpc_method="StreamSession", code="FAILED_PRECONDITION") == 1
    assert delta(refused, grpc_method="StreamSession", code="INVALID_ARGUMENT") == 1
    # The stream itself ended OK; its steps' latencies are not its lifetime.
    assert delta("grpc_server_handled_total", **grpc_labels("StreamSession", "bidi_stream"),
                 grpc_code="OK") == 1  # fmt: skip
    assert delta("lstm_store_operation_seconds_count", operation="compare_and_set") == 3
    # Reads: the refused steps' and the stream's opening; steps that follow this replica's own
    # write go straight to the compare-and-set.
    assert delta("lstm_store_operation_seconds_count", operation="get") == 3
    assert delta("lstm_store_errors_total", operation="get") == 0


def test_in_flight_limits_and_readiness(stub, metered: ThreadedServer, metrics_url: str) -> None:
    stub.GetModelMetadata(pb.GetModelMetadataRequest())
    samples = scrape(metrics_url)
    assert value(samples, "lstm_rpcs_in_flight", **grpc_labels("GetModelMetadata")) == 0
    limits = metered.server.settings.limits
    assert value(samples, "lstm_server_limit", limit="max_sessions") == limits.max_sessions
    assert value(samples, "lstm_server_limit", limit="max_batch_size") == limits.max_batch_size
    assert value(samples, "lstm_ready") == 1
    assert value(samples, "lstm_store_up") == 1
