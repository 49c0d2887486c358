"""Sessions on a Redis Cluster against one Redis, side by side in one run: the same server
(32 features, 128 units) on one redis-server and on a three-primary cluster (a replica each),
a StreamSession of 1-timestep steps at one stream (p50) and at 256 streams (steps/s), with each
primary's operations per second during the 256 streams. The cluster is measured twice: with
every write confirmed by a replica (``WAIT``, the default) and acknowledged on the primary's
word (``?confirm=0``), to show what the confirmation costs.

Run with ``make bench`` or alone: ``python bench/redis_cluster.py``. Writes
``bench/results/redis_cluster.json`` and the README's block ``redis-cluster``. All three
servers and all Redis processes share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from lstm_client import bench
from readme import replace_block
from run import BIG, RESULTS, _bidi, lstm_server, redis_server, run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.redis_cluster import RedisClusterNodes  # noqa: E402  (the tests' cluster, reused)

STREAMS = 256


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user and system) the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def commands(nodes: RedisClusterNodes, ports: list[int]) -> dict[int, int]:
    """Commands each node has processed so far."""
    counts = {}
    for port in ports:
        info = nodes.run_cli("info", "stats", port=port)
        counts[port] = int(info.split("total_commands_processed:")[1].split()[0])
    return counts


def measure(rounds: int, seconds: float) -> dict:
    one_redis, url = redis_server()
    if one_redis is None:
        raise SystemExit("redis-server is not installed (`make system-deps` installs it)")
    nodes = RedisClusterNodes(Path(tempfile.mkdtemp()))
    servers = {
        "one Redis": lstm_server(*BIG, "--session-store", url),
        "cluster": lstm_server(*BIG, "--session-store", nodes.url),
        "cluster, confirm=0": lstm_server(*BIG, "--session-store", nodes.url + "?confirm=0"),
    }
    opening, step = bench.session_messages(32, 1)
    method = bench.SERVICE + "StreamSession"
    per_round: dict[str, list] = {name: [] for name in servers}
    per_primary: list[list[float]] = []
    redis_pids = {
        "one Redis": [one_redis.pid],
        "cluster": [p.pid for p in nodes.processes.values()],
        "cluster, confirm=0": [p.pid for p in nodes.processes.values()],
    }
    try:
        primaries = nodes.primaries()
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            names = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in names:
                target = servers[name].target
                single = run(_bidi(target, method, opening, step, 1, seconds))
                before, began = commands(nodes, primaries), time.perf_counter()
                server_cpu, redis_cpu = (
                    cpu_seconds([servers[name].process.pid]),
                    cpu_seconds(redis_pids[name]),
                )
                many = run(_bidi(target, method, opening, step, STREAMS, seconds))
                spent = time.perf_counter() - began
                server_cpu = (cpu_seconds([servers[name].process.pid]) - server_cpu) / spent
                redis_cpu = (cpu_seconds(redis_pids[name]) - redis_cpu) / spent
                after = commands(nodes, primaries)
                per_round[name].append(
                    (single.percentile(50) * 1e3, many.rps, server_cpu, redis_cpu)
                )
                if name == "cluster":
                    per_primary.append([(after[p] - before[p]) / spent for p in primaries])
    finally:
        for server in servers.values():
            server.stop()
        nodes.stop()
        one_redis.terminate()
        one_redis.wait(timeout=30)
    return {
        "per_round": per_round,
        "per_primary_ops": per_primary,
        "rounds": rounds,
        "seconds": seconds,
        "streams": STREAMS,
    }


def median(values: list[float]) -> float:
    return float(np.median(values))


def summarize(data: dict) -> str:
    rounds = data["per_round"]
    base = rounds["one Redis"]
    rows = [
        "| store | p50 step, 1 stream | - one Redis | steps/s, 256 streams | / one Redis "
        "| server CPU | server CPU per step | Redis CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, figures in rounds.items():
        p50 = median([f[0] for f in figures])
        rps = median([f[1] for f in figures])
        added = median([f[0] - b[0] for f, b in zip(figures, base, strict=True)])
        ratio = median([f[1] / b[1] for f, b in zip(figures, base, strict=True)])
        server_cpu = median([f[2] for f in figures])
        redis_cpu = median([f[3] for f in figures])
        per_step = median([f[2] / f[1] * 1e3 for f in figures])
        rows.append(
            f"| {name} | {p50:.3f} ms | {added:+.3f} ms | {rps:,.0f} | {ratio:.2f}x "
            f"| {server_cpu:.2f} | {per_step:.2f} ms | {redis_cpu:.2f} |"
        )
    ops = np.array(data["per_primary_ops"])
    per_primary = ", ".join(f"{v:,.0f}" for v in np.median(ops, axis=0))
    return "\n".join(rows) + (
        f"\n\nCPU: seconds per second during the {data['streams']} streams, of the server and of "
        "every Redis process together (the cluster's six nodes); the server's CPU seconds per "
        "step applied. Operations per second on each "
        f"primary during the {data['streams']} streams on the cluster (confirmed): "
        f"{per_primary}. {data['rounds']} rounds of "
        f"{data['seconds']:.0f} s per figure; medians over rounds, differences and ratios "
        "within a round.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-readme", action="store_true", help="do not update the README")
    parser.add_argument(
        "--summarize", action="store_true", help="only summarize the last run's saved figures"
    )
    args = parser.parse_args()
    saved = RESULTS / "redis_cluster.json"
    if args.summarize:
        data = json.loads(saved.read_text())
    else:
        data = measure(args.rounds, args.seconds)
        RESULTS.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(data, indent=1))
    table = summarize(data)
    print(table)
    if not args.no_readme:
        replace_block("redis-cluster", table)


if __name__ == "__main__":
    main()
