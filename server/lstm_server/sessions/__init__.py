"""Session store adapters: in memory (the embedded default) and Redis (shared by replicas).

They implement ``lstm_server.core.store.SessionStore``; core owns that contract.
"""

from collections.abc import Callable
from pathlib import Path

from lstm_server.core.store import SessionStore
from lstm_server.sessions.memory import MemorySessionStore

__all__ = ["MemorySessionStore", "open_store"]


def open_store(
    url: str,
    *,
    timeout: float = 1.0,
    snapshot: Path | None = None,
    on_end: Callable[[str], None] | None = None,
) -> SessionStore:
    """``memory`` (the embedded default) or ``redis://HOST:PORT/DB`` (shared by replicas)."""
    if url == "memory":
        return MemorySessionStore(snapshot=snapshot, on_end=on_end)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from lstm_server.sessions.redis import RedisSessionStore

        return RedisSessionStore(url, timeout=timeout, on_end=on_end)
    raise ValueError(f"unknown session store {url!r}: use 'memory' or 'redis://HOST:PORT/DB'")
