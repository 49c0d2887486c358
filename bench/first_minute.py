"""The first minute against the hundredth: each server measured from 1 s after it reports SERVING,
then again once it has settled, side by side with the KServe peer measured the same way.

Each round starts every server anew. From 1 s after SERVING it measures 20 s: 14 s at one call
in flight (p50, p99 and the server's CPU-seconds per second), then 6 s at 64 in flight
(requests/s). It waits until the server is idle (its compilations ahead of traffic done),
measures the same 20 s again (settled), and stops the server. lstm-serving is measured twice:
with an empty compile cache (a replica on a new machine) and with the cache its previous start
left (a restart, a rollout or an autoscaled replica on a machine that served the model before).

Run with ``make bench`` or alone: ``python bench/first_minute.py [--rounds N] [--no-peer]``.
Writes ``bench/results/first_minute.json`` and the README's block ``first-minute``. Figures are
medians over rounds; ratios are taken within a round (first minute / settled), then their median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lstm_client import bench
from readme import replace_block
from run import (
    BIG,
    MODEL_INFER,
    RESULTS,
    Process,
    _unary,
    infer_requests,
    kserve_peer,
    lstm_command,
    run,
)

SLOW_SECONDS = 14.0  # at one call in flight
FAST_SECONDS = 6.0  # at 64 in flight


def lstm_server(cache: Path) -> Process:
    """An lstm-server on the 32x128 model, its compile cache in ``cache``; not settled."""
    return Process(lstm_command(*BIG, "--compile-cache", str(cache)))


def window(server: Process, method: str, request: bytes) -> dict[str, float]:
    """20 s of calls: one in flight, then 64 in flight."""
    cpu = server.cpu_seconds()
    slow = run(_unary(server.target, method, request, 1, SLOW_SECONDS))
    cpu = (server.cpu_seconds() - cpu) / slow.seconds
    fast = run(_unary(server.target, method, request, 64, FAST_SECONDS))
    return {
        "p50_ms": slow.percentile(50) * 1e3,
        "p99_ms": slow.percentile(99) * 1e3,
        "cpu_at_1": cpu,
        "rps_at_64": fast.rps,
    }


def resident_mb(server: Process) -> float:
    """The server's resident memory (Linux /proc, the same for every server)."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def measure_one(server: Process, method: str, request: bytes) -> dict:
    """The first minute and the settled figures of a server just started, and its resident
    memory once settled."""
    try:
        time.sleep(1.0)
        first = window(server, method, request)
        settle = server.settle()
        settled = window(server, method, request)
        rss = resident_mb(server)
    finally:
        server.stop()
    return {
        "startup_s": server.startup,
        "settle_s": settle,
        "first": first,
        "settled": settled,
        "rss_mb": rss,
    }


def measure(rounds: int, with_peer: bool) -> dict:
    request = bench.predict_request(32, 100, 1)
    predict = (bench.SERVICE + "Predict", request.SerializeToString())
    peer_infer = (MODEL_INFER, infer_requests(request, "big")[0])
    results: dict[str, list[dict]] = {}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", flush=True)
        cache = Path(tempfile.mkdtemp(prefix="lstm-xla-"))
        for name, start, call in (
            ("lstm-serving, empty cache", lambda c=cache: lstm_server(c), predict),
            ("lstm-serving, cache of its last start", lambda c=cache: lstm_server(c), predict),
            *((("KServe", kserve_peer, peer_infer),) if with_peer else ()),
        ):
            figures = measure_one(start(), *call)
            print(f"  {name}: {json.dumps(figures)}", flush=True)
            results.setdefault(name, []).append(figures)
    return {"rounds": rounds, "servers": results}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def markdown(data: dict) -> str:
    lines = [
        "| server | phase | p50 @1 | p99 @1 | CPU-s/s @1 | req/s @64 | start to SERVING |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios = [
        "| server | p50 @1 first/settled | p99 @1 first/settled | req/s @64 first/settled |",
        "| --- | --- | --- | --- |",
    ]
    for name, runs in data["servers"].items():
        for phase in ("first", "settled"):
            figures = [run[phase] for run in runs]
            start = (
                f"{_median([run['startup_s'] for run in runs]):.1f} s" if phase == "first" else ""
            )
            lines.append(
                f"| {name} | {'first 20 s' if phase == 'first' else 'settled'} "
                f"| {_median([f['p50_ms'] for f in figures]):.2f} ms "
                f"| {_median([f['p99_ms'] for f in figures]):.2f} ms "
                f"| {_median([f['cpu_at_1'] for f in figures]):.2f} "
                f"| {_median([f['rps_at_64'] for f in figures]):,.0f} | {start} |"
            )

        def ratio(key: str, runs: list[dict] = runs) -> str:
            per_round = [run["first"][key] / run["settled"][key] for run in runs]
            spread = ", ".join(f"{value:.2f}" for value in per_round)
            return f"{_median(per_round):.2f}x ({spread})"

        ratios.append(f"| {name} | {ratio('p50_ms')} | {ratio('p99_ms')} | {ratio('rps_at_64')} |")
    peer = data["servers"].get("KServe")
    if peer:
        ratios += [
            "",
            "| server | against KServe: p50 @1 settled | req/s @64 settled | resident memory |",
        ]
        ratios.append("| --- | --- | --- | --- |")
        for name, runs in data["servers"].items():
            if name == "KServe":
                continue

            def against(key: str, runs: list[dict] = runs) -> str:
                rounds = [
                    mine["settled"][key] / theirs["settled"][key]
                    for mine, theirs in zip(runs, peer, strict=False)
                ]
                return f"{_median(rounds):.2f}x"

            memory = [
                mine["rss_mb"] / theirs["rss_mb"]
                for mine, theirs in zip(runs, peer, strict=False)
                if "rss_mb" in mine and "rss_mb" in theirs
            ]
            rss = (
                f"{_median([r['rss_mb'] for r in runs]):.0f} MB, {_median(memory):.2f}x"
                if memory
                else ""
            )
            ratios.append(f"| {name} | {against('p50_ms')} | {against('rps_at_64')} | {rss} |")
        kserve_rss = [r["rss_mb"] for r in peer if "rss_mb" in r]
        if kserve_rss:
            ratios.append(f"| KServe | 1x | 1x | {_median(kserve_rss):.0f} MB |")
    return (
        "\n".join(lines)
        + "\n\n"
        + "\n".join(ratios)
        + f"\n\n{data['rounds']} rounds; the first window starts 1 s after SERVING; medians over"
        " rounds, ratios within a round (each round's figures in brackets).\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="leave the KServe peer out")
    parser.add_argument("--summarize", type=Path, help="summarize this results file, not measure")
    args = parser.parse_args(argv)
    if args.summarize:
        data = json.loads(args.summarize.read_text())
    else:
        data = measure(args.rounds, not args.no_peer)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "first_minute.json").write_text(json.dumps(data, indent=1))
    table = markdown(data)
    print(table)
    replace_block("first-minute", table)


if __name__ == "__main__":
    main()
