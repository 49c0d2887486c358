"""The composition root: builds runtime, core, store and transport, and owns start and stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from lstm_client.v1 import lstm_service_pb2
from prometheus_client import CollectorRegistry

from lstm_server.config import ConfigError, Settings, package_version
from lstm_server.core.inference import InferenceService
from lstm_server.core.registry import ControlMode, ModelLoader, ModelRegistry, SchedulerSettings
from lstm_server.core.repository import (
    DEFAULT_MODEL_NAME,
    DirectoryRepository,
    FixedRepository,
    ModelSource,
    Repository,
    RepositoryError,
)
from lstm_server.core.scheduler import Runtime
from lstm_server.core.sessions import SessionService
from lstm_server.core.store import SessionStore
from lstm_server.core.types import Limits
from lstm_server.metrics import Metrics
from lstm_server.process import (
    ensure_free,
    freeze_startup_objects,
    give_back_freed_memory,
    in_daemon_thread,
)
from lstm_server.runtime.options import RuntimeOptions
from lstm_server.sessions import open_store
from lstm_server.sessions.memory import MemorySessionStore
from lstm_server.sessions.observed import ObservedStore, StoreObserver
from lstm_server.tracing import Tracing
from lstm_server.transport.access_log import AccessLogPolicy
from lstm_server.transport.auth import AuthPolicy, load_tokens
from lstm_server.transport.calls import Chain, Policy
from lstm_server.transport.connections import ConnectionCaps, within_open_files
from lstm_server.transport.handlers import PolicyRegistrar
from lstm_server.transport.health import Readiness
from lstm_server.transport.http import OpsHttpServer
from lstm_server.transport.limits import (
    ConcurrencyLimitPolicy,
    HealthWatchLimitPolicy,
)
from lstm_server.transport.observation import ObservingPolicy
from lstm_server.transport.oip import grpc_servicer as oip_grpc
from lstm_server.transport.oip import messages as oip_messages
from lstm_server.transport.oip.model import OpenInference
from lstm_server.transport.oip.rest import RestServer, server_ssl_context
from lstm_server.transport.servicer import LstmServicer, Services, method_handlers, ready
from lstm_server.transport.traced import TracingPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE_NAME = lstm_service_pb2.DESCRIPTOR.services_by_name["LstmService"].full_name


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from --tls-cert/--tls-key; with --tls-client-ca, client certificates are required."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pair = (_read(settings.tls_key, "TLS key"), _read(settings.tls_cert, "TLS certificate"))
    client_ca = settings.tls_client_ca
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=None if client_ca is None else _read(client_ca, "client CA bundle"),
        require_client_auth=client_ca is not None,
    )


def _tokens(settings: Settings) -> list[tuple[bytes, str]] | None:
    if settings.auth_tokens_file is None:
        return None
    try:
        return load_tokens(settings.auth_tokens_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot use --auth-tokens-file: {exc}") from exc


def limits_of(settings: Settings, tokens: list[tuple[bytes, str]] | None) -> Limits:
    """The limits the server enforces: the settings', with the fair share of each
    per-principal cap left at 0 when tokens name two or more principals (``--fair-share``)."""
    limits = settings.limits
    if tokens is None or not settings.fair_share:
        return limits
    shared = limits.shared_by(len({name for _, name in tokens}))
    if shared != limits:
        log.info(
            "fair share of each principal: %d sessions, %d calls in flight, %d bytes of session "
            "memory (0: no cap)",
            shared.max_sessions_per_principal,
            shared.max_concurrent_rpcs_per_principal,
            shared.session_memory_per_principal,
        )
    return shared


def policies(
    settings: Settings,
    metrics: Metrics,
    tracing: Tracing | None = None,
    tokens: list[tuple[bytes, str]] | None = None,
    limits: Limits | None = None,
    concurrency: ConcurrencyLimitPolicy | None = None,
) -> Chain:
    """The one chain every door runs (gRPC services and HTTP routes alike), outermost first:
    trace, log and observe every call, cap health watches, authenticate, cap concurrency (one
    count for every door; ``concurrency``, if given, is the policy that counts, with or without
    caps). Resolved once per method; errors are mapped by the door, from the one table."""
    limits = limits or settings.limits
    chain: list[Policy] = []
    if tracing is not None:
        chain.append(TracingPolicy(tracing))
    # Always there: it gives log lines their call's trace id; the access line is optional.
    current_trace = tracing.current_trace_id if tracing is not None else None
    chain.append(AccessLogPolicy(current_trace, lines=settings.access_log))
    chain.append(ObservingPolicy(metrics))
    if settings.max_health_watches:
        chain.append(HealthWatchLimitPolicy(settings.max_health_watches))
    if tokens is not None:
        chain.append(AuthPolicy(tokens))
    if concurrency is not None:
        chain.append(concurrency)
    elif limits.max_concurrent_rpcs or limits.max_concurrent_rpcs_per_principal:
        chain.append(
            ConcurrencyLimitPolicy(
                limits.max_concurrent_rpcs, limits.max_concurrent_rpcs_per_principal
            )
        )
    return Chain(chain)


def load_runtime(options: RuntimeOptions, source: ModelSource | None = None) -> Runtime:
    """Load and warm a model version with the TensorFlow runtime (imported here: it takes
    seconds)."""
    from lstm_server.runtime.tf_runtime import load_runtime as load

    runtime = load(options, source)
    runtime.warm_up()
    return runtime


class TensorFlowLoader:
    """Loads model versions with the TensorFlow runtime, each on a thread that does not hold up
    an exit. A load while the server serves runs at the lowest CPU priority, so that the calls
    being served keep the cores they need (the README's "Model repository" has the figures)."""

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options

    async def load(self, source: ModelSource, *, background: bool = False) -> Runtime:
        niceness = 19 if background else 0
        return await in_daemon_thread(load_runtime, self.options, source, niceness=niceness)

    def released(self) -> None:
        give_back_freed_memory()


class GivenRuntime:
    """A runtime made by the caller, served as version 1 of its model (tests hold or fail model
    execution on purpose this way)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def load(self, source: ModelSource, *, background: bool = False) -> Runtime:
        return self.runtime

    def released(self) -> None:
        """The caller's runtime is the caller's to free."""


def repository_of(settings: Settings, given: Runtime | None = None) -> Repository:
    """The model repository the settings name: a directory, or one model (``--model``, or the
    seeded default) as version 1."""
    if settings.model_repository is not None:
        return DirectoryRepository(settings.model_repository)
    if given is not None:
        name = settings.model_name or given.info.name
    elif settings.model is not None:
        name = settings.model_name or settings.model.stem
    else:
        name = settings.model_name or DEFAULT_MODEL_NAME
    try:
        return FixedRepository(name, settings.model)
    except RepositoryError as error:
        raise ConfigError(f"{error}; name the model with --model-name") from None


class LstmServer:
    """One server process's worth of lstm-serving: ``start()`` (see there) returns the bound
    port once SERVING; ``stop()`` drains in-flight calls within the grace period and releases
    everything ``start()`` took."""

    def __init__(
        self,
        settings: Settings,
        *,
        runtime: Runtime | None = None,
        store: SessionStore | None = None,
        registry: CollectorRegistry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``tracing``: spans go there (default: as the ``OTEL_*`` variables say, else none)."""
        self.settings = settings
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.tracing = tracing if tracing is not None else Tracing.from_environment()
        self.tokens = _tokens(settings)
        self.limits = limits_of(settings, self.tokens)
        opened = (
            store
            if store is not None
            else open_store(
                settings.session_store,
                timeout=settings.store_timeout,
                snapshot=settings.session_snapshot,
                memory_budget=self.limits.session_memory_budget,
                owner_memory_budget=self.limits.session_memory_per_principal,
                on_end=self.metrics.session_ended,
            )
        )
        observers: list[StoreObserver] = [self.metrics]
        if self.tracing is not None:
            observers.append(self.tracing)
        self.store: SessionStore = ObservedStore(opened, *observers)
        if isinstance(opened, MemorySessionStore):
            held = opened
            self.metrics.watch_session_memory(lambda: held.bytes_held)
        loader: ModelLoader = (
            TensorFlowLoader(settings.runtime) if runtime is None else GivenRuntime(runtime)
        )
        self._strict = settings.model_repository is None  # one model: it must load
        # Counts the calls that serve models on every door, capped or not: a brief model call
        # of the only one runs on the event loop (the scheduler's ``lone``).
        self.concurrency = ConcurrencyLimitPolicy(
            self.limits.max_concurrent_rpcs, self.limits.max_concurrent_rpcs_per_principal
        )
        concurrency = self.concurrency
        self.models = ModelRegistry(
            repository_of(settings, runtime),
            loader,
            self.limits,
            scheduling=SchedulerSettings(
                max_batch_rows=settings.max_batch_rows,
                batching=settings.batching,
                observer=self.metrics.observe_batch,
                tracer=self.tracing,
                lone=lambda: concurrency.in_flight <= 1,
            ),
            mode=ControlMode(settings.model_control_mode),
            default_model=settings.default_model,
            poll_interval=settings.repository_poll_interval,
            drain_seconds=settings.version_drain_timeout,
            max_loaded_versions=settings.max_loaded_versions,
            live_sessions=self.store.count_pinned,
            observer=self.metrics,
            tracer=self.tracing,
        )
        self.metrics.watch_models(self.models.loaded)
        self.readiness = Readiness(
            SERVICE_NAME, oip_messages.SERVICE_NAME, on_change=self.metrics.readiness_changed
        )
        self.servicer = LstmServicer(step_observer=self.metrics, tracing=self.tracing)
        self.open_inference = OpenInference(
            lambda: ready(self.servicer.services), step_observer=self.metrics
        )
        self.http: RestServer | None = None
        self.http_port: int | None = None
        self.sessions: SessionService | None = None
        self.port: int | None = None
        self.metrics_server: OpsHttpServer | None = None
        self._server = grpc.aio.server(
            options=[
                # One process per port: a second server on a busy port must fail, not split
                # traffic and sessions with the first.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                # Without BDP probing, a stream's receive window stays at HTTP/2's initial one:
                # a client that sends and never reads its replies held 5-7 MB of the server's
                # memory per stream here instead of 15-92 MB (the README has the figures).
                ("grpc.http2.bdp_probe", int(settings.http2_bdp_probe)),
                # Connections past it are closed by gRPC as they come: a flood of them cannot
                # take the descriptors the HTTP and metrics ports need.
                (
                    "grpc.max_allowed_incoming_connections",
                    within_open_files(settings.max_grpc_connections, 0.5, "--max-grpc-connections"),
                ),
            ],
        )
        oip_servicer = oip_grpc.InferenceServicer(
            self.open_inference,
            ready=self.readiness.ready,
            server_version=package_version(),
            observer=self.metrics,
        )
        self.chain = policies(
            settings, self.metrics, self.tracing, self.tokens, self.limits, self.concurrency
        )
        registrar = PolicyRegistrar(self._server, self.chain, self.metrics)
        registrar.add_generic_rpc_handlers(
            (method_handlers(self.servicer), oip_grpc.method_handlers(oip_servicer))
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.readiness.servicer, registrar)
        if settings.reflection:
            names = (
                SERVICE_NAME,
                oip_messages.SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            )
            # One pool for all: the protocol's messages live in a pool of their own.
            pool = oip_messages.pool_with(
                lstm_service_pb2.DESCRIPTOR,
                health_pb2.DESCRIPTOR,
                reflection_pb2.DESCRIPTOR,
            )
            # The asyncio servicer, named: the registrar is not a grpc.aio.Server, which is how
            # enable_server_reflection would choose it.
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                reflection.aio.ReflectionServicer(names, pool=pool), registrar
            )

    async def start(self) -> int:
        """Load and warm the model, open the store, then open the gRPC port and report SERVING;
        return the bound port.

        The gRPC port opens last, so a balancer never sends calls to a replica that cannot serve
        them (it gets "connection refused" and tries another). ``/healthz`` and ``/readyz`` on
        the metrics port answer from the start. A port already taken fails before the model
        loads.
        """
        s = self.settings
        ensure_free(s.host, s.port)
        if s.http_port:
            ensure_free(s.host, s.http_port)
        await self.readiness.starting()
        if s.metrics_port is not None:
            self.metrics_server = OpsHttpServer(
                self.metrics.registry, s.metrics_host, s.metrics_port, ready=self.readiness.ready
            )
            log.info("metrics and probes on http://%s:%d", s.metrics_host, self.metrics_server.port)
        await self.store.open()
        log.info("loading the models")
        try:
            await self.models.start(strict=self._strict)
        except RepositoryError as error:
            raise ConfigError(str(error)) from None
        log.info("%d start-up objects left out of garbage collection", freeze_startup_objects())
        self.metrics.set_limits(self.limits.exported())
        self.sessions = SessionService(
            self.store,
            self.models,
            self.limits,
            reap_interval=s.reap_interval,
            observer=self.metrics,
        )
        await self.sessions.start()
        inference = InferenceService(
            self.models, self.limits, stream_chunk_timesteps=s.stream_chunk_timesteps
        )
        self.servicer.services = Services(inference, self.sessions)
        self.port = self._bind()
        await self._server.start()
        if s.http_port is not None:
            await self._start_http()
        await self.readiness.watch(self._store_answers, s.health_interval)
        if s.port_file is not None:
            self._write_port_file(s.port_file)
        loaded = ", ".join(f"{m.name}/{m.version} ({m.info.version})" for m in self.models.loaded())
        log.info("serving %s; listening on %s:%d", loaded or "no model yet", s.host, self.port)
        return self.port

    async def _start_http(self) -> None:
        """The Open Inference Protocol's HTTP binding, with the gRPC port's TLS and tokens."""
        s = self.settings
        self.http = RestServer(
            self.open_inference,
            ready=self.readiness.ready,
            server_version=package_version(),
            chain=self.chain,
            max_body_bytes=s.max_message_bytes,
            shutdown_timeout=s.grace,
            idle_timeout=s.http_idle_timeout,
            body_timeout=s.http_body_timeout,
            caps=ConnectionCaps(
                within_open_files(s.max_http_connections, 0.25, "--max-http-connections"),
                s.max_http_connections_per_peer,
            ),
        )
        context = None
        if s.tls_cert is not None and s.tls_key is not None:
            context = server_ssl_context(s.tls_cert, s.tls_key, s.tls_client_ca)
        assert s.http_port is not None
        try:
            self.http_port = await self.http.start(s.host, s.http_port, context)
        except OSError as exc:
            raise OSError(f"cannot bind {s.host}:{s.http_port} (--http-port): {exc}") from exc
        scheme = "https" if context is not None else "http"
        log.info("Open Inference Protocol over HTTP on %s://%s:%d", scheme, s.host, self.http_port)

    async def _store_answers(self) -> bool:
        """The readiness probe: whether the session store answers (exported as a metric too)."""
        up = await self.store.ping()
        self.metrics.store_checked(up)
        return up

    def _bind(self) -> int:
        s = self.settings
        address = f"{s.host}:{s.port}"
        credentials = server_credentials(s)
        try:
            if credentials is None:
                return self._server.add_insecure_port(address)
            return self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot bind {s.host}:{s.port}: {exc}") from exc

    def _write_port_file(self, path: Path) -> None:
        """The bound ports, for whoever started this server on port 0 (atomically: a reader
        never sees half a file)."""
        ports = {
            "port": self.port,
            "metrics_port": self.metrics_server.port if self.metrics_server is not None else 0,
            "http_port": self.http_port or 0,
        }
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(ports))
        os.replace(partial, path)

    async def stop(self, grace: float | None = None, drain: float = 0.0) -> None:
        """NOT_SERVING at once; after ``drain`` seconds (for balancers that probe readiness to
        notice) refuse new calls; let in-flight calls finish within ``grace``; release all."""
        await self.readiness.stop()
        self.servicer.stopping = True
        if drain > 0 and self.port is not None:
            log.info("draining for %.1f s", drain)
            await asyncio.sleep(drain)
        await self._server.stop(self.settings.grace if grace is None else grace)
        if self.http is not None:
            await self.http.stop()
        if self.sessions is not None:
            await self.sessions.stop()
        await self.models.stop()
        await self.store.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # sends what is buffered

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
