"""The model repository's costs, side by side in one run: a Predict with five models loaded
against one, session steps while a new version loads against before, and resident memory per
loaded version and after ten load/unload cycles.

Run with ``make bench`` (after ``bench/run.py``) or alone: ``python bench/repository.py``. Writes
``bench/results/repository.json`` and the README's block ``repository``. Figures are medians over
rounds; ratios are taken within a round, then their median.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
from lstm_client import LstmClient, bench
from readme import replace_block
from run import RESULTS, _bidi, _unary, lstm_server, median, run

FEATURES, UNITS = 32, 128
EXTRA_MODELS = ("m1", "m2", "m3", "m4")
CYCLES = 10
DURING_SECONDS = 10.0  # the load of a 32x128 version and the compilation after it fit in this


def save_models(models: dict[Path, int]) -> None:
    """32-feature, 128-unit models, each at its path with its seed, in one process (TensorFlow
    is imported once)."""
    script = (
        "import json, sys, pathlib\n"
        "from lstm_server.runtime.keras_model import default_chain, save_chain\n"
        "for path, seed in json.loads(sys.argv[1]).items():\n"
        f"    save_chain(default_chain({FEATURES}, {UNITS}, seed=seed), pathlib.Path(path))\n"
    )
    wanted = json.dumps({str(path): seed for path, seed in models.items()})
    subprocess.run(
        [sys.executable, "-c", script, wanted],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def sample(url: str, name: str, **labels: str) -> float:
    """The sum of ``name`` over the label sets that have ``labels``, scraped now."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def wait_ready(target: str, name: str, version: int, timeout: float = 300) -> float:
    began = time.perf_counter()
    with LstmClient(target, timeout=10) as client:
        while (name, version, "READY") not in {
            (m.name, m.version, m.state) for m in client.list_models()
        }:
            if time.perf_counter() - began > timeout:
                raise TimeoutError(f"{name} {version} not ready")
            time.sleep(0.1)
    return time.perf_counter() - began


def measure(rounds: int, seconds: float) -> dict:
    root = Path(tempfile.mkdtemp())
    models = root / "models"
    one, five, rolling, control = (root / d for d in ("one", "five", "rolling", "control"))
    wanted = {models / "big" / "1" / "model.keras": 1}
    for seed, name in enumerate(EXTRA_MODELS, start=2):
        wanted[models / name / "1" / "model.keras"] = seed
    for version in range(2, rounds + 2):
        wanted[models / "big" / str(version) / "model.keras"] = 10 + version
    save_models(wanted)
    for folder, names in ((one, ["big"]), (five, ["big", *EXTRA_MODELS])):
        for name in names:
            shutil.copytree(models / name / "1", folder / name / "1")
    shutil.copytree(models / "big" / "1", rolling / "big" / "1")
    shutil.copytree(models / "big" / "1", control / "big" / "1")

    request = bench.predict_request(FEATURES, 100, 1)
    request.model.name = "big"
    raw = request.SerializeToString()
    opening, step = bench.session_messages(FEATURES, 1)
    predict = bench.SERVICE + "Predict"
    per_round: dict[str, list] = {}

    def record(key: str, value: object) -> None:
        per_round.setdefault(key, []).append(value)

    single = lstm_server("--model-repository", str(one))
    several = lstm_server("--model-repository", str(five))
    roller = lstm_server(
        "--model-repository",
        str(rolling),
        "--model-control-mode",
        "poll",
        "--repository-poll-interval",
        "0.5",
    )
    metrics = f"http://127.0.0.1:{roller.metrics_port}/metrics"
    try:
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            # A, B, B, A: a drift of the machine within the round weighs on both alike.
            p50: dict[str, list[float]] = {"one": [], "five": []}
            for key in ("one", "five", "five", "one"):
                server = single if key == "one" else several
                load = run(_unary(server.target, predict, raw, 1, seconds / 2))
                p50[key].append(load.percentile(50))
            record("predict", (median(p50["one"]), median(p50["five"])))

            before = run(_bidi(roller.target, bench.SERVICE + "StreamSession", opening, step, 8,
                               seconds))  # fmt: skip
            loading = sample(metrics, "lstm_model_load_seconds_sum")
            failed = sample(metrics, "lstm_model_requests_total", outcome="failure")
            refused = sample(metrics, "lstm_session_steps_refused_total")
            version = r + 2
            shutil.copytree(models / "big" / str(version), rolling / "big" / f".{version}")
            os.rename(rolling / "big" / f".{version}", rolling / "big" / str(version))
            during = run(_bidi(roller.target, bench.SERVICE + "StreamSession", opening, step, 8,
                               DURING_SECONDS))  # fmt: skip
            wait_ready(roller.target, "big", version)
            load_s = sample(metrics, "lstm_model_load_seconds_sum") - loading
            failures = (
                sample(metrics, "lstm_model_requests_total", outcome="failure")
                - failed
                + sample(metrics, "lstm_session_steps_refused_total")
                - refused
            )
            record(
                "rollout",
                {
                    "p99 before": before.percentile(99),
                    "p99 during": during.percentile(99),
                    "p50 before": before.percentile(50),
                    "p50 during": during.percentile(50),
                    "steps during": during.requests,
                    "failed": failures,
                    "load s": load_s,
                },
            )
            roller.settle()
    finally:
        for server in (single, several, roller):
            server.stop()

    controlled = lstm_server("--model-repository", str(control), "--model-control-mode", "explicit")
    try:
        triton = triton_grpc.InferenceServerClient(controlled.target)
        with LstmClient(controlled.target, timeout=120) as client:
            client.with_model("big").predict(bench_input())
            controlled.settle()
            start = controlled.rss_mb()
            loaded = [start]
            for name in EXTRA_MODELS:
                shutil.copytree(models / name / "1", control / name / "1")
                triton.load_model(name)
                client.with_model(name).predict(bench_input())
                controlled.settle()
                loaded.append(controlled.rss_mb())
            for name in EXTRA_MODELS:
                triton.unload_model(name)
            controlled.settle()
            unloaded = controlled.rss_mb()
            cycles = []
            for _ in range(CYCLES):
                triton.load_model("m1")
                client.with_model("m1").predict(bench_input())
                triton.unload_model("m1")
                controlled.settle()
                cycles.append(controlled.rss_mb())
    finally:
        controlled.stop()
    shutil.rmtree(root, ignore_errors=True)
    return {
        "per_round": per_round,
        "memory_mb": {"loaded": loaded, "unloaded": unloaded, "cycles": cycles},
        "rounds": rounds,
        "seconds": seconds,
    }


def bench_input() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, size=(100, FEATURES)).astype(np.float32)


def summarize(data: dict) -> str:
    rounds = data["per_round"]
    one = median([a for a, _ in rounds["predict"]])
    five = median([b for _, b in rounds["predict"]])
    ratio = median([b / a for a, b in rounds["predict"]])
    rollout = rounds["rollout"]
    p99_ratio = median([r["p99 during"] / r["p99 before"] for r in rollout])
    failed = sum(r["failed"] for r in rollout)
    steps = sum(r["steps during"] for r in rollout)
    memory = data["memory_mb"]
    loaded = memory["loaded"]
    per_version = median([b - a for a, b in itertools.pairwise(loaded)])
    cycles = memory["cycles"]
    lines = [
        "| model repository (32 features, 128 units) | figure | goal |",
        "| --- | --- | --- |",
        f"| Predict p50 (100 timesteps, 1 in flight), 5 models loaded / 1 | "
        f"{five * 1e3:.2f} / {one * 1e3:.2f} ms = {ratio:.2f}x | <= 1.05x |",
        f"| session step p99 (8 streams) while a new version loads / before | "
        f"{median([r['p99 during'] for r in rollout]) * 1e3:.2f} / "
        f"{median([r['p99 before'] for r in rollout]) * 1e3:.2f} ms = {p99_ratio:.2f}x; "
        f"{failed:.0f} failed of {steps} | <= 1.5x, none failed |",
        f"| resident memory per additional loaded version | {per_version:.1f} MB | |",
        f"| resident memory: start / 4 more loaded / unloaded / after {len(cycles)} load-unload "
        f"cycles | {loaded[0]:.0f} / {loaded[-1]:.0f} / {memory['unloaded']:.0f} / "
        f"{cycles[-1]:.0f} MB ({cycles[-1] - loaded[0]:+.0f} MB) | within 20 MB of the start |",
    ]
    return (
        "\n".join(lines)
        + "\n\n"
        + (
            f"{data['rounds']} rounds, {data['seconds']} s each; step p99 during a load measured "
            f"over the {DURING_SECONDS:.0f} s after the version is dropped in (the loads took "
            f"{median([r['load s'] for r in rollout]):.1f} s, median).\n"
        )
    )


def main(argv: list[str] | None = None, report: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    data = measure(args.rounds, args.seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "repository.json").write_text(json.dumps(data, indent=1, default=str))
    table = summarize(data)
    replace_block("repository", table)
    report(table)


if __name__ == "__main__":
    main()
