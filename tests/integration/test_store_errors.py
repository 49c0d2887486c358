"""A session store that cannot be reached fails calls with a generic UNAVAILABLE: Redis' own
words (addresses, errno text) go to the log, never to callers."""

from __future__ import annotations

import logging
import socket

import pytest
from lstm_server.core.errors import StoreUnavailable
from lstm_server.sessions.redis import RedisSessionStore


async def test_an_unreachable_redis_is_unavailable_in_generic_words(caplog) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = RedisSessionStore(f"redis://:s3cr3t@127.0.0.1:{port}/0", timeout=0.5)
    await store.open()
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(StoreUnavailable) as failed:
            await store.get("a" * 32)
        assert failed.value.message == "the session store is unavailable; retry later"
        assert str(port) in caplog.text  # the detail is in the log
        assert "s3cr3t" not in caplog.text
    finally:
        await store.close()
