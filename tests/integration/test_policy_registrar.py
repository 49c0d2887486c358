"""Policies applied at registration: a real grpc.aio server (no model) on a free port, with a
service of its own and the health service a library registers, each reached through a stub."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from lstm_server.transport.calls import Call, Chain, Method, Policy
from lstm_server.transport.handlers import PolicyRegistrar

ECHO = "/test.Echo/Unary"


class Recording(Policy):
    """A policy that notes each call it enters and exits, under its own name."""

    def __init__(self, name: str, calls: list[tuple[str, str]], only: str = "") -> None:
        self._name, self._calls, self._only = name, calls, only

    def applies_to(self, method: Method) -> bool:
        return method.service.startswith(self._only)

    def enter(self, call: Call) -> None:
        self._calls.append((self._name, "/" + call.method.display))

    def exit(self, call: Call, entered: None) -> None:
        self._calls.append((f"{self._name} ends {call.status.code}", "/" + call.method.display))


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, list[tuple[str, str]]]]:
    calls: list[tuple[str, str]] = []
    server = grpc.aio.server()
    registrar = PolicyRegistrar(
        server, Chain([Recording("outer", calls), Recording("inner", calls, only="test.")])
    )

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        calls.append(("echo", ECHO))
        return request

    registrar.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), registrar)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, calls
    await server.stop(None)


async def test_every_call_runs_inside_the_policies_that_apply_outermost_first(served) -> None:
    channel, calls = served
    assert await channel.unary_unary(ECHO)(b"hi") == b"hi"
    assert calls == [
        ("outer", ECHO),
        ("inner", ECHO),
        ("echo", ECHO),
        ("inner ends OK", ECHO),
        ("outer ends OK", ECHO),
    ]


async def test_services_a_library_registers_get_the_policies_too(served) -> None:
    channel, calls = served
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    check = "/grpc.health.v1.Health/Check"
    assert calls == [("outer", check), ("outer ends OK", check)]


async def test_an_unknown_method_is_unimplemented_and_reaches_no_policy(served) -> None:
    channel, calls = served
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Missing")(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert calls == []
