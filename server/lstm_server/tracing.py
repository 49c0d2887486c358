"""OpenTelemetry traces, an optional extra (``lstm-serving[otel]``).

On when the OpenTelemetry SDK and its OTLP exporter are installed and the standard ``OTEL_*``
variables ask for traces (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
set, ``OTEL_TRACES_EXPORTER`` not ``none``); the exporter and the sampler read the rest of them.
Off, nothing of it runs: the server adds no tracing policy and passes no tracer.

Spans: one server span per call, gRPC or HTTP (health checks have none), with the caller's W3C
trace context as its parent; under it one per step of a session stream; the time a request
waited for the model and the model call it was part of (with the batch's size, and links to the
other requests batched with it); and each session store operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # the extra is not installed
    trace = None  # type: ignore[assignment]


def _configured() -> bool:
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracing:
    """The service's spans, from one tracer provider."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("lstm_server")

    @classmethod
    def from_environment(cls) -> Tracing | None:
        """Tracing as the ``OTEL_*`` variables configure it, or None (off, free of cost)."""
        if not _configured():
            return None
        if trace is None:
            log.warning("OTEL_* asks for traces but lstm-serving[otel] is not installed")
            return None
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "lstm-serving"}
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("tracing to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                 or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))  # fmt: skip
        return cls(provider)

    @contextlib.contextmanager
    def server_span(self, name: str, metadata: Any, attributes: dict[str, Any]) -> Iterator[Any]:
        """The span of one call (gRPC or HTTP), current while it is served; its parent is the
        caller's."""
        carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
        parent = propagate.extract(carrier)
        span = self._tracer.start_span(name, parent, kind=SpanKind.SERVER, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            with contextlib.suppress(ValueError):  # a stream closed from elsewhere
                otel_context.detach(token)
            _end_soon(span)

    @staticmethod
    def current_trace_id() -> str | None:
        """The current span's trace id (32 hex digits), for log lines; None outside spans."""
        found = trace.get_current_span().get_span_context()
        return format(found.trace_id, "032x") if found.is_valid else None

    @staticmethod
    def finish(span: Any, attributes: dict[str, Any], failed: str | None) -> None:
        """Give the span how its call ended; ``failed``: the error's code, None if it succeeded."""
        span.set_attributes(attributes)
        if failed is not None:
            span.set_status(Status(StatusCode.ERROR, failed))

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """A child of the current span (a step of a stream)."""
        with self._tracer.start_as_current_span(name, attributes=attributes):
            yield

    @staticmethod
    def model_used(name: str, version: int) -> None:
        """Tag the current span with the model version serving it (the registry's ModelTracer)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({"lstm.model.name": name, "lstm.model.version": version})

    # The scheduler's BatchTracer

    def capture(self) -> Any:
        """The caller's context, taken when its request joins the queue."""
        return otel_context.get_current()

    def batch_ran(
        self, callers: Sequence[Any], queued_at: Sequence[float], started: float, ended: float,
        rows: int,
    ) -> None:  # fmt: skip
        """For each request of a batch: its wait in the queue and the model call, linked to the
        other requests of the batch."""
        spans = [trace.get_current_span(c).get_span_context() for c in callers]
        for index, (caller, queued) in enumerate(zip(callers, queued_at, strict=True)):
            queue = self._tracer.start_span("lstm.queue", caller, start_time=_ns(queued))
            queue.end(end_time=_ns(started))
            links = [Link(s) for i, s in enumerate(spans) if i != index and s.is_valid]
            model = self._tracer.start_span(
                "lstm.model",
                caller,
                start_time=_ns(started),
                links=links,
                attributes={"lstm.batch.rows": rows, "lstm.batch.requests": len(callers)},
            )
            model.end(end_time=_ns(ended))

    # The session store's StoreObserver

    def store_operation(self, operation: str, seconds: float, *, failed: bool) -> None:
        """A span for an operation made while serving a call (not the reaper's, the probe's)."""
        if not trace.get_current_span().get_span_context().is_valid:
            return
        ended = time.time()
        span = self._tracer.start_span(
            f"lstm.store.{operation}",
            start_time=_ns(ended - seconds),
            attributes={"lstm.store.operation": operation},
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, "store unavailable"))
        span.end(end_time=_ns(ended))

    def shutdown(self) -> None:
        """Send what is buffered, then stop."""
        self.provider.shutdown()


def _end_soon(span: Any) -> None:
    """End ``span`` now, but hand it to the span processor on the event loop's next turn, once
    the reply is on its way: a span's bookkeeping (its copy, the export queue) is then off the
    call's path. Outside an event loop, at once."""
    ended = time.time_ns()
    try:
        asyncio.get_running_loop().call_soon(span.end, ended)
    except RuntimeError:
        span.end(ended)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
