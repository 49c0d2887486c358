"""The machinery every policy shares: wrap a method's handler once, keep its codec, and drive
unary and streaming behaviours alike. The policies (errors, auth, limits, observation) live in
their own modules and only say what to do around a call.

The server applies them when it registers its services (``PolicyRegistrar``), once per method,
rather than as gRPC interceptors: gRPC runs an interceptor chain as one coroutine per interceptor
on every call, before it even looks the method up (about 20 us of the event loop's time per call
here, measured on the tutorial model's Predict)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import grpc
from grpc.aio import ServicerContext as Context

SERVICE_PREFIX = "/lstm.v1.LstmService/"
# The services that serve the model: lstm.v1 and the Open Inference Protocol's. Limits and the
# error table apply to both.
SERVING_PREFIXES = (SERVICE_PREFIX, "/inference.GRPCInferenceService/")
HEALTH_PREFIX = "/grpc.health.v1.Health/"
Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]


async def responses(
    behavior: Callable[..., Any], request: Any, context: Context
) -> AsyncIterator[Any]:
    """A streaming behaviour's responses, whether it yields them or writes them itself."""
    result = behavior(request, context)
    if inspect.isasyncgen(result):
        async for response in result:
            yield response
    else:
        await result


def client_streams(handler: grpc.RpcMethodHandler) -> bool:
    return bool(handler.stream_unary or handler.stream_stream)


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Unary, str], Unary],
    streaming: Callable[[Streaming, str], Streaming],
    *,
    deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped by ``unary`` or ``streaming`` (which are told
    the call's kind as the gRPC Prometheus labels name it) and, optionally, another
    request deserializer."""
    codec = {
        "request_deserializer": deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, "unary"), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream, "server_stream"), **codec
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary, "client_stream"), **codec
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream, "bidi_stream"), **codec
    )


def around(
    handler: grpc.RpcMethodHandler, scope: Callable[[Context], AbstractContextManager[Any]]
) -> grpc.RpcMethodHandler:
    """The same handler, each call (of any kind) run inside ``scope(context)``: for policies that
    only set something up before a call and tear it down after it."""

    def unary(behavior: Unary, _: str) -> Unary:
        async def scoped(request: Any, context: Context) -> Any:
            with scope(context):
                return await behavior(request, context)

        return scoped

    def streaming(behavior: Streaming, _: str) -> Streaming:
        async def scoped(request: Any, context: Context) -> AsyncIterator[Any]:
            with scope(context):
                async for response in responses(behavior, request, context):
                    yield response

        return scoped

    return rewrap(handler, unary, streaming)


class Policy:
    """What to do around the calls of each method it ``applies_to``: ``wrap`` returns the
    method's handler with that behaviour. The registrar calls it once per method: building
    closures and handlers on every call would cost more than the call's work."""

    def applies_to(self, method: str) -> bool:
        return True

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


def with_policies(
    handler: grpc.RpcMethodHandler, method: str, policies: Sequence[Policy]
) -> grpc.RpcMethodHandler:
    """``handler`` inside each of ``policies`` (outermost first) that applies to ``method``."""
    for policy in reversed(policies):
        if policy.applies_to(method):
            handler = policy.wrap(handler, method)
    return handler


class _PolicyHandler(grpc.GenericRpcHandler):
    """A generic handler whose methods are wrapped by ``policies``, each once."""

    def __init__(self, inner: grpc.GenericRpcHandler, policies: Sequence[Policy]) -> None:
        self._inner = inner
        self._policies = policies
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            wrapped = with_policies(handler, method, self._policies)
            cached = self._wrapped[method] = (handler, wrapped)
        return cached[1]


class PolicyRegistrar:
    """Registers services on ``server`` with ``policies`` (outermost first) around each of their
    methods. It stands in for the server where generated ``add_*_to_server`` functions take one,
    so that services registered by libraries (health, reflection) get the policies too."""

    def __init__(self, server: grpc.aio.Server, policies: Sequence[Policy]) -> None:
        self._server = server
        self._policies = tuple(policies)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_PolicyHandler(handler, self._policies) for handler in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service,
            {
                name: with_policies(handler, f"/{service}/{name}", self._policies)
                for name, handler in handlers.items()
            },
        )


class GatePolicy(Policy):
    """Runs ``admit`` before a call of the service (it may abort it) and, after the call,
    ``release`` with what ``admit`` returned."""

    def applies_to(self, method: str) -> bool:
        return method.startswith(SERVING_PREFIXES)

    async def admit(self, context: Context) -> Any:
        raise NotImplementedError

    def release(self, admitted: Any) -> None:
        return None

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        gate = self

        def unary(behavior: Unary, _: str) -> Unary:
            async def gated(request: Any, context: Context) -> Any:
                admitted = await gate.admit(context)
                try:
                    return await behavior(request, context)
                finally:
                    gate.release(admitted)

            return gated

        def streaming(behavior: Streaming, _: str) -> Streaming:
            async def gated(request: Any, context: Context) -> AsyncIterator[Any]:
                admitted = await gate.admit(context)
                try:
                    async for response in responses(behavior, request, context):
                        yield response
                finally:
                    gate.release(admitted)

            return gated

        return rewrap(handler, unary, streaming)
