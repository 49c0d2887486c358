"""A server span per RPC (health checks excepted), with the caller's trace context as parent;
added only when tracing is on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import grpc
from grpc.aio import ServicerContext as Context

from lstm_server.transport.handlers import (
    HEALTH_PREFIX,
    Policy,
    around,
)
from lstm_server.transport.observation import final_code


class RpcTracer(Protocol):
    """What the transport asks of tracing (``lstm_server.tracing.Tracing``)."""

    def server_span(self, rpc: str, metadata: Any) -> AbstractContextManager[Any]: ...

    def finish(self, span: Any, code: str) -> None: ...

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[None]: ...


class TracingPolicy(Policy):
    def __init__(self, tracing: RpcTracer) -> None:
        self._tracing = tracing

    def applies_to(self, method: str) -> bool:
        return not method.startswith(HEALTH_PREFIX)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        rpc = method.lstrip("/")
        tracing = self._tracing

        @contextlib.contextmanager
        def traced(context: Context) -> Iterator[None]:
            with tracing.server_span(rpc, context.invocation_metadata()) as span:
                error: BaseException | None = None
                try:
                    yield
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    tracing.finish(span, final_code(context, error))

        return around(handler, traced)
