"""Conversions too large for the event loop: every door reads large requests and writes large
replies on a worker thread, so that the loop, and the health checks it answers, never waits on
them for long."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
# Requests and replies larger than this are converted on a worker thread: converting them takes
# milliseconds that the event loop would otherwise spend not answering anyone.
OFF_LOOP_BYTES = 64 * 1024


async def converted(large: bool, convert: Callable[..., T], *args: Any) -> T:
    """``convert(*args)``, on a worker thread when the work is ``large``."""
    return await asyncio.to_thread(convert, *args) if large else convert(*args)
