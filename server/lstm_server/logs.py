"""The server's log: text or JSON lines (``--log-format``), each with an ISO-8601 UTC timestamp
and the trace id of the call being served (``trace_id``; "-" outside calls).

With JSON, every line the process writes is one JSON object, including what native libraries
(TensorFlow, XLA, gRPC's core) and the interpreter itself write to the standard streams: both
file descriptors are routed through pipes, and each line that is not JSON already is wrapped as
a record of the logger ``native`` (its level read from the glog/absl prefix, ``E0000 ...``).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from lstm_server.transport.access_log import TraceIdFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s trace=%(trace_id)s: %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "trace_id", "message")
# glog / absl prefixes: a level letter, the date (mmdd) and the time.
_NATIVE = re.compile(r"^([IWEF])\d{4} ")
_NATIVE_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}


def iso_time(seconds: float) -> str:
    """An instant as ISO-8601 UTC with milliseconds (``2026-12-03T09:21:18.123Z``)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _UtcTime:
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)


class TextFormatter(_UtcTime, logging.Formatter):
    """Text lines with ISO-8601 UTC timestamps."""


class JsonLineFormatter(_UtcTime, JsonFormatter):
    """One JSON object per record: ``time`` (ISO-8601 UTC), ``levelname``, ``name``,
    ``trace_id``, ``message`` and the record's extra fields."""


def native_line(text: str) -> str:
    """A line a native library wrote, as a JSON record (a JSON object already is left as is)."""
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            json.loads(stripped)
            return stripped
        except ValueError:
            pass
    found = _NATIVE.match(stripped)
    level = _NATIVE_LEVELS[found.group(1)] if found else "WARNING"
    record = {
        "time": iso_time(datetime.now(UTC).timestamp()),
        "levelname": level,
        "name": "native",
        "trace_id": "-",
        "message": stripped,
    }
    return json.dumps(record)


def _relay(source: int, target: IO[bytes]) -> None:
    """Copy lines from ``source`` to ``target``, each as one JSON record, until EOF."""
    with os.fdopen(source, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    target.write(native_line(line.decode(errors="replace")).encode() + b"\n")
            target.flush()


def route_standard_streams() -> IO[str]:
    """Route file descriptors 1 and 2 through pipes whose lines are written out as JSON records;
    return a stream to the real standard error for the log handler (whose lines are JSON)."""
    sys.stdout.flush()
    sys.stderr.flush()
    handler_stream: IO[str] | None = None
    relays: list[threading.Thread] = []
    for fd in (1, 2):
        original = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        target = os.fdopen(original, "wb", buffering=0)
        relay = threading.Thread(
            target=_relay, args=(read_end, target), name=f"log-relay-{fd}", daemon=True
        )
        relay.start()
        relays.append(relay)
        if fd == 2:
            handler_stream = os.fdopen(os.dup(original), "w", buffering=1)
    atexit.register(_drain, relays)
    assert handler_stream is not None
    return handler_stream


def _drain(relays: list[threading.Thread]) -> None:
    """At exit: end the pipes (their only writers are descriptors 1 and 2) and let the relays
    write what is left, a traceback included."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    for relay in relays:
        relay.join(timeout=2)


def configure(level: str, log_format: str) -> None:
    """Log to stderr at ``level``, as ``text`` or ``json`` lines."""
    if log_format == "json":
        handler = logging.StreamHandler(route_standard_streams())
        formatter = JsonLineFormatter(list(JSON_FIELDS), rename_fields={"asctime": "time"})
        handler.setFormatter(formatter)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    handler.addFilter(TraceIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class RepeatedLoopErrors:
    """An event-loop exception handler that reports each kind of error (its message) at most
    once per ``interval`` seconds, saying how many were left out: when the process runs out of
    file descriptors, asyncio reports every accept that fails, with a traceback each, and such a
    flood would fill the disk and bury everything else."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._left_out: Counter[str] = Counter()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "unhandled error in the event loop"))
        now = self._clock()
        if now - self._last.get(message, -self.interval) < self.interval:
            self._left_out[message] += 1
            return
        self._last[message] = now
        left_out = self._left_out.pop(message, 0)
        if left_out:
            context = {**context, "message": f"{message} ({left_out} more like it not shown)"}
        loop.default_exception_handler(context)
