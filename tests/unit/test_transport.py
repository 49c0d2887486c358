"""The transport's pure parts: converters both ways, the error table, and every policy,
called directly with a recording context (no sockets)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status as grpc_rpc_status
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_server.core import errors
from lstm_server.core.sessions import SessionInfo
from lstm_server.core.types import ModelInfo, State
from lstm_server.transport import converters as conv
from lstm_server.transport.access_log import AccessLogPolicy, TraceIdFilter, trace_id_of
from lstm_server.transport.auth import PRINCIPAL, AuthPolicy
from lstm_server.transport.calls import Call, Chain, Policy
from lstm_server.transport.errors import grpc_code, rpc_status
from lstm_server.transport.handlers import PolicyRegistrar, served
from lstm_server.transport.limits import ConcurrencyLimitPolicy
from lstm_server.transport.observation import ObservingPolicy
from lstm_server.transport.status import HTTP_STATUS, INTERNAL_MESSAGE, STATUS_CODES

PREDICT = "/lstm.v1.LstmService/Predict"
HEALTH = "/grpc.health.v1.Health/Check"


class Context:
    """What a servicer context does for the policies: metadata in, a status out."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.status: grpc.Status | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()

    def code(self) -> grpc.StatusCode | None:
        return None if self.status is None else self.status.code


class Details:
    def __init__(self, method: str) -> None:
        self.method = method


class Everything(grpc.GenericRpcHandler):
    """A generic handler that serves every method with one handler."""

    def __init__(self, handler: grpc.RpcMethodHandler) -> None:
        self.handler = handler

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler:
        return self.handler


def wrapped(
    policy: Policy | None, method: str, behavior: Any, messages: Any = None, **codec: Any
) -> grpc.RpcMethodHandler:
    """A unary ``behavior`` as the gRPC door serves it for ``method`` with ``policy`` (None: no
    policy, errors mapped all the same)."""
    handler = grpc.unary_unary_rpc_method_handler(behavior, **codec)
    return served(handler, method, Chain([] if policy is None else [policy]), messages)


def status_of(context: Context) -> status_pb2.Status:
    """The google.rpc.Status the call ended with, as its trailers carry it."""
    assert context.status is not None
    [details] = [v for k, v in context.status.trailing_metadata if k == "grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    assert status.code == context.status.code.value[0]
    return status


# Converters


def test_state_in_says_which_parts_are_absent() -> None:
    h, c = conv.state_in(pb.LstmState(h=pb.Vector(values=[1.5])))
    np.testing.assert_array_equal(h, [1.5])
    assert c is None
    assert conv.optional_state_in(pb.ResetSessionRequest(), "state", "layer_states") is None


def test_session_out_shows_no_bookkeeping() -> None:
    model = ModelInfo("m", "sha256:v", 1, 2, "tanh", "sigmoid", True, version_number=3)
    info = SessionInfo("abc", State.zeros(2), 3, "sha256:v", 60, 1_700_000_000.5, "m", 3, model)
    message = conv.session_out(info)
    assert (message.session_id, message.step_count, message.ttl_seconds) == ("abc", 3, 60)
    assert (message.expires_at.seconds, message.expires_at.nanos) == (1_700_000_000, 500_000_000)
    assert message.model_version == "sha256:v"
    assert (message.model.name, message.model.version) == ("m", 3)


def test_a_session_of_a_version_never_loaded_here_shows_its_state_whole() -> None:
    """GetSession works for a session whose version this server never had (how its state is
    carried over): the state comes back as one layer."""
    state = State(np.arange(6, dtype=np.float32), np.ones(6, np.float32))
    info = SessionInfo("abc", state, 1, "sha256:gone", 60, 1_700_000_000.0, "m", 7, None)
    message = conv.session_out(info)
    np.testing.assert_array_equal(message.state.h.values, np.arange(6))
    assert not message.HasField("layer_states")
    assert (message.model.name, message.model.version) == ("m", 7)


# The error table


def domain_errors() -> list[type[errors.ServingError]]:
    found, todo = [], [errors.ServingError]
    while todo:
        kind = todo.pop()
        found += kind.__subclasses__()
        todo += kind.__subclasses__()
    return found


@pytest.mark.parametrize("kind", domain_errors(), ids=lambda k: k.__name__)
def test_every_domain_error_has_a_code_and_a_reason(kind: type[errors.ServingError]) -> None:
    assert kind in STATUS_CODES
    error = errors.InvalidInput.single("f", "bad") if kind is errors.InvalidInput else kind("x")
    status = rpc_status(error)
    assert status.code == grpc_code(STATUS_CODES[kind]).value[0] != code_pb2.INTERNAL
    assert STATUS_CODES[kind] in HTTP_STATUS  # the HTTP door answers it with its own status
    info = _detail(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (kind.reason, "lstm-serving")
    assert info.reason.isupper()
    assert info.reason != errors.ServingError.reason


def _detail(status, kind):  # type: ignore[no-untyped-def]
    """The one detail of ``kind`` in a status."""
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    assert len(found) == 1
    message = kind()
    found[0].Unpack(message)
    return message


@pytest.mark.parametrize(
    ("error", "reason", "metadata"),
    [
        (errors.SessionNotFound.ended("s1", None), "SESSION_NOT_FOUND", {"session_id": "s1"}),
        (errors.SessionNotFound.ended("s1", "expired"), "SESSION_EXPIRED", {"session_id": "s1"}),
        (errors.SessionNotFound.ended("s1", "closed"), "SESSION_CLOSED", {"session_id": "s1"}),
        (
            errors.StepConflict("x", expected_step_number=3, step_number=5),
            "STEP_OUT_OF_ORDER",
            {"expected_step_number": "3", "step_number": "5"},
        ),
        (
            errors.LimitExceeded("x", limit="max_sessions", value=10),
            "LIMIT_EXCEEDED",
            {"limit": "max_sessions", "value": "10"},
        ),
        (KeyError("secret"), "INTERNAL", {}),
    ],
)
def test_error_info_carries_the_reason_and_its_metadata(
    error: Exception, reason: str, metadata: dict[str, str]
) -> None:
    info = _detail(rpc_status(error), error_details_pb2.ErrorInfo)
    assert (info.reason, dict(info.metadata)) == (reason, metadata)


def test_invalid_input_carries_every_violation() -> None:
    error = errors.InvalidInput(
        [errors.FieldViolation("a", "is bad"), errors.FieldViolation("b.c", "is worse")]
    )
    status = rpc_status(error)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "a: is bad; b.c: is worse"
    bad_request = _detail(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("a", "is bad"),
        ("b.c", "is worse"),
    ]


def test_conflicts_are_retryable_and_wrong_numbers_are_not() -> None:
    assert rpc_status(errors.ConcurrentChange("retry")).code == code_pb2.ABORTED
    assert rpc_status(errors.StepConflict("expects 2")).code == code_pb2.FAILED_PRECONDITION


def test_anything_else_is_internal_with_a_generic_message() -> None:
    status = rpc_status(KeyError("secret"))
    assert (status.code, status.message) == (code_pb2.INTERNAL, INTERNAL_MESSAGE)


# Policies


async def test_error_mapping_turns_domain_errors_into_their_status() -> None:
    async def behavior(request: Any, context: Any) -> Any:
        raise errors.SessionNotFound("session x does not exist")

    handler = wrapped(None, PREDICT, behavior)
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(object(), context)
    status = status_of(context)
    assert (status.code, status.message) == (code_pb2.NOT_FOUND, "session x does not exist")


async def test_error_mapping_hides_unexpected_errors_and_logs_them(caplog) -> None:
    async def behavior(request: Any, context: Any) -> Any:
        raise RuntimeError("secret detail")

    handler = wrapped(None, PREDICT, behavior)
    context = Context()
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(object(), context)
    assert (status_of(context).code, status_of(context).message) == (
        code_pb2.INTERNAL,
        INTERNAL_MESSAGE,
    )
    assert "secret detail" in caplog.text


async def test_bytes_that_do_not_parse_are_invalid_argument() -> None:
    async def behavior(request: Any, context: Any) -> Any:
        raise AssertionError("must not run")

    handler = wrapped(
        None,
        PREDICT,
        behavior,
        request_deserializer=pb.PredictRequest.FromString,
    )
    request = handler.request_deserializer(b"\xff\xff\xff")
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(request, context)
    status = status_of(context)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message.startswith("request: is not a valid message")


async def test_handlers_are_wrapped_once_per_method() -> None:
    async def behavior(request: Any, context: Any) -> Any:
        return "ok"

    handler = grpc.unary_unary_rpc_method_handler(behavior)
    registered: list[grpc.GenericRpcHandler] = []
    server = SimpleNamespace(add_generic_rpc_handlers=registered.extend)
    PolicyRegistrar(server, Chain([])).add_generic_rpc_handlers([Everything(handler)])
    [generic] = registered
    first = generic.service(Details(PREDICT))
    second = generic.service(Details(PREDICT))
    assert first is second
    assert first is not handler
    health = generic.service(Details(HEALTH))
    assert health is not handler  # every service runs inside the chain
    assert health is generic.service(Details(HEALTH))


async def test_auth_requires_a_token_but_not_for_health() -> None:
    seen: list[str] = []

    async def behavior(request: Any, context: Any) -> Any:
        seen.append(PRINCIPAL.get())
        return "ok"

    auth = AuthPolicy([(b"s3cret", "alice")])
    handler = wrapped(auth, PREDICT, behavior)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
        context = Context(metadata)
        with pytest.raises(grpc.aio.AbortError):
            await handler.unary_unary(object(), context)
        assert status_of(context).code == code_pb2.UNAUTHENTICATED
    assert await handler.unary_unary(object(), Context((("authorization", "Bearer s3cret"),)))
    assert seen == ["alice"]
    health = wrapped(auth, HEALTH, behavior)
    assert await health.unary_unary(object(), Context()) == "ok"


async def test_the_concurrency_cap_refuses_at_once_and_frees_its_place() -> None:
    import asyncio

    release = asyncio.Event()

    async def behavior(request: Any, context: Any) -> Any:
        await release.wait()
        return "ok"

    cap = ConcurrencyLimitPolicy(1)
    handler = wrapped(cap, PREDICT, behavior)
    first = asyncio.ensure_future(handler.unary_unary(object(), Context()))
    await asyncio.sleep(0)
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary(object(), context)
    assert status_of(context).code == code_pb2.RESOURCE_EXHAUSTED
    assert "limit of 1 concurrent calls" in status_of(context).message
    release.set()
    assert await first == "ok"
    assert cap.in_flight == 0
    assert await handler.unary_unary(object(), Context()) == "ok"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def call_started(self, call: Call) -> None:
        method = call.method
        self.events.append(("started", method.kind, method.service, method.name))

    def call_ended(self, call: Call) -> None:
        self.events.append(("handled", call.status.code, call.status.reason))

    def message_received(self, labels: tuple[str, str, str]) -> None:
        self.events.append(("received",))

    def message_sent(self, labels: tuple[str, str, str]) -> None:
        self.events.append(("sent",))


async def test_observation_reports_start_messages_code_and_reason() -> None:
    async def ok(request: Any, context: Any) -> Any:
        return "ok"

    async def aborts(request: Any, context: Any) -> Any:
        await context.abort_with_status(
            grpc_rpc_status.to_status(status_pb2.Status(code=code_pb2.NOT_FOUND, message="no"))
        )

    async def fails(request: Any, context: Any) -> Any:
        raise errors.SessionNotFound.ended("s1", "expired")

    recorder = Recorder()
    observing = ObservingPolicy(recorder)
    await (wrapped(observing, PREDICT, ok, recorder)).unary_unary(object(), Context())
    for behavior in (aborts, fails):
        with pytest.raises(grpc.aio.AbortError):
            await (wrapped(observing, PREDICT, behavior, recorder)).unary_unary(object(), Context())
    started = ("started", "unary", "lstm.v1.LstmService", "Predict")
    assert recorder.events == [
        started,
        ("received",),
        ("handled", "OK", ""),
        ("sent",),
        started,
        ("received",),
        ("handled", "NOT_FOUND", ""),
        started,
        ("received",),
        ("handled", "NOT_FOUND", "SESSION_EXPIRED"),
    ]


# The access log

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class LoggedContext(Context):
    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def code(self) -> grpc.StatusCode | None:
        return self.status.code if self.status is not None else None


async def test_access_log_writes_one_line_per_call_with_its_trace_id(caplog) -> None:
    inside = logging.getLogger("lstm_server.inside")

    async def behavior(request: Any, context: Any) -> Any:
        inside.warning("written while serving")
        return b"ok"

    handler = wrapped(AccessLogPolicy(), PREDICT, behavior)
    caplog.handler.addFilter(TraceIdFilter())
    with caplog.at_level(logging.INFO):
        await handler.unary_unary(b"x", LoggedContext((("traceparent", TRACEPARENT),)))
        await handler.unary_unary(b"x", LoggedContext())
    during, access, _, other = caplog.records
    assert during.trace_id == access.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (access.rpc, access.code, access.reason, access.peer, access.principal) == (
        "lstm.v1.LstmService/Predict", "OK", "-", "ipv4:127.0.0.1:5555", "-",
    )  # fmt: skip
    assert access.duration_ms >= 0
    assert len(other.trace_id) == 32  # no traceparent: a new id
    assert other.trace_id != access.trace_id
    health = wrapped(AccessLogPolicy(), HEALTH, behavior)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        await health.unary_unary(b"x", LoggedContext())
    assert [r.name for r in caplog.records] == ["lstm_server.inside"]  # no access line


@pytest.mark.parametrize(
    "value", ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage", ""]
)
def test_a_missing_or_invalid_traceparent_gets_a_new_trace_id(value: str) -> None:
    found = trace_id_of((("traceparent", value),))
    assert len(found) == 32
    assert found != "0" * 32
