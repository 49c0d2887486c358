"""A session store that reports the latency and the failures of every operation of the store it
wraps (to metrics); it changes nothing else."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from lstm_server.core.errors import StoreUnavailable
from lstm_server.core.store import SessionRecord, SessionStore

T = TypeVar("T")


class StoreObserver(Protocol):
    def store_operation(self, operation: str, seconds: float, *, failed: bool) -> None: ...


class ObservedStore:
    """``store``, with each operation timed; an unreachable store (``StoreUnavailable``) counts
    as a failure, answers such as "not found" do not."""

    def __init__(self, store: SessionStore, *observers: StoreObserver) -> None:
        self.store = store
        self._observers = observers

    def __getattr__(self, name: str) -> Any:  # what only one store has (a snapshot, say)
        return getattr(self.store, name)

    async def _timed(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        began = time.perf_counter()
        failed = False
        try:
            return await call()
        except StoreUnavailable:
            failed = True
            raise
        finally:
            seconds = time.perf_counter() - began
            for observer in self._observers:
                observer.store_operation(operation, seconds, failed=failed)

    async def open(self) -> None:
        await self._timed("open", self.store.open)

    async def close(self) -> None:
        await self._timed("close", self.store.close)

    async def create(
        self, record: SessionRecord, *, max_sessions: int, max_owner_sessions: int = 0
    ) -> None:
        await self._timed(
            "create",
            lambda: self.store.create(
                record, max_sessions=max_sessions, max_owner_sessions=max_owner_sessions
            ),
        )

    async def get(self, session_id: str) -> SessionRecord:
        return await self._timed("get", lambda: self.store.get(session_id))

    async def compare_and_set(self, record: SessionRecord, *, expected_revision: int) -> bool:
        return await self._timed(
            "compare_and_set",
            lambda: self.store.compare_and_set(record, expected_revision=expected_revision),
        )

    async def delete(self, session_id: str) -> bool:
        return await self._timed("delete", lambda: self.store.delete(session_id))

    async def confirm(self, session_id: str) -> None:
        await self._timed("confirm", lambda: self.store.confirm(session_id))

    async def reap_expired(self) -> list[str]:
        return await self._timed("reap_expired", self.store.reap_expired)

    async def count(self) -> int:
        return await self._timed("count", self.store.count)

    async def count_pinned(self, model_name: str, version_number: int) -> int:
        return await self._timed(
            "count_pinned", lambda: self.store.count_pinned(model_name, version_number)
        )

    async def ping(self) -> bool:
        return await self._timed("ping", self.store.ping)
