"""The front door's costs, side by side in one run: the tutorial model's Predict through every
policy (tokens, per-principal and global caps, access log) against the bare chain, and the Open
Inference Protocol's HTTP infer of the 32x128x100 request (binary tensor data and JSON) against
the same request as gRPC ModelInfer.

Run with ``make bench`` (after ``bench/run.py``) or alone: ``python bench/front_door.py``. Writes
``bench/results/front_door.json`` and the README's block ``front-door``. Figures are medians over
rounds of calls at one in flight; ratios are taken within a round, then their median.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from lstm_client import bench
from readme import replace_block
from run import BIG, MODEL_INFER, RESULTS, _unary, free_port, infer_requests, lstm_server, run

TOKEN = "bench-token"


def http_load(port: int, path: str, body: bytes, headers: dict[str, str], seconds: float) -> float:
    """The median latency (ms) of POSTs of ``body`` on one kept-alive connection for ``seconds``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    try:
        for _ in range(20):  # warm-up
            connection.request("POST", path, body, headers)
            connection.getresponse().read()
        ends = time.perf_counter() + seconds
        while time.perf_counter() < ends:
            began = time.perf_counter()
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - began)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
    finally:
        connection.close()
    return float(np.median(latencies)) * 1e3


def http_bodies(x: np.ndarray) -> tuple[bytes, dict[str, str], bytes]:
    """The HTTP binding's infer of ``x``: binary tensor data (header, its length) and JSON."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary = header + x.astype("<f4").tobytes()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    document = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape)}]}
    document["inputs"][0]["data"] = x.ravel().tolist()
    return binary, headers, json.dumps(document).encode()


def measure(rounds: int, seconds: float) -> dict:
    tokens = Path(tempfile.mkdtemp()) / "tokens"
    tokens.write_text(f"bench {TOKEN}\n")
    bare = lstm_server("--max-concurrent-rpcs", "0", "--no-access-log")
    guarded = lstm_server(
        "--auth-tokens-file",
        str(tokens),
        "--max-concurrent-rpcs",
        "1024",
        "--max-concurrent-rpcs-per-principal",
        "64",
        "--access-log",
    )
    http_port = free_port()
    big = lstm_server(*BIG, "--http-port", str(http_port))
    tiny = bench.predict_request(1, 3, 1).SerializeToString()
    big_request = bench.predict_request(32, 100, 1)
    raw_infer, _ = infer_requests(big_request, "default-lstm")
    x = np.array([list(v.values) for v in big_request.sequences[0].timesteps], np.float32)[None]
    binary, binary_headers, json_body = http_bodies(x)
    json_headers = {"Content-Type": "application/json"}
    auth = (("authorization", f"Bearer {TOKEN}"),)
    path = "/v2/models/default-lstm/infer"
    per_round: dict[str, list] = {"policies": [], "http": []}
    try:
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            pair = [
                lambda: run(_unary(bare.target, bench.SERVICE + "Predict", tiny, 1, seconds)),
                lambda: run(
                    _unary(guarded.target, bench.SERVICE + "Predict", tiny, 1, seconds, auth)
                ),
            ]
            order = (0, 1) if r % 2 == 0 else (1, 0)
            results = {i: pair[i]() for i in order}
            without, with_ = results[0].percentile(50) * 1e3, results[1].percentile(50) * 1e3
            per_round["policies"].append((without, with_))
            grpc_infer = (
                run(_unary(big.target, MODEL_INFER, raw_infer, 1, seconds)).percentile(50) * 1e3
            )
            http_binary = http_load(http_port, path, binary, binary_headers, seconds)
            http_json = http_load(http_port, path, json_body, json_headers, seconds)
            per_round["http"].append((grpc_infer, http_binary, http_json))
    finally:
        for server in (bare, guarded, big):
            server.stop()
    return {"per_round": per_round, "rounds": rounds, "seconds": seconds}


def median(values: list[float]) -> float:
    return float(np.median(values))


def summarize(data: dict) -> str:
    policies = data["per_round"]["policies"]
    http = data["per_round"]["http"]
    without = median([p[0] for p in policies])
    with_ = median([p[1] for p in policies])
    ratio = median([p[1] / p[0] for p in policies])
    grpc_infer = median([h[0] for h in http])
    binary = median([h[1] for h in http])
    as_json = median([h[2] for h in http])
    rows = [
        "| measured | p50 | ratio |",
        "| --- | --- | --- |",
        f"| tutorial Predict, bare chain | {without:.3f} ms | |",
        f"| tutorial Predict, tokens + caps + access log | {with_:.3f} ms | {ratio:.2f}x bare |",
        f"| 32x128x100 gRPC ModelInfer (raw contents) | {grpc_infer:.3f} ms | |",
        f"| 32x128x100 HTTP infer, binary tensor data | {binary:.3f} ms | "
        f"{median([h[1] / h[0] for h in http]):.2f}x gRPC |",
        f"| 32x128x100 HTTP infer, JSON | {as_json:.3f} ms | "
        f"{median([h[2] / h[0] for h in http]):.2f}x gRPC |",
    ]
    return "\n".join(rows) + (
        f"\n\n{data['rounds']} rounds of {data['seconds']:.0f} s per figure, one call in flight; "
        "medians over rounds, ratios within a round.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-readme", action="store_true", help="do not update the README")
    args = parser.parse_args()
    data = measure(args.rounds, args.seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "front_door.json").write_text(json.dumps(data, indent=1))
    table = summarize(data)
    print(table)
    if not args.no_readme:
        replace_block("front-door", table)


if __name__ == "__main__":
    main()
