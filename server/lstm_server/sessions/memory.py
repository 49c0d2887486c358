"""The embedded default store: records in a dict, in this process, optionally kept across restarts
in a snapshot file (written on close, read on open)."""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path

from lstm_server.core.errors import LimitExceeded, SessionNotFound, StoreSetupError
from lstm_server.core.store import SessionRecord, record_bytes
from lstm_server.sessions.snapshot import check_writable, consume, read_snapshot, write_snapshot

log = logging.getLogger(__name__)

_TOMBSTONES = 100_000  # how many ended ids are remembered to say why they are gone


class MemorySessionStore:
    """A ``SessionStore`` in process memory. Every operation completes without awaiting, so it is
    atomic with respect to the event loop.

    With ``snapshot``, ``open()`` restores the sessions saved there and ``close()`` saves the live
    ones (atomically), so sessions survive a graceful restart. A restored snapshot is moved aside
    at once: after a crash, the sessions are gone (NOT_FOUND), never back at an older step.

    ``max_bytes`` (0: none) is a budget for what the sessions hold, states and the last step's
    outputs kept for retries included.
    """

    def __init__(
        self,
        *,
        snapshot: Path | None = None,
        max_bytes: int = 0,
        max_owner_bytes: int = 0,
        clock: Callable[[], float] = time.time,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        """``on_end(reason)`` is told of every session that ends ("closed" or "expired")."""
        self._records: dict[str, SessionRecord] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._owners: Counter[str] = Counter()
        self._pinned: Counter[tuple[str, int]] = Counter()
        self._bytes = 0
        self._owner_bytes: Counter[str] = Counter()
        self.max_bytes = max_bytes
        self.max_owner_bytes = max_owner_bytes
        self._snapshot = snapshot
        self._opened = False
        self._clock = clock
        self._on_end = on_end

    @property
    def bytes_held(self) -> int:
        """What the sessions hold now, as the budget counts it."""
        return self._bytes

    async def open(self) -> None:
        path = self._snapshot
        if path is not None:
            try:
                check_writable(path)
                records = read_snapshot(path) if path.exists() else None
            except (OSError, ValueError) as exc:
                raise StoreSetupError(f"cannot use --session-snapshot {path}: {exc}") from exc
            if records is not None:
                restored = self.restore(records)
                moved = consume(path)
                log.info("restored %d sessions from %s (moved to %s)", restored, path, moved)
        self._opened = True

    async def close(self) -> None:
        if self._snapshot is None or not self._opened:
            return  # never opened: a snapshot on disk is not overwritten by an empty store
        records = self.records()
        write_snapshot(self._snapshot, records)
        self._opened = False
        log.info("saved %d sessions to %s", len(records), self._snapshot)

    def _put(self, record: SessionRecord) -> None:
        old = self._records.get(record.session_id)
        if old is None:
            self._owners[record.owner] += 1
            self._pinned[_pin(record)] += 1
        else:
            self._bytes -= record_bytes(old)
            self._owner_bytes[old.owner] -= record_bytes(old)
            if _pin(old) != _pin(record):  # reset onto another version: it holds that one now
                self._unpin(old)
                self._pinned[_pin(record)] += 1
        self._bytes += record_bytes(record)
        self._owner_bytes[record.owner] += record_bytes(record)
        self._records[record.session_id] = record

    def _unpin(self, record: SessionRecord) -> None:
        self._pinned[_pin(record)] -= 1
        if not self._pinned[_pin(record)]:
            del self._pinned[_pin(record)]

    def _end(self, session_id: str, reason: str) -> None:
        record = self._records.pop(session_id, None)
        if record is not None:
            self._bytes -= record_bytes(record)
            self._owner_bytes[record.owner] -= record_bytes(record)
            if not self._owner_bytes[record.owner]:
                del self._owner_bytes[record.owner]
            self._owners[record.owner] -= 1
            if not self._owners[record.owner]:
                del self._owners[record.owner]
            self._unpin(record)
        self._ended[session_id] = reason
        if self._on_end is not None:
            self._on_end(reason)
        while len(self._ended) > _TOMBSTONES:
            self._ended.popitem(last=False)

    def _live(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        if record is not None and record.expires_at <= self._clock():
            self._end(session_id, "expired")
            return None
        return record

    def _refusal(
        self, record: SessionRecord, max_sessions: int, max_owner_sessions: int, grows: int
    ) -> LimitExceeded | None:
        if max_sessions and len(self._records) >= max_sessions:
            return too_many_sessions(max_sessions)
        if max_owner_sessions and self._owners[record.owner] >= max_owner_sessions:
            return too_many_owner_sessions(record.owner, max_owner_sessions)
        return self._over_budget(record.owner, grows)

    def _over_budget(self, owner: str, grows: int) -> LimitExceeded | None:
        if self.max_bytes and self._bytes + grows > self.max_bytes:
            return LimitExceeded(
                f"the sessions held would exceed the memory budget of {self.max_bytes} bytes "
                "(session_memory_budget)",
                limit="session_memory_budget",
                value=self.max_bytes,
            )
        if self.max_owner_bytes and self._owner_bytes[owner] + grows > self.max_owner_bytes:
            return LimitExceeded(
                f"{owner_name(owner)} would hold more than its share of the session memory, "
                f"{self.max_owner_bytes} bytes (session_memory_per_principal)",
                limit="session_memory_per_principal",
                value=self.max_owner_bytes,
            )
        return None

    async def create(
        self, record: SessionRecord, *, max_sessions: int, max_owner_sessions: int = 0
    ) -> None:
        size = record_bytes(record)
        if self._refusal(record, max_sessions, max_owner_sessions, size) is not None:
            await self.reap_expired()
            refusal = self._refusal(record, max_sessions, max_owner_sessions, size)
            if refusal is not None:
                raise refusal
        self._put(record)

    async def get(self, session_id: str) -> SessionRecord:
        record = self._live(session_id)
        if record is None:
            raise SessionNotFound.ended(session_id, self._ended.get(session_id))
        return record

    async def compare_and_set(self, record: SessionRecord, *, expected_revision: int) -> bool:
        current = self._live(record.session_id)
        if current is None or current.revision != expected_revision:
            return False
        refusal = self._over_budget(record.owner, record_bytes(record) - record_bytes(current))
        if refusal is not None:
            raise refusal
        self._put(record)
        return True

    async def delete(self, session_id: str) -> bool:
        if self._live(session_id) is None:
            return False
        self._end(session_id, "closed")
        return True

    async def reap_expired(self) -> list[str]:
        now = self._clock()
        expired = [sid for sid, r in self._records.items() if r.expires_at <= now]
        for sid in expired:
            self._end(sid, "expired")
        return expired

    async def confirm(self, session_id: str) -> None:
        """Nothing to wait for: the records are this process's."""

    async def count(self) -> int:
        return len(self._records)

    async def count_pinned(self, model_name: str, version_number: int) -> int:
        if self._pinned[(model_name, version_number)]:
            await self.reap_expired()  # expired ones no longer hold a version
        return self._pinned[(model_name, version_number)]

    def records(self) -> list[SessionRecord]:
        """The live records, to persist them across a restart."""
        now = self._clock()
        return [r for r in self._records.values() if r.expires_at > now]

    def restore(self, records: list[SessionRecord]) -> int:
        """Add records saved by ``records()``; expired ones are dropped. Returns how many."""
        now = self._clock()
        live = [r for r in records if r.expires_at > now]
        for record in live:
            self._put(record)
        return len(live)

    async def ping(self) -> bool:
        return True


def _pin(record: SessionRecord) -> tuple[str, int]:
    return (record.model_name, record.version_number)


def too_many_sessions(max_sessions: int) -> LimitExceeded:
    return LimitExceeded(
        f"the server holds its maximum of {max_sessions} sessions",
        limit="max_sessions",
        value=max_sessions,
    )


def too_many_owner_sessions(owner: str, max_owner_sessions: int) -> LimitExceeded:
    return LimitExceeded(
        f"{owner_name(owner)} holds its maximum of {max_owner_sessions} sessions "
        "(max_sessions_per_principal)",
        limit="max_sessions_per_principal",
        value=max_owner_sessions,
    )


def owner_name(owner: str) -> str:
    return f"principal {owner!r}" if owner else "the caller"
