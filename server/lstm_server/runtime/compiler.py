"""Compiling shapes in the background, most wanted first.

XLA compiles once per concrete shape (tenths of a second each). Calls never wait for it: a shape
not compiled yet runs on a slower function that takes any shape while one thread compiles it.
Shapes that calls are meeting now come before shapes compiled ahead of traffic.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from enum import IntEnum

log = logging.getLogger(__name__)

Shape = tuple[int, int]  # (rows, timesteps)


class Priority(IntEnum):
    NOW = 0  # a call met the shape: it runs slower until the shape is compiled
    AHEAD = 1  # compiled before traffic meets it


class Compiled:
    """The shapes one function is compiled for, compiling the others on a ``Compiler``'s thread.

    ``compile(shape)`` runs the function once on that shape; at most ``limit`` shapes are ever
    compiled or queued (None: no limit)."""

    def __init__(
        self, compiler: Compiler, compile: Callable[[Shape], None], limit: int | None = None
    ) -> None:
        self._compiler = compiler
        self._compile = compile
        self._limit = limit
        self._ready: set[Shape] = set()
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


class Compiler:
    """One thread that runs compilations in order of priority, then of submission."""

    def __init__(self) -> None:
        self._jobs: queue.PriorityQueue[tuple[int, int, Callable[[], None] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._work, name="xla-compile", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None], priority: Priority) -> None:
        self._jobs.put((priority, next(self._order), job))

    def drain(self, priority: Priority, timeout: float) -> bool:
        """Wait until every compilation of ``priority`` or a higher one queued so far is done."""
        done = threading.Event()
        self.submit(done.set, priority)
        return done.wait(timeout)

    def _work(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a shape that fails to compile keeps running on the fallback
                log.exception("compiling a shape failed")

    def close(self) -> None:
        """Stop: a compilation under way finishes, queued ones are dropped."""
        self._jobs.put((-1, -1, None))
        self._thread.join()
