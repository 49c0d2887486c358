"""The composition root: wires runtime, core, store and transport; owns start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from lstm_client.v1 import lstm_service_pb2, lstm_service_pb2_grpc
from prometheus_client import CollectorRegistry

from lstm_server.config import ConfigError, Settings
from lstm_server.core.errors import ServingError
from lstm_server.core.inference import InferenceService
from lstm_server.core.scheduler import BatchScheduler, Runtime
from lstm_server.core.sessions import SessionService
from lstm_server.metrics import Metrics, MetricsHttpServer
from lstm_server.sessions import MemorySessionStore, SessionStore, open_store
from lstm_server.sessions.snapshot import read_snapshot, write_snapshot
from lstm_server.transport.auth import load_tokens
from lstm_server.transport.interceptors import (
    AuthInterceptor,
    ConcurrencyLimitInterceptor,
    ErrorMappingInterceptor,
    ObservingInterceptor,
)
from lstm_server.transport.servicer import LstmServicer, Services

log = logging.getLogger(__name__)

SERVICE_NAME = lstm_service_pb2.DESCRIPTOR.services_by_name["LstmService"].full_name
# Readiness is reported for "" and the service; liveness under its own name stays SERVING while
# the process runs, even when the session store is down.
LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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


def interceptors(settings: Settings, metrics: Metrics) -> list[grpc.aio.ServerInterceptor]:
    """Outermost first: observe every call, authenticate, cap concurrency, map errors."""
    chain: list[grpc.aio.ServerInterceptor] = [ObservingInterceptor(metrics)]
    if settings.auth_tokens_file is not None:
        try:
            tokens = load_tokens(settings.auth_tokens_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot use --auth-tokens-file: {exc}") from exc
        chain.append(AuthInterceptor(tokens))
    if settings.max_concurrent_rpcs:
        chain.append(ConcurrencyLimitInterceptor(settings.max_concurrent_rpcs))
    chain.append(ErrorMappingInterceptor())
    return chain


def load_runtime(settings: Settings) -> Runtime:
    """Load and warm the TensorFlow runtime (imported here: it takes seconds)."""
    from lstm_server.runtime.tf_runtime import load_runtime as load

    runtime = load(
        model_path=settings.model,
        features=settings.features,
        units=settings.units,
        seed=settings.seed,
        save_path=settings.save_model,
        chunk_timesteps=settings.compute_chunk_timesteps,
        max_rows=settings.max_batch_rows,
        xla=settings.xla,
        fast_path=settings.fast_path,
    )
    runtime.warm_up()
    return runtime


class LstmServer:
    """One server process's worth of lstm-serving.

    ``start()`` binds, reports NOT_SERVING, loads and warms the model, then reports SERVING and
    returns the bound port. ``stop()`` drains in-flight calls within the grace period.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        runtime: Runtime | None = None,
        store: SessionStore | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.store: SessionStore = (
            store
            if store is not None
            else open_store(
                settings.session_store,
                timeout=settings.store_timeout,
                on_end=self.metrics.session_ended,
            )
        )
        self.health = health.aio.HealthServicer()
        self.servicer = LstmServicer()
        self.scheduler: BatchScheduler | None = None
        self.sessions: SessionService | None = None
        self.port: int | None = None
        self.metrics_server: MetricsHttpServer | None = None
        self._server = grpc.aio.server(
            interceptors=interceptors(settings, self.metrics),
            options=[
                # One process per port: a second server on a busy port must fail, not split
                # traffic and sessions with the first.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
            ],
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = False

    async def start(self) -> int:
        """Bind, load and warm the model, report SERVING; return the bound port."""
        s = self.settings
        lstm_service_pb2_grpc.add_LstmServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if s.reflection:
            names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self._server)
        address = f"{s.host}:{s.port}"
        credentials = server_credentials(s)
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot bind {s.host}:{s.port}: {exc}") from exc
        await self.health.set(LIVENESS, SERVING)
        await self._set_health(NOT_SERVING)
        if s.metrics_port:
            self.metrics_server = MetricsHttpServer(
                self.metrics.registry, s.metrics_host, s.metrics_port
            )
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, self.metrics_server.port)
        await self._server.start()
        log.info("listening on %s:%d; loading the model", s.host, self.port)
        if self.runtime is None:
            self.runtime = await asyncio.to_thread(load_runtime, s)
        self.metrics.set_model(self.runtime.info)
        self._restore_sessions()
        self.scheduler = BatchScheduler(
            self.runtime,
            max_batch_rows=s.max_batch_rows,
            batching=s.batching,
            observer=self.metrics.observe_batch,
        )
        self.scheduler.start()
        self.sessions = SessionService(self.store, self.scheduler, s.limits, observer=self.metrics)
        inference = InferenceService(
            self.scheduler, s.limits, stream_chunk_timesteps=s.stream_chunk_timesteps
        )
        self.servicer.services = Services(inference, self.sessions)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._reap(), name="session-reaper"),
            loop.create_task(self._watch_store(), name="store-watch"),
        ]
        await self._update_readiness()
        log.info("model %s ready on port %d", self.runtime.info.version, self.port)
        return self.port

    def _restore_sessions(self) -> None:
        path = self.settings.session_snapshot
        if path is None or not path.exists() or not isinstance(self.store, MemorySessionStore):
            return
        try:
            restored = self.store.restore(read_snapshot(path))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot restore sessions from {path}: {exc}") from exc
        self.metrics.sessions_active.set(restored)
        log.info("restored %d sessions from %s", restored, path)

    def _save_sessions(self) -> None:
        path = self.settings.session_snapshot
        if path is None or not isinstance(self.store, MemorySessionStore):
            return
        records = self.store.records()
        write_snapshot(path, records)
        log.info("saved %d sessions to %s", len(records), path)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def _update_readiness(self) -> None:
        """SERVING while the session store answers; NOT_SERVING (liveness unchanged) otherwise."""
        ready = await self.store.ping()
        if ready != self._ready:
            self._ready = ready
            await self._set_health(SERVING if ready else NOT_SERVING)
            log.log(
                logging.INFO if ready else logging.WARNING,
                "readiness: %s",
                "SERVING" if ready else "NOT_SERVING (the session store is unreachable)",
            )

    async def _watch_store(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval)
            await self._update_readiness()

    async def _reap(self) -> None:
        assert self.sessions is not None
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            try:
                expired = await self.sessions.reap_expired()
                self.metrics.sessions_active.set(await self.store.count())
            except ServingError as error:
                log.warning("reaping expired sessions failed: %s", error.message)
                continue
            if expired:
                log.info("reaped %d expired sessions", expired)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING at once, refuse new calls, let in-flight calls finish, then release all."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.settings.grace if grace is None else grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.sessions is not None:
            self._save_sessions()
        await self.store.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
