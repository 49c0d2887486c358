"""Compiling shapes in the background, most wanted first.

XLA compiles once per concrete shape (tenths of a second each). Calls never wait for it: a shape
not compiled yet runs on a slower function that takes any shape while a thread compiles it.
Shapes that calls are meeting now are compiled at once; shapes compiled ahead of traffic only
take what CPU serving leaves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from enum import IntEnum

log = logging.getLogger(__name__)

Shape = tuple[int, int]  # (rows, timesteps)


class Priority(IntEnum):
    """NOW: a call met the shape, and runs slower until it is compiled. AHEAD: with the CPU
    serving leaves, for a shape traffic has not met yet or a faster form of one compiled."""

    NOW = 0
    AHEAD = 1


class Compiled:
    """The shapes one function is compiled for, compiling the others on a ``Compiler``'s thread.

    ``compile(shape)`` runs the function once on that shape; at most ``limit`` shapes are ever
    compiled or queued (None: no limit). ``ready``: the set of shapes compiled so far, when
    the function's compiled programs are shared with others that may have compiled some."""

    def __init__(
        self,
        compiler: Compiler,
        compile: Callable[[Shape], None],
        limit: int | None = None,
        *,
        ready: set[Shape] | None = None,
    ) -> None:
        self._compiler = compiler
        self._compile = compile
        self._limit = limit
        self._ready: set[Shape] = set() if ready is None else ready
        self._queued: dict[Shape, Priority] = {}

    def ready(self, shape: Shape, *, priority: Priority = Priority.NOW) -> bool:
        """Whether ``shape`` is compiled; if not, have it compiled with ``priority`` (sooner, if
        it was queued with a lower one)."""
        if shape in self._ready:
            return True
        queued = self._queued.get(shape)
        if queued is None and self._limit is not None and len(self._queued) >= self._limit:
            return False
        if queued is None or priority < queued:
            self._queued[shape] = priority
            self._compiler.submit(lambda: self.compile_now(shape), priority)
        return False

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

    def _work(self) -> None:
        if self._niceness:
            with contextlib.suppress(OSError, AttributeError):  # not Linux: normal priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._niceness)
        while (job := self._jobs.get()) is not None:
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


class Compiler:
    """Two threads: one compiles the shapes calls meet, at once; the other compiles shapes ahead
    of traffic at the lowest CPU priority, so that it takes only cycles serving leaves idle (a
    new server compiling its batch buckets answers as fast as an idle one)."""

    def __init__(self) -> None:
        self._now = _Worker("xla-compile", 0)
        self._ahead = _Worker("xla-compile-ahead", 19)

    def submit(self, job: Callable[[], None], priority: Priority) -> None:
        (self._now if priority is Priority.NOW else self._ahead).submit(job)

    def drain(self, priority: Priority, timeout: float) -> bool:
        """Wait until every compilation of ``priority`` or a higher one queued so far is done."""
        began = time.monotonic()
        if priority is Priority.AHEAD and not self._ahead.drain(timeout):
            return False
        return self._now.drain(max(0.0, timeout - (time.monotonic() - began)))

    def close(self) -> None:
        """Stop: compilations under way finish, queued ones are dropped."""
        self._ahead.close(drop=True)
        self._now.close(drop=True)
