"""The access log: one line per call of any door (method, status code, the error's reason,
duration, peer, principal, trace id), and the call's trace id in every log line written while
it is served.

The trace id is the caller's W3C ``traceparent`` one when the call carries it (the id a tracing
system shows), otherwise a new random one, so that a call's lines can always be found together.
Tokens and input values are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from typing import Any

from lstm_server.transport.calls import HTTP, Call, Method, Policy

log = logging.getLogger("lstm_server.access")
TRACE_ID: ContextVar[str] = ContextVar("trace_id", default="")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id_of(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The trace id of a call's ``traceparent`` (W3C trace context), or a new one."""
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            found = _TRACEPARENT.match(value.strip().lower())
            if found and found.group(1) != "0" * 32:
                return found.group(1)
    return secrets.token_hex(16)


class TraceIdFilter(logging.Filter):
    """Gives every record the ``trace_id`` of the call being served ("-" outside calls)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = TRACE_ID.get() or "-"
        return True


class AccessLogPolicy(Policy):
    """Logs one line per call (health checks excepted) when it ends, and sets its trace id for
    every line written while it is served: the trace's, when tracing is on (``current_trace``
    gives the current span's), else the caller's ``traceparent`` one, else a new one."""

    def __init__(
        self, current_trace: Callable[[], str | None] | None = None, *, lines: bool = True
    ) -> None:
        """``lines``: write the access line (about 0.09 ms a call on the tutorial model, measured
        here); without it, only the trace id of log lines is set."""
        self._current_trace = current_trace
        self._lines = lines

    def applies_to(self, method: Method) -> bool:
        return not method.health

    def enter(self, call: Call) -> tuple[Token[str], str]:
        traced = self._current_trace() if self._current_trace is not None else None
        token = TRACE_ID.set(traced or trace_id_of(call.metadata()))
        # Asked now: a call's context must not be asked after the call ended (cancelled).
        return token, call.peer() if self._lines else "-"

    def exit(self, call: Call, entered: tuple[Token[str], str]) -> None:
        token, peer = entered
        if self._lines:
            _access_line(call, peer)
        with contextlib.suppress(ValueError):  # a stream closed from elsewhere
            TRACE_ID.reset(token)


def _access_line(call: Call, peer: str) -> None:
    milliseconds = call.seconds() * 1e3
    method, status = call.method, call.status
    principal = call.principal or "-"
    reason = status.reason or "-"
    fields: dict[str, Any] = {
        "protocol": method.protocol,
        "rpc": method.display,
        "code": status.code,
        "reason": reason,
        "duration_ms": round(milliseconds, 3),
        "peer": peer,
        "principal": principal,
    }
    shown = status.code
    if method.protocol == HTTP:
        fields["http_status"] = call.http_status
        shown = f"{call.http_status} {status.code}"
    log.info(
        "%s %s %s %.2f ms peer=%s principal=%s",
        method.display,
        shown,
        reason,
        milliseconds,
        peer,
        principal,
        extra=fields,
    )
