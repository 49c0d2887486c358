"""The gRPC door: every method of every service (the model's, health, reflection) runs inside
the one chain of policies (``calls.py``), its errors mapped to statuses by the one table, its
messages counted. Nothing here decides anything: it makes the ``Call`` of each RPC, enters and
exits the chain, and turns the call's end into a gRPC status.

The server applies the chain when it registers its services (``PolicyRegistrar``), once per
method, rather than as gRPC interceptors: gRPC runs an interceptor chain as one coroutine per
interceptor on every call, before it even looks the method up.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc.aio import ServicerContext as Context

from lstm_server.core import errors
from lstm_server.transport.calls import Call, Chain, Method, MethodChain
from lstm_server.transport.errors import abort
from lstm_server.transport.status import OK, Status

log = logging.getLogger(__name__)

Unary = Callable[[Any, Context], Any]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]
Labels = tuple[str, str, str]


class MessageObserver(Protocol):
    """Told of every message of every RPC, labelled as the gRPC Prometheus interceptors label
    them (``lstm_server.metrics.Metrics``)."""

    def message_received(self, labels: Labels) -> None: ...

    def message_sent(self, labels: Labels) -> None: ...


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


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    """The call's kind as the gRPC Prometheus labels name it."""
    if handler.unary_unary:
        return "unary"
    if handler.unary_stream:
        return "server_stream"
    if handler.stream_unary:
        return "client_stream"
    return "bidi_stream"


class Malformed:
    """A request whose bytes did not parse; the door turns it into INVALID_ARGUMENT."""

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
        raise errors.InvalidInput.single("request", f"is not a valid message: {request.error}")
    return request


def _ended_by_abort(call: Call, context: Context) -> None:
    """A call a behaviour aborted itself (health's NOT_FOUND, say): the code it set."""
    code = context.code()
    failed = isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK
    call.status = Status(code.name) if failed else OK


async def _failed(call: Call, context: Context, error: Exception) -> NoReturn:
    call.end(error)
    if not isinstance(error, errors.ServingError):
        log.error("unexpected error in %s", call.method.display, exc_info=error)
    await abort(context, error)


def served(
    handler: grpc.RpcMethodHandler,
    path: str,
    chain: Chain,
    messages: MessageObserver | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` inside the chain's policies for its method, with its errors mapped and its
    messages counted. Request bytes that do not parse get INVALID_ARGUMENT, never INTERNAL."""
    kind = kind_of(handler)
    method = Method.grpc(path, kind)
    policies: MethodChain = chain.of(method)
    labels = (kind, method.service, method.name)
    streams_in = client_streams(handler)

    def started(context: Context) -> tuple[Call, list[Any]]:
        call = Call(method, context.invocation_metadata, context.peer)
        return call, policies.enter(call)

    async def requests_of(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if messages is not None:
                messages.message_received(labels)
            yield _checked(request)

    def request_of(request: Any) -> Any:
        if streams_in:
            return requests_of(request)
        if messages is not None:
            messages.message_received(labels)
        return _checked(request)

    def unary(behavior: Unary) -> Unary:
        async def call_unary(request: Any, context: Context) -> Any:
            try:
                call, entered = started(context)
            except errors.ServingError as error:
                await abort(context, error)
            try:
                response = await behavior(request_of(request), context)
            except grpc.aio.AbortError:
                _ended_by_abort(call, context)
                raise
            except Exception as error:
                await _failed(call, context, error)
            except BaseException as error:  # cancelled
                call.end(error)
                raise
            finally:
                policies.exit(call, entered)
            if messages is not None:
                messages.message_sent(labels)
            return response

        return call_unary

    def streaming(behavior: Streaming) -> Streaming:
        async def call_streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                call, entered = started(context)
            except errors.ServingError as error:
                await abort(context, error)
            try:
                async for response in responses(behavior, request_of(request), context):
                    if messages is not None:
                        messages.message_sent(labels)
                    yield response
            except grpc.aio.AbortError:
                _ended_by_abort(call, context)
                raise
            except Exception as error:
                await _failed(call, context, error)
            except BaseException as error:  # cancelled, or the stream closed
                call.end(error)
                raise
            finally:
                policies.exit(call, entered)

        return call_streaming

    codec = {
        "request_deserializer": _tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **codec)


class _ServedHandler(grpc.GenericRpcHandler):
    """A generic handler whose methods are served inside the chain, each wrapped once."""

    def __init__(
        self, inner: grpc.GenericRpcHandler, chain: Chain, messages: MessageObserver | None
    ) -> None:
        self._inner = inner
        self._chain = chain
        self._messages = messages
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        path = handler_call_details.method
        cached = self._wrapped.get(path)
        if cached is None or cached[0] is not handler:
            wrapped = served(handler, path, self._chain, self._messages)
            cached = self._wrapped[path] = (handler, wrapped)
        return cached[1]


class PolicyRegistrar:
    """Registers services on ``server`` with every method inside ``chain``. It stands in for the
    server where generated ``add_*_to_server`` functions take one, so that services registered
    by libraries (health, reflection) run inside the chain too."""

    def __init__(
        self, server: grpc.aio.Server, chain: Chain, messages: MessageObserver | None = None
    ) -> None:
        self._server = server
        self._chain = chain
        self._messages = messages

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_ServedHandler(h, self._chain, self._messages) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service,
            {
                name: served(handler, f"/{service}/{name}", self._chain, self._messages)
                for name, handler in handlers.items()
            },
        )


_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def method_handlers(
    service: ServiceDescriptor,
    servicer: object,
    message_class: Callable[[Any], Any],
    raw: Collection[str] = (),
) -> grpc.GenericRpcHandler:
    """A handler for every method of ``service``, made from its descriptor as the generated code
    makes them: ``servicer``'s method of the same name, messages of ``message_class(descriptor)``;
    the methods named in ``raw`` take and return bytes."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        make = _MAKERS[(method.client_streaming, method.server_streaming)]
        bytes_only = method.name in raw
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=None
            if bytes_only
            else message_class(method.input_type).FromString,
            response_serializer=None
            if bytes_only
            else message_class(method.output_type).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
