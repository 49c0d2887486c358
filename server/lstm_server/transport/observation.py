"""Observation of every RPC: start, end with its code and latency, and each message, labelled as
the gRPC Prometheus interceptors label them. Metrics implement the observer; nothing here knows
Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import grpc
from grpc.aio import ServicerContext as Context

from lstm_server.core.errors import ServingError
from lstm_server.transport.errors import status_code
from lstm_server.transport.handlers import (
    Policy,
    Streaming,
    Unary,
    client_streams,
    responses,
    rewrap,
)

Labels = tuple[str, str, str]


class RpcObserver(Protocol):
    """Told of every RPC's start, end and messages (``lstm_server.metrics.Metrics``)."""

    def rpc_started(self, labels: Labels) -> None: ...

    def rpc_handled(self, labels: Labels, code: str, seconds: float) -> None: ...

    def message_received(self, labels: Labels) -> None: ...

    def message_sent(self, labels: Labels) -> None: ...


class StepObserver(Protocol):
    """Told of every session step, unary or on a stream, with its status code (a step refused
    in-band on a stream has its own code while the stream goes on)."""

    def step_done(self, method: str, seconds: float, code: str) -> None: ...


@contextlib.contextmanager
def timed_step(observer: StepObserver | None, method: str) -> Iterator[None]:
    """Report the time and code of the session step run inside (to ``observer``, if any)."""
    began = time.perf_counter()
    code = "OK"
    try:
        yield
    except ServingError as error:
        code = status_code(error).name
        raise
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except Exception:
        code = "INTERNAL"
        raise
    finally:
        if observer is not None:
            observer.step_done(method, time.perf_counter() - began, code)


def final_code(context: Context, error: BaseException | None) -> str:
    if error is None:
        return grpc.StatusCode.OK.name
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode.UNKNOWN.name


class ObservingPolicy(Policy):
    """Reports every RPC (all services) to an ``RpcObserver``: started, handled with its code and
    latency, and each message received and sent, labelled as the gRPC Prometheus interceptors do."""

    def __init__(self, observer: RpcObserver) -> None:
        self._observer = observer

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        observer = self._observer
        streams_in = client_streams(handler)

        async def counted(requests: AsyncIterator[Any], labels: Labels) -> AsyncIterator[Any]:
            async for request in requests:
                observer.message_received(labels)
                yield request

        @contextlib.contextmanager
        def call(request: Any, context: Context, kind: str) -> Iterator[tuple[Labels, Any]]:
            """Reports the start, the request messages and, on the way out, the end of a call."""
            labels = (kind, service, name)
            observer.rpc_started(labels)
            if streams_in:
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
                code = final_code(context, error)
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
                    async for response in responses(behavior, request, context):
                        observer.message_sent(labels)
                        yield response

            return observed

        return rewrap(handler, unary, streaming)
