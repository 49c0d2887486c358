"""The session service on a numpy runtime and the in-memory store: exactly-once steps, replies
to retries, ownership, resets, closing and reaping, checked against the independent reference."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import numpy as np
import pytest
from lstm_server.core.errors import (
    ConcurrentChange,
    InvalidInput,
    ModelMismatch,
    SessionNotFound,
    StepConflict,
    StoreUnavailable,
)
from lstm_server.core.registry import ModelRef, ServedModel
from lstm_server.core.sessions import SessionService, StepOutcome, check_window
from lstm_server.core.types import Limits, ModelInfo, RaggedSequence
from lstm_server.sessions import MemorySessionStore

from tests.helpers import NumpyRuntime, ragged, registry_of
from tests.reference import NumpyLstm

TOL = 1e-5


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Counts:
    """A SessionObserver that counts what it is told."""

    def __init__(self) -> None:
        self.created = self.stepped = self.replayed = self.closed = 0
        self.live: list[int] = []
        self.models: set[tuple[str, int]] = set()  # the versions events were told of

    def session_created(self, session_id: str, expires_at: float, model: ModelInfo) -> None:
        self.created += 1
        self.models.add((model.name, model.version_number))

    def session_closed(self, session_id: str) -> None:
        self.closed += 1

    def session_stepped(
        self, session_id: str, expires_at: float, model: ModelInfo, *, replayed: bool
    ) -> None:
        self.models.add((model.name, model.version_number))
        if replayed:
            self.replayed += 1
        else:
            self.stepped += 1

    def sessions_counted(self, live: int) -> None:
        self.live.append(live)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def counts() -> Counts:
    return Counts()


@pytest.fixture
async def service(clock: Clock, counts: Counts) -> AsyncIterator[SessionService]:
    runtime = NumpyRuntime()
    store = MemorySessionStore(clock=clock)
    await store.open()
    models = await registry_of(runtime)
    limits = Limits(max_session_ttl_seconds=100, default_session_ttl_seconds=10)
    made = SessionService(store, models, limits, clock=clock, observer=counts)
    yield made
    await made.stop()
    await models.stop()


def reference(service: SessionService) -> NumpyLstm:
    [served] = service.models.loaded()
    runtime = served.scheduler.runtime
    assert isinstance(runtime, NumpyRuntime)
    return NumpyLstm(*runtime.weights)


async def test_steps_chain_like_one_call(service: SessionService, rng) -> None:
    x = rng.normal(size=(7, 3)).astype(np.float32)
    session = await service.create(None)
    outputs = []
    for number, part in enumerate((x[:2], x[2:3], x[3:]), start=1):
        outcome = await service.step(session.session_id, ragged(part), number)
        assert outcome.step_number == number
        outputs.append(outcome.sequence)
    seq, h, c = reference(service).run(x)
    np.testing.assert_allclose(np.concatenate(outputs), seq, atol=TOL)
    np.testing.assert_allclose(outcome.state.h, h, atol=TOL)
    np.testing.assert_allclose(outcome.state.c, c, atol=TOL)
    got = await service.get(session.session_id)
    assert got.step_count == 3
    np.testing.assert_allclose(got.state.h, h, atol=TOL)


async def test_a_retry_gets_the_same_reply_and_applies_nothing(
    service: SessionService, counts: Counts, rng
) -> None:
    session = await service.create(None)
    x = ragged(rng.normal(size=(2, 3)))
    first = await service.step(session.session_id, x, 1)
    again = await service.step(session.session_id, x, 1)
    assert again.replayed
    assert not first.replayed
    np.testing.assert_array_equal(again.sequence, first.sequence)
    np.testing.assert_array_equal(again.state.h, first.state.h)
    assert (await service.get(session.session_id)).step_count == 1
    assert (counts.stepped, counts.replayed) == (1, 1)
    assert counts.models == {(session.model_name, session.version_number)}
    with pytest.raises(StepConflict, match="already applied with another input") as changed:
        await service.step(session.session_id, ragged(rng.normal(size=(2, 3))), 1)
    assert changed.value.reason == "STEP_INPUT_MISMATCH"
    assert changed.value.metadata["expected_step_number"] == "2"


async def test_a_window_keeps_the_replies_of_that_many_latest_steps(
    service: SessionService, rng
) -> None:
    x = rng.normal(size=(6, 3)).astype(np.float32)
    session = await service.create(None)
    first = [
        await service.step(session.session_id, ragged(x[n : n + 1]), n + 1, window=3)
        for n in range(6)
    ]
    for n in (4, 5, 6):  # the three latest, each with its own outputs and the state after it
        again = await service.step(session.session_id, ragged(x[n - 1 : n]), n, window=3)
        assert again.replayed
        assert again.step_number == n
        np.testing.assert_array_equal(again.sequence, first[n - 1].sequence)
        np.testing.assert_array_equal(again.state.h, first[n - 1].state.h)
        np.testing.assert_array_equal(again.state.c, first[n - 1].state.c)
    with pytest.raises(StepConflict, match="expects step_number 7"):
        await service.step(session.session_id, ragged(x[2:3]), 3, window=3)
    with pytest.raises(StepConflict, match="already applied with another input"):
        await service.step(session.session_id, ragged(x[:1]), 5, window=3)
    seq, _, _ = reference(service).run(x)
    np.testing.assert_allclose(np.concatenate([o.sequence for o in first]), seq, atol=TOL)
    assert (await service.get(session.session_id)).step_count == 6
    # A step without a window keeps only its own reply again.
    await service.step(session.session_id, ragged(x[:1]), 7)
    with pytest.raises(StepConflict, match="expects step_number 8"):
        await service.step(session.session_id, ragged(x[5:6]), 6)


async def test_what_a_replica_remembers_of_a_session_goes_when_it_expires(
    service: SessionService, clock: Clock, rng
) -> None:
    """The records remembered to step faster (with a window's kept replies) are dropped when the
    session expires and is reaped, and the bytes they held leave the count."""
    x = rng.normal(size=(200, 3)).astype(np.float32)
    session = await service.create(None)
    for n in range(8):
        await service.step(session.session_id, ragged(x[25 * n : 25 * (n + 1)]), n + 1, window=8)
    assert service.remembered_bytes > 8 * 25 * 3 * 4  # eight steps' replies kept
    clock.now += 60  # past the TTL
    assert await service.reap_expired() == 1
    assert service.remembered_bytes == 0


async def test_a_window_past_the_maximum_is_refused() -> None:
    with pytest.raises(InvalidInput, match="at most 64 steps in flight"):
        check_window(65, "open.window")
    check_window(64, "open.window")


@pytest.mark.parametrize("number", [2, 5, -1])
async def test_wrong_step_numbers_name_the_expected_one(
    service: SessionService, number: int, rng
) -> None:
    session = await service.create(None)
    with pytest.raises(StepConflict, match=r"expects step_number 1 \(or 0 to append\)") as wrong:
        await service.step(session.session_id, ragged(rng.normal(size=(1, 3))), number)
    assert wrong.value.reason == "STEP_OUT_OF_ORDER"
    assert wrong.value.metadata == {
        "session_id": session.session_id,
        "expected_step_number": "1",
        "step_number": str(number),
    }
    assert (await service.get(session.session_id)).step_count == 0


async def test_step_zero_appends(service: SessionService, rng) -> None:
    session = await service.create(None)
    for expected in (1, 2):
        outcome = await service.step(session.session_id, ragged(rng.normal(size=(1, 3))), 0)
        assert outcome.step_number == expected


async def test_bad_input_changes_nothing(service: SessionService) -> None:
    session = await service.create(None)
    bad = RaggedSequence(np.zeros(4, np.float32), np.array([2, 2]))
    with pytest.raises(InvalidInput, match=r"input.timesteps\[0\].values: has 2 values"):
        await service.step(session.session_id, bad, 1)
    assert (await service.get(session.session_id)).step_count == 0


async def test_another_owner_sees_nothing(service: SessionService, rng) -> None:
    session = await service.create(None, owner="alice")
    with pytest.raises(SessionNotFound, match="does not exist"):
        await service.get(session.session_id, owner="bob")
    with pytest.raises(SessionNotFound):
        await service.step(session.session_id, ragged(rng.normal(size=(1, 3))), 1, owner="bob")
    with pytest.raises(SessionNotFound):
        await service.close(session.session_id, owner="bob")
    assert (await service.get(session.session_id, owner="alice")).step_count == 0


async def test_initial_state_reset_and_close(service: SessionService, rng) -> None:
    h0 = rng.normal(size=4).astype(np.float32)
    c0 = rng.normal(size=4).astype(np.float32)
    session = await service.create((h0, c0))
    x = rng.normal(size=(3, 3)).astype(np.float32)
    outcome = await service.step(session.session_id, ragged(x), 1)
    _, h, _ = reference(service).run(x, h0, c0)
    np.testing.assert_allclose(outcome.state.h, h, atol=TOL)
    reset = await service.reset(session.session_id, None)
    assert reset.step_count == 0
    np.testing.assert_array_equal(reset.state.h, np.zeros(4))
    await service.close(session.session_id)
    with pytest.raises(SessionNotFound, match="was closed") as closed:
        await service.get(session.session_id)
    assert closed.value.reason == "SESSION_CLOSED"
    with pytest.raises(InvalidInput, match=r"initial_state\.h\.values: has 2 values"):
        await service.create((np.zeros(2, np.float32), np.zeros(4, np.float32)))


async def test_restart_makes_or_restarts_a_named_session_of_its_owner_only(
    service: SessionService, rng
) -> None:
    h0, c0 = (rng.normal(size=4).astype(np.float32) for _ in range(2))
    made = await service.restart("seq-1", (h0, c0), owner="alice")
    assert made.session_id == "seq-1"
    np.testing.assert_array_equal(made.state.h, h0)
    await service.step("seq-1", ragged(rng.normal(size=(2, 3))), 1, owner="alice")
    again = await service.restart("seq-1", None, owner="alice")
    assert again.step_count == 0
    np.testing.assert_array_equal(again.state.c, np.zeros(4))
    with pytest.raises(SessionNotFound, match="does not exist"):
        await service.restart("seq-1", None, owner="bob")  # never another owner's session
    assert (await service.get("seq-1", owner="alice")).step_count == 0
    with pytest.raises(InvalidInput, match="not a session id"):
        await service.restart("no spaces", None)


async def test_a_sequence_starts_steps_and_ends_and_a_retried_start_is_answered_once(
    service: SessionService, rng
) -> None:
    x = rng.normal(size=(3, 3)).astype(np.float32)
    h0, c0 = (rng.normal(size=4).astype(np.float32) for _ in range(2))
    seen: list[int] = []

    def prepare(served: ServedModel) -> tuple[np.ndarray, np.ndarray]:
        seen.append(served.version)
        return h0, c0

    def request(t: int, **flags: bool) -> Awaitable[StepOutcome]:
        return service.sequence_step(
            "seq-9", ModelRef(), ragged(x[t : t + 1]), t + 1, prepare=prepare, **flags
        )

    first = await request(0, start=True, end=False)
    again = await request(0, start=True, end=False)  # its reply was lost: the same start again
    assert again.replayed
    np.testing.assert_array_equal(again.sequence, first.sequence)
    await request(1, start=False, end=False)
    last = await request(2, start=False, end=True)
    seq, h, c = reference(service).run(x, h0, c0)
    np.testing.assert_allclose(last.state.h, h, atol=TOL)
    np.testing.assert_allclose(last.state.c, c, atol=TOL)
    np.testing.assert_allclose(first.sequence, seq[:1], atol=TOL)
    assert set(seen) == {1}  # the inputs were checked against the version that ran them
    with pytest.raises(SessionNotFound):  # its end closed it
        await service.get("seq-9")
    with pytest.raises(SessionNotFound):  # without a start, an ended sequence is unknown
        await request(0, start=False, end=False)


async def test_ttl_limits_and_expiry(service: SessionService, clock: Clock) -> None:
    with pytest.raises(InvalidInput, match="more than the maximum 100"):
        await service.create(None, ttl_seconds=101)
    session = await service.create(None)
    assert session.ttl_seconds == 10
    clock.now += 11
    with pytest.raises(SessionNotFound, match="was expired") as expired:
        await service.get(session.session_id)
    assert expired.value.reason == "SESSION_EXPIRED"


async def test_reaper_sweeps_and_reports_the_live_count(
    clock: Clock, counts: Counts, service: SessionService
) -> None:
    service.reap_interval = 0.01
    kept = await service.create(None, ttl_seconds=100)
    gone = await service.create(None, ttl_seconds=5)
    await service.start()
    assert counts.live == [2]
    clock.now += 6
    for _ in range(200):
        if counts.live[-1] == 1:
            break
        await asyncio.sleep(0.01)
    assert counts.live[-1] == 1
    with pytest.raises(SessionNotFound, match="was expired"):
        await service.get(gone.session_id)
    assert (await service.get(kept.session_id)).step_count == 0


async def test_a_session_of_other_weights_is_refused(
    service: SessionService, clock: Clock, rng
) -> None:
    session = await service.create(None)
    other = SessionService(
        service.store, await registry_of(NumpyRuntime(seed=1)), service.limits, clock=clock
    )
    with pytest.raises(ModelMismatch, match="the server now serves sha256:numpy-1") as other_model:
        await other.step(session.session_id, ragged(rng.normal(size=(1, 3))), 1)
    assert other_model.value.reason == "MODEL_VERSION_MISMATCH"
    assert other_model.value.metadata["served_version"] == "sha256:numpy-1"
    assert other_model.value.metadata["session_version"] == session.model_version


class FlakyStore(MemorySessionStore):
    """Writes, then fails to confirm (``lost``), or never writes (``conflict``)."""

    def __init__(self, clock: Clock, mode: str) -> None:
        super().__init__(clock=clock)
        self.mode = mode

    async def compare_and_set(self, record, *, expected_revision):  # type: ignore[no-untyped-def]
        if self.mode == "conflict":
            return False
        await super().compare_and_set(record, expected_revision=expected_revision)
        raise StoreUnavailable("the session store is unavailable; retry later")


async def service_on(store: MemorySessionStore, clock: Clock, counts: Counts) -> SessionService:
    await store.open()
    models = await registry_of(NumpyRuntime())
    return SessionService(store, models, Limits(), clock=clock, observer=counts)


async def test_a_step_whose_write_was_not_confirmed_is_read_back(
    clock: Clock, counts: Counts, rng
) -> None:
    service = await service_on(FlakyStore(clock, "lost"), clock, counts)
    session = await service.create(None)
    outcome = await service.step(session.session_id, ragged(rng.normal(size=(2, 3))), 1)
    assert outcome.step_number == 1
    assert (await service.get(session.session_id)).step_count == 1
    assert counts.stepped == 1  # counted once, by the replica that wrote it


class UnconfirmedStore(MemorySessionStore):
    """Holds what it is given but cannot vouch it survives (a cluster whose replica lags),
    until ``confirming``."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.confirming = False
        self.confirmed: list[str] = []

    async def confirm(self, session_id: str) -> None:
        if not self.confirming:
            raise StoreUnavailable("the session store could not confirm the write; retry")
        self.confirmed.append(session_id)


async def test_a_repeated_or_read_back_step_is_acknowledged_only_once_the_store_confirms_it(
    clock: Clock, counts: Counts, rng
) -> None:
    """A retried step answered from its kept reply, and a write read back after its reply was
    lost, are acknowledged only once the store vouches for them: until then UNAVAILABLE, so the
    caller retries, and nothing is applied twice."""
    store = UnconfirmedStore(clock)
    service = await service_on(store, clock, counts)
    session = await service.create(None)
    sid = session.session_id
    x = rng.normal(size=(2, 3)).astype(np.float32)
    first = await service.step(sid, ragged(x[:1]), 1)  # a plain write needs no confirm
    with pytest.raises(StoreUnavailable):
        await service.step(sid, ragged(x[:1]), 1)  # the retry's replay is not vouched for
    store.confirming = True
    again = await service.step(sid, ragged(x[:1]), 1)
    assert again.replayed
    np.testing.assert_allclose(again.sequence, first.sequence)
    assert store.confirmed == [sid]
    assert (await service.get(sid)).step_count == 1

    lost = FlakyStore(clock, "lost")
    lost_confirms: list[str] = []

    async def confirm(session_id: str) -> None:
        lost_confirms.append(session_id)
        raise StoreUnavailable("the session store could not confirm the write; retry")

    lost.confirm = confirm  # type: ignore[method-assign]
    other = await service_on(lost, clock, counts)
    sid = (await other.create(None)).session_id
    with pytest.raises(StoreUnavailable):
        await other.step(sid, ragged(x[:1]), 1)  # written, read back, not vouched for
    assert lost_confirms == [sid]


async def test_writers_that_keep_conflicting_get_a_retryable_error(
    clock: Clock, counts: Counts, rng
) -> None:
    service = await service_on(FlakyStore(clock, "conflict"), clock, counts)
    session = await service.create(None)
    with pytest.raises(ConcurrentChange, match="being changed by other writers; retry"):
        await service.step(session.session_id, ragged(rng.normal(size=(1, 3))), 1)
    assert counts.stepped == 0


async def test_a_step_after_another_replicas_write_reads_the_store(
    service: SessionService, clock: Clock, rng
) -> None:
    """Two services on one store, as two replicas on Redis: each remembers what it wrote, and a
    write by the other is noticed by the compare-and-set, never applied over."""
    other = SessionService(service.store, service.models, service.limits, clock=clock)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    session = await service.create(None)
    sid = session.session_id
    await service.step(sid, ragged(x[:1]), 1)
    await other.step(sid, ragged(x[1:2]), 2)  # the first service's memory of step 1 is stale
    third = await service.step(sid, ragged(x[2:3]), 3)  # still the next step: applied on step 2
    with pytest.raises(StepConflict, match="expects step_number 4"):
        await service.step(sid, ragged(x[3:]), 5)  # decided on the store's record
    fourth = await other.step(sid, ragged(x[3:]), 0)
    seq, h, _ = reference(service).run(x)
    np.testing.assert_allclose(third.sequence, seq[2:3], atol=TOL)
    np.testing.assert_allclose(fourth.state.h, h, atol=TOL)
    await other.close(sid)
    with pytest.raises(SessionNotFound):
        await service.step(sid, ragged(x[:1]), 0)  # remembered here, closed there
