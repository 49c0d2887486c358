"""The batching scheduler with a gated numpy runtime: the path is chosen once per batch, queued
work batches, deadlines and cancellation drop work before it runs, and stop drains the queue."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from lstm_server.core.errors import DeadlineExceeded, ModelNotReady
from lstm_server.core.scheduler import BatchObservation, BatchScheduler
from lstm_server.core.types import Row, State

from tests.helpers import NumpyRuntime
from tests.reference import NumpyLstm


class GatedRuntime(NumpyRuntime):
    """Holds every ``run`` (the worker thread's path) until the test opens the gate."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(inline=False, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.asked = 0

    def runs_inline(self, rows: int, timesteps: int) -> bool:
        self.asked += 1
        return super().runs_inline(rows, timesteps)

    def run(self, x, lengths, h0, c0):  # type: ignore[no-untyped-def]
        self.entered.set()
        assert self.gate.wait(timeout=10), "the test never opened the gate"
        return super().run(x, lengths, h0, c0)


def row(rng: np.random.Generator, steps: int = 2) -> Row:
    return Row(rng.normal(size=(steps, 3)).astype(np.float32), State.zeros(4))


async def wait_entered(runtime: GatedRuntime) -> None:
    await asyncio.to_thread(runtime.entered.wait, 10)


async def test_results_equal_the_reference_for_rows_of_different_lengths(rng) -> None:
    runtime = NumpyRuntime(inline=False)
    scheduler = BatchScheduler(runtime)
    scheduler.start()
    rows = [row(rng, 5), row(rng, 1), row(rng, 3)]
    results = await scheduler.run(rows)
    await scheduler.stop()
    reference = NumpyLstm(*runtime.weights)
    for r, result in zip(rows, results, strict=True):
        seq, h, c = reference.run(r.x)
        np.testing.assert_allclose(result.sequence, seq, atol=1e-5)
        np.testing.assert_allclose(result.state.h, h, atol=1e-5)
        np.testing.assert_allclose(result.state.c, c, atol=1e-5)
    assert runtime.calls == [("run", 3)]


async def test_the_path_is_decided_once_per_call(rng) -> None:
    runtime = GatedRuntime()
    runtime.gate.set()
    scheduler = BatchScheduler(runtime)
    scheduler.start()
    await scheduler.run([row(rng)])
    await scheduler.stop()
    assert runtime.asked == 1  # a request that finds the runtime idle skips the queue
    assert runtime.calls == [("run", 1)]

    inline = NumpyRuntime(inline=True)
    scheduler = BatchScheduler(inline)
    scheduler.start()
    await scheduler.run([row(rng)])
    await scheduler.stop()
    assert inline.calls == [("inline", 1)]


async def test_work_queued_while_the_runtime_is_busy_runs_as_one_batch(rng) -> None:
    runtime = GatedRuntime()
    seen: list[BatchObservation] = []
    scheduler = BatchScheduler(runtime, observer=seen.append)
    scheduler.start()
    first = asyncio.ensure_future(scheduler.run([row(rng)]))
    await wait_entered(runtime)
    queued = [asyncio.ensure_future(scheduler.run([row(rng), row(rng)])) for _ in range(3)]
    await asyncio.sleep(0.05)
    runtime.gate.set()
    await asyncio.gather(first, *queued)
    await scheduler.stop()
    assert [b.rows for b in seen] == [1, 6]
    assert len(seen[1].queue_seconds) == 3


async def test_without_batching_each_request_runs_alone(rng) -> None:
    runtime = GatedRuntime()
    seen: list[BatchObservation] = []
    scheduler = BatchScheduler(runtime, batching=False, observer=seen.append)
    scheduler.start()
    first = asyncio.ensure_future(scheduler.run([row(rng)]))
    await wait_entered(runtime)
    queued = [asyncio.ensure_future(scheduler.run([row(rng)])) for _ in range(3)]
    await asyncio.sleep(0.05)
    runtime.gate.set()
    await asyncio.gather(first, *queued)
    await scheduler.stop()
    assert [b.rows for b in seen] == [1, 1, 1, 1]


async def test_a_deadline_that_passes_in_the_queue_is_not_run(rng) -> None:
    runtime = GatedRuntime()
    scheduler = BatchScheduler(runtime)
    scheduler.start()
    first = asyncio.ensure_future(scheduler.run([row(rng)]))
    await wait_entered(runtime)
    late = asyncio.ensure_future(scheduler.run([row(rng, 7)], deadline=time.monotonic() + 0.01))
    await asyncio.sleep(0.05)
    runtime.gate.set()
    await first
    with pytest.raises(DeadlineExceeded):
        await late
    await scheduler.stop()
    assert runtime.calls == [("run", 1)]


async def test_cancelled_work_is_dropped_from_the_queue(rng) -> None:
    runtime = GatedRuntime()
    scheduler = BatchScheduler(runtime)
    scheduler.start()
    first = asyncio.ensure_future(scheduler.run([row(rng)]))
    await wait_entered(runtime)
    cancelled = asyncio.ensure_future(scheduler.run([row(rng), row(rng), row(rng)]))
    kept = asyncio.ensure_future(scheduler.run([row(rng)]))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    runtime.gate.set()
    await asyncio.gather(first, kept)
    await scheduler.stop()
    assert runtime.calls == [("run", 1), ("run", 1)]


async def test_stop_finishes_queued_work_then_refuses(rng) -> None:
    runtime = GatedRuntime()
    scheduler = BatchScheduler(runtime)
    scheduler.start()
    first = asyncio.ensure_future(scheduler.run([row(rng)]))
    await wait_entered(runtime)
    queued = asyncio.ensure_future(scheduler.run([row(rng)]))
    await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(scheduler.stop())
    runtime.gate.set()
    await stopping
    assert len(await first) == 1
    assert len(await queued) == 1
    with pytest.raises(ModelNotReady, match="shutting down") as stopped:
        await scheduler.run([row(rng)])
    assert stopped.value.reason == "SHUTTING_DOWN"
