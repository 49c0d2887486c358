"""Where session state lives: the ``SessionStore`` contract and its implementations."""

from collections.abc import Callable

from lstm_server.sessions.memory import MemorySessionStore
from lstm_server.sessions.store import AppliedStep, SessionRecord, SessionStore

__all__ = ["AppliedStep", "MemorySessionStore", "SessionRecord", "SessionStore", "open_store"]


def open_store(
    url: str, *, timeout: float = 1.0, on_end: Callable[[str], None] | None = None
) -> SessionStore:
    """``memory`` (the embedded default) or ``redis://HOST:PORT/DB`` (shared by replicas)."""
    if url == "memory":
        return MemorySessionStore(on_end=on_end)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from lstm_server.sessions.redis import RedisSessionStore

        return RedisSessionStore(url, timeout=timeout, on_end=on_end)
    raise ValueError(f"unknown session store {url!r}: use 'memory' or 'redis://HOST:PORT/DB'")
