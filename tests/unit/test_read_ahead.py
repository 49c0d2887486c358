"""Reading a client stream ahead of its handler: order, bounds, errors and closing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from lstm_server.transport.read_ahead import read_ahead


class Source:
    """An async iterator of messages that records how many were taken from it."""

    def __init__(self, messages: list[bytes], error: Exception | None = None) -> None:
        self.messages = messages
        self.error = error
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for message in self.messages:
            self.taken += 1
            yield message
        if self.error is not None:
            raise self.error


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_messages_come_in_order_and_no_further_ahead_than_the_count() -> None:
    source = Source([b"%d" % n for n in range(10)])
    ahead = read_ahead(aiter(source), count=3, budget_bytes=1 << 20)
    async with contextlib.aclosing(ahead):
        assert await anext(ahead) == b"0"
        await settle()
        assert source.taken == 4  # the one handed out and three held
        rest = [message async for message in ahead]
    assert rest == [b"%d" % n for n in range(1, 10)]


async def test_the_byte_budget_bounds_what_is_held_but_one_is_always_read() -> None:
    source = Source([b"x" * 100] * 5)
    ahead = read_ahead(aiter(source), count=64, budget_bytes=150)
    async with contextlib.aclosing(ahead):
        await anext(ahead)
        await settle()
        assert source.taken == 3  # held: two of 100 bytes, the second past the budget
        assert len([message async for message in ahead]) == 4


async def test_an_error_reading_is_raised_in_its_place() -> None:
    source = Source([b"a", b"b"], error=ConnectionError("the call broke"))
    ahead = read_ahead(aiter(source), count=8, budget_bytes=1 << 20)
    async with contextlib.aclosing(ahead):
        assert [await anext(ahead), await anext(ahead)] == [b"a", b"b"]
        with pytest.raises(ConnectionError, match="the call broke"):
            await anext(ahead)


async def test_closing_stops_the_reader() -> None:
    forever = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b"first"
        await forever.wait()
        yield b"never"

    ahead = read_ahead(endless(), count=8, budget_bytes=1 << 20)
    assert await anext(ahead) == b"first"
    before = len(asyncio.all_tasks())
    await ahead.aclose()
    await settle()
    assert len(asyncio.all_tasks()) == before - 1  # the reader task is gone


async def test_with_a_count_of_one_nothing_is_read_ahead() -> None:
    source = Source([b"a", b"b", b"c"], error=ConnectionError("the call broke"))
    ahead = read_ahead(aiter(source), count=1, budget_bytes=1 << 20)
    async with contextlib.aclosing(ahead):
        assert await anext(ahead) == b"a"
        await settle()
        assert source.taken == 1  # only what was handed out
        assert [await anext(ahead), await anext(ahead)] == [b"b", b"c"]
        with pytest.raises(ConnectionError, match="the call broke"):
            await anext(ahead)
