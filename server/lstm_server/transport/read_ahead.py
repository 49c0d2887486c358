"""Reading a client stream ahead of the handler, so that waiting for the next message overlaps
the work on this one (a session stream with a window sends several steps before it reads their
replies, and each read through gRPC's completion queue costs a hand-off of its own)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator


class _End:
    """What the reader leaves when the client has sent its last message."""


async def read_ahead(
    messages: AsyncIterator[bytes], *, count: int, budget_bytes: int
) -> AsyncGenerator[bytes, None]:
    """``messages`` in order, read by a task of their own up to ``count`` messages ahead while
    the messages held take fewer than ``budget_bytes`` (one is always read). An error reading
    is raised where the message would have been; closing this iterator stops the reader.

    With ``count`` 1 (a lock-step client, which sends nothing ahead) the messages are passed
    on as they are read, without a reader."""
    if count <= 1:
        async for message in messages:
            yield message
        return
    held: deque[bytes | BaseException | _End] = deque()
    held_bytes = 0
    changed = asyncio.Condition()

    def room() -> bool:
        return len(held) < count and held_bytes < budget_bytes

    async def reader() -> None:
        nonlocal held_bytes
        try:
            async for message in messages:
                async with changed:
                    held.append(message)
                    held_bytes += len(message)
                    changed.notify_all()
                    await changed.wait_for(room)
            item: BaseException | _End = _End()
        except Exception as error:  # the call broke under the reader: the handler sees it
            item = error
        async with changed:
            held.append(item)
            changed.notify_all()

    task = asyncio.ensure_future(reader())
    try:
        while True:
            async with changed:
                await changed.wait_for(lambda: bool(held))
                item = held.popleft()
                if isinstance(item, bytes):
                    held_bytes -= len(item)
                changed.notify_all()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
