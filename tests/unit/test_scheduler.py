"""The batching scheduler with a gated numpy runtime: the path is chosen once per batch, queued
work batches, numpy work of one loop turn runs as one batch, brief work of a lone call runs on
the loop, deadlines and cancellation drop work before it runs, and stop drains the queue."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from lstm_server.core import scheduler as scheduler_module
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


class CappedInline(NumpyRuntime):
    """Takes the numpy path for batches of at most ``limit`` rows (as the real runtime's cost
    model does for small work), the worker's path beyond."""

    def __init__(self, limit: int) -> None:
        super().__init__(inline=True)
        self.limit = limit

    def runs_inline(self, rows: int, timesteps: int) -> bool:
        return rows <= self.limit


async def test_numpy_work_of_one_loop_turn_runs_as_one_batch(rng) -> None:
    runtime = NumpyRuntime(inline=True)
    seen: list[BatchObservation] = []
    scheduler = BatchScheduler(runtime, observer=seen.append)
    scheduler.start()
    rows = [[row(rng, steps)] for steps in (1, 1, 3, 2)]
    results = await asyncio.gather(*(scheduler.run(r) for r in rows))
    later = await scheduler.run([row(rng)])
    await scheduler.stop()
    assert runtime.calls == [("inline", 4), ("inline", 1)]
    assert [b.rows for b in seen] == [4, 1]
    assert len(seen[0].queue_seconds) == 4
    reference = NumpyLstm(*runtime.weights)
    for [r], [result] in zip(rows, results, strict=True):
        seq, h, c = reference.run(r.x)  # each row gets what it would alone
        np.testing.assert_allclose(result.sequence, seq, atol=1e-5)
        np.testing.assert_allclose(result.state.h, h, atol=1e-5)
        np.testing.assert_allclose(result.state.c, c, atol=1e-5)
    assert len(later) == 1


async def test_gathered_work_runs_in_batches_of_the_numpy_size(rng) -> None:
    runtime = CappedInline(limit=3)
    scheduler = BatchScheduler(runtime)
    scheduler.start()
    sizes = (1, 2, 1, 1, 2, 1)
    results = await asyncio.gather(*(scheduler.run([row(rng)] * n) for n in sizes))
    await scheduler.stop()
    assert runtime.calls == [("inline", 3), ("inline", 2), ("inline", 3)]
    assert [len(r) for r in results] == list(sizes)


async def test_gathered_work_waits_for_tensorflow_work_begun_in_the_same_turn(rng) -> None:
    class StepsInline(GatedRuntime):
        def runs_inline(self, rows: int, timesteps: int) -> bool:
            return timesteps == 1

    runtime = StepsInline()
    scheduler = BatchScheduler(runtime)
    scheduler.start()
    steps = [asyncio.ensure_future(scheduler.run([row(rng, 1)])) for _ in range(2)]
    sequence = asyncio.ensure_future(scheduler.run([row(rng, 5)]))
    await wait_entered(runtime)
    await asyncio.sleep(0.05)
    assert not any(step.done() for step in steps)  # queued behind the TensorFlow call
    runtime.gate.set()
    await asyncio.gather(sequence, *steps)
    await scheduler.stop()
    assert runtime.calls == [("run", 1), ("inline", 2)]


async def test_a_cancelled_gathered_request_is_left_out(rng) -> None:
    runtime = NumpyRuntime(inline=True)
    scheduler = BatchScheduler(runtime)
    scheduler.start()
    kept = asyncio.ensure_future(scheduler.run([row(rng)]))
    dropped = asyncio.ensure_future(scheduler.run([row(rng), row(rng)]))
    await asyncio.sleep(0)  # both have joined this turn's gathering
    dropped.cancel()
    assert len(await kept) == 1
    await scheduler.stop()
    assert runtime.calls == [("inline", 1)]


async def test_without_batching_numpy_work_runs_at_once(rng) -> None:
    runtime = NumpyRuntime(inline=True)
    scheduler = BatchScheduler(runtime, batching=False)
    scheduler.start()
    await asyncio.gather(*(scheduler.run([row(rng)]) for _ in range(3)))
    await scheduler.stop()
    assert runtime.calls == [("inline", 1)] * 3


class ThreadNoting(NumpyRuntime):
    """Notes the thread each compiled-path call ran on."""

    def __init__(self) -> None:
        super().__init__(inline=False)
        self.threads: list[int] = []

    def run(self, x, lengths, h0, c0):  # type: ignore[no-untyped-def]
        self.threads.append(threading.get_ident())
        return super().run(x, lengths, h0, c0)


@pytest.mark.parametrize(
    ("lone", "brief", "on_the_loop"),
    [(True, True, True), (False, True, False), (True, False, False), (None, True, False)],
)
async def test_brief_work_of_the_only_call_runs_on_the_event_loop_after_a_quiet_probe(
    rng, lone: bool | None, brief: bool, on_the_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "QUIET_SECONDS", 60.0)  # however slow the machine
    runtime = ThreadNoting()
    runtime.brief = brief
    scheduler = BatchScheduler(runtime, lone=None if lone is None else lambda: lone)
    scheduler.start()
    for _ in range(3):
        await scheduler.run([row(rng)])
    await scheduler.stop()
    assert runtime.calls == [("run", 1)] * 3
    here = threading.get_ident()
    assert runtime.threads[0] != here  # the first is the probe: on the worker's thread
    assert all((thread == here) is on_the_loop for thread in runtime.threads[1:])


async def test_a_probe_that_sees_other_calls_keeps_work_on_the_worker(
    rng, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "QUIET_SECONDS", 60.0)
    runtime = ThreadNoting()
    runtime.brief = True
    others = [0]
    scheduler = BatchScheduler(runtime, lone=lambda: others[0] == 0)
    scheduler.start()
    await scheduler.run([row(rng)])  # a quiet probe
    await scheduler.run([row(rng)])  # on the loop
    others[0] = 1
    await scheduler.run([row(rng)])  # not alone: a probe, which sees the other call
    others[0] = 0
    await scheduler.run([row(rng)])  # a probe again, now quiet
    await scheduler.run([row(rng)])  # on the loop
    await scheduler.stop()
    here = threading.get_ident()
    assert [thread == here for thread in runtime.threads] == [False, True, False, False, True]


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
