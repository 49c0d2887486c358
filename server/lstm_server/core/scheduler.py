"""The one seam through which all model execution passes: a dynamic batcher.

Requests from any RPC (Predict rows, stream chunks, session steps) are queued; one worker runs
whatever is queued as a single batch as soon as the runtime is free, with no fixed wait, up to
``max_batch_rows`` rows. Each row carries its own initial state and length, so rows from different
requests and sessions batch together and still get exactly what they would get alone.

Work the runtime can do in microseconds without TensorFlow (``runs_inline``) runs on the event
loop instead of the worker thread; when nothing is queued it skips the queue altogether.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lstm_server.core.errors import DeadlineExceeded, ModelNotReady
from lstm_server.core.types import Array, ModelInfo, Row, RowResult, State

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """A stateless model: right-padded x (B, T, input_width) with lengths (B,) and states
    (B, state_size) to results (B, T, timestep_width) and states (see ``ModelInfo``).

    The scheduler asks ``runs_inline`` once per batch and then calls ``run_inline`` (on the event
    loop) or ``run`` (on its worker thread); the runtime does not ask again.
    """

    info: ModelInfo

    def runs_inline(self, rows: int, timesteps: int) -> bool:
        """True for work so small (microseconds, no TensorFlow) that a thread hop costs more."""
        ...

    def run_inline(
        self, x: Array, lengths: Array, h0: Array, c0: Array
    ) -> tuple[Array, Array, Array]:
        """The cheap path, for work ``runs_inline`` accepted."""
        ...

    def run(self, x: Array, lengths: Array, h0: Array, c0: Array) -> tuple[Array, Array, Array]:
        """The compiled path, for any size of work."""
        ...

    def close(self) -> None:
        """Release threads and compiled state."""
        ...


@dataclass(frozen=True)
class BatchObservation:
    """What one runtime call did, for whoever observes the scheduler (metrics)."""

    rows: int
    sequences: int
    timesteps: int
    queue_seconds: list[float]
    inference_seconds: float


class BatchTracer(Protocol):
    """Told of each model call and the requests in it (tracing implements it)."""

    def capture(self) -> object:
        """The calling request's trace context, taken when it joins the queue."""
        ...

    def batch_ran(
        self, callers: Sequence[object], queued_at: Sequence[float], started: float, ended: float,
        rows: int,
    ) -> None:  # fmt: skip
        """A model call of ``rows`` rows from the requests ``callers``, which joined the queue at
        ``queued_at``; wall-clock times (``time.time()``). Told once the requests have their
        results, so that recording it is off their path."""
        ...


@dataclass
class _Pending:
    rows: Sequence[Row]
    future: asyncio.Future[list[RowResult]]
    enqueued: float
    deadline: float | None = None
    trace: object = None
    queued_at: float = 0.0  # wall clock, for tracing


class BatchScheduler:
    """Queues rows for the runtime and runs them in batches on one worker thread."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        max_batch_rows: int = 64,
        batching: bool = True,
        observer: Callable[[BatchObservation], None] | None = None,
        tracer: BatchTracer | None = None,
    ) -> None:
        self.runtime = runtime
        self.max_batch_rows = max_batch_rows
        self.batching = batching
        self._observer = observer
        self._tracer = tracer
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstm-runtime")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._busy = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="lstm-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker and its thread."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def run(self, rows: Sequence[Row], *, deadline: float | None = None) -> list[RowResult]:
        """Run rows (each alone, as far as results go); ``deadline`` is a ``time.monotonic()``."""
        if self._closed:
            raise ModelNotReady("the server is shutting down", reason="SHUTTING_DOWN")
        if not self._busy and not self._queue:
            # Nothing to batch with: run it now, skipping the queue and the worker's turn.
            return await self._run_alone(rows)
        future: asyncio.Future[list[RowResult]] = asyncio.get_running_loop().create_future()
        pending = _Pending(rows, future, time.monotonic(), deadline)
        if self._tracer is not None:
            pending.trace, pending.queued_at = self._tracer.capture(), time.time()
        self._queue.append(pending)
        self._wakeup.set()
        return await future

    async def _run_alone(self, rows: Sequence[Row]) -> list[RowResult]:
        """Rows of a request that found the runtime idle: microseconds of numpy work run here,
        the rest on the runtime's thread; requests that come meanwhile queue for the worker."""
        loop = asyncio.get_running_loop()
        started, wall = time.monotonic(), time.time()
        self._busy = True
        try:
            results = await self._compute(loop, rows)
        except Exception:
            log.exception("model execution failed")
            raise
        finally:
            self._busy = False
            if self._queue:
                self._wakeup.set()
        self._observe(rows, [0.0], started)
        if self._tracer is not None:
            traces = [self._tracer.capture()]
            self._trace_later(loop, traces, [wall], wall, time.time(), len(rows))
        return results

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and not self._busy:  # a request running alone wakes us after
                batch = self._take_batch()
                if not batch:
                    continue
                self._busy = True
                try:
                    await self._execute(loop, batch)
                finally:
                    self._busy = False
            if self._closed and not self._queue:
                return

    def _take_batch(self) -> list[_Pending]:
        """Take queued requests in order up to the row limit; drop cancelled and expired ones."""
        batch: list[_Pending] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            item = self._queue[0]
            if item.future.done():
                self._queue.popleft()
                continue
            if item.deadline is not None and now >= item.deadline:
                self._queue.popleft()
                item.future.set_exception(
                    DeadlineExceeded("the deadline passed before the request could run")
                )
                continue
            if batch and (not self.batching or rows + len(item.rows) > self.max_batch_rows):
                break
            batch.append(self._queue.popleft())
            rows += len(item.rows)
        return batch

    async def _compute(
        self, loop: asyncio.AbstractEventLoop, rows: Sequence[Row]
    ) -> list[RowResult]:
        """The rows' results: numpy work here on the event loop, the rest on the runtime's
        thread."""
        if self.runtime.runs_inline(len(rows), max(row.x.shape[0] for row in rows)):
            return _run_rows(self.runtime.run_inline, rows)
        return await loop.run_in_executor(self._executor, _run_rows, self.runtime.run, rows)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        rows = [row for item in batch for row in item.rows]
        started, wall = time.monotonic(), time.time()
        try:
            results = await self._compute(loop, rows)
            ended = time.time()
            self._observe(rows, [started - item.enqueued for item in batch], started)
        except Exception as exc:
            log.exception("model execution failed")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        offset = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(results[offset : offset + len(item.rows)])
            offset += len(item.rows)
        if self._tracer is not None:  # after the requests' own wake-ups
            traces = [item.trace for item in batch]
            queued = [item.queued_at for item in batch]
            self._trace_later(loop, traces, queued, wall, ended, len(rows))

    def _trace_later(
        self, loop: asyncio.AbstractEventLoop, traces: list[object], queued_at: list[float],
        started: float, ended: float, rows: int,
    ) -> None:  # fmt: skip
        """Tell the tracer of a model call on the loop's next turn, once its requests have gone
        on with their results: recording it is then off their path."""
        assert self._tracer is not None
        loop.call_soon(self._tracer.batch_ran, traces, queued_at, started, ended, rows)

    def _observe(self, rows: Sequence[Row], waits: list[float], started: float) -> None:
        if self._observer is None:
            return
        self._observer(
            BatchObservation(
                rows=len(rows),
                sequences=sum(not row.continues for row in rows),
                timesteps=sum(row.x.shape[0] for row in rows),
                queue_seconds=waits,
                inference_seconds=time.monotonic() - started,
            )
        )


RunFunction = Callable[[Array, Array, Array, Array], tuple[Array, Array, Array]]


def _run_rows(run: RunFunction, rows: Sequence[Row]) -> list[RowResult]:
    """Pad rows into one batch, run it, and cut each row's result back to its own length."""
    lengths = np.array([row.x.shape[0] for row in rows])
    if len(rows) == 1:  # the common case of one request alone: no copies
        state = rows[0].initial_state
        x, h0, c0 = rows[0].x[None], state.h[None], state.c[None]
    else:
        x = np.zeros((len(rows), int(lengths.max()), rows[0].x.shape[1]), np.float32)
        for i, row in enumerate(rows):
            x[i, : lengths[i]] = row.x
        h0 = np.stack([row.initial_state.h for row in rows])
        c0 = np.stack([row.initial_state.c for row in rows])
    sequence, h, c = run(x, lengths, h0, c0)
    return [RowResult(sequence[i, : lengths[i]], State(h[i], c[i])) for i in range(len(rows))]
