"""How the SDK reaches the server, shared by both clients: the channel (its options, TLS, the
retry policy of idempotent calls) and what goes with every call (timeout, metadata,
wait-for-ready, compression)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

try:  # W3C trace context goes with every call when the caller uses OpenTelemetry
    from opentelemetry import propagate
except ImportError:
    propagate = None  # type: ignore[assignment]

SERVICE = "lstm.v1.LstmService"
# Calls that change nothing, so gRPC may send them again after UNAVAILABLE.
IDEMPOTENT = ("GetModelMetadata", "Predict", "GetSession")
Metadata = Iterable[tuple[str, str]]


@dataclass(frozen=True)
class RetryPolicy:
    """How calls ride over a replica that restarts or a balancer that moves them: up to
    ``attempts`` in all, waiting ``initial_backoff`` seconds, then ``multiplier`` times longer
    each time up to ``max_backoff``, each wait varied by +-``jitter`` (a fraction) so that
    clients do not retry in step. The defaults wait about 12 s in all, longer than a replica
    takes to restart.

    Session steps are retried by the SDK (after UNAVAILABLE, DEADLINE_EXCEEDED or a server
    shutdown's CANCELLED, with the same step number, so a step is applied once) and session
    streams resumed (after UNAVAILABLE);
    GetModelMetadata, Predict and GetSession are retried by gRPC itself, through the channel's
    service config (after UNAVAILABLE; gRPC allows at most 5 attempts there).
    """

    attempts: int = 8
    initial_backoff: float = 0.1
    max_backoff: float = 3.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        """The waits before each retry: ``attempts - 1`` of them."""
        for n in range(max(0, self.attempts - 1)):
            base = min(self.max_backoff, self.initial_backoff * self.multiplier**n)
            yield base * (1 + self.jitter * (2 * random.random() - 1))

    def service_config(self) -> str:
        """The channel's service config: this policy for the idempotent calls."""
        policy = {
            "maxAttempts": min(5, max(2, self.attempts)),
            "initialBackoff": f"{self.initial_backoff}s",
            "maxBackoff": f"{self.max_backoff}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        names = [{"service": SERVICE, "method": method} for method in IDEMPOTENT]
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


NO_RETRIES = RetryPolicy(attempts=1)


def trace_context() -> tuple[tuple[str, str], ...]:
    """The caller's current trace context (``traceparent``), if OpenTelemetry is installed."""
    if propagate is None:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


@dataclass(frozen=True)
class CallOptions:
    """What goes with every call unless the call says otherwise."""

    timeout: float | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    wait_for_ready: bool | None = None
    compression: grpc.Compression | None = None

    def kwargs(
        self,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        *,
        stream: bool = False,
    ) -> dict[str, Any]:
        """Keyword arguments of a stub call: the call's own timeout (None: the client's; streams
        get none, their steps are timed one by one) and metadata after the client's."""
        return {
            "timeout": None if stream else (self.timeout if timeout is None else timeout),
            "metadata": (*self.metadata, *(metadata or ()), *trace_context()),
            "wait_for_ready": self.wait_for_ready,
            "compression": self.compression,
        }


@dataclass(frozen=True)
class ChannelSettings:
    """The channel an SDK client opens: TLS, gRPC channel options (merged over the defaults:
    no limit on received messages below what the server may send, retries of idempotent calls
    by ``retry``), compression."""

    tls: TlsOptions | None = None
    options: Sequence[tuple[str, Any]] = field(default_factory=tuple)
    retry: RetryPolicy = RetryPolicy()
    compression: grpc.Compression | None = None

    def channel_options(self) -> list[tuple[str, Any]]:
        merged: dict[str, Any] = {
            "grpc.max_receive_message_length": -1,
            "grpc.max_send_message_length": -1,
            "grpc.enable_retries": 1,
            "grpc.service_config": self.retry.service_config(),
        }
        merged.update(dict(self.options))
        return list(merged.items())


@dataclass(frozen=True)
class TlsOptions:
    """PEM bytes: the CA that signed the server (None: the system roots) and, for mutual TLS,
    this client's certificate chain and key."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> TlsOptions:
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


def open_channel(target: str, settings: ChannelSettings, *, aio: bool) -> Any:
    """A blocking (``aio=False``) or asyncio channel to ``target``."""
    module: Any = grpc.aio if aio else grpc
    options = settings.channel_options()
    if settings.tls is None:
        return module.insecure_channel(target, options, settings.compression)
    credentials = settings.tls.credentials()
    return module.secure_channel(target, credentials, options, settings.compression)


def call_metadata(
    metadata: Iterable[tuple[str, str]] | None, token: str | None
) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call; ``token`` becomes ``authorization: Bearer <token>``."""
    pairs = tuple(metadata or ())
    return (*pairs, ("authorization", f"Bearer {token}")) if token else pairs
