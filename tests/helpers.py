"""Helpers shared by the test modules: request messages and reading the /metrics endpoint.

Test modules import from here (and from servers, redis_server, nginx_server, reference), never
from one another.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from lstm_client.v1 import lstm_service_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from lstm_server.core.types import Array, RaggedSequence

ROOT = Path(__file__).resolve().parent.parent  # the repository
SERVICE = "lstm.v1.LstmService"
# Set by `make test` and CI: a missing binary fails the system tier instead of skipping it.
REQUIRE_SYSTEM = os.environ.get("LSTM_REQUIRE_SYSTEM_TESTS", "") not in ("", "0")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: raw wire format, for requests no library would write."""
    return tag(number, 2) + varint(len(payload)) + payload


def seq_msg(x: np.ndarray) -> pb.Sequence:
    return pb.Sequence(timesteps=[pb.Vector(values=r) for r in x.tolist()])


def ragged(x: np.ndarray) -> RaggedSequence:
    """A [timesteps, features] array as the core's RaggedSequence (imported here: the client's
    tests at its dependency floors have no server)."""
    from lstm_server.core.types import RaggedSequence

    x = np.asarray(x, np.float32)
    return RaggedSequence(x.ravel(), np.full(x.shape[0], x.shape[1]))


def state_msg(h: np.ndarray, c: np.ndarray) -> pb.LstmState:
    return pb.LstmState(h=pb.Vector(values=h.tolist()), c=pb.Vector(values=c.tolist()))


def scrape(url: str) -> Samples:
    """Every sample on the endpoint, keyed by name and sorted labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def summed(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every label set that has ``labels`` (say, over model versions)."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= set(got))


def handled(samples: Samples, method: str) -> float:
    """Calls of ``method`` whose end the server has recorded, whatever their code."""
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "grpc_server_handled_total" and ("grpc_method", method) in labels
    )


def scrape_settled(url: str, before: Samples, expected: dict[str, int]) -> Samples:
    """Scrape once the server has recorded the end of ``expected`` more calls of each method.

    A caller sees a call's status a moment before the server's interceptor records it."""
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(url)
        if all(handled(samples, m) - handled(before, m) >= n for m, n in expected.items()):
            return samples
        assert time.monotonic() < deadline, f"calls never recorded: {expected}"
        time.sleep(0.02)


def grpc_labels(method: str, kind: str = "unary") -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method}


def system_binary(name: str, package: str, *fallbacks: str) -> str:
    """The path of a program a system test runs for real. Missing, the test is skipped with the
    reason, or fails when ``LSTM_REQUIRE_SYSTEM_TESTS`` is set (as `make test` sets it)."""
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).exists()), None)
    if found is not None:
        return found
    reason = f"{name} is not installed: `make system-deps` installs the Debian package {package}"
    if REQUIRE_SYSTEM:
        pytest.fail(reason)
    pytest.skip(reason)


def project_tool(path: str, made_by: str) -> Path:
    """A tool the Makefile installs inside the repository (a pinned venv, npm packages); missing,
    the test is skipped with the reason, or fails under ``LSTM_REQUIRE_SYSTEM_TESTS``."""
    found = ROOT / path
    if found.exists():
        return found
    reason = f"{path} is missing: `{made_by}` installs it (as `make test` does)"
    if REQUIRE_SYSTEM:
        pytest.fail(reason)
    pytest.skip(reason)


async def registry_of(runtime, **changes):  # type: ignore[no-untyped-def]
    """A started model registry serving ``runtime`` as version 1 of its model (``changes``:
    the registry's other arguments)."""
    from lstm_server.app import GivenRuntime
    from lstm_server.core.registry import ModelRegistry
    from lstm_server.core.repository import FixedRepository
    from lstm_server.core.types import Limits

    registry = ModelRegistry(
        FixedRepository(runtime.info.name, None), GivenRuntime(runtime), Limits(), **changes
    )
    await registry.start(strict=True)
    return registry


class NumpyRuntime:
    """A ``Runtime`` without TensorFlow: the server's exact numpy LSTM on seeded weights, for the
    unit tier. ``inline`` says which path the scheduler is told to take; ``calls`` records them."""

    def __init__(self, features: int = 3, units: int = 4, seed: int = 0, inline: bool = True):
        from lstm_server.core.types import ModelInfo
        from lstm_server.runtime.numpy_lstm import NumpyLstm as ServerLstm

        rng = np.random.default_rng(seed)
        self.weights = (
            rng.uniform(-0.5, 0.5, (features, 4 * units)).astype(np.float32),
            rng.uniform(-0.5, 0.5, (units, 4 * units)).astype(np.float32),
            rng.uniform(-0.5, 0.5, 4 * units).astype(np.float32),
        )
        self._lstm = ServerLstm(*self.weights, "tanh", "sigmoid")
        self.info = ModelInfo(
            name="numpy",
            version=f"sha256:numpy-{seed}",
            input_features=features,
            units=units,
            activation="tanh",
            recurrent_activation="sigmoid",
            use_bias=True,
        )
        self.inline = inline
        self.brief = False  # runs_briefly's answer
        self.calls: list[tuple[str, int]] = []  # (path, rows)
        self.closed = False

    def runs_inline(self, rows: int, timesteps: int) -> bool:
        return self.inline

    def run_inline(self, x, lengths, h0, c0):  # type: ignore[no-untyped-def]
        self.calls.append(("inline", x.shape[0]))
        return self._lstm.run(x, lengths, h0, c0)

    def runs_briefly(self, rows: int, timesteps: int) -> bool:
        return self.brief

    def run(self, x, lengths, h0, c0):  # type: ignore[no-untyped-def]
        self.calls.append(("run", x.shape[0]))
        return self._lstm.run(x, lengths, h0, c0)

    def close(self) -> None:
        self.closed = True


class HealthProber:
    """Calls ``grpc.health.v1.Health/Check`` every ``interval`` seconds with a 1 s deadline, on a
    thread and a channel of its own, while the ``with`` block runs; keeps each probe's latency
    and every failure."""

    def __init__(self, target: str, interval: float = 0.02) -> None:
        self.target = target
        self.interval = interval
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.is_set():
                began = time.perf_counter()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    self.latencies.append(time.perf_counter() - began)
                except grpc.RpcError as error:
                    self.failures.append(f"{error.code().name}: {error.details()}")
                self._stop.wait(self.interval)

    def __enter__(self) -> HealthProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies, 99)) * 1e3 if self.latencies else float("nan")


class GatedRuntime:
    """The real TensorFlow runtime, made to wait at a gate the test opens, and logging the
    lengths of every row it ran: a way to hold work in the queue for as long as a test needs."""

    def __init__(self, **changes: object) -> None:
        from lstm_server.app import load_runtime  # TensorFlow: not for the unit tier

        from tests.servers import settings

        self._runtime = load_runtime(settings(**changes).runtime)
        self.info = self._runtime.info
        self.gate = threading.Event()
        self.gate.set()
        self.ran: list[int] = []

    def runs_inline(self, rows: int, timesteps: int) -> bool:
        return False  # always through the worker thread, where the gate can hold it

    def runs_briefly(self, rows: int, timesteps: int) -> bool:
        return False  # the same: never on the event loop, which the gate would hold

    def run(self, x: Array, lengths: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
        self.gate.wait(timeout=30)
        self.ran.extend(int(n) for n in lengths)
        return self._runtime.run(x, lengths, h0, c0)

    def close(self) -> None:
        self._runtime.close()
