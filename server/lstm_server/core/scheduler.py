"""The one seam through which all model execution passes: a dynamic batcher.

Requests from any RPC (Predict rows, stream chunks, session steps) are queued; one worker runs
whatever is queued as a single batch as soon as the runtime is free, with no fixed wait, up to
``max_batch_rows`` rows. Each row carries its own initial state and length, so rows from different
requests and sessions batch together and still get exactly what they would get alone.

Work the runtime can do in microseconds without TensorFlow (``runs_inline``) runs on the event
loop instead of the worker thread. When nothing is queued it skips the queue: such work that
arrives within one turn of the event loop (the steps of many session streams, say) is gathered
and run as one batch at the end of that turn. A brief TensorFlow call of the only call the server
is serving runs on the event loop too: the hand-off to the worker's thread and back costs more
than it saves when nothing could batch with it.
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

# How long one run on the worker's thread that saw no other call arrive lets the brief runs of
# lone calls take the event loop instead (see ``BatchScheduler._quiet``).
QUIET_SECONDS = 0.05


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

    def runs_briefly(self, rows: int, timesteps: int) -> bool:
        """True for compiled TensorFlow work that took under a few milliseconds the last time
        work of its shape ran: ``run`` may then be called on the event loop."""
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
        lone: Callable[[], bool] | None = None,
    ) -> None:
        """``lone``: whether the server is serving one call only (the caller's); brief work of
        such a call runs on the event loop instead of the worker's thread."""
        self.runtime = runtime
        self.max_batch_rows = max_batch_rows
        self.batching = batching
        self._observer = observer
        self._tracer = tracer
        self._lone = lone
        self._quiet_at: float | None = None  # when a run on the worker's thread last saw none
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lstm-runtime")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._busy = False
        self._gathered: list[_Pending] = []

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
            inline = self.runtime.runs_inline(len(rows), _timesteps(rows))
            if inline and self.batching:
                return await self._gather(rows, deadline)
            # Nothing to batch with: run it now, skipping the queue and the worker's turn.
            return await self._run_alone(rows, inline)
        pending = self._pending(rows, deadline)
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    def _pending(self, rows: Sequence[Row], deadline: float | None) -> _Pending:
        future: asyncio.Future[list[RowResult]] = asyncio.get_running_loop().create_future()
        pending = _Pending(rows, future, time.monotonic(), deadline)
        if self._tracer is not None:
            pending.trace, pending.queued_at = self._tracer.capture(), time.time()
        return pending

    async def _gather(self, rows: Sequence[Row], deadline: float | None) -> list[RowResult]:
        """Numpy-sized rows join the ones gathered in this turn of the event loop; the first
        asks for them all to run once the turn's other ready callbacks have had theirs."""
        pending = self._pending(rows, deadline)
        if not self._gathered:
            asyncio.get_running_loop().call_soon(self._run_gathered)
        self._gathered.append(pending)
        return await pending.future

    def _run_gathered(self) -> None:
        """Run what this turn gathered in numpy batches, each as large as numpy still does
        faster than one TensorFlow call; if TensorFlow work started meanwhile, queue it all to
        run with the worker's next batch (unless the worker is stopping)."""
        batch, self._gathered = [item for item in self._gathered if not item.future.done()], []
        if (self._busy or self._queue) and not self._closed:
            self._queue.extend(batch)
            self._wakeup.set()
            return
        part: list[_Pending] = []
        rows = timesteps = 0
        for item in batch:
            longest = max(timesteps, _timesteps(item.rows))
            if part and not self.runtime.runs_inline(rows + len(item.rows), longest):
                self._run_inline(part)
                part, rows, longest = [], 0, _timesteps(item.rows)
            part.append(item)
            rows, timesteps = rows + len(item.rows), longest
        if part:
            self._run_inline(part)

    def _run_inline(self, batch: list[_Pending]) -> None:
        """One numpy batch of gathered requests, run here on the event loop."""
        rows = [row for item in batch for row in item.rows]
        started, wall = time.monotonic(), time.time()
        try:
            results = _run_rows(self.runtime.run_inline, rows)
        except Exception as exc:
            self._failed(batch, exc)
            return
        self._ran(asyncio.get_running_loop(), batch, rows, results, started, wall)

    async def _run_alone(self, rows: Sequence[Row], inline: bool) -> list[RowResult]:
        """Rows of a request that found the runtime idle: microseconds of numpy work, and brief
        compiled work of the server's only call, run here; the rest on the runtime's thread,
        and requests that come meanwhile queue for the worker."""
        loop = asyncio.get_running_loop()
        started, wall = time.monotonic(), time.time()
        self._busy = True
        try:
            if inline:
                results = _run_rows(self.runtime.run_inline, rows)
            elif self._quiet(started) and self.runtime.runs_briefly(len(rows), _timesteps(rows)):
                results = _run_rows(self.runtime.run, rows)  # nothing to wait for or batch with
            else:
                results = await loop.run_in_executor(
                    self._executor, _run_rows, self.runtime.run, rows
                )
                # Whether calls came while it ran, now that the loop was free to take them.
                quiet = self._lone is not None and self._lone() and not self._queue
                self._quiet_at = time.monotonic() if quiet else None
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
                self._quiet_at = None  # calls queued: the server is not serving one alone
                try:
                    await self._execute(loop, batch)
                finally:
                    self._busy = False
            if self._closed and not self._queue:
                return

    def _quiet(self, now: float) -> bool:
        """Whether the server serves this call only and the last call to run on the worker's
        thread, within ``QUIET_SECONDS``, saw no other arrive while it ran. A call run on the
        event loop keeps the loop from taking new calls, so they cannot be seen meanwhile: the
        worker's runs are the probes, and under load each of them sees the others."""
        return (
            self._quiet_at is not None
            and now - self._quiet_at < QUIET_SECONDS
            and self._lone is not None
            and self._lone()
        )

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
        if self.runtime.runs_inline(len(rows), _timesteps(rows)):
            return _run_rows(self.runtime.run_inline, rows)
        return await loop.run_in_executor(self._executor, _run_rows, self.runtime.run, rows)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        rows = [row for item in batch for row in item.rows]
        started, wall = time.monotonic(), time.time()
        try:
            results = await self._compute(loop, rows)
        except Exception as exc:
            self._failed(batch, exc)
            return
        self._ran(loop, batch, rows, results, started, wall)

    @staticmethod
    def _failed(batch: list[_Pending], error: Exception) -> None:
        """A batch's model call failed (called where it was caught): each request gets it."""
        log.exception("model execution failed")
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    def _ran(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], rows: list[Row],
        results: list[RowResult], started: float, wall: float,
    ) -> None:  # fmt: skip
        """A batch's model call is done: observe it, give each request its own rows' results,
        then tell the tracer (after the requests' own wake-ups)."""
        ended = time.time()
        self._observe(rows, [started - item.enqueued for item in batch], started)
        offset = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(results[offset : offset + len(item.rows)])
            offset += len(item.rows)
        if self._tracer is not None:
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


def _timesteps(rows: Sequence[Row]) -> int:
    return max(row.x.shape[0] for row in rows)


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
