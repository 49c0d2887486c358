"""Server settings: every flag also reads an ``LSTM_*`` environment variable (flags win)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from lstm_server.core.repository import RepositoryError, check_model_name
from lstm_server.core.types import Limits
from lstm_server.runtime.compile_cache import default_directory
from lstm_server.runtime.options import RuntimeOptions


class ConfigError(Exception):
    """A setting names a file that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; the defaults serve the embedded model on :50051."""

    host: str = "0.0.0.0"
    port: int = 50051
    port_file: Path | None = None
    model: Path | None = None
    model_name: str = ""
    model_repository: Path | None = None
    model_control_mode: str = "none"
    repository_poll_interval: float = 5.0
    default_model: str = ""
    version_drain_timeout: float = 3600.0
    max_loaded_versions: int = 16
    features: int = 1
    units: int = 1
    seed: int = 0
    save_model: Path | None = None
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = 8000
    http_port: int | None = 8080
    reflection: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens_file: Path | None = None
    xla: bool = True
    compile_cache: str = "default"
    compile_cache_max_bytes: int = 512 * 2**20
    fast_path: bool = True
    batching: bool = True
    max_batch_rows: int = 64
    stream_chunk_timesteps: int = 64
    compute_chunk_timesteps: int = 128
    max_timesteps: int = 10_000
    max_batch_size: int = 64
    session_store: str = "memory"
    store_timeout: float = 1.0
    max_sessions: int = 100_000
    max_sessions_per_principal: int = 0
    session_memory_budget: int = 1024**3
    max_message_bytes: int = 4 * 1024 * 1024
    max_response_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 1024
    max_concurrent_rpcs_per_principal: int = 0
    session_memory_per_principal: int = 0
    fair_share: bool = True
    max_health_watches: int = 100
    http2_bdp_probe: bool = False
    max_grpc_connections: int = 4096
    max_http_connections: int = 256
    max_http_connections_per_peer: int = 64
    http_idle_timeout: float = 15.0
    http_body_timeout: float = 30.0
    session_snapshot: Path | None = None
    session_ttl: int = 3600
    max_session_ttl: int = 86_400
    reap_interval: float = 5.0
    health_interval: float = 1.0
    grace: float = 10.0
    drain: float = 0.0
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: bool = False

    @property
    def limits(self) -> Limits:
        return Limits(
            max_timesteps=self.max_timesteps,
            max_batch_size=self.max_batch_size,
            max_sessions=self.max_sessions,
            max_sessions_per_principal=self.max_sessions_per_principal,
            default_session_ttl_seconds=self.session_ttl,
            max_session_ttl_seconds=self.max_session_ttl,
            max_message_bytes=self.max_message_bytes,
            max_response_bytes=self.max_response_bytes,
            max_concurrent_rpcs=self.max_concurrent_rpcs,
            max_concurrent_rpcs_per_principal=self.max_concurrent_rpcs_per_principal,
            session_memory_budget=self.session_memory_budget
            if self.session_store == "memory"
            else 0,
            session_memory_per_principal=self.session_memory_per_principal
            if self.session_store == "memory"
            else 0,
        )

    @property
    def compile_cache_directory(self) -> Path | None:
        """Where the compile cache is (None: off)."""
        if self.compile_cache.strip().lower() == "off":
            return None
        if self.compile_cache.strip().lower() in {"", "default"}:
            return default_directory()
        return Path(self.compile_cache)

    @property
    def runtime(self) -> RuntimeOptions:
        return RuntimeOptions(
            model=self.model,
            features=self.features,
            units=self.units,
            seed=self.seed,
            save_model=self.save_model,
            chunk_timesteps=self.compute_chunk_timesteps,
            max_rows=self.max_batch_rows,
            xla=self.xla,
            compile_cache=self.compile_cache_directory,
            compile_cache_max_bytes=self.compile_cache_max_bytes,
            fast_path=self.fast_path,
        )


HELP: dict[str, str] = {
    "host": "address to bind",
    "port": "gRPC port (0: a free one, reported in --port-file)",
    "port_file": "once listening, write the bound gRPC, metrics and HTTP ports here as JSON",
    "model": "a .keras or .h5 model (one LSTM or a stack, with input layers such as Embedding "
    "and output layers such as Dense), served as version 1 of a one-model repository (default: "
    "a seeded LSTM of --features and --units)",
    "model_name": "the name --model (or the default model) is served under (default: the file's "
    "stem; default-lstm)",
    "model_repository": "serve the models of this directory: NAME/VERSION/model.keras, "
    "NAME/model-config.json (see the README)",
    "model_control_mode": "none: the models found at start; poll: follow the repository as it "
    "changes; explicit: load and unload when asked (Triton's repository extension)",
    "repository_poll_interval": "seconds between scans of the repository in poll mode",
    "default_model": "the model a request with no model name gets (default: the only model)",
    "version_drain_timeout": "seconds a version out of its policy keeps serving its live "
    "sessions before it is unloaded anyway",
    "max_loaded_versions": "most model versions loaded at once (0: no cap)",
    "features": "input features of the default model",
    "units": "units of the default model",
    "seed": "seed of the default model's weights",
    "save_model": "save the served model to this .keras file at start-up",
    "metrics_host": "address of the Prometheus /metrics endpoint",
    "metrics_port": "port of Prometheus /metrics, /healthz and /readyz (0: a free one; off: none)",
    "http_port": "port of the Open Inference Protocol's HTTP/REST binding (0: a free one; off: "
    "none)",
    "reflection": "serve gRPC server reflection",
    "tls_cert": "PEM certificate chain: serve over TLS (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates it signed (mutual TLS)",
    "auth_tokens_file": "file of 'principal token' lines: require an authorization Bearer token",
    "xla": "compile the model with XLA",
    "compile_cache": "directory where XLA keeps compiled shapes across restarts, shared safely "
    "by the servers that use it; 'default' is $XDG_CACHE_HOME/lstm-serving/xla (or "
    "~/.cache/lstm-serving/xla), 'off' keeps none",
    "compile_cache_max_bytes": "bytes the compile cache may hold; past them its oldest entries "
    "are removed at start",
    "fast_path": "run small work (single steps, tiny models) on the exact numpy path",
    "batching": "batch queued work from concurrent calls into one model call",
    "max_batch_rows": "most sequences in one model call",
    "stream_chunk_timesteps": "timesteps computed per chunk in PredictStream",
    "compute_chunk_timesteps": "most timesteps in one compiled model call (a power of two)",
    "max_timesteps": "most timesteps per sequence in Predict or per session step",
    "max_batch_size": "most sequences per Predict request",
    "session_store": "where sessions live: memory; redis://HOST:PORT/DB (one Redis shared by "
    "replicas); redis+cluster://HOST:PORT,HOST:PORT (a Redis Cluster, by seed nodes; "
    "?confirm=N: replicas that must have a write before it is acknowledged, default 1)",
    "store_timeout": "seconds a session store operation may take before it fails",
    "max_sessions": "most live sessions (0: no cap)",
    "max_sessions_per_principal": "most live sessions of one principal (0: no cap, or the fair "
    "share)",
    "session_memory_budget": "bytes the memory store may hold for sessions, replay data included "
    "(0: no budget; Redis: use its maxmemory)",
    "max_message_bytes": "largest request message accepted (RESOURCE_EXHAUSTED beyond)",
    "max_response_bytes": "largest reply; larger ones are refused before running (0: no limit)",
    "max_concurrent_rpcs": "calls in flight at once before RESOURCE_EXHAUSTED (0: no cap)",
    "max_concurrent_rpcs_per_principal": "calls of one principal in flight at once (0: no cap, "
    "or the fair share)",
    "session_memory_per_principal": "bytes of session memory one principal may hold (memory "
    "store; 0: no cap, or the fair share)",
    "fair_share": "with tokens of two or more principals, per-principal caps left at 0 become "
    "an equal share of the server's: sessions, calls in flight, session memory",
    "max_health_watches": "open grpc.health.v1 Watch streams (0: no cap)",
    "http2_bdp_probe": "let gRPC grow each stream's HTTP/2 window with the link's bandwidth-delay "
    "product (faster large messages over long links; a client that never reads then holds tens "
    "of MB per stream)",
    "max_grpc_connections": "open gRPC connections; past it new ones are closed (at most half "
    "the open-file limit, whatever is asked)",
    "max_http_connections": "open HTTP connections; past it new ones are closed at once (at most "
    "a quarter of the open-file limit, whatever is asked)",
    "max_http_connections_per_peer": "open HTTP connections from one address (0: no cap)",
    "http_idle_timeout": "seconds an HTTP connection may go without a whole request: the first "
    "one's headers, or the next one after a reply",
    "http_body_timeout": "seconds an HTTP request's body may take to arrive (408 beyond)",
    "session_snapshot": "write in-memory sessions here on shutdown and restore them on start",
    "session_ttl": "seconds an idle session lives unless its creator asks otherwise",
    "max_session_ttl": "largest ttl_seconds a session may ask for",
    "reap_interval": "seconds between sweeps for expired sessions",
    "health_interval": "seconds between readiness checks of the session store",
    "grace": "seconds in-flight calls get to finish on shutdown",
    "drain": "seconds of NOT_SERVING before shutdown stops taking calls (for probing balancers)",
    "log_level": "logging level",
    "log_format": "log lines as text or json",
    "access_log": "log one line per RPC (method, code, duration, peer, principal, trace id); "
    "about 0.09 ms a call",
}


def env_name(field: str) -> str:
    return "LSTM_" + field.upper()


def _port_or_off(text: str) -> int | None:
    """A port number (0: a free one), or ``off``: no such endpoint."""
    if text.strip().lower() == "off":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number or 'off': {text!r}") from None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CONTROL_MODES = ("none", "poll", "explicit")


class _Once(argparse.Action):
    """Stores a flag's value, refusing the flag a second time: a repeated flag is a mistake
    (``--model a.keras --model b.keras`` would serve only b), never silently resolved."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        seen: set[str] = namespace.__dict__.setdefault("_given", set())
        if self.dest in seen:
            parser.error(f"{option_string} is given more than once")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


def parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line, with defaults taken from the environment."""
    environ = os.environ if environ is None else environ
    p = argparse.ArgumentParser(
        prog="lstm-server",
        description=(
            "Serve Keras LSTM models (one LSTM or a stack, with their input and output layers) "
            "from a model repository, or one model file, over gRPC (lstm.v1.LstmService and the "
            "Open Inference Protocol) and HTTP (the Open Inference Protocol): every timestep's "
            "outputs and every layer's final h and c, streams, and sessions held by the server."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = Settings()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default: Any = getattr(defaults, f.name)
        kind: Any = {
            "int": int,
            "float": float,
            "str": str,
            "int | None": _port_or_off,
        }.get(str(f.type), Path)
        if f.type == "bool":
            kind = _parse_bool
        if env_name(f.name) in environ:
            try:
                default = kind(environ[env_name(f.name)])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                p.error(f"{env_name(f.name)}: {exc}")
        text = f"{HELP[f.name]} [env {env_name(f.name)}]"
        if f.type == "bool":
            p.add_argument(flag, default=default, help=text, action=argparse.BooleanOptionalAction)
        else:
            p.add_argument(flag, default=default, help=text, type=kind, action=_Once)
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return p


def package_version() -> str:
    try:
        return metadata.version("lstm-serving")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags, then ``LSTM_*`` variables, then defaults; out-of-range values exit."""
    p = parser(environ)
    args = vars(p.parse_args(argv))
    args.pop("_given", None)
    settings = Settings(**args)
    positive = (
        "features",
        "units",
        "max_batch_rows",
        "stream_chunk_timesteps",
        "compute_chunk_timesteps",
        "max_timesteps",
        "max_batch_size",
        "session_ttl",
        "max_session_ttl",
        "compile_cache_max_bytes",
    )
    for name in positive:
        if getattr(settings, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("port", "metrics_port", "http_port"):
        if getattr(settings, name) is not None and not 0 <= getattr(settings, name) <= 65535:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 65535")
    if settings.session_store != "memory" and "://" not in settings.session_store:
        p.error("--session-store must be 'memory' or a URL such as redis://localhost:6379/0")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        p.error("--tls-client-ca needs --tls-cert and --tls-key")
    if settings.session_snapshot is not None and settings.session_store != "memory":
        p.error("--session-snapshot is for the memory store; Redis keeps sessions itself")
    for name in (
        "max_response_bytes",
        "max_sessions",
        "max_sessions_per_principal",
        "session_memory_budget",
        "max_concurrent_rpcs",
        "max_concurrent_rpcs_per_principal",
        "session_memory_per_principal",
        "max_health_watches",
        "max_grpc_connections",
        "max_http_connections",
        "max_http_connections_per_peer",
    ):
        if getattr(settings, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be 0 (no limit) or more")
    if settings.log_format not in ("text", "json"):
        p.error(f"--log-format must be text or json, not {settings.log_format!r}")
    if settings.log_level.upper() not in LOG_LEVELS:
        p.error(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {settings.log_level!r}")
    for name in ("http_idle_timeout", "http_body_timeout"):
        if getattr(settings, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be more than 0")
    if settings.max_message_bytes < 1024:
        p.error("--max-message-bytes must be at least 1024")
    if settings.session_ttl > settings.max_session_ttl:
        p.error("--session-ttl cannot exceed --max-session-ttl")
    _check_models(p, settings)
    return settings


def _check_models(p: argparse.ArgumentParser, settings: Settings) -> None:
    if settings.model is not None and settings.model_repository is not None:
        p.error("--model and --model-repository cannot go together: --model serves one file")
    if settings.save_model is not None and settings.model_repository is not None:
        p.error("--save-model saves --model's model (or the default); not a repository's")
    if settings.model_name and settings.model_repository is not None:
        p.error("--model-name names --model's model; a repository's models are its folders")
    if settings.model_control_mode not in CONTROL_MODES:
        p.error(
            f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}, "
            f"not {settings.model_control_mode!r}"
        )
    if settings.model_control_mode != "none" and settings.model_repository is None:
        p.error(f"--model-control-mode {settings.model_control_mode} needs --model-repository")
    if settings.default_model and settings.model_repository is None:
        p.error("--default-model is for --model-repository (one model is the default anyway)")
    if settings.repository_poll_interval <= 0:
        p.error("--repository-poll-interval must be more than 0")
    if settings.version_drain_timeout < 0:
        p.error("--version-drain-timeout must be 0 or more")
    if settings.max_loaded_versions < 0:
        p.error("--max-loaded-versions must be 0 (no cap) or more")
    for name in ("model_name", "default_model"):
        value = getattr(settings, name)
        if value:
            try:
                check_model_name(value)
            except RepositoryError as error:
                p.error(f"--{name.replace('_', '-')}: {error}")
