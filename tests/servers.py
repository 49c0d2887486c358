"""Real lstm-serving servers for tests: in-process on a background event loop, or subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_server.app import LstmServer
from lstm_server.config import Settings
from lstm_server.core.scheduler import Runtime
from lstm_server.core.store import SessionStore
from lstm_server.tracing import Tracing

TEST_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    metrics_host="127.0.0.1",
    metrics_port=None,
    http_port=None,
    reap_interval=0.2,
    grace=1.0,
)


class ThreadedServer:
    """An in-process server on its own event loop thread, so blocking clients can call it too."""

    def __init__(
        self,
        settings: Settings = TEST_SETTINGS,
        store: SessionStore | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._init(settings, store, None, tracing)

    def _init(
        self,
        settings: Settings,
        store: SessionStore | None,
        runtime: Runtime | None,
        tracing: Tracing | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self.submit(self._make(settings, store, runtime, tracing))
        self.port: int = self.submit(self.server.start())
        self.target = f"127.0.0.1:{self.port}"

    @classmethod
    def with_runtime(
        cls, settings: Settings, runtime: Runtime, tracing: Tracing | None = None
    ) -> ThreadedServer:
        """A server on a runtime the test made (to hold or fail model execution on purpose)."""
        made = cls.__new__(cls)
        made._init(settings, None, runtime, tracing)
        return made

    @staticmethod
    async def _make(
        settings: Settings,
        store: SessionStore | None,
        runtime: Runtime | None = None,
        tracing: Tracing | None = None,
    ) -> LstmServer:
        return LstmServer(settings, store=store, runtime=runtime, tracing=tracing)

    def submit(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def stop(self) -> None:
        self.submit(self.server.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def settings(**changes: object) -> Settings:
    return replace(TEST_SETTINGS, **changes)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(
    target: str, timeout: float = 60.0, process: subprocess.Popen | None = None
) -> None:
    """Poll the gRPC health service until SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} did not report SERVING within {timeout} s")


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lstm_server", *args]


class ServerProcess:
    """``lstm-server`` as a subprocess; output goes to a log file.

    It binds gRPC port 0 and reports the port it bound through ``--port-file``, so no two servers
    race for a gRPC port a test picked; the metrics endpoint takes a free port the same way. The
    HTTP binding is off unless a test asks for it.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        log_dir: Path | None = None,
        env: dict | None = None,
        *,
        wait: bool = True,
        port: int = 0,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> None:
        """``port``: 0 (the default) binds a free port; another number restarts a replica on
        the port a balancer knows it by; ``preexec_fn`` runs in the child before the server (to
        lower a resource limit, say)."""
        log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        name = f"lstm-server-{uuid.uuid4().hex[:12]}"
        self.log_path = log_dir / f"{name}.log"
        self._port_file = log_dir / f"{name}.ports.json"
        self._ports: dict[str, int] | None = None
        self._log = self.log_path.open("wb")
        defaults = {
            "--host": "127.0.0.1",
            "--port": str(port),
            "--metrics-host": "127.0.0.1",
            "--metrics-port": "0",
            "--http-port": "off",
            "--port-file": str(self._port_file),
        }
        given = [flag for flag in defaults if flag in args]  # a flag may be given once only
        chosen = [part for flag, value in defaults.items() if flag not in given
                  for part in (flag, value)]  # fmt: skip
        self.process = subprocess.Popen(
            server_command(*chosen, *args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn,
        )
        if wait:
            self.wait_serving()

    def _bound(self) -> dict[str, int]:
        """The ports the server reported, waiting (up to 60 s) until it has."""
        deadline = time.monotonic() + 60
        while self._ports is None:
            if self._port_file.exists():
                self._ports = json.loads(self._port_file.read_text())
            elif self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log()}")
            elif time.monotonic() > deadline:
                raise TimeoutError(f"server reported no ports: {self.log()}")
            else:
                time.sleep(0.05)
        return self._ports

    @property
    def port(self) -> int:
        return self._bound()["port"]

    @property
    def ports(self) -> dict[str, int]:
        """Every port it bound (``port``, ``metrics_port``, ``http_port``; 0: off)."""
        return self._bound()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._bound()['metrics_port']}/metrics"

    def wait_serving(self) -> None:
        try:
            wait_serving(self.target, process=self.process)
        except Exception:
            self.stop()
            raise RuntimeError(self.log()) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None) -> int:
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


# The model replicas in the scale-out tests serve (small: their numbers are the point).
REPLICA_MODEL = ("--features", "4", "--units", "8", "--seed", "3")


def replicas(count: int, store_url: str, directory: Path) -> list[ServerProcess]:
    """``count`` replicas of ``REPLICA_MODEL`` sharing the session store at ``store_url``,
    started at once (each imports TensorFlow), then waited for. The first saves the model it
    serves to ``directory/model.keras``, for the reference."""
    started = [
        ServerProcess(
            [*REPLICA_MODEL, "--session-store", store_url, "--health-interval", "0.2"]
            + (["--save-model", str(directory / "model.keras")] if i == 0 else []),
            log_dir=directory,
            wait=False,
        )
        for i in range(count)
    ]
    for server in started:
        server.wait_serving()
    return started
