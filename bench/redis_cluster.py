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
    try:
        primaries = nodes.primaries()
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            names = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in names:
                target = servers[name].target
                single = run(_bidi(target, method, opening, step, 1, seconds))
                before, began = commands(nodes, primaries), time.perf_counter()
                many = run(_bidi(target, method, opening, step, STREAMS, seconds))
                spent = time.perf_counter() - began
                after = commands(nodes, primaries)
                per_round[name].append((single.percentile(50) * 1e3, many.rps))
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
        "| store | p50 step, 1 stream | - one Redis | steps/s, 256 streams | / one Redis |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, figures in rounds.items():
        p50 = median([f[0] for f in figures])
        rps = median([f[1] for f in figures])
        added = median([f[0] - b[0] for f, b in zip(figures, base, strict=True)])
        ratio = median([f[1] / b[1] for f, b in zip(figures, base, strict=True)])
        rows.append(f"| {name} | {p50:.3f} ms | {added:+.3f} ms | {rps:,.0f} | {ratio:.2f}x |")
    ops = np.array(data["per_primary_ops"])
    per_primary = ", ".join(f"{v:,.0f}" for v in np.median(ops, axis=0))
    return "\n".join(rows) + (
        f"\n\nOperations per second on each primary during the {data['streams']} streams on "
        f"the cluster (confirmed): {per_primary}. {data['rounds']} rounds of "
        f"{data['seconds']:.0f} s per figure; medians over rounds, differences and ratios "
        "within a round.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-readme", action="store_true", help="do not update the README")
    args = parser.parse_args()
    data = measure(args.rounds, args.seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "redis_cluster.json").write_text(json.dumps(data, indent=1))
    table = summarize(data)
    print(table)
    if not args.no_readme:
        replace_block("redis-cluster", table)


if __name__ == "__main__":
    main()
