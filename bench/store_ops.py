"""The session stores' own cost, in-process: the client CPU of creating a session and of a
compare-and-set (a step's write), 64 at once, on one redis-server and on a three-primary Redis
Cluster with a replica each (writes confirmed by a replica, and not). The server's CPU per step
in ``bench/redis_cluster.py`` is this plus everything else a step does.

``python bench/store_ops.py [--rounds N]``: prints one line per store and round.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from lstm_server.core.store import AppliedStep, SessionRecord, SessionStore
from lstm_server.core.types import State
from lstm_server.sessions.redis import RedisSessionStore
from lstm_server.sessions.redis_cluster import RedisClusterSessionStore
from run import redis_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.redis_cluster import RedisClusterNodes  # noqa: E402  (the tests' cluster, reused)

UNITS = 128


def record(i: int) -> SessionRecord:
    return SessionRecord(
        session_id=f"s{i}",
        state=State(np.zeros(UNITS, np.float32), np.ones(UNITS, np.float32)),
        step_count=0,
        model_version="v",
        ttl_seconds=600,
        expires_at=time.time() + 600,
        last_step=AppliedStep(1, "digest", np.zeros((1, UNITS), np.float32), "write"),
    )


async def measure(store: SessionStore, writes: int = 2000, at_once: int = 64) -> str:
    await store.open()
    try:
        records = [record(i) for i in range(at_once)]
        began = time.process_time()
        for r in records:
            await store.create(r, max_sessions=100_000)
        create = (time.process_time() - began) / at_once * 1e3
        revisions = [0] * at_once

        async def writer(j: int) -> None:
            for _ in range(writes // at_once):
                updated = replace(records[j], revision=revisions[j] + 1)
                assert await store.compare_and_set(updated, expected_revision=revisions[j])
                revisions[j] += 1

        began, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(writer(j) for j in range(at_once)))
        cas = (time.process_time() - began) / writes * 1e3
        rate = writes / (time.perf_counter() - wall)
        return f"create {create:.3f} ms CPU, compare-and-set {cas:.3f} ms CPU, {rate:,.0f}/s"
    finally:
        await store.close()


async def main(rounds: int) -> None:
    one, url = redis_server()
    if one is None:
        raise SystemExit("redis-server is not installed (`make system-deps` installs it)")
    nodes = RedisClusterNodes(Path(tempfile.mkdtemp()))
    try:
        for r in range(rounds):
            stores = {
                "one Redis": RedisSessionStore(url, prefix=f"one{r}:"),
                "cluster": RedisClusterSessionStore(nodes.url, prefix=f"cluster{r}:"),
                "cluster, confirm=0": RedisClusterSessionStore(
                    nodes.url + "?confirm=0", prefix=f"unconfirmed{r}:"
                ),
            }
            for name, store in stores.items():
                print(f"round {r + 1} {name:20s} {await measure(store)}", flush=True)
    finally:
        nodes.stop()
        one.terminate()
        one.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
