"""Server interceptors: error mapping, authentication, a concurrency cap, and observation."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import grpc
from grpc.aio import ServicerContext as Context
from grpc_status import rpc_status

from lstm_server.core.errors import InvalidInput, LimitExceeded, ServingError
from lstm_server.transport import auth
from lstm_server.transport.errors import internal_status
from lstm_server.transport.errors import rpc_status as domain_status

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/lstm.v1.LstmService/"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


async def _responses(
    behavior: Callable[..., Any], request: Any, context: Context
) -> AsyncIterator[Any]:
    """A streaming behaviour's responses, whether it yields them or writes them itself."""
    result = behavior(request, context)
    if inspect.isasyncgen(result):
        async for response in result:
            yield response
    else:
        await result


class Malformed:
    """A request whose bytes did not parse; the behaviour wrapper turns it into INVALID_ARGUMENT."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns ``Malformed`` instead of raising (gRPC would say INTERNAL)."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:
            return Malformed(error)

    return parse


def _checked(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidInput.single("request", f"is not a valid message: {request.error}")
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request)


def _rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Unary, str], Unary],
    streaming: Callable[[Streaming, str], Streaming],
    *,
    tolerant: bool = False,
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped by ``unary`` or ``streaming``."""
    codec = {
        "request_deserializer": (
            _tolerant(handler.request_deserializer) if tolerant else handler.request_deserializer
        ),
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


def _request_checker(handler: grpc.RpcMethodHandler) -> Callable[[Any], Any]:
    client_streams = bool(handler.stream_unary or handler.stream_stream)
    return _checked_stream if client_streams else _checked


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handler of each method it applies to, once: the wrapped handler is kept per
    method, since building closures and handlers on every call costs more than the call's work."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def applies_to(self, method: str) -> bool:
        return True

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.applies_to(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self.wrap(handler, method))
        return cached[1]


class ErrorMappingInterceptor(_WrappingInterceptor):
    """Turns domain errors into their status (with details) and anything else into INTERNAL,
    for every method of the service, so no servicer method maps errors itself. Request bytes that
    do not parse get INVALID_ARGUMENT, never INTERNAL."""

    def applies_to(self, method: str) -> bool:
        return method.startswith(SERVICE_PREFIX)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        check = _request_checker(handler)

        async def abort(context: Context, error: Exception) -> None:
            if isinstance(error, ServingError):
                await context.abort_with_status(rpc_status.to_status(domain_status(error)))
            log.error("unexpected error in %s", method, exc_info=error)
            await context.abort_with_status(rpc_status.to_status(internal_status()))

        def unary(behavior: Unary, _: str) -> Unary:
            async def mapped(request: Any, context: Context) -> Any:
                try:
                    return await behavior(check(request), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort(context, error)

            return mapped

        def streaming(behavior: Streaming, _: str) -> Streaming:
            async def mapped(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    async for response in _responses(behavior, check(request), context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort(context, error)

            return mapped

        return _rewrap(handler, unary, streaming, tolerant=True)


class _Gate(_WrappingInterceptor):
    """Runs ``admit`` before a call of the service (it may abort it) and ``release`` after."""

    def applies_to(self, method: str) -> bool:
        return method.startswith(SERVICE_PREFIX)

    async def admit(self, context: Context) -> None:
        raise NotImplementedError

    def release(self) -> None:
        return None

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        gate = self

        def unary(behavior: Unary, _: str) -> Unary:
            async def gated(request: Any, context: Context) -> Any:
                await gate.admit(context)
                try:
                    return await behavior(request, context)
                finally:
                    gate.release()

            return gated

        def streaming(behavior: Streaming, _: str) -> Streaming:
            async def gated(request: Any, context: Context) -> AsyncIterator[Any]:
                await gate.admit(context)
                try:
                    async for response in _responses(behavior, request, context):
                        yield response
                finally:
                    gate.release()

            return gated

        return _rewrap(handler, unary, streaming)


class ConcurrencyLimitInterceptor(_Gate):
    """Refuses calls of the service beyond ``limit`` in flight with RESOURCE_EXHAUSTED at once,
    instead of queueing without bound. Health checks are not counted, so they still answer."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.in_flight = 0

    async def admit(self, context: Context) -> None:
        if self.in_flight >= self.limit:
            error = LimitExceeded(f"the server is at its limit of {self.limit} concurrent calls")
            await context.abort_with_status(rpc_status.to_status(domain_status(error)))
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1


class AuthInterceptor(_Gate):
    """Requires ``authorization: Bearer <token>`` on every call but health checks, and makes the
    token's principal the call's ``auth.PRINCIPAL``. Tokens are never logged."""

    def __init__(self, tokens: list[tuple[bytes, str]]) -> None:
        super().__init__()
        self._tokens = tokens

    def applies_to(self, method: str) -> bool:
        return not method.startswith(HEALTH_PREFIX)

    async def admit(self, context: Context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        name = auth.authenticate(metadata.get("authorization"), self._tokens)
        if name is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid 'authorization: Bearer <token>' is required",
            )
        auth.PRINCIPAL.set(name or "")


Labels = tuple[str, str, str]


class RpcObserver(Protocol):
    """Told of every RPC's start, end and messages (``lstm_server.metrics.Metrics``)."""

    def rpc_started(self, labels: Labels) -> None: ...

    def rpc_handled(self, labels: Labels, code: str, seconds: float) -> None: ...

    def message_received(self, labels: Labels) -> None: ...

    def message_sent(self, labels: Labels) -> None: ...


def _final_code(context: Context, error: BaseException | None) -> str:
    if error is None:
        return grpc.StatusCode.OK.name
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode.UNKNOWN.name


class ObservingInterceptor(_WrappingInterceptor):
    """Reports every RPC (all services) to an ``RpcObserver``: started, handled with its code and
    latency, and each message received and sent, labelled as the gRPC Prometheus interceptors do."""

    def __init__(self, observer: RpcObserver) -> None:
        super().__init__()
        self._observer = observer

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        observer = self._observer
        client_streams = bool(handler.stream_unary or handler.stream_stream)

        async def counted(requests: AsyncIterator[Any], labels: Labels) -> AsyncIterator[Any]:
            async for request in requests:
                observer.message_received(labels)
                yield request

        @contextlib.contextmanager
        def call(request: Any, context: Context, kind: str) -> Iterator[tuple[Labels, Any]]:
            """Reports the start, the request messages and, on the way out, the end of a call."""
            labels = (kind, service, name)
            observer.rpc_started(labels)
            if client_streams:
                request = counted(request, labels)
            else:
                observer.message_received(labels)
            began = time.perf_counter()
            error: BaseException | None = None
            try:
                yield labels, request
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = _final_code(context, error)
                observer.rpc_handled(labels, code, time.perf_counter() - began)

        def unary(behavior: Unary, kind: str) -> Unary:
            async def observed(request: Any, context: Context) -> Any:
                with call(request, context, kind) as (labels, request):
                    response = await behavior(request, context)
                    observer.message_sent(labels)
                    return response

            return observed

        def streaming(behavior: Streaming, kind: str) -> Streaming:
            async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
                with call(request, context, kind) as (labels, request):
                    async for response in _responses(behavior, request, context):
                        observer.message_sent(labels)
                        yield response

            return observed

        return _rewrap(handler, unary, streaming)
