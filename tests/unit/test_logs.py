"""The log's pieces: ISO-8601 UTC time, native lines as JSON records, and repeated event-loop
errors reported once per interval."""

from __future__ import annotations

import json
from typing import Any

from lstm_server.logs import RepeatedLoopErrors, iso_time, native_line


def test_times_are_iso_8601_utc_with_milliseconds() -> None:
    assert iso_time(1_796_290_263.1234) == "2026-12-03T09:31:03.123Z"


def test_native_lines_become_json_records_with_their_level() -> None:
    record = json.loads(native_line("E0000 00:00:1796290268.093112   29370 util.cc:131] oops\n"))
    assert (record["name"], record["levelname"]) == ("native", "ERROR")
    assert record["message"].endswith("oops")
    assert json.loads(native_line("I1203 10:00:00.000 x.cc:1] fine"))["levelname"] == "INFO"
    assert json.loads(native_line("Traceback (most recent call last):"))["levelname"] == "WARNING"
    already = '{"time": "t", "message": "m"}'
    assert native_line(already) == already  # JSON lines pass as they are


class Loop:
    def __init__(self) -> None:
        self.reported: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.reported.append(context)


def test_repeated_loop_errors_are_reported_once_per_interval() -> None:
    now = [0.0]
    handler = RepeatedLoopErrors(10.0, clock=lambda: now[0])
    loop = Loop()
    flood = {"message": "socket.accept() out of system resource"}
    for _ in range(1000):
        handler(loop, flood)  # type: ignore[arg-type]
    handler(loop, {"message": "something else"})  # type: ignore[arg-type]
    assert [c["message"] for c in loop.reported] == [
        "socket.accept() out of system resource",
        "something else",
    ]
    now[0] = 11.0
    handler(loop, flood)  # type: ignore[arg-type]
    assert loop.reported[-1]["message"] == (
        "socket.accept() out of system resource (999 more like it not shown)"
    )
