"""The memory store persists itself: ``close()`` writes the live sessions to its snapshot and
``open()`` restores them; a store that was never opened never overwrites a snapshot."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from lstm_server.core.errors import StoreSetupError
from lstm_server.core.store import AppliedStep, SessionRecord
from lstm_server.core.types import State
from lstm_server.sessions import MemorySessionStore


def record(session_id: str, ttl: float = 60.0) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        state=State(np.arange(3, dtype=np.float32), -np.arange(3, dtype=np.float32)),
        step_count=2,
        model_version="sha256:test",
        ttl_seconds=60,
        expires_at=time.time() + ttl,
        owner="alice",
        revision=5,
        last_step=AppliedStep(2, "digest", np.ones((4, 3), np.float32)),
    )


async def test_close_saves_and_open_restores(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    first = MemorySessionStore(snapshot=path)
    await first.open()
    await first.create(record("kept"), max_sessions=0)
    await first.create(record("expiring", ttl=0.05), max_sessions=0)
    await asyncio.sleep(0.1)
    await first.close()
    assert path.stat().st_mode & 0o777 == 0o600  # sessions hold callers' states: owner only
    second = MemorySessionStore(snapshot=path)
    await second.open()
    assert not path.exists()  # moved aside: restored once only
    assert await second.count() == 1
    restored = await second.get("kept")
    assert (restored.step_count, restored.revision, restored.owner) == (2, 5, "alice")
    np.testing.assert_array_equal(restored.state.c, -np.arange(3))
    assert restored.last_step is not None
    np.testing.assert_array_equal(restored.last_step.hidden_sequence, np.ones((4, 3)))


async def test_earlier_steps_of_a_windowed_stream_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    before = State(np.full(3, 7, np.float32), np.full(3, -7, np.float32))
    earlier = AppliedStep(1, "d1", np.full((2, 3), 0.5, np.float32), "w1", before)
    first = MemorySessionStore(snapshot=path)
    await first.open()
    await first.create(replace(record("kept"), earlier_steps=(earlier,)), max_sessions=0)
    await first.close()
    second = MemorySessionStore(snapshot=path)
    await second.open()
    [restored] = (await second.get("kept")).earlier_steps
    assert (restored.step_number, restored.input_digest, restored.write_id) == (1, "d1", "w1")
    np.testing.assert_array_equal(restored.hidden_sequence, earlier.hidden_sequence)
    assert restored.state is not None
    np.testing.assert_array_equal(restored.state.c, before.c)


async def test_a_store_never_opened_leaves_the_snapshot_alone(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    first = MemorySessionStore(snapshot=path)
    await first.open()
    await first.create(record("kept"), max_sessions=0)
    await first.close()
    saved = path.read_bytes()
    await MemorySessionStore(snapshot=path).close()
    assert path.read_bytes() == saved


@pytest.mark.parametrize("content", ["not json", '{"format": "other"}'])
async def test_an_unreadable_snapshot_is_refused_on_open(tmp_path: Path, content: str) -> None:
    path = tmp_path / "sessions.json"
    path.write_text(content)
    with pytest.raises(StoreSetupError, match=f"cannot use --session-snapshot {path}"):
        await MemorySessionStore(snapshot=path).open()
