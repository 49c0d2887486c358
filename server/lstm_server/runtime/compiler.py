"""Compiling shapes in the background, most wanted first, out of the way of calls.

XLA compiles once per concrete shape (tenths of a second each, on TensorFlow's own threads at
the process's normal priority). Calls never wait for it: a shape not compiled yet runs on a
slower function that takes any shape while a thread compiles it. Shapes that calls are meeting
now and have no compiled form at all are compiled at once. Shapes that only make calls faster
(a faster form of a shape traffic meets, or shapes traffic has not met yet) wait until the
server has been idle for a moment, or, when it never is, until they have waited long enough:
compiling them in the middle of traffic takes the cores calls are using.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from enum import IntEnum
from functools import partial

log = logging.getLogger(__name__)

Shape = tuple[int, int]  # (rows, timesteps)

IDLE_SECONDS = 0.25  # with no call for this long, the background compiles


class Priority(IntEnum):
    """NOW: a call met the shape, and runs on the uncompiled function until it is compiled.
    SOON: a call met the shape, and runs on a slower compiled form meanwhile. AHEAD: a shape
    traffic has not met yet."""

    NOW = 0
    SOON = 1
    AHEAD = 2


# How long a SOON or AHEAD shape waits for an idle moment before it is compiled anyway.
PATIENCE = {Priority.SOON: 2.0, Priority.AHEAD: 60.0}


class Compiled:
    """The shapes one function is compiled for, compiling the others on a ``Compiler``'s thread.

    ``compile(shape)`` runs the function once on that shape; at most ``limit`` shapes are ever
    compiled or queued (None: no limit). ``ready``: the set of shapes compiled so far, when
    the function's compiled programs are shared with others that may have compiled some.
    ``met(shape)``: called on the compiler's thread for each shape a call meets first."""

    def __init__(
        self,
        compiler: Compiler,
        compile: Callable[[Shape], None],
        limit: int | None = None,
        *,
        ready: set[Shape] | None = None,
        met: Callable[[Shape], None] | None = None,
    ) -> None:
        self._compiler = compiler
        self._compile = compile
        self._limit = limit
        self._ready: set[Shape] = set() if ready is None else ready
        self._queued: dict[Shape, Priority] = {}
        self._met = met  # told, on the compiler's thread, of each shape a call met first

    def ready(self, shape: Shape, *, priority: Priority = Priority.NOW) -> bool:
        """Whether ``shape`` is compiled; if not, have it compiled with ``priority`` (sooner, if
        it was queued with a lower one)."""
        if shape in self._ready:
            return True
        queued = self._queued.get(shape)
        if queued is None and self._limit is not None and len(self._queued) >= self._limit:
            return False
        first_met = priority is not Priority.AHEAD and queued in (None, Priority.AHEAD)
        if first_met and self._met is not None:
            self._compiler.submit(partial(self._met, shape), Priority.NOW)
        if queued is None or priority < queued:
            self._queued[shape] = priority
            self._compiler.submit(lambda: self.compile_now(shape), priority)
        return False

    def has(self, shape: Shape) -> bool:
        """Whether ``shape`` is compiled (without having it compiled)."""
        return shape in self._ready

    def compile_now(self, shape: Shape) -> None:
        """Compile ``shape`` on the calling thread (once)."""
        if shape not in self._ready:
            self._compile(shape)
            self._ready.add(shape)
            self._queued.setdefault(shape, Priority.NOW)

    @property
    def shapes(self) -> frozenset[Shape]:
        return frozenset(self._ready)


class _Worker:
    """A thread that runs jobs in order, at ``niceness`` (Linux: a thread's own nice value)."""

    def __init__(self, name: str, niceness: int) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._niceness = niceness
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _next(self) -> Callable[[], None] | None:
        return self._jobs.get()

    def _work(self) -> None:
        if self._niceness:
            with contextlib.suppress(OSError, AttributeError):  # not Linux: normal priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._niceness)
        while (job := self._next()) is not None:
            try:
                job()
            except Exception:  # a shape that fails to compile keeps running on the fallback
                log.exception("compiling a shape failed")

    def drain(self, timeout: float) -> bool:
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout)

    def close(self, *, drop: bool) -> None:
        if drop:  # what is queued is not compiled
            with contextlib.suppress(queue.Empty):
                while True:
                    self._jobs.get_nowait()
        self._jobs.put(None)
        self._thread.join()


class _Waiting(_Worker):
    """A worker whose jobs wait for an idle moment (``idle()``: seconds since the last call)
    or for their priority's patience, SOON ones first; jobs of equal priority in order."""

    def __init__(self, name: str, niceness: int, idle: Callable[[], float]) -> None:
        self._idle = idle
        self._order = itertools.count()
        self._queue: queue.PriorityQueue[tuple[int, int, float, Callable[[], None] | None]] = (
            queue.PriorityQueue()
        )
        self._bypass = threading.Event()
        super().__init__(name, niceness)

    def submit(self, job: Callable[[], None], priority: Priority = Priority.AHEAD) -> None:
        self._queue.put((priority, next(self._order), time.monotonic(), job))

    def _next(self) -> Callable[[], None] | None:
        while True:  # the most urgent job, once it may run
            priority, order, queued, job = self._queue.get()
            if job is None or self._may_run(Priority(priority), queued):
                return job
            self._queue.put((priority, order, queued, job))
            self._bypass.wait(0.05)

    def _may_run(self, priority: Priority, queued: float) -> bool:
        return (
            self._bypass.is_set()
            or priority is Priority.NOW
            or self._idle() >= IDLE_SECONDS
            or time.monotonic() >= queued + PATIENCE[priority]
        )

    def drain(self, timeout: float) -> bool:
        """Wait until what is queued so far is done, compiling it without waiting for idle."""
        done = threading.Event()
        self._bypass.set()
        try:
            self._queue.put((Priority.AHEAD, next(self._order), 0.0, done.set))
            return done.wait(timeout)
        finally:
            self._bypass.clear()

    def close(self, *, drop: bool) -> None:
        self._bypass.set()
        if drop:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
        self._queue.put((Priority.NOW, -1, 0.0, None))
        self._thread.join()


class Compiler:
    """Two threads: one compiles the shapes calls meet with no compiled form, at once; the
    other compiles the rest when the server is idle (``idle()``: seconds since its last call)
    or once they have waited their priority's patience. That thread runs at the lowest CPU
    priority, but XLA compiles on TensorFlow's own threads at normal priority: waiting for an
    idle moment is what keeps its compilations out of the way of calls."""

    def __init__(self, idle: Callable[[], float] | None = None) -> None:
        self._now = _Worker("xla-compile", 0)
        self._later = _Waiting("xla-compile-ahead", 19, idle or (lambda: float("inf")))

    def submit(self, job: Callable[[], None], priority: Priority) -> None:
        if priority is Priority.NOW:
            self._now.submit(job)
        else:
            self._later.submit(job, priority)

    def drain(self, priority: Priority, timeout: float) -> bool:
        """Wait until every compilation of ``priority`` or a more urgent one queued so far is
        done (those that wait for idle are compiled without waiting)."""
        began = time.monotonic()
        if priority is not Priority.NOW and not self._later.drain(timeout):
            return False
        return self._now.drain(max(0.0, timeout - (time.monotonic() - began)))

    def close(self) -> None:
        """Stop: compilations under way finish, queued ones are dropped."""
        self._later.close(drop=True)
        self._now.close(drop=True)
