"""OpenTelemetry traces (the ``otel`` extra): the span tree of Predict, PredictStream, a session
step and a stream's steps, a batched pair of requests linked to each other, the caller's trace
context as parent, health checks without spans (in-memory exporter); and spans sent over the
wire to an OTLP/gRPC receiver by a server configured by the standard OTEL_* variables."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_client import LstmClient
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc
from lstm_server.tracing import Tracing
from lstm_server.transport.access_log import TraceIdFilter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.helpers import NumpyRuntime, seq_msg
from tests.servers import ServerProcess, ThreadedServer, settings

PREDICT = "lstm.v1.LstmService/Predict"


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[ThreadedServer, InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = ThreadedServer(
        settings(features=2, units=3, access_log=True, http_port=0), tracing=Tracing(provider)
    )
    yield server, exporter, provider
    server.stop()


def _wait_for(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = exporter.get_finished_spans()
        if sum(s.name == name for s in spans) >= count:
            return list(spans)
        time.sleep(0.02)
    raise AssertionError(f"no {name} span: {[s.name for s in exporter.get_finished_spans()]}")


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_predict_has_a_server_span_with_queue_and_model_spans(traced) -> None:
    server, exporter, provider = traced
    exporter.clear()
    caller = provider.get_tracer("caller")
    with LstmClient(server.target) as client, caller.start_as_current_span("caller") as parent:
        client.predict(np.ones((4, 2), np.float32))
    spans = _wait_for(exporter, PREDICT)
    [rpc] = [s for s in spans if s.name == PREDICT]
    assert rpc.kind == SpanKind.SERVER
    assert rpc.attributes["rpc.grpc.status_code"] == "OK"
    # The caller's trace context (sent by the SDK) is the server span's parent.
    assert rpc.context.trace_id == parent.get_span_context().trace_id
    assert rpc.parent is not None
    assert rpc.parent.span_id == parent.get_span_context().span_id
    children = {s.name: s for s in _children(spans, rpc)}
    assert set(children) == {"lstm.queue", "lstm.model"}
    assert children["lstm.model"].attributes["lstm.batch.rows"] == 1
    [served] = server.server.models.loaded()  # the span names the version that served it
    assert rpc.attributes["lstm.model.name"] == served.name
    assert rpc.attributes["lstm.model.version"] == served.version


def test_a_session_step_has_store_and_model_spans(traced) -> None:
    server, exporter, _ = traced
    with LstmClient(server.target) as client, client.session() as session:
        exporter.clear()
        session.step(np.ones((2, 2), np.float32))
    spans = _wait_for(exporter, "lstm.v1.LstmService/Step")
    [step] = [s for s in spans if s.name == "lstm.v1.LstmService/Step"]
    names = sorted(s.name for s in _children(spans, step))
    # The replica remembers the record it created: the step writes without reading first.
    assert names == ["lstm.model", "lstm.queue", "lstm.store.compare_and_set"]
    exporter.clear()
    with grpc.insecure_channel(server.target) as channel:
        request = pb.StepRequest(
            session_id=session.session_id, input=seq_msg(np.ones((1, 2))), step_number=7
        )
        with pytest.raises(grpc.RpcError):  # refused, on a record just read
            pb_grpc.LstmServiceStub(channel).Step(request)
    spans = _wait_for(exporter, "lstm.v1.LstmService/Step")
    [refused] = [s for s in spans if s.name == "lstm.v1.LstmService/Step"]
    assert [s.name for s in _children(spans, refused)] == ["lstm.store.get"]


def test_stream_steps_and_predict_stream_chunks_have_their_spans(traced) -> None:
    server, exporter, _ = traced
    exporter.clear()
    with LstmClient(server.target) as client:
        list(client.stream_session([np.ones((1, 2), np.float32)] * 3))
        list(client.stream(np.ones((5, 2), np.float32), timesteps_per_message=2))
    spans = _wait_for(exporter, "lstm.v1.LstmService/PredictStream")
    [stream] = [s for s in spans if s.name == "lstm.v1.LstmService/StreamSession"]
    steps = [s for s in _children(spans, stream) if s.name.endswith("StreamSession step")]
    assert len(steps) == 3
    for step in steps:
        assert "lstm.model" in {s.name for s in _children(spans, step)}
        assert step.attributes["lstm.model.version"] == 1
    [predict_stream] = [s for s in spans if s.name == "lstm.v1.LstmService/PredictStream"]
    assert "lstm.model" in {s.name for s in _children(spans, predict_stream)}


def test_health_checks_make_no_spans(traced) -> None:
    server, exporter, _ = traced
    exporter.clear()
    with grpc.insecure_channel(server.target) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    time.sleep(0.2)
    assert exporter.get_finished_spans() == ()


INFER = "POST /v2/models/{model}/infer"


def test_http_requests_have_server_spans_and_access_lines_as_grpc_calls_do(traced, caplog) -> None:
    server, exporter, _ = traced
    exporter.clear()
    caplog.handler.addFilter(TraceIdFilter())
    url = f"http://127.0.0.1:{server.server.http_port}/v2/models/default-lstm/infer"
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 2], "data": [1, 2]}]}
    with caplog.at_level(logging.INFO, logger="lstm_server.access"):
        for body in (good, {"inputs": []}):
            request = urllib.request.Request(
                url, json.dumps(body).encode(), {"traceparent": traceparent}
            )
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=10).read()
    spans = [s for s in _wait_for(exporter, INFER, 2) if s.name == INFER]
    ok, refused = sorted(spans, key=lambda s: s.attributes["http.response.status_code"])
    for span in (ok, refused):
        assert span.kind == SpanKind.SERVER
        assert span.attributes["http.route"] == "/v2/models/{model}/infer"
        assert span.attributes["http.request.method"] == "POST"
        assert format(span.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ok.attributes["http.response.status_code"] == 200
    assert "lstm.error.reason" not in ok.attributes
    assert refused.attributes["http.response.status_code"] == 400
    assert refused.attributes["lstm.error.reason"] == "INVALID_INPUT"
    assert {c.name for c in _children(list(exporter.get_finished_spans()), ok)} == {
        "lstm.queue",
        "lstm.model",
    }
    lines = [r for r in caplog.records if r.name == "lstm_server.access"]
    assert [(r.rpc, r.http_status, r.reason) for r in lines] == [
        (INFER, 200, "-"),
        (INFER, 400, "INVALID_INPUT"),
    ]
    assert {r.trace_id for r in lines} == {"4bf92f3577b34da6a3ce929d0e0e4736"}


class SlowRuntime(NumpyRuntime):
    """Model calls that take 0.3 s, so that requests queue behind one and are batched."""

    def run(self, x, lengths, h0, c0):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return super().run(x, lengths, h0, c0)


def test_a_batched_pair_links_each_request_to_the_other() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = ThreadedServer.with_runtime(
        settings(), SlowRuntime(features=2, units=3, inline=False), Tracing(provider)
    )
    try:
        with LstmClient(server.target, timeout=30) as client:
            first = threading.Thread(target=client.predict, args=(np.ones((1, 2)),))
            first.start()
            time.sleep(0.1)  # the first holds the model; the next two wait, then run together
            with futures.ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda _: client.predict(np.ones((1, 2))), range(2)))
            first.join()
        spans = _wait_for(exporter, PREDICT, 3)
    finally:
        server.stop()
    rpcs = {s.context.span_id: s for s in spans if s.name == PREDICT}
    paired = [
        s for s in spans if s.name == "lstm.model" and s.attributes["lstm.batch.requests"] == 2
    ]
    assert len(paired) == 2  # one per request of the batch
    for model in paired:
        assert model.attributes["lstm.batch.rows"] == 2
        [link] = model.links
        assert link.context.span_id in rpcs  # the other request's server span
        assert link.context.span_id != model.parent.span_id


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it gets."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_an_otlp_receiver_over_the_wire(tmp_path: Path) -> None:
    receiver = Receiver()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "lstm-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    server = ServerProcess(log_dir=tmp_path, env=env)
    try:
        with LstmClient(server.target) as client:
            client.predict([[0.1], [0.2]])
        deadline = time.monotonic() + 20
        names: set[str] = set()
        while time.monotonic() < deadline and PREDICT not in names:
            names = {
                span.name
                for request in receiver.requests
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            }
            time.sleep(0.1)
    finally:
        server.stop()
        grpc_server.stop(0)
    assert {PREDICT, "lstm.queue", "lstm.model"} <= names
    services = {
        attribute.value.string_value
        for request in receiver.requests
        for resource in request.resource_spans
        for attribute in resource.resource.attributes
        if attribute.key == "service.name"
    }
    assert services == {"lstm-under-test"}


def test_log_lines_carry_the_trace_id_of_the_server_span(traced, caplog) -> None:
    server, exporter, _ = traced
    exporter.clear()
    caplog.handler.addFilter(TraceIdFilter())
    with (
        caplog.at_level(logging.INFO, logger="lstm_server.access"),
        LstmClient(server.target) as client,
    ):
        client.predict(np.ones((2, 2), np.float32))  # no caller trace: the server starts one
    spans = _wait_for(exporter, PREDICT)
    [rpc] = [s for s in spans if s.name == PREDICT]
    [access] = [r for r in caplog.records if r.name == "lstm_server.access"]
    assert access.trace_id == format(rpc.context.trace_id, "032x")
