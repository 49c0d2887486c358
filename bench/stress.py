"""Health under load: how long gRPC health checks and the HTTP readiness probe take while the
server is idle, saturated by legal traffic, and hit by floods and large requests; and the server's
resident memory before and after the floods. Run with ``make stress``.

The server, the legal load (``lstm-client bench``) and the floods each run in a process of their
own; this process only probes, every 20 ms, with the 1 s deadline a Kubernetes probe would use.
Writes ``bench/results/stress.md`` and ``stress.json``, and the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from readme import replace_block

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODEL = ("--features", "32", "--units", "128")

# Sent by the flood process: 4 MiB of empty sequences; a legal 3.6 MB request whose reply (about
# 14 MB) is under the default --max-response-bytes, through each door (lstm.v1 Predict, Open
# Inference ModelInfer, HTTP infer with binary tensors); 4 MiB of 480-deep nested groups; and
# HTTP connections that never send a request (reopened as the server closes them).
FLOOD_SCRIPT = """
import json, socket, sys, time, threading, urllib.request, grpc, numpy as np
from lstm_client.v1 import lstm_service_pb2 as pb
from tritonclient.grpc import service_pb2
target, seconds, kinds, http = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
flood = b"\\x0a\\x00" * 2_097_120
x = np.random.default_rng(0).uniform(-1, 1, (3, 9_300, 32)).astype(np.float32)
large = pb.PredictRequest(
    sequences=[pb.Sequence(timesteps=[pb.Vector(values=r) for r in s.tolist()]) for s in x]
).SerializeToString()
infer = service_pb2.ModelInferRequest(model_name="default-lstm")
infer.inputs.add(name="x", datatype="FP32", shape=x.shape)
infer.raw_input_contents.append(x.tobytes())
infer = infer.SerializeToString()
group = bytes([(15 << 3) | 3]) * 480 + bytes([(15 << 3) | 4]) * 480
groups = group * (4 * 2**20 // len(group) - 1)
header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
    "parameters": {"binary_data_size": x.nbytes}}],
    "parameters": {"binary_data_output": True}}).encode()
end = time.monotonic() + seconds
counts = {}
def unary(kind, method, payload):
    options = [("grpc.max_receive_message_length", 64 * 2**20)]
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(method)
        while time.monotonic() < end:
            try:
                call(payload, timeout=60)
            except grpc.RpcError:
                pass
            counts[kind] = counts.get(kind, 0) + 1
def http_large(kind):
    url = f"http://127.0.0.1:{http}/v2/models/default-lstm/infer"
    headers = {"Inference-Header-Content-Length": str(len(header))}
    while time.monotonic() < end:
        request = urllib.request.Request(url, header + x.tobytes(), headers, method="POST")
        try:
            urllib.request.urlopen(request, timeout=60).read()
        except OSError:
            pass
        counts[kind] = counts.get(kind, 0) + 1
def slow(kind):
    held = []
    while time.monotonic() < end:
        try:
            held.append(socket.create_connection(("127.0.0.1", int(http)), timeout=1))
            counts[kind] = counts.get(kind, 0) + 1
        except OSError:
            time.sleep(0.01)
        if len(held) > 2000:
            held.pop(0).close()
    for s in held:
        s.close()
jobs = {
    "flood": lambda k: unary(k, "/lstm.v1.LstmService/Predict", flood),
    "large": lambda k: unary(k, "/lstm.v1.LstmService/Predict", large),
    "oip_large": lambda k: unary(k, "/inference.GRPCInferenceService/ModelInfer", infer),
    "http_large": http_large,
    "groups": lambda k: unary(k, "/lstm.v1.LstmService/Predict", groups),
    "slow_http": slow,
}
threads = [threading.Thread(target=jobs[k], args=(k,)) for k in kinds for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
"""


class Prober:
    """Probes gRPC health and HTTP readiness every 20 ms on threads of their own."""

    def __init__(self, target: str, ready_url: str) -> None:
        self.target, self.ready_url = target, ready_url
        self.grpc: list[float] = []
        self.http: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._grpc, daemon=True),
            threading.Thread(target=self._http, daemon=True),
        ]

    def _grpc(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.is_set():
                began = time.perf_counter()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    self.grpc.append(time.perf_counter() - began)
                except grpc.RpcError:
                    self.failures += 1
                self._stop.wait(0.02)

    def _http(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1.0):
                    self.http.append(time.perf_counter() - began)
            except OSError:
                self.failures += 1
            self._stop.wait(0.02)

    def __enter__(self) -> Prober:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else float("nan")


def _rss_mb(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("process_resident_memory_bytes "):
                return float(line.split()[1]) / 2**20
    return float("nan")


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str, str, int]:
    ports = directory / "ports.json"
    metrics_port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "lstm_server", *MODEL, "--host", "127.0.0.1", "--port", "0",
            "--http-port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
            "--port-file", str(ports),
        ],
        stdout=(directory / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ports.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((directory / "server.log").read_text())
        time.sleep(0.1)
    bound = json.loads(ports.read_text())
    return (
        server,
        f"127.0.0.1:{bound['port']}",
        f"http://127.0.0.1:{metrics_port}",
        bound["http_port"],
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def phase(name: str, target: str, base_url: str, seconds: float, load: list[str] | None) -> dict:
    process = None
    if load is not None:
        process = subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let the load reach its steady state before probing
    with Prober(target, f"{base_url}/readyz") as prober:
        time.sleep(seconds)
    output = ""
    if process is not None:
        output = process.communicate(timeout=seconds + 120)[0].decode().strip()
    return {
        "phase": name,
        "grpc p50 ms": _ms(prober.grpc, 50),
        "grpc p99 ms": _ms(prober.grpc, 99),
        "grpc max ms": _ms(prober.grpc, 100),
        "http p99 ms": _ms(prober.http, 99),
        "probes": len(prober.grpc) + len(prober.http),
        "failed": prober.failures,
        "load": output.splitlines()[-1] if output else "",  # requests sent, per kind
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        server, target, base_url, http_port = start_server(Path(temp))
        try:
            rows = [phase("idle", target, base_url, args.seconds, None)]
            bench = [
                str(Path(sys.executable).parent / "lstm-client"), "--target", target, "bench",
                "--rpc", "predict", "--features", "32", "--timesteps", "100",
                "--concurrency", "16", "--duration", str(args.seconds + 1),
            ]  # fmt: skip
            rows.append(phase("legal load: 16 callers, 32x100 Predict", target, base_url,
                              args.seconds, bench))  # fmt: skip
            rss = {"before": _rss_mb(f"{base_url}/metrics")}
            for kinds, name in (
                ("flood", "floods: 4 MiB requests of 2 million empty sequences, 2 senders"),
                ("large", "large legal requests: 3.6 MB in, 14 MB out, 2 senders"),
                ("flood,large", "both at once, 4 senders"),
                ("oip_large", "large legal ModelInfer (Open Inference gRPC), 2 senders"),
                ("http_large", "large legal HTTP infer (binary tensors), 2 senders"),
                ("groups", "4 MiB requests of 480-deep nested groups, 2 senders"),
                ("slow_http", "HTTP connections that never send a request, 2 openers"),
            ):
                load = [sys.executable, "-c", FLOOD_SCRIPT, target, str(args.seconds + 1), kinds,
                        str(http_port)]  # fmt: skip
                rows.append(phase(name, target, base_url, args.seconds, load))
                rss[f"after {kinds}"] = _rss_mb(f"{base_url}/metrics")
        finally:
            server.terminate()
            server.wait(timeout=60)
    data = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "seconds": args.seconds,
        "rows": rows,
        "rss_mb": rss,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stress.json").write_text(json.dumps(data, indent=2))
    table = render(data)
    (RESULTS / "stress.md").write_text(table)
    replace_block("stress", table)
    print(table)


def render(data: dict) -> str:
    lines = [
        f"Measured on {data['machine']}: {data['seconds']:.0f} s per phase, probes every 20 ms "
        "with a 1 s deadline; server, load and probes share the machine.",
        "",
        "| phase | gRPC health p50 ms | gRPC health p99 ms | gRPC health max ms "
        "| HTTP /readyz p99 ms | probes | failed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['phase']} | {row['grpc p50 ms']:.2f} | {row['grpc p99 ms']:.2f} "
            f"| {row['grpc max ms']:.2f} | {row['http p99 ms']:.2f} | {row['probes']} "
            f"| {row['failed']} |"
        )
    rss = data["rss_mb"]
    lines += [
        "",
        "Server resident memory: "
        + ", ".join(f"{what} {mb:.0f} MB" for what, mb in rss.items())
        + " (each phase runs after the one before).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
