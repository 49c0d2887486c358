"""Session store adapters: in memory (the embedded default), Redis and Redis Cluster (shared
by replicas).

They implement ``lstm_server.core.store.SessionStore``; core owns that contract.
"""

import re
from collections.abc import Callable
from pathlib import Path

from lstm_server.core.errors import StoreSetupError
from lstm_server.core.store import SessionStore
from lstm_server.sessions.memory import MemorySessionStore

__all__ = ["MemorySessionStore", "open_store", "redacted"]


def redacted(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``."""
    return re.sub(r"(\w+://[^:/@\s]*:)[^@/\s]*@", r"\1***@", text)


def open_store(
    url: str,
    *,
    timeout: float = 1.0,
    snapshot: Path | None = None,
    memory_budget: int = 0,
    owner_memory_budget: int = 0,
    on_end: Callable[[str], None] | None = None,
) -> SessionStore:
    """``memory`` (the embedded default), ``redis://HOST:PORT/DB`` (one Redis shared by
    replicas) or ``redis+cluster://HOST:PORT,HOST:PORT`` (a Redis Cluster, by its seeds)."""
    if url == "memory":
        return MemorySessionStore(
            snapshot=snapshot,
            max_bytes=memory_budget,
            max_owner_bytes=owner_memory_budget,
            on_end=on_end,
        )
    make: Callable[..., SessionStore]
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        from lstm_server.sessions.redis_cluster import RedisClusterSessionStore

        make = RedisClusterSessionStore
    elif url.startswith(("redis://", "rediss://", "unix://")):
        from lstm_server.sessions.redis import RedisSessionStore

        make = RedisSessionStore
    else:
        raise StoreSetupError(
            f"unknown session store {redacted(url)}: use 'memory', 'redis://HOST:PORT/DB' or "
            "'redis+cluster://HOST:PORT,HOST:PORT'"
        )
    try:
        return make(url, timeout=timeout, on_end=on_end)
    except ValueError as exc:
        raise StoreSetupError(
            f"cannot use --session-store {redacted(url)}: {redacted(str(exc))}"
        ) from None
