"""A server span per call of any door (health checks excepted), with the caller's trace context
as parent; added only when tracing is on."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from lstm_server.transport.calls import GRPC, Call, Method, Policy


class RpcTracer(Protocol):
    """What the transport asks of tracing (``lstm_server.tracing.Tracing``)."""

    def server_span(
        self, name: str, metadata: Any, attributes: dict[str, Any]
    ) -> AbstractContextManager[Any]: ...

    def finish(self, span: Any, attributes: dict[str, Any], failed: str | None) -> None: ...

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[None]: ...


def span_attributes(method: Method) -> dict[str, Any]:
    """The semantic conventions' attributes of a call to ``method`` (RPC or HTTP server)."""
    if method.protocol == GRPC:
        return {"rpc.system": "grpc", "rpc.service": method.service, "rpc.method": method.name}
    verb, _, route = method.display.partition(" ")
    return {"http.request.method": verb, "http.route": route}


class TracingPolicy(Policy):
    def __init__(self, tracing: RpcTracer) -> None:
        self._tracing = tracing

    def applies_to(self, method: Method) -> bool:
        return not method.health

    def enter(self, call: Call) -> tuple[AbstractContextManager[Any], Any]:
        method = call.method
        scope = self._tracing.server_span(method.display, call.metadata(), span_attributes(method))
        return scope, scope.__enter__()

    def exit(self, call: Call, entered: tuple[AbstractContextManager[Any], Any]) -> None:
        scope, span = entered
        status = call.status
        if call.method.protocol == GRPC:
            attributes: dict[str, Any] = {"rpc.grpc.status_code": status.code}
        else:
            attributes = {"http.response.status_code": call.http_status}
        if status.reason:
            attributes["lstm.error.reason"] = status.reason
        self._tracing.finish(span, attributes, None if status.code == "OK" else status.code)
        scope.__exit__(None, None, None)
