"""Observation of every call of every door (started, ended with its status and latency) and of
every session step. Metrics implement the observers; nothing here knows Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Protocol

from lstm_server.core.errors import ServingError
from lstm_server.transport.calls import Call, Policy
from lstm_server.transport.status import status_code


class CallObserver(Protocol):
    """Told of every call's start and end (``lstm_server.metrics.Metrics``)."""

    def call_started(self, call: Call) -> None: ...

    def call_ended(self, call: Call) -> None: ...


class StepObserver(Protocol):
    """Told of every session step, unary or on a stream, with its status code (a step refused
    in-band on a stream has its own code while the stream goes on), and of every request refused
    in-band on a stream (its reason)."""

    def step_done(self, method: str, seconds: float, code: str) -> None: ...

    def refused(self, protocol: str, reason: str) -> None: ...


@contextlib.contextmanager
def timed_step(observer: StepObserver | None, method: str) -> Iterator[None]:
    """Report the time and code of the session step run inside (to ``observer``, if any)."""
    began = time.perf_counter()
    code = "OK"
    try:
        yield
    except ServingError as error:
        code = status_code(error)
        raise
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except Exception:
        code = "INTERNAL"
        raise
    finally:
        if observer is not None:
            observer.step_done(method, time.perf_counter() - began, code)


class ObservingPolicy(Policy):
    """Reports every call of every door to a ``CallObserver``."""

    def __init__(self, observer: CallObserver) -> None:
        self._observer = observer

    def enter(self, call: Call) -> None:
        self._observer.call_started(call)

    def exit(self, call: Call, entered: None) -> None:
        self._observer.call_ended(call)
