"""The embedded default store: records in a dict, in this process, optionally kept across restarts
in a snapshot file (written on close, read on open)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from lstm_server.core.errors import LimitExceeded, SessionNotFound, StoreSetupError
from lstm_server.core.store import SessionRecord
from lstm_server.sessions.snapshot import read_snapshot, write_snapshot

log = logging.getLogger(__name__)

_TOMBSTONES = 100_000  # how many ended ids are remembered to say why they are gone


class MemorySessionStore:
    """A ``SessionStore`` in process memory. Every operation completes without awaiting, so it is
    atomic with respect to the event loop.

    With ``snapshot``, ``open()`` restores the sessions saved there and ``close()`` saves the live
    ones (atomically), so sessions survive a graceful restart.
    """

    def __init__(
        self,
        *,
        snapshot: Path | None = None,
        clock: Callable[[], float] = time.time,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        """``on_end(reason)`` is told of every session that ends ("closed" or "expired")."""
        self._records: dict[str, SessionRecord] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._snapshot = snapshot
        self._opened = False
        self._clock = clock
        self._on_end = on_end

    async def open(self) -> None:
        self._opened = True
        path = self._snapshot
        if path is None or not path.exists():
            return
        try:
            restored = self.restore(read_snapshot(path))
        except (OSError, ValueError, KeyError) as exc:
            raise StoreSetupError(f"cannot restore sessions from {path}: {exc}") from exc
        log.info("restored %d sessions from %s", restored, path)

    async def close(self) -> None:
        if self._snapshot is None or not self._opened:
            return  # never opened: a snapshot on disk is not overwritten by an empty store
        records = self.records()
        write_snapshot(self._snapshot, records)
        self._opened = False
        log.info("saved %d sessions to %s", len(records), self._snapshot)

    def _end(self, session_id: str, reason: str) -> None:
        self._records.pop(session_id, None)
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

    async def create(self, record: SessionRecord, *, max_sessions: int) -> None:
        if max_sessions and len(self._records) >= max_sessions:
            await self.reap_expired()
            if len(self._records) >= max_sessions:
                raise LimitExceeded(f"the server holds its maximum of {max_sessions} sessions")
        self._records[record.session_id] = record

    async def get(self, session_id: str) -> SessionRecord:
        record = self._live(session_id)
        if record is None:
            reason = self._ended.get(session_id)
            detail = f"was {reason}" if reason else "does not exist"
            raise SessionNotFound(f"session {session_id} {detail}")
        return record

    async def compare_and_set(self, record: SessionRecord, *, expected_revision: int) -> bool:
        current = self._live(record.session_id)
        if current is None or current.revision != expected_revision:
            return False
        self._records[record.session_id] = record
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

    async def count(self) -> int:
        return len(self._records)

    def records(self) -> list[SessionRecord]:
        """The live records, to persist them across a restart."""
        now = self._clock()
        return [r for r in self._records.values() if r.expires_at > now]

    def restore(self, records: list[SessionRecord]) -> int:
        """Add records saved by ``records()``; expired ones are dropped. Returns how many."""
        now = self._clock()
        live = [r for r in records if r.expires_at > now]
        self._records.update((r.session_id, r) for r in live)
        return len(live)

    async def ping(self) -> bool:
        return True
