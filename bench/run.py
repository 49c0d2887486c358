"""The lstm-serving benchmark: the gRPC floor, lstm-serving and in-process Keras, side by side.

Run with ``make bench``. Starts a plain grpc.aio echo server (the floor), lstm-serving servers
(with and without batching) and an in-process Keras baseline on this machine, measures each target
over several rounds with the same load generator (``lstm_client.bench``), and writes
``bench/results/results.md``, ``bench/results/results.json`` and
``bench/results/latency_throughput.png``; the README's table is replaced with the new one.
Figures are medians over rounds; ratios are taken within a round, then their median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_client import LstmClient, bench
from lstm_client.v1 import lstm_service_pb2 as pb
from readme import replace_block
from tritonclient.grpc import service_pb2 as oip

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIG = ("--features", "32", "--units", "128")
LEVELS = (1, 8, 64)


def _steal_seconds() -> float:
    """CPU time the hypervisor has given to others, all cores (Linux /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A server subprocess on free ports; ``startup`` is the seconds from launch to SERVING."""

    def __init__(
        self, command: list[str], health: bool = True, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        command = [part.format(port=self.port, metrics=self.metrics_port) for part in command]
        stolen = _steal_seconds()
        began = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.startup = self._wait(health) - began
        self.start_io = self._start_io(_steal_seconds() - stolen)
        self.settled = self.startup  # seconds from launch to idle, once settle() has said

    def _start_io(self, stolen: float) -> dict[str, float] | None:
        """What the start waited on besides its own work (Linux): bytes it had read from disk
        (page-cache misses: TensorFlow's libraries and modules), its major page faults, and the
        CPU time the hypervisor gave to others meanwhile (steal, all cores). None where /proc
        does not tell."""
        proc = Path(f"/proc/{self.process.pid}")
        try:
            io = dict(line.split(": ") for line in (proc / "io").read_text().splitlines())
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return {
            "disk_mb": int(io["read_bytes"]) / 2**20,
            "major_faults": int(fields[9]),
            "steal_s": stolen,
        }

    def _wait(self, health: bool) -> float:
        """Poll as a readiness probe does, on a new connection each time: lstm-server opens its
        port only once ready, and a channel refused earlier would wait out its reconnect
        backoff (up to seconds) before it noticed."""
        for _ in range(1200):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.target} exited")
            try:
                if not health:  # the echo server has no health service: wait for its port
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return time.perf_counter()
                with grpc.insecure_channel(self.target) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter()
            except (grpc.RpcError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(self.target)

    def cpu_seconds(self) -> float:
        """User and system CPU time the process has used (Linux)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, timeout: float = 300.0) -> float:
        """Wait until the process is idle (under 2% of a core over a second): a server that
        compiles shapes ahead of traffic after SERVING is done with them. Returns the wait."""
        began = time.perf_counter()
        used = self.cpu_seconds()
        while time.perf_counter() - began < timeout:
            time.sleep(1.0)
            now = self.cpu_seconds()
            if now - used < 0.02:
                break
            used = now
        return time.perf_counter() - began

    def rss_mb(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        match = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
        assert match is not None
        return float(match.group(1)) / 2**20

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def lstm_command(*args: str) -> list[str]:
    """The command of an lstm-server on loopback and the ports ``Process`` picks (no HTTP door
    unless ``args`` asks for one)."""
    return [
        sys.executable,
        "-m",
        "lstm_server",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "{metrics}",
        *(() if "--http-port" in args else ("--http-port", "off")),
        *args,
    ]


def lstm_server(*args: str, env: dict[str, str] | None = None) -> Process:
    """A server, started once the ones before it are idle, and left when it is idle in turn: its
    start is measured on an otherwise idle machine, and no measurement meets its background
    compilation."""
    server = Process(lstm_command(*args), env=env)
    server.settled = server.startup + server.settle()
    return server


def redis_server() -> tuple[subprocess.Popen | None, str]:
    """A throwaway redis-server on a free loopback port (no persistence), and its URL; (None, "")
    when the machine has none (`make test` installs it)."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        return None, ""
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


PEER_VENV = ROOT / ".venv-kserve"
PEER_REQUIREMENTS = ROOT / "bench" / "kserve-requirements.txt"


def peer_python() -> Path:
    """The Python of the peer's venv, made from ``kserve-requirements.txt`` when it is missing
    or older than that file (KServe and TensorFlow from PyPI: about a minute)."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < PEER_REQUIREMENTS.stat().st_mtime:
        print("installing the KServe peer into .venv-kserve", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(PEER_REQUIREMENTS)], check=True
        )
        stamp.touch()
    return python


def kserve_peer() -> Process:
    """KServe's model server with the same LSTMs (``bench/kserve_peer.py``); ready when its
    port opens (it compiles its shapes before it listens)."""
    return Process(
        [
            str(peer_python()),
            str(ROOT / "bench" / "kserve_peer.py"),
            "--grpc-port",
            "{port}",
            "--http-port",
            "{metrics}",
        ],
        health=False,
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _unary(
    target: str, method: str, request: bytes, level: int, seconds: float, metadata: tuple = ()
) -> bench.LoadResult:
    async with grpc.aio.insecure_channel(target) as channel:
        return await bench.unary_load(channel, method, request, level, seconds, metadata)


async def _bidi(
    target: str,
    method: str,
    opening: bytes | None,
    message: bytes,
    level: int,
    seconds: float,
    metadata: tuple = (),
    window: int = 1,
) -> bench.LoadResult:
    async with grpc.aio.insecure_channel(target) as channel:
        return await bench.bidi_load(
            channel, method, opening, message, level, seconds, metadata, window
        )


async def _stream(target: str, request: bytes, seconds: float) -> bench.LoadResult:
    async with grpc.aio.insecure_channel(target) as channel:
        return await bench.server_stream_load(
            channel, bench.SERVICE + "PredictStream", request, 1, seconds
        )


def response_bytes(target: str, request: pb.PredictRequest) -> int:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(bench.SERVICE + "Predict")
        return len(call(request.SerializeToString()))


def predict_pair(
    echo: Process, server: Process, request: pb.PredictRequest, level: int, seconds: float
) -> tuple[bench.LoadResult, bench.LoadResult]:
    """The echo floor and lstm-serving with the same payload sizes, back to back."""
    raw = request.SerializeToString()
    size = (("x-response-bytes", str(response_bytes(server.target, request))),)
    floor = run(_unary(echo.target, "/bench.Echo/Unary", raw, level, seconds, size))
    served = run(_unary(server.target, bench.SERVICE + "Predict", raw, level, seconds))
    return floor, served


MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_requests(request: pb.PredictRequest, model: str) -> tuple[bytes, bytes]:
    """The Open Inference Protocol's ModelInfer of the same values as a one-sequence Predict,
    written by Triton's client stubs: with raw contents, and with typed contents."""
    x = np.array([list(v.values) for v in request.sequences[0].timesteps], np.float32)[None]
    raw = oip.ModelInferRequest(model_name=model)
    raw.inputs.add(name="x", datatype="FP32", shape=x.shape)
    raw.raw_input_contents.append(x.tobytes())
    typed = oip.ModelInferRequest(model_name=model)
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return raw.SerializeToString(), typed.SerializeToString()


def create_sessions(target: str, count: int) -> None:
    async def main() -> None:
        _, step = bench.session_messages(32, 1)
        message = pb.SessionStreamRequest.FromString(step).step
        async with grpc.aio.insecure_channel(target) as channel:
            create = channel.unary_unary(
                bench.SERVICE + "CreateSession",
                request_serializer=pb.CreateSessionRequest.SerializeToString,
                response_deserializer=pb.Session.FromString,
            )
            step_call = channel.unary_unary(
                bench.SERVICE + "Step",
                request_serializer=pb.StepRequest.SerializeToString,
                response_deserializer=pb.StepResponse.FromString,
            )

            async def one(_: int) -> None:
                session = await create(pb.CreateSessionRequest())
                await step_call(pb.StepRequest(session_id=session.session_id, input=message.input))

            for start in range(0, count, 256):
                await asyncio.gather(*(one(i) for i in range(start, min(count, start + 256))))

    run(main())


PIPELINE_WINDOW = 16


def sdk_stream_rate(target: str, window: int, seconds: float) -> float:
    """Steps per second of one ``LstmClient.stream_session`` of 1-timestep chunks (32 features)
    with ``window`` steps in flight, over ``seconds``."""
    chunk = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
    end = time.perf_counter() + seconds

    def chunks() -> Iterator[np.ndarray]:
        while time.perf_counter() < end:
            yield chunk

    began = time.perf_counter()
    with LstmClient(target, timeout=30) as client:
        steps = sum(1 for _ in client.stream_session(chunks(), window=window))
    return steps / (time.perf_counter() - began)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def measure(rounds: int, seconds: float, with_peer: bool = True) -> dict:
    peer = kserve_peer() if with_peer else None
    if peer is not None:
        peer.settle()  # the servers below start, and are timed, on an idle machine
    echo = Process(
        [sys.executable, str(ROOT / "bench" / "echo_server.py"), "--port", "{port}"], health=False
    )
    stack_path = Path(tempfile.mkdtemp()) / "stack.keras"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stack_model.py"), str(stack_path)], check=True
    )
    tiny = lstm_server()
    big = lstm_server(*BIG)
    unbatched = lstm_server(*BIG, "--no-batching")
    stack = lstm_server("--model", str(stack_path))
    redis, redis_url = redis_server()
    redised = lstm_server(*BIG, "--session-store", redis_url) if redis is not None else None
    sink_port = free_port()
    sink = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "otlp_sink.py"), "--port", str(sink_port)]
    )
    traced = lstm_server(
        *BIG,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_SAMPLER": "always_on",
        },
    )
    startups = {
        "tiny (1 feature, 1 unit)": tiny.startup,
        "32 features, 128 units": big.startup,
        "2 x 128-unit stack + Dense(64)": stack.startup,
    }
    start_io = {
        "tiny (1 feature, 1 unit)": tiny.start_io,
        "32 features, 128 units": big.start_io,
        "2 x 128-unit stack + Dense(64)": stack.start_io,
    }
    settled = {
        "tiny (1 feature, 1 unit)": tiny.settled,
        "32 features, 128 units": big.settled,
        "2 x 128-unit stack + Dense(64)": stack.settled,
    }
    tiny_request = bench.predict_request(1, 3, 1)
    big_request = bench.predict_request(32, 100, 1)
    opening, step = bench.session_messages(32, 1)
    step_size = (("x-response-bytes", "1200"),)
    long_request = bench.predict_request(32, 10_000, 1)
    long_request.timesteps_per_message = 1
    raw_infer, typed_infer = infer_requests(big_request, "default-lstm")
    peer_big, _ = infer_requests(big_request, "big")
    peer_tiny, _ = infer_requests(tiny_request, "tiny")
    per_round: dict[str, list] = {}

    def record(key: str, value: object) -> None:
        per_round.setdefault(key, []).append(value)

    try:
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            floor, served = predict_pair(echo, tiny, tiny_request, 1, seconds)
            record("t1", (floor.percentile(50), served.percentile(50)))
            if peer is not None:
                peered = run(_unary(peer.target, MODEL_INFER, peer_tiny, 1, seconds))
                record("peer_tiny", (served.percentile(50), peered.percentile(50)))
            for level in LEVELS:
                floor, served = predict_pair(echo, big, big_request, level, seconds)
                plain = run(
                    _unary(
                        unbatched.target,
                        bench.SERVICE + "Predict",
                        big_request.SerializeToString(),
                        level,
                        seconds,
                    )
                )
                figures = {
                    "echo": floor.row(100),
                    "batching": served.row(100),
                    "no batching": plain.row(100),
                }
                if peer is not None:
                    peered = run(_unary(peer.target, MODEL_INFER, peer_big, level, seconds))
                    figures["kserve"] = peered.row(100)
                record(f"big{level}", figures)
            floor = run(_bidi(echo.target, "/bench.Echo/Stream", None, step, 1, seconds, step_size))
            single = run(
                _bidi(big.target, bench.SERVICE + "StreamSession", opening, step, 1, seconds)
            )
            many = run(
                _bidi(big.target, bench.SERVICE + "StreamSession", opening, step, 256, seconds)
            )
            record("t4", (floor.percentile(50), single.percentile(50), single.rps, many.rps))
            lock_step = sdk_stream_rate(big.target, 1, seconds)
            pipelined = sdk_stream_rate(big.target, PIPELINE_WINDOW, seconds)
            w = PIPELINE_WINDOW
            windowed, _ = bench.session_messages(32, 1, window=w)
            raw_windowed = run(
                _bidi(
                    big.target, bench.SERVICE + "StreamSession", windowed, step, 1, seconds, (), w
                )
            )
            floor_windowed = run(
                _bidi(echo.target, "/bench.Echo/Stream", None, step, 1, seconds, step_size, w)
            )
            record(
                "t12",
                (lock_step, pipelined, single.rps, raw_windowed.rps, floor.rps, floor_windowed.rps),
            )
            if redised is not None:
                on_redis = run(
                    _bidi(
                        redised.target, bench.SERVICE + "StreamSession", opening, step, 1, seconds
                    )
                )
                many_on_redis = run(
                    _bidi(
                        redised.target, bench.SERVICE + "StreamSession", opening, step, 256, seconds
                    )
                )
                record(
                    "t11",
                    (single.percentile(50), on_redis.percentile(50), many.rps, many_on_redis.rps),
                )
            stacked_step = run(
                _bidi(stack.target, bench.SERVICE + "StreamSession", opening, step, 1, seconds)
            )
            # The stack's Predict right before the single layer's (``untraced``): side by side.
            stacked = run(
                _unary(
                    stack.target,
                    bench.SERVICE + "Predict",
                    big_request.SerializeToString(),
                    1,
                    seconds,
                )
            )
            untraced = run(
                _unary(
                    big.target,
                    bench.SERVICE + "Predict",
                    big_request.SerializeToString(),
                    1,
                    seconds,
                )
            )
            with_spans = run(
                _unary(
                    traced.target,
                    bench.SERVICE + "Predict",
                    big_request.SerializeToString(),
                    1,
                    seconds,
                )
            )
            record("t9", (untraced.percentile(50), with_spans.percentile(50)))
            raw = run(_unary(big.target, MODEL_INFER, raw_infer, 1, seconds))
            typed = run(_unary(big.target, MODEL_INFER, typed_infer, 1, seconds))
            record("t10", (untraced.percentile(50), raw.percentile(50), typed.percentile(50)))
            record(
                "t8",
                (
                    untraced.percentile(50),
                    stacked.percentile(50),
                    single.percentile(50),
                    stacked_step.percentile(50),
                ),
            )
            floor_many = run(
                _bidi(echo.target, "/bench.Echo/Stream", None, step, 256, seconds, step_size)
            )
            record("t4_floor", (floor.rps, floor_many.rps))
            streamed = run(_stream(big.target, long_request.SerializeToString(), seconds))
            record("t5", (median(list(streamed.first_message)), median(list(streamed.latencies))))
        # The servers measured so far may still compile shapes their traffic met: the memory
        # run (and its start-up) is measured on an idle machine.
        for done in (echo, tiny, big, unbatched, stack, traced, redised, peer):
            if done is not None:
                done.stop()
        memory = lstm_server(*BIG)
        before = memory.rss_mb()
        create_sessions(memory.target, 10_000)
        time.sleep(1.0)
        after = memory.rss_mb()
        startups["32 features, 128 units (memory run)"] = memory.startup
        start_io["32 features, 128 units (memory run)"] = memory.start_io
        memory.stop()
    finally:
        for process in (echo, tiny, big, unbatched, stack, traced):
            process.stop()
        if peer is not None:
            peer.stop()
        if redised is not None and redis is not None:
            redised.stop()
            redis.terminate()
            redis.wait(timeout=30)
        sink.terminate()
        sink.wait(timeout=30)
    keras_runs = [
        json.loads(
            subprocess.run(
                [sys.executable, str(ROOT / "bench" / "keras_baseline.py"), *a],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for a in (("1", "1", "3"), ("32", "128", "100"))
    ]
    return {
        "per_round": per_round,
        "memory_mb": (before, after),
        "startup_s": startups,
        "start_io": start_io,
        "settled_s": settled,
        "peer_startup_s": None if peer is None else peer.startup,
        "keras": {"tiny": keras_runs[0], "big": keras_runs[1]},
        "rounds": rounds,
        "seconds": seconds,
    }


def summarize(data: dict) -> tuple[list[tuple[str, str, str, str]], dict]:
    """Target rows (target, measured, goal, met) and the per-concurrency figures for the chart."""
    pr = data["per_round"]
    t1 = [s / f for f, s in pr["t1"]]
    t1_f, t1_s = median([f for f, _ in pr["t1"]]), median([s for _, s in pr["t1"]])
    levels = {}
    for level in LEVELS:
        levels[level] = {
            kind: {
                k: median([r[kind][k] for r in pr[f"big{level}"]])
                for k in pr[f"big{level}"][0][kind]
            }
            for kind in pr[f"big{level}"][0]
        }
    t2 = [r["batching"]["p50 ms"] / r["echo"]["p50 ms"] for r in pr["big1"]]
    t3 = [r["batching"]["requests/s"] / r["no batching"]["requests/s"] for r in pr["big64"]]
    t3_p99 = [r["batching"]["p99 ms"] / r["no batching"]["p99 ms"] for r in pr["big64"]]
    t4_ratio = [s / f for f, s, _, _ in pr["t4"]]
    t4_scale = [m / s for _, _, s, m in pr["t4"]]
    t5 = [first / last for first, last in pr["t5"]]
    t8_predict = [stacked / single for single, stacked, _, _ in pr["t8"]]
    t8_step = [stacked / single for _, _, single, stacked in pr["t8"]]
    t9 = [traced / plain for plain, traced in pr["t9"]]
    t10_raw = [raw / predict for predict, raw, _ in pr["t10"]]
    t10_typed = [typed / predict for predict, _, typed in pr["t10"]]
    before, after = data["memory_mb"]
    startup = max(data["startup_s"].values())
    slowest = max(data["startup_s"], key=data["startup_s"].get)
    slowest_io = data.get("start_io", {}).get(slowest)
    waited = (
        ""
        if slowest_io is None
        else f"; it read {slowest_io['disk_mb']:.0f} MB from disk, steal "
        f"{slowest_io['steal_s']:.1f} s"
    )

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    rows = [
        (
            "1. tutorial model (1 feature, 1 unit, 3 timesteps): Predict p50 / echo p50",
            f"{median(t1):.2f}x ({t1_s * 1e3:.3f} ms vs {t1_f * 1e3:.3f} ms)",
            "<= 1.4x",
            ok(median(t1) <= 1.4),
        ),
        (
            "2. 32 features, 128 units, 100 timesteps, batch 1: Predict p50 / echo p50",
            f"{median(t2):.2f}x ({levels[1]['batching']['p50 ms']:.3f} ms vs "
            f"{levels[1]['echo']['p50 ms']:.3f} ms)",
            "<= 3x",
            ok(median(t2) <= 3),
        ),
        (
            "3. same model, 64 in flight: throughput with batching / without",
            f"{median(t3):.2f}x ({levels[64]['batching']['requests/s']:.0f} vs "
            f"{levels[64]['no batching']['requests/s']:.0f} requests/s)",
            ">= 2x",
            ok(median(t3) >= 2),
        ),
        (
            "3. same: p99 with batching / without",
            f"{median(t3_p99):.2f}x ({levels[64]['batching']['p99 ms']:.1f} ms vs "
            f"{levels[64]['no batching']['p99 ms']:.1f} ms)",
            "<= 1x",
            ok(median(t3_p99) <= 1),
        ),
        (
            "4. StreamSession, 1-timestep steps, 128 units: "
            "p50 per step / echo stream p50 per message",
            f"{median(t4_ratio):.2f}x ({median([s for _, s, _, _ in pr['t4']]) * 1e3:.3f} ms vs "
            f"{median([f for f, _, _, _ in pr['t4']]) * 1e3:.3f} ms)",
            "<= 2.5x",
            ok(median(t4_ratio) <= 2.5),
        ),
        (
            "4. 256 concurrent session streams: steps/s / one stream's steps/s",
            f"{median(t4_scale):.2f}x ({median([m for *_, m in pr['t4']]):.0f} vs "
            f"{median([s for _, _, s, _ in pr['t4']]):.0f} steps/s; the echo floor itself scales "
            f"{median([m / s for s, m in pr['t4_floor']]):.2f}x, to "
            f"{median([m for _, m in pr['t4_floor']]):.0f} messages/s)",
            ">= 4x",
            ok(median(t4_scale) >= 4),
        ),
        (
            "5. PredictStream of 10,000 timesteps: first message / last message",
            f"{median(t5) * 100:.2f}% ({median([f for f, _ in pr['t5']]) * 1e3:.1f} ms of "
            f"{median([x for _, x in pr['t5']]) * 1e3:.0f} ms)",
            "<= 5%",
            ok(median(t5) <= 0.05),
        ),
        (
            "6. 10,000 open sessions of 128 units (each stepped once): added resident memory",
            f"{after - before:.1f} MB ({before:.0f} -> {after:.0f} MB)",
            "<= 50 MB",
            ok(after - before <= 50),
        ),
        (
            "7. process start to SERVING, warm-up included (slowest of the servers started)",
            f"{startup:.1f} s ({slowest}{waited}; the fastest {min(data['startup_s'].values()):.1f}"
            f" s; every shape compiled, the server idle, after "
            f"{max(data['settled_s'].values()):.1f} s)",
            "<= 10 s",
            ok(startup <= 10),
        ),
        (
            "8. 2-layer stack (128, 128 units) + Dense(64), 32 features, 100 timesteps: "
            "Predict p50 / single-layer Predict p50 (measured right after it)",
            f"{median(t8_predict):.2f}x ({median([s for _, s, _, _ in pr['t8']]) * 1e3:.3f} ms vs "
            f"{median([s for s, _, _, _ in pr['t8']]) * 1e3:.3f} ms)",
            "<= 1.5x",
            ok(median(t8_predict) <= 1.5),
        ),
        (
            "8. same stack: 1-timestep StreamSession step p50 / single-layer step p50",
            f"{median(t8_step):.2f}x ({median([s for *_, s in pr['t8']]) * 1e3:.3f} ms vs "
            f"{median([s for _, _, s, _ in pr['t8']]) * 1e3:.3f} ms)",
            "<= 1.5x",
            ok(median(t8_step) <= 1.5),
        ),
        (
            "9. 32 features, 128 units, 100 timesteps: Predict p50 traced (OTLP to a local "
            "receiver, every call sampled) / not traced",
            f"{median(t9):.2f}x ({median([t for _, t in pr['t9']]) * 1e3:.3f} ms vs "
            f"{median([p for p, _ in pr['t9']]) * 1e3:.3f} ms)",
            "<= 1.1x",
            ok(median(t9) <= 1.1),
        ),
        (
            "10. the same request as Open Inference Protocol ModelInfer (gRPC, raw contents): "
            "p50 / lstm.v1 Predict p50",
            f"{median(t10_raw):.2f}x ({median([r for _, r, _ in pr['t10']]) * 1e3:.3f} ms vs "
            f"{median([p for p, _, _ in pr['t10']]) * 1e3:.3f} ms)",
            "<= 1x",
            ok(median(t10_raw) <= 1),
        ),
        (
            "10. same, typed contents (fp32_contents): p50 / lstm.v1 Predict p50",
            f"{median(t10_typed):.2f}x ({median([t for *_, t in pr['t10']]) * 1e3:.3f} ms)",
            "(measured)",
            "-",
        ),
    ]
    if "t11" in pr:
        added = [(redis - memory) * 1e3 for memory, redis, _, _ in pr["t11"]]
        rows += [
            (
                "11. StreamSession 1-timestep step with --session-store redis:// (loopback): "
                "p50 - memory-store p50",
                f"{median(added):+.3f} ms ({median([r for _, r, _, _ in pr['t11']]) * 1e3:.3f} "
                f"ms vs {median([m for m, _, _, _ in pr['t11']]) * 1e3:.3f} ms)",
                "<= +0.3 ms",
                ok(median(added) <= 0.3),
            ),
            (
                "11. 256 session streams on Redis: steps/s / on the memory store",
                f"{median([r / m for _, _, m, r in pr['t11']]):.2f}x "
                f"({median([r for *_, r in pr['t11']]):.0f} vs "
                f"{median([m for _, _, m, _ in pr['t11']]):.0f} steps/s)",
                "(measured)",
                "-",
            ),
        ]
    t12 = [sdk_w / sdk_1 for sdk_1, sdk_w, *_ in pr["t12"]]
    t12_raw = [raw_w / raw_1 for _, _, raw_1, raw_w, _, _ in pr["t12"]]
    t12_floor = [echo_w / echo_1 for *_, echo_1, echo_w in pr["t12"]]
    rows.append(
        (
            f"12. one session stream through the SDK (1-timestep steps, 128 units): steps/s with "
            f"window={PIPELINE_WINDOW} / lock-step",
            f"{median(t12):.2f}x ({median([r[1] for r in pr['t12']]):.0f} vs "
            f"{median([r[0] for r in pr['t12']]):.0f} steps/s; with the load generator's raw "
            f"messages {median(t12_raw):.2f}x, {median([r[3] for r in pr['t12']]):.0f} steps/s; "
            f"the echo floor's stream {median(t12_floor):.2f}x, to "
            f"{median([r[5] for r in pr['t12']]):.0f} messages/s)",
            ">= 3x",
            ok(median(t12) >= 3),
        )
    )
    if "peer_tiny" in pr:
        rows += peer_rows(pr)
    return rows, levels


def peer_rows(pr: dict) -> list[tuple[str, str, str, str]]:
    """lstm-serving (lstm.v1 Predict, typed) against KServe (ModelInfer, raw tensor bytes),
    measured one after the other in each round."""

    def ok(flag: bool) -> str:
        return "yes" if flag else "**no**"

    rows = []
    p50 = [r["batching"]["p50 ms"] / r["kserve"]["p50 ms"] for r in pr["big1"]]
    rows.append(
        (
            "13. peer: 32x128x100 Predict p50 at 1 in flight / KServe 0.21 ModelInfer p50 "
            "(raw tensor bytes, an exact-shape XLA function)",
            f"{median(p50):.2f}x ({median([r['batching']['p50 ms'] for r in pr['big1']]):.3f} ms "
            f"vs {median([r['kserve']['p50 ms'] for r in pr['big1']]):.3f} ms)",
            "<= 1x",
            ok(median(p50) <= 1),
        )
    )
    for level in (8, 64):
        key = f"big{level}"
        ratio = [r["batching"]["requests/s"] / r["kserve"]["requests/s"] for r in pr[key]]
        ours = median([r["batching"]["requests/s"] for r in pr[key]])
        theirs = median([r["kserve"]["requests/s"] for r in pr[key]])
        rows.append(
            (
                f"13. peer: requests/s at {level} in flight, lstm-serving / KServe",
                f"{median(ratio):.2f}x ({ours:.0f} vs {theirs:.0f})",
                ">= 1x",
                ok(median(ratio) >= 1),
            )
        )
    tiny = [ours / theirs for ours, theirs in pr["peer_tiny"]]
    rows.append(
        (
            "13. peer: tutorial model Predict p50 / KServe p50",
            f"{median(tiny):.2f}x ({median([o for o, _ in pr['peer_tiny']]) * 1e3:.3f} ms vs "
            f"{median([t for _, t in pr['peer_tiny']]) * 1e3:.3f} ms)",
            "<= 1x",
            ok(median(tiny) <= 1),
        )
    )
    return rows


def markdown(data: dict, rows: list, levels: dict) -> str:
    keras = data["keras"]
    lines = [
        f"Measured on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}: {data['rounds']} rounds of {data['seconds']:.0f} s "
        "per measurement; figures are medians over rounds, ratios are taken within a round. "
        "Client and servers share the machine.",
        "",
        "| target | measured | goal | met |",
        "| --- | --- | --- | --- |",
        *(f"| {t} | {m} | {g} | {ok} |" for t, m, g, ok in rows),
        "",
        "32 features, 128 units, 100 timesteps, batch 1, Predict, by calls in flight:",
        "",
        "| in flight | server | requests/s | timesteps/s | p50 ms | p90 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for level, kinds in levels.items():
        for kind, r in kinds.items():
            name = {
                "echo": "gRPC echo (floor)",
                "batching": "lstm-serving",
                "no batching": "lstm-serving, --no-batching",
                "kserve": "KServe 0.21 (ModelInfer, raw tensor bytes)",
            }[kind]
            lines.append(
                f"| {level} | {name} | {r['requests/s']:.0f} | {r['timesteps/s']:.0f} | "
                f"{r['p50 ms']:.3f} | {r['p90 ms']:.3f} | {r['p99 ms']:.3f} |"
            )
    lines += [
        "",
        "In-process Keras on the same machine, one call, median ms:",
        "",
        "| model | model.predict | tf.function | tf.function (XLA) |",
        "| --- | --- | --- | --- |",
    ]
    for name, k in (
        ("1 feature, 1 unit, 3 timesteps", keras["tiny"]),
        ("32 features, 128 units, 100 timesteps", keras["big"]),
    ):
        lines.append(
            f"| {name} | {k['model.predict']:.3f} | {k['tf.function']:.3f} | "
            f"{k['tf.function (XLA)']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def chart(levels: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "echo": ("gRPC echo (floor)", "tab:gray"),
        "batching": ("lstm-serving", "tab:blue"),
        "no batching": ("lstm-serving --no-batching", "tab:orange"),
        "kserve": ("KServe 0.21", "tab:green"),
    }
    xs = list(levels)
    for kind, (label, color) in styles.items():
        if kind not in levels[xs[0]]:
            continue
        for q, dash in (("p50 ms", "-"), ("p99 ms", ":")):
            latency.plot(
                xs,
                [levels[x][kind][q] for x in xs],
                dash,
                color=color,
                marker="o",
                label=f"{label} {q.split()[0]}",
            )
        throughput.plot(
            xs,
            [levels[x][kind]["requests/s"] for x in xs],
            "-",
            color=color,
            marker="o",
            label=label,
        )
    for ax in (latency, throughput):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("calls in flight")
        ax.grid(alpha=0.3)
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    throughput.set_ylabel("requests/s")
    latency.legend(fontsize=7)
    throughput.legend(fontsize=7)
    fig.suptitle("Predict, 32 features, 128 units, 100 timesteps, batch 1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def update_readme(table: str) -> None:
    replace_block("bench", table)


def main(argv: list[str] | None = None, report: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument(
        "--no-peer", action="store_true", help="leave out KServe (no venv of its own is made)"
    )
    args = parser.parse_args(argv)
    data = measure(args.rounds, args.seconds, with_peer=not args.no_peer)
    rows, levels = summarize(data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = markdown(data, rows, levels)
    (RESULTS / "results.md").write_text("# lstm-serving benchmark\n\n" + table)
    (RESULTS / "results.json").write_text(json.dumps(data, indent=1, default=str))
    chart(levels, RESULTS / "latency_throughput.png")
    update_readme(table)
    report(table)


if __name__ == "__main__":
    main()
