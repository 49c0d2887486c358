"""Prometheus metrics, built on an injected registry so that each server (and test) has its own.

Names and labels of the gRPC metrics are those of the Go and Python gRPC Prometheus interceptors,
so existing dashboards work. Nothing depends on this module: it observes every door (as a
``CallObserver``, a ``MessageObserver`` and a ``StepObserver``), the scheduler
(``observe_batch``), sessions (``SessionObserver``), the session store (``StoreObserver``) and
readiness.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.core import CounterMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from lstm_server.core.registry import ServedModel
from lstm_server.core.scheduler import BatchObservation
from lstm_server.core.types import ModelInfo

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# Per model version; a version's series go when it unloads, so they are bounded by what is loaded.
MODEL_LABELS = ("model", "model_version")
# Latency buckets from 0.1 ms: loopback calls here take well under a millisecond.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STORE_OPERATIONS = (
    "open", "close", "create", "get", "compare_and_set", "delete", "reap_expired", "count", "ping",
)  # fmt: skip


class ObservedCall(Protocol):
    """What metrics read of a call of any door (``lstm_server.transport.calls.Call``)."""

    method: Any  # protocol, service, name and kind
    status: Any  # code and reason
    http_status: int

    def seconds(self) -> float: ...


class Metrics:
    """Every collector of the service, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, *, process_collectors: bool = True) -> None:
        self.registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = registry
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server.", GRPC_LABELS, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            (*GRPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            GRPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received",
            "Stream messages received by the server.",
            GRPC_LABELS,
            registry=r,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent", "Stream messages sent by the server.", GRPC_LABELS, registry=r
        )
        self.sequences = Counter(
            "lstm_sequences",
            "Sequences (and session steps) run, by model version.",
            MODEL_LABELS,
            registry=r,
        )
        self.timesteps = Counter(
            "lstm_timesteps", "Timesteps run, by model version.", MODEL_LABELS, registry=r
        )
        self.inference_seconds = Histogram(
            "lstm_inference_seconds",
            "Time of one model call, by model version.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "lstm_queue_seconds",
            "Time work waited for the model, by model version.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "lstm_batch_size",
            "Rows in one model call, by model version.",
            MODEL_LABELS,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "lstm_model_info",
            "Each loaded model version (value 1): its name, version number, weights digest "
            "(version), units and features.",
            ("model", "model_version", "version", "units", "features"),
            registry=r,
        )
        self.model_versions_loaded = Gauge(
            "lstm_model_versions_loaded", "Model versions loaded (serving or draining).", registry=r
        )
        self.model_loads = Counter(
            "lstm_model_loads",
            "Loads of a model version, by model and outcome (loaded, failed).",
            ("model", "outcome"),
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "lstm_model_load_seconds",
            "Time to load and warm a model version, by model.",
            ("model",),
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=r,
        )
        self.sessions_active = Gauge(
            "lstm_sessions_active",
            "Live sessions this replica created or stepped within their TTL (sum over replicas "
            "may count a session stepped through several of them twice).",
            registry=r,
        )
        self.store_sessions = Gauge(
            "lstm_store_sessions",
            "Live sessions in the session store: store-wide, the same on every replica sharing "
            "it (take max, never sum, over replicas).",
            registry=r,
        )
        self.session_step_seconds = Histogram(
            "lstm_session_step_seconds",
            "Time of one session step, unary or on a stream, applied or refused.",
            ("grpc_method",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.session_steps_refused = Counter(
            "lstm_session_steps_refused",
            "Session steps refused (on a stream: in-band, the stream going on), by status code.",
            ("grpc_method", "code"),
            registry=r,
        )
        self.in_flight = Gauge(
            "lstm_rpcs_in_flight", "RPCs in progress on the server.", GRPC_LABELS, registry=r
        )
        self.store_seconds = Histogram(
            "lstm_store_operation_seconds",
            "Time of one session store operation.",
            ("operation",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "lstm_store_errors",
            "Session store operations that failed (unreachable, timed out).",
            ("operation",),
            registry=r,
        )
        self.store_up = Gauge(
            "lstm_store_up", "1 while the session store answers the readiness probe.", registry=r
        )
        self.http_requests = Counter(
            "lstm_http_requests",
            "HTTP requests (Open Inference Protocol) by route and status.",
            ("handler", "code"),
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "lstm_http_request_seconds",
            "Latency of HTTP requests (Open Inference Protocol) by route.",
            ("handler",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.refused_calls = Counter(
            "lstm_refused",
            "Calls of every door (and requests refused in-band on streams) that ended with an "
            "error, by protocol (grpc, http) and the error's reason (its ErrorInfo reason).",
            ("protocol", "reason"),
            registry=r,
        )
        self.session_memory = Gauge(
            "lstm_session_memory_bytes",
            "Bytes the memory store holds for sessions (states and replay data), counted against "
            '--session-memory-budget (lstm_server_limit{limit="session_memory_budget"}).',
            registry=r,
        )
        self.ready = Gauge("lstm_ready", "1 while this replica reports SERVING.", registry=r)
        self.limit = Gauge(
            "lstm_server_limit",
            "A limit the server enforces (0: none), by its flag's name.",
            ("limit",),
            registry=r,
        )
        self._touched: dict[str, float] = {}
        self.sessions_created = Counter(
            "lstm_sessions_created", "Sessions created, by model version.", MODEL_LABELS, registry=r
        )
        self.sessions_ended = Counter(
            "lstm_sessions_ended",
            "Sessions ended, by reason (closed, expired).",
            ("reason",),
            registry=r,
        )
        self.session_steps = Counter(
            "lstm_session_steps",
            "Session steps applied, by model version.",
            MODEL_LABELS,
            registry=r,
        )
        self.session_step_retries = Counter(
            "lstm_session_step_retries",
            "Retries of an applied session step, answered without applying it again, by model "
            "version.",
            MODEL_LABELS,
            registry=r,
        )
        self._per_version = (
            self.sequences,
            self.timesteps,
            self.inference_seconds,
            self.queue_seconds,
            self.batch_size,
            self.sessions_created,
            self.session_steps,
            self.session_step_retries,
        )
        for reason in ("closed", "expired"):
            self.sessions_ended.labels(reason)
        for operation in STORE_OPERATIONS:  # so that no error yet reads as 0, not as missing
            self.store_errors.labels(operation)
        if process_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    # The model

    @staticmethod
    def _model_labels(info: ModelInfo) -> tuple[str, ...]:
        return (
            info.name,
            str(info.version_number),
            info.version,
            str(info.units),
            str(info.input_features),
        )

    def model_loaded(self, info: ModelInfo, seconds: float) -> None:
        self.model_info.labels(*self._model_labels(info)).set(1)
        for metric in self._per_version:  # its series start at 0, not missing
            self._child(metric, _version(info))
        self.model_versions_loaded.inc()
        self.model_loads.labels(info.name, "loaded").inc()
        self.model_load_seconds.labels(info.name).observe(seconds)

    def model_load_failed(self, name: str) -> None:
        self.model_loads.labels(name, "failed").inc()

    def model_unloaded(self, info: ModelInfo) -> None:
        with contextlib.suppress(KeyError):
            self.model_info.remove(*self._model_labels(info))
        labels = _version(info)
        for metric in self._per_version:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)
            self._children.pop((id(metric), labels), None)
        self.model_versions_loaded.dec()

    def observe_batch(self, info: ModelInfo, batch: BatchObservation) -> None:
        labels = _version(info)
        self._child(self.sequences, labels).inc(batch.sequences)
        self._child(self.timesteps, labels).inc(batch.timesteps)
        self._child(self.batch_size, labels).observe(batch.rows)
        self._child(self.inference_seconds, labels).observe(batch.inference_seconds)
        queue = self._child(self.queue_seconds, labels)
        for waited in batch.queue_seconds:
            queue.observe(waited)

    def watch_session_memory(self, held: Callable[[], int]) -> None:
        """Export the bytes the memory store holds, read at each scrape."""
        self.session_memory.set_function(held)

    def watch_models(self, loaded: Callable[[], Iterable[ServedModel]]) -> None:
        """Export each loaded version's statistics (requests, failures, time queued and in the
        model), read from the registry at each scrape."""
        self.registry.register(_ModelStatisticsCollector(loaded))

    # Sessions (SessionObserver, and the store's on_end)

    def session_created(self, session_id: str, expires_at: float, model: ModelInfo) -> None:
        self._child(self.sessions_created, _version(model)).inc()
        self._touch(session_id, expires_at)

    def session_ended(self, reason: str) -> None:
        self.sessions_ended.labels(reason).inc()

    def session_stepped(
        self, session_id: str, expires_at: float, model: ModelInfo, *, replayed: bool
    ) -> None:
        counter = self.session_step_retries if replayed else self.session_steps
        self._child(counter, _version(model)).inc()
        self._touch(session_id, expires_at)

    def session_closed(self, session_id: str) -> None:
        self._touched.pop(session_id, None)
        self.sessions_active.set(len(self._touched))

    def sessions_counted(self, live: int) -> None:
        self.store_sessions.set(live)
        now = time.time()
        self._touched = {sid: until for sid, until in self._touched.items() if until > now}
        self.sessions_active.set(len(self._touched))

    def _touch(self, session_id: str, expires_at: float) -> None:
        self._touched[session_id] = expires_at
        self.sessions_active.set(len(self._touched))

    def set_limits(self, limits: dict[str, int]) -> None:
        for name, value in limits.items():
            self.limit.labels(name).set(value)

    # Session steps (StepObserver) and the store (StoreObserver)

    def step_done(self, method: str, seconds: float, code: str) -> None:
        self._child(self.session_step_seconds, (method,)).observe(seconds)
        if code != "OK":
            self._child(self.session_steps_refused, (method, code)).inc()

    def store_operation(self, operation: str, seconds: float, *, failed: bool) -> None:
        self._child(self.store_seconds, (operation,)).observe(seconds)
        if failed:
            self._child(self.store_errors, (operation,)).inc()

    def readiness_changed(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def store_checked(self, up: bool) -> None:
        self.store_up.set(1 if up else 0)

    # Calls of every door (CallObserver) and gRPC messages (MessageObserver)

    # Labelled children are looked up once per method (and code), not on every call: the set of
    # methods and codes is small and fixed, and the lookup costs more than the increment.

    def _child(self, metric: Counter | Histogram | Gauge, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def call_started(self, call: ObservedCall) -> None:
        method = call.method
        if method.protocol == "grpc":
            labels = (method.kind, method.service, method.name)
            self._child(self.started, labels).inc()
            self._child(self.in_flight, labels).inc()

    def call_ended(self, call: ObservedCall) -> None:
        method, status = call.method, call.status
        seconds = call.seconds()
        if method.protocol == "grpc":
            labels = (method.kind, method.service, method.name)
            self._child(self.handled, (*labels, status.code)).inc()
            self._child(self.handling_seconds, labels).observe(seconds)
            self._child(self.in_flight, labels).dec()
        else:
            self._child(self.http_requests, (method.name, str(call.http_status))).inc()
            self._child(self.http_request_seconds, (method.name,)).observe(seconds)
        if status.reason:
            self._child(self.refused_calls, (method.protocol, status.reason)).inc()

    def refused(self, protocol: str, reason: str) -> None:
        self._child(self.refused_calls, (protocol, reason)).inc()

    def message_received(self, labels: tuple[str, str, str]) -> None:
        self._child(self.msg_received, labels).inc()

    def message_sent(self, labels: tuple[str, str, str]) -> None:
        self._child(self.msg_sent, labels).inc()


def _version(info: ModelInfo) -> tuple[str, str]:
    return info.name, str(info.version_number)


class _ModelStatisticsCollector(Collector):
    """Each loaded version's ``ModelStatistics`` as counters, as Triton exports its own
    (``nv_inference_request_success`` and the like): success and failure counts and times."""

    def __init__(self, loaded: Callable[[], Iterable[ServedModel]]) -> None:
        self._loaded = loaded

    def collect(self) -> Iterator[Metric]:
        labels = list(MODEL_LABELS)
        requests = CounterMetricFamily(
            "lstm_model_requests",
            "Inference requests (predictions and session steps) by model version and outcome "
            "(success, failure).",
            labels=[*labels, "outcome"],
        )
        request_seconds = CounterMetricFamily(
            "lstm_model_request_seconds",
            "Cumulative time of inference requests, by model version and outcome.",
            labels=[*labels, "outcome"],
        )
        queue = CounterMetricFamily(
            "lstm_model_queue_seconds",
            "Cumulative time requests waited for the model, by model version.",
            labels=labels,
        )
        compute = CounterMetricFamily(
            "lstm_model_compute_seconds",
            "Cumulative time requests spent in the model, by model version.",
            labels=labels,
        )
        executions = CounterMetricFamily(
            "lstm_model_executions", "Model calls, by model version.", labels=labels
        )
        for served in self._loaded():
            version = list(_version(served.info))
            stats = served.statistics
            requests.add_metric([*version, "success"], stats.success_count)
            requests.add_metric([*version, "failure"], stats.failure_count)
            request_seconds.add_metric([*version, "success"], stats.success_seconds)
            request_seconds.add_metric([*version, "failure"], stats.failure_seconds)
            queue.add_metric(version, stats.queue_seconds)
            compute.add_metric(version, stats.compute_seconds)
            executions.add_metric(version, stats.execution_count)
        yield from (requests, request_seconds, queue, compute, executions)
