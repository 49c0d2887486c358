"""Server interceptors: one maps errors for every RPC of the service, one observes every RPC."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from grpc.aio import ServicerContext as Context
from grpc_status import rpc_status

from lstm_server.core.errors import ServingError
from lstm_server.transport.errors import internal_status
from lstm_server.transport.errors import rpc_status as domain_status

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/lstm.v1.LstmService/"
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


def _rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Unary, str], Unary],
    streaming: Callable[[Streaming, str], Streaming],
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped by ``unary`` or ``streaming``."""
    codec = {
        "request_deserializer": handler.request_deserializer,
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


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into their status (with details) and anything else into INTERNAL,
    for every method of the service, so no servicer method maps errors itself."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler

        async def abort(context: Context, error: Exception) -> None:
            if isinstance(error, ServingError):
                await context.abort_with_status(rpc_status.to_status(domain_status(error)))
            log.error("unexpected error in %s", method, exc_info=error)
            await context.abort_with_status(rpc_status.to_status(internal_status()))

        def unary(behavior: Unary, _: str) -> Unary:
            async def mapped(request: Any, context: Context) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort(context, error)

            return mapped

        def streaming(behavior: Streaming, _: str) -> Streaming:
            async def mapped(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    async for response in _responses(behavior, request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort(context, error)

            return mapped

        return _rewrap(handler, unary, streaming)


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


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Reports every RPC (all services) to an ``RpcObserver``: started, handled with its code and
    latency, and each message received and sent, labelled as the gRPC Prometheus interceptors do."""

    def __init__(self, observer: RpcObserver) -> None:
        self._observer = observer

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, _, name = handler_call_details.method.lstrip("/").rpartition("/")
        observer = self._observer
        client_streams = bool(handler.stream_unary or handler.stream_stream)

        async def counted(requests: AsyncIterator[Any], labels: Labels) -> AsyncIterator[Any]:
            async for request in requests:
                observer.message_received(labels)
                yield request

        def begin(request: Any, kind: str) -> tuple[Labels, Any, float]:
            labels = (kind, service, name)
            observer.rpc_started(labels)
            if client_streams:
                request = counted(request, labels)
            else:
                observer.message_received(labels)
            return labels, request, time.perf_counter()

        def unary(behavior: Unary, kind: str) -> Unary:
            async def observed(request: Any, context: Context) -> Any:
                labels, request, began = begin(request, kind)
                error: BaseException | None = None
                try:
                    response = await behavior(request, context)
                    observer.message_sent(labels)
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    observer.rpc_handled(
                        labels, _final_code(context, error), time.perf_counter() - began
                    )

            return observed

        def streaming(behavior: Streaming, kind: str) -> Streaming:
            async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
                labels, request, began = begin(request, kind)
                error: BaseException | None = None
                try:
                    async for response in _responses(behavior, request, context):
                        observer.message_sent(labels)
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    observer.rpc_handled(
                        labels, _final_code(context, error), time.perf_counter() - began
                    )

            return observed

        return _rewrap(handler, unary, streaming)
