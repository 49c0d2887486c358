"""The SessionStore contract: every store implementation must pass these."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import numpy as np
import pytest
from lstm_server.core.errors import LimitExceeded, SessionNotFound, StoreUnavailable
from lstm_server.core.store import AppliedStep, SessionRecord, SessionStore
from lstm_server.core.types import State
from lstm_server.sessions import MemorySessionStore
from lstm_server.sessions.redis import RedisSessionStore
from lstm_server.sessions.redis_cluster import RedisClusterSessionStore

from tests.redis_cluster import RedisClusterNodes
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.system),
        pytest.param("redis-cluster", marks=pytest.mark.system),
    ]
)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    made: SessionStore
    prefix = f"test-{uuid.uuid4().hex}:"
    if request.param == "memory":
        made = MemorySessionStore()
    elif request.param == "redis":
        made = RedisSessionStore(request.getfixturevalue("redis_server").url, prefix=prefix)
    else:
        made = RedisClusterSessionStore(request.getfixturevalue("redis_cluster").url, prefix=prefix)
    await made.open()
    yield made
    await made.close()


def record(session_id: str, ttl: float = 60.0, units: int = 4) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        state=State(np.arange(units, dtype=np.float32), -np.arange(units, dtype=np.float32)),
        step_count=0,
        model_version="sha256:test",
        ttl_seconds=int(max(ttl, 1)),
        expires_at=time.time() + ttl,
        owner="alice",
    )


async def test_round_trip_keeps_every_field(store: SessionStore) -> None:
    original = replace(
        record("a"),
        step_count=3,
        revision=5,
        last_step=AppliedStep(3, "digest", np.ones((2, 4), np.float32)),
    )
    await store.create(original, max_sessions=0)
    got = await store.get("a")
    assert (got.session_id, got.step_count, got.revision, got.owner) == ("a", 3, 5, "alice")
    assert got.model_version == original.model_version
    assert got.ttl_seconds == original.ttl_seconds
    assert got.expires_at == pytest.approx(original.expires_at, abs=1e-3)
    np.testing.assert_array_equal(got.state.h, original.state.h)
    np.testing.assert_array_equal(got.state.c, original.state.c)
    assert got.last_step is not None
    assert got.last_step.step_number == 3
    np.testing.assert_array_equal(got.last_step.hidden_sequence, np.ones((2, 4)))


async def test_earlier_steps_round_trip_with_their_states(store: SessionStore) -> None:
    earlier = tuple(
        AppliedStep(n, f"d{n}", np.full((n, 6), n, np.float32), f"w{n}", State(
            np.full(4, n, np.float32), np.full(4, -n, np.float32)
        ))
        for n in (1, 2)
    )  # fmt: skip
    original = replace(
        record("a"),
        step_count=3,
        last_step=AppliedStep(3, "d3", np.ones((3, 6), np.float32), "w3"),
        earlier_steps=earlier,
    )
    await store.create(original, max_sessions=0)
    got = await store.get("a")
    assert [s.step_number for s in got.kept_steps()] == [1, 2, 3]
    for want, kept in zip(earlier, got.earlier_steps, strict=True):
        assert (kept.input_digest, kept.write_id) == (want.input_digest, want.write_id)
        np.testing.assert_array_equal(kept.hidden_sequence, want.hidden_sequence)
        assert kept.state is not None
        assert want.state is not None
        np.testing.assert_array_equal(kept.state.h, want.state.h)
        np.testing.assert_array_equal(kept.state.c, want.state.c)
    # A write without earlier steps drops them.
    assert await store.compare_and_set(
        replace(got, revision=1, earlier_steps=()), expected_revision=0
    )
    assert (await store.get("a")).earlier_steps == ()


async def test_a_record_keeps_the_model_version_it_is_pinned_to(store: SessionStore) -> None:
    await store.create(replace(record("a"), model_name="enc", version_number=7), max_sessions=0)
    got = await store.get("a")
    assert (got.model_name, got.version_number) == ("enc", 7)


async def test_sessions_are_counted_per_model_version_while_they_live(
    store: SessionStore,
) -> None:
    for sid, version in (("a", 1), ("b", 1), ("c", 2)):
        pinned = replace(record(sid), model_name="enc", version_number=version)
        await store.create(pinned, max_sessions=0)
    await store.create(
        replace(record("x", ttl=0.2), model_name="enc", version_number=2), max_sessions=0
    )
    assert await store.count_pinned("enc", 1) == 2
    assert await store.count_pinned("enc", 2) == 2
    assert await store.count_pinned("dec", 1) == 0
    stepped = await store.get("a")
    assert await store.compare_and_set(replace(stepped, revision=1), expected_revision=0)
    assert await store.delete("b")
    assert await store.count_pinned("enc", 1) == 1  # a stepped (still counted), b closed
    await asyncio.sleep(0.3)
    assert await store.count_pinned("enc", 2) == 1  # x expired


async def test_unknown_id_is_not_found(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound, match="does not exist"):
        await store.get("nope")


async def test_compare_and_set_applies_once(store: SessionStore) -> None:
    await store.create(record("a"), max_sessions=0)
    current = await store.get("a")
    first = replace(current, step_count=1, revision=1)
    second = replace(current, step_count=1, revision=1, state=State.zeros(4))
    assert await store.compare_and_set(first, expected_revision=0)
    assert not await store.compare_and_set(second, expected_revision=0)
    np.testing.assert_array_equal((await store.get("a")).state.h, current.state.h)


async def test_racing_writers_apply_once(store: SessionStore) -> None:
    await store.create(record("a"), max_sessions=0)
    base = await store.get("a")
    outcomes = await asyncio.gather(
        *(
            store.compare_and_set(replace(base, revision=1, step_count=i), expected_revision=0)
            for i in range(10)
        )
    )
    assert sum(outcomes) == 1


async def test_delete_says_closed(store: SessionStore) -> None:
    await store.create(record("a"), max_sessions=0)
    assert await store.delete("a")
    assert not await store.delete("a")
    with pytest.raises(SessionNotFound, match="closed"):
        await store.get("a")
    assert not await store.compare_and_set(record("a"), expected_revision=0)


async def test_expiry_says_expired(store: SessionStore) -> None:
    await store.create(record("a", ttl=0.3), max_sessions=0)
    await store.get("a")
    await asyncio.sleep(0.5)
    with pytest.raises(SessionNotFound, match="expired"):
        await store.get("a")


async def test_cap_reaps_expired_first_and_never_evicts_live(store: SessionStore) -> None:
    await store.create(record("old", ttl=0.2), max_sessions=2)
    await store.create(record("live"), max_sessions=2)
    with pytest.raises(LimitExceeded):
        await store.create(record("x"), max_sessions=1)
    await asyncio.sleep(0.4)
    await store.create(record("new"), max_sessions=2)  # "old" expired and makes room
    assert await store.count() == 2
    with pytest.raises(LimitExceeded, match="maximum of 2"):
        await store.create(record("more"), max_sessions=2)
    assert (await store.get("live")).session_id == "live"


async def test_a_session_kept_alive_by_steps_counts_until_it_expires(store: SessionStore) -> None:
    """Steps move a session's expiry past the one it was created with: it stays counted (for
    the caps and its model version) and is not reaped until its last step's TTL passes."""
    created = replace(record("a", ttl=1.0), model_name="enc", version_number=1)
    await store.create(created, max_sessions=1, max_owner_sessions=1)
    await asyncio.sleep(0.6)
    stepped = replace(created, revision=1, step_count=1, expires_at=time.time() + 1.0)
    assert await store.compare_and_set(stepped, expected_revision=0)
    await asyncio.sleep(0.6)  # past the first expiry, not the stepped one
    assert await store.reap_expired() == []
    assert await store.count() == 1
    assert await store.count_pinned("enc", 1) == 1
    with pytest.raises(LimitExceeded, match="maximum of 1"):
        await store.create(record("b"), max_sessions=1)
    with pytest.raises(LimitExceeded, match="principal 'alice'"):
        await store.create(record("b"), max_sessions=0, max_owner_sessions=1)
    assert (await store.get("a")).step_count == 1
    await asyncio.sleep(0.6)
    assert await store.reap_expired() == ["a"]
    assert await store.count() == 0
    await store.create(record("b"), max_sessions=1, max_owner_sessions=1)


async def test_a_session_moved_to_another_version_stops_holding_its_old_one(
    store: SessionStore,
) -> None:
    """A session reset onto a newer version (a compare-and-set with the new version) no longer
    keeps its old version loaded, at the latest once the expiry it was created with passes."""
    created = replace(record("a", ttl=1.0), model_name="enc", version_number=1)
    await store.create(created, max_sessions=0)
    await asyncio.sleep(0.5)
    moved = replace(created, revision=1, version_number=2, expires_at=time.time() + 1.0)
    assert await store.compare_and_set(moved, expected_revision=0)
    await asyncio.sleep(0.7)
    assert await store.count_pinned("enc", 1) == 0
    assert (await store.get("a")).version_number == 2


async def test_reap_expired_returns_ids(store: SessionStore) -> None:
    await store.create(record("short", ttl=0.2), max_sessions=0)
    await store.create(record("long"), max_sessions=0)
    await asyncio.sleep(0.4)
    assert await store.reap_expired() == ["short"]
    assert await store.count() == 1


async def test_a_reset_record_drops_the_last_step(store: SessionStore) -> None:
    with_step = replace(record("a"), last_step=AppliedStep(1, "d", np.ones((1, 4), np.float32)))
    await store.create(with_step, max_sessions=0)
    assert await store.compare_and_set(
        replace(with_step, revision=1, last_step=None), expected_revision=0
    )
    assert (await store.get("a")).last_step is None


async def test_ping(store: SessionStore) -> None:
    assert await store.ping()


async def test_owner_cap_counts_live_sessions_of_that_owner(store: SessionStore) -> None:
    for i in range(2):
        await store.create(record(f"a{i}"), max_sessions=0, max_owner_sessions=2)
    with pytest.raises(LimitExceeded, match="principal 'alice' holds its maximum of 2"):
        await store.create(record("a2"), max_sessions=0, max_owner_sessions=2)
    other = replace(record("b0"), owner="bob")
    await store.create(other, max_sessions=0, max_owner_sessions=2)
    assert await store.delete("a0")
    await store.create(record("a3"), max_sessions=0, max_owner_sessions=2)
    await store.create(record("a4", ttl=0.05), max_sessions=0, max_owner_sessions=0)
    await asyncio.sleep(0.1)  # expired sessions do not count
    assert await store.delete("a1")
    await store.create(record("a5"), max_sessions=0, max_owner_sessions=2)


@pytest.mark.system
@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_more_operations_at_once_than_redis_connections_wait_for_one(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """Beyond its connections, a Redis store queues operations (a burst of session streams
    opening at once), never failing them as unavailable."""
    prefix = f"test-{uuid.uuid4().hex}:"
    store: SessionStore
    if kind == "redis":
        url = request.getfixturevalue("redis_server").url
        store = RedisSessionStore(url, prefix=prefix, max_connections=2)
    else:
        url = request.getfixturevalue("redis_cluster").url
        store = RedisClusterSessionStore(url, prefix=prefix, max_connections=2)
    await store.open()
    try:
        await asyncio.gather(*(store.create(record(f"s{i}"), max_sessions=0) for i in range(40)))
        got = await asyncio.gather(*(store.get(f"s{i}") for i in range(40)))
        assert [r.session_id for r in got] == [f"s{i}" for i in range(40)]
    finally:
        await store.close()


@pytest.mark.system
async def test_a_cluster_write_is_acknowledged_only_once_a_replica_has_it(
    redis_cluster: RedisClusterNodes,
) -> None:
    """With the replica of a session's primary paused, a step's write is made but not
    acknowledged (UNAVAILABLE: retry); once the replica catches up, the store vouches for it."""
    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisClusterSessionStore(redis_cluster.url, prefix=prefix)
    await store.open()
    try:
        await store.create(record("a"), max_sessions=0)
        current = await store.get("a")
        key = f"{prefix}session:{{a}}"
        replica = redis_cluster.replica_of(
            redis_cluster.primary_of_slot(redis_cluster.keyslot(key))
        )
        redis_cluster.pause(replica)
        try:
            with pytest.raises(StoreUnavailable, match="could not confirm the write on a replica"):
                await store.compare_and_set(replace(current, revision=1), expected_revision=0)
        finally:
            redis_cluster.resume(replica)
        await store.confirm("a")
        assert (await store.get("a")).revision == 1  # made, and now on the replica too
    finally:
        await store.close()


async def test_writes_of_many_sessions_in_one_turn_each_get_their_own_outcome(
    store: SessionStore,
) -> None:
    """What a turn of steps across sessions asks for at once (Redis sends it as one pipeline):
    each write applies or not on its own revision."""
    for i in range(8):
        await store.create(record(f"s{i}"), max_sessions=0)
    base = [await store.get(f"s{i}") for i in range(8)]
    outcomes = await asyncio.gather(
        *(
            store.compare_and_set(
                replace(r, revision=1, step_count=1, state=State.zeros(4)),
                expected_revision=0 if i % 2 else 5,  # every other one on a stale revision
            )
            for i, r in enumerate(base)
        )
    )
    assert outcomes == [bool(i % 2) for i in range(8)]
    for i in range(8):
        stored = await store.get(f"s{i}")
        assert stored.revision == (1 if i % 2 else 0)


@pytest.mark.system
async def test_a_pipeline_of_writes_reloads_a_script_redis_has_lost(
    redis_server: RedisServer,
) -> None:
    store = RedisSessionStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:")
    await store.open()
    try:
        for i in range(4):
            await store.create(record(f"s{i}"), max_sessions=0)
        base = [await store.get(f"s{i}") for i in range(4)]
        await store._redis.script_flush()  # a restarted Redis, say
        # Three writes queued behind one on its way: they go as one pipeline, whose scripts
        # Redis no longer has.
        store._sending = True
        queued = [
            asyncio.ensure_future(
                store.compare_and_set(replace(r, revision=1), expected_revision=0)
            )
            for r in base[1:]
        ]
        await asyncio.sleep(0)
        assert len(store._writes) == 3
        await store._send_queued()
        assert [await write for write in queued] == [True] * 3
        assert [(await store.get(f"s{i}")).revision for i in range(4)] == [0, 1, 1, 1]
        assert await store.compare_and_set(replace(base[0], revision=1), expected_revision=0)
    finally:
        await store.close()


@pytest.mark.system
async def test_a_pipeline_to_a_redis_that_is_gone_fails_every_write_as_unavailable(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = RedisServer(tmp_path_factory.mktemp("gone"))
    store = RedisSessionStore(server.url, prefix="gone:", timeout=0.5)
    await store.open()
    try:
        for i in range(3):
            await store.create(record(f"s{i}"), max_sessions=0)
        base = [await store.get(f"s{i}") for i in range(3)]
        server.stop()
        outcomes = await asyncio.gather(
            *(store.compare_and_set(replace(r, revision=1), expected_revision=0) for r in base),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    finally:
        await store.close()
