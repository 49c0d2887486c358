"""Sessions: server-held state [h, c] that feeds the next step, with exactly-once steps."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from lstm_server.core.errors import (
    ConcurrentChange,
    InvalidInput,
    ModelMismatch,
    ModelNotFound,
    ServingError,
    SessionNotFound,
    StepConflict,
    StoreUnavailable,
)
from lstm_server.core.registry import ModelRef, ModelRegistry, ServedModel
from lstm_server.core.store import AppliedStep, SessionRecord, SessionStore, record_bytes
from lstm_server.core.types import Array, GivenState, Limits, ModelInfo, RaggedSequence, Row, State
from lstm_server.core.validation import LSTM_V1, Fields, optional_state, step_input

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 8
# The most steps a session stream may send ahead of their replies (and a session keeps replies of).
MAX_STREAM_WINDOW = 64
# Records this replica last wrote, kept to spare a step the read before its write (see step()).
_RECENT_RECORDS = 4096
# The most bytes those records may hold (replies kept for windows included), whatever the store.
_RECENT_BYTES = 64 * 1024 * 1024
# Replies of the last requests of ended sequences kept for a retry of that request (per replica).
_ENDED_REPLIES = 256
_ENDED_BYTES = 16 * 1024 * 1024


def new_session_id() -> str:
    """128 random bits from the OS's CSPRNG, hex-encoded: neither guessable nor sequential."""
    return secrets.token_hex(16)


_ID_CHARACTERS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.")
MAX_ID_LENGTH = 128


def check_session_id(session_id: str) -> None:
    """Refuse what cannot be a session id, without repeating it (it may be huge or hostile)."""
    if not session_id:
        raise InvalidInput.single("session_id", "is empty")
    if len(session_id) > MAX_ID_LENGTH or not _ID_CHARACTERS.issuperset(session_id):
        raise InvalidInput.single(
            "session_id",
            f"is not a session id: ids have at most {MAX_ID_LENGTH} letters, digits, '-', '_' "
            "or '.'",
        )


# Write ids: this process's random prefix and a count. Unique across replicas and attempts,
# which is all a write id must be, without a trip to the OS's random source per step.
_WRITER = secrets.token_hex(8)
_writes = itertools.count()


def new_write_id() -> str:
    return f"{_WRITER}-{next(_writes):x}"


def check_window(window: int, field: str) -> None:
    """Refuse a stream window (steps sent before their replies are read) past the maximum."""
    if window > MAX_STREAM_WINDOW:
        raise InvalidInput.single(
            field, f"is {window}; a stream keeps at most {MAX_STREAM_WINDOW} steps in flight"
        )


def kept_after(record: SessionRecord, window: int) -> tuple[AppliedStep, ...]:
    """The steps a record about to take a new step keeps from ``record``: the latest
    ``window - 1`` (with the state after each), so that with the new one it keeps ``window``."""
    if window <= 1 or record.last_step is None:
        return ()
    last = replace(record.last_step, state=record.state)
    return (*record.earlier_steps, last)[-(window - 1) :]


def input_digest(x: Array) -> str:
    return hashlib.sha256(str(x.shape).encode() + x.tobytes()).hexdigest()


def _digest(sequence: RaggedSequence) -> str:
    """A digest of a step's input as given (before it is checked against a model)."""
    parts = [sequence.values.tobytes(), sequence.widths.tobytes()]
    if sequence.tokens is not None:
        parts.append(sequence.tokens.tobytes())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


@dataclass(frozen=True)
class SessionInfo:
    """A session as callers see it: what the store keeps, less its bookkeeping (owner, revision,
    the last step kept for retries), with the description of the model version it is pinned to
    (None if this server has never had that version)."""

    session_id: str
    state: State
    step_count: int
    model_version: str  # the digest of the weights
    ttl_seconds: int
    expires_at: float  # Unix time
    model_name: str = ""
    version_number: int = 0
    model: ModelInfo | None = None

    @classmethod
    def of(cls, record: SessionRecord, model: ModelInfo | None) -> SessionInfo:
        return cls(
            record.session_id,
            record.state,
            record.step_count,
            record.model_version,
            record.ttl_seconds,
            record.expires_at,
            record.model_name or ("" if model is None else model.name),
            record.version_number or (0 if model is None else model.version_number),
            model,
        )


@dataclass(frozen=True)
class StepOutcome:
    """One applied step: its number, every timestep's result (T, timestep_width) and the state
    after it."""

    session_id: str
    step_number: int
    sequence: Array
    state: State
    replayed: bool = False  # a retry of the last applied step, answered from the record
    model: ModelInfo | None = None  # the version it ran on (the session's)


class SessionObserver(Protocol):
    """Told of session events (metrics implement it); the service works without one. Sessions
    are named with the time their TTL runs out, so that an observer can tell the sessions this
    replica holds or touched from those other replicas of a shared store touch."""

    def session_created(self, session_id: str, expires_at: float, model: ModelInfo) -> None: ...

    def session_stepped(
        self, session_id: str, expires_at: float, model: ModelInfo, *, replayed: bool
    ) -> None: ...

    def session_closed(self, session_id: str) -> None: ...

    def sessions_counted(self, live: int) -> None:
        """How many live sessions the store holds (all replicas' when it is shared), after
        opening it and after each sweep."""


class _KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


# A check the caller makes of the model version a step runs on, once it is known and before the
# model runs (the transport checks that the reply will not be too large).
BeforeRun = Callable[[ServedModel], object]


class SessionService:
    """Creates, steps, reads, resets and closes sessions kept in a ``SessionStore``. A session is
    pinned to the model version it was made on: its steps run on that version, whatever has been
    loaded since.

    ``start()`` sweeps expired sessions every ``reap_interval`` seconds until ``stop()``.
    """

    def __init__(
        self,
        store: SessionStore,
        models: ModelRegistry,
        limits: Limits,
        *,
        reap_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        observer: SessionObserver | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.limits = limits
        self.reap_interval = reap_interval
        self._clock = clock
        self._observer = observer
        self._locks = _KeyedLocks()
        self._reaper: asyncio.Task[None] | None = None
        self._recent: OrderedDict[str, SessionRecord] = OrderedDict()
        self._recent_bytes = 0
        # session id -> (owner, step number, the request's input digest, its reply)
        self._ended: OrderedDict[str, tuple[str, int, str, StepOutcome]] = OrderedDict()
        self._ended_bytes = 0

    async def start(self) -> None:
        """Report the live count and start sweeping expired sessions. A store that cannot be
        reached yet is not fatal: readiness reports it, and the sweeps count again."""
        try:
            await self._count()
        except ServingError as error:
            log.warning("cannot count the live sessions yet: %s", error.message)
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="session-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                expired = await self.reap_expired()
                await self._count()
            except ServingError as error:
                log.warning("reaping expired sessions failed: %s", error.message)
                continue
            if expired:
                log.info("reaped %d expired sessions", expired)

    async def _count(self) -> None:
        if self._observer is not None:
            self._observer.sessions_counted(await self.store.count())

    def _ttl(self, ttl_seconds: int) -> int:
        if ttl_seconds > self.limits.max_session_ttl_seconds:
            raise InvalidInput.single(
                "ttl_seconds",
                f"is {ttl_seconds}, more than the maximum {self.limits.max_session_ttl_seconds}",
            )
        return ttl_seconds or self.limits.default_session_ttl_seconds

    async def create(
        self,
        initial_state: GivenState | None,
        *,
        model: ModelRef | None = None,
        ttl_seconds: int = 0,
        owner: str = "",
        session_id: str | None = None,
    ) -> SessionInfo:
        """A new session on ``model`` (default: the default model's newest version), starting
        from ``initial_state`` (zeros if None), under a new random id unless the caller names
        it."""
        async with self.models.acquire(model or ModelRef()) as served:
            return await self._create(served, initial_state, ttl_seconds, owner, session_id)

    async def _create(
        self,
        served: ServedModel,
        initial_state: GivenState | None,
        ttl_seconds: int,
        owner: str,
        session_id: str | None,
        fields: Fields = LSTM_V1,
    ) -> SessionInfo:
        info = served.info
        state = optional_state(
            initial_state, fields.created_state, fields.created_layer_states, info, fields
        )
        ttl = self._ttl(ttl_seconds)
        record = SessionRecord(
            session_id=new_session_id() if session_id is None else session_id,
            state=state,
            step_count=0,
            model_version=info.version,
            model_name=served.name,
            version_number=served.version,
            ttl_seconds=ttl,
            expires_at=self._clock() + ttl,
            owner=owner,
            # Random, not 0: a session made again under the same name (a sequence restarted by
            # another replica) never has a revision that a record remembered here still holds.
            revision=secrets.randbits(48),
        )
        await self.store.create(
            record,
            max_sessions=self.limits.max_sessions,
            max_owner_sessions=self.limits.max_sessions_per_principal,
        )
        self._remember(record)
        if self._observer is not None:
            self._observer.session_created(record.session_id, record.expires_at, info)
        return SessionInfo.of(record, info)

    async def get(self, session_id: str, *, owner: str = "") -> SessionInfo:
        """The live session; another owner's session is reported as not existing. It is read
        whether or not its model version is still served (how a state is carried over)."""
        record = await self._record(session_id, owner)
        return SessionInfo.of(record, self.models.described(*self._pin(record)))

    def _pin(self, record: SessionRecord) -> tuple[str, int]:
        """The model and version a record is pinned to; records made before versions were
        numbered are the default model's, at the version whose weights they name."""
        if record.version_number:
            return record.model_name, record.version_number
        name = record.model_name or self.models.default_model
        return name, self.models.version_of(name, record.model_version)

    def _pinned(
        self, record: SessionRecord, deadline: float | None
    ) -> contextlib.AbstractAsyncContextManager[ServedModel]:
        name, version = self._pin(record)
        return self.models.acquire(
            ModelRef(name, version), deadline=deadline, counted=True, pinned=True
        )

    async def _record(self, session_id: str, owner: str) -> SessionRecord:
        check_session_id(session_id)
        record = await self.store.get(session_id)
        if record.owner != owner:
            raise SessionNotFound.ended(session_id, None)
        return record

    async def step(
        self,
        session_id: str,
        sequence: RaggedSequence,
        step_number: int,
        *,
        owner: str = "",
        deadline: float | None = None,
        window: int = 1,
        before_run: BeforeRun | None = None,
        fields: Fields = LSTM_V1,
    ) -> StepOutcome:
        """Apply one step exactly once, on the model version the session is pinned to; a retry
        of the last applied step repeats its reply, and so does a retry of any of the ``window``
        latest steps (a stream that keeps that many in flight). ``before_run`` is called with the
        session's model version before anything runs.

        A step that follows one this replica wrote starts from the record it remembers and goes
        straight to the compare-and-set, one store round trip instead of two; if another writer
        changed the session meanwhile, the compare-and-set fails and the step reads the store as
        any other does. Refusals and replays are only ever decided on a record just read.
        """
        async with self._locks.hold(session_id):
            record = self._recalled(session_id, owner, step_number)
            record = record or await self._record(session_id, owner)
            async with self._pinned(record, deadline) as served:
                if before_run is not None:
                    before_run(served)
                x = step_input(sequence, served.info, served.limits, fields)
                return await self._apply(record, served, x, step_number, owner, deadline, window)

    async def _apply(
        self,
        record: SessionRecord,
        served: ServedModel,
        x: Array,
        step_number: int,
        owner: str,
        deadline: float | None,
        window: int,
    ) -> StepOutcome:
        """The step on ``record`` (the first attempt) or on the record read again after a
        compare-and-set that another writer won."""
        session_id = record.session_id
        digest = input_digest(x)
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                record = await self._record(session_id, owner)
            self._check_model(record, served.info)
            replay = self._replay(record, step_number, digest, served.info)
            if replay is not None:
                # Acknowledged before, maybe by a write whose confirmation was lost: the store
                # vouches for it before it is acknowledged again.
                await self.store.confirm(session_id)
                self._stepped(record, served.info, replayed=True)
                return replay
            applied = record.step_count + 1
            if step_number not in (0, applied):
                raise StepConflict(
                    f"session {session_id} expects step_number {applied} "
                    f"(or 0 to append), got {step_number}",
                    session_id=session_id,
                    expected_step_number=applied,
                    step_number=step_number,
                )
            [result] = await served.scheduler.run([Row(x, record.state)], deadline=deadline)
            updated = replace(
                record,
                state=result.state,
                step_count=applied,
                revision=record.revision + 1,
                expires_at=self._clock() + record.ttl_seconds,
                last_step=AppliedStep(applied, digest, result.sequence, new_write_id()),
                earlier_steps=kept_after(record, window),
            )
            if await self._stored(updated, record.revision):
                self._remember(updated, with_steps=window > 1)
                self._stepped(updated, served.info, replayed=False)
                return StepOutcome(
                    session_id, applied, result.sequence, result.state, model=served.info
                )
            self._forget(session_id)
        raise ConcurrentChange(
            f"session {session_id} is being changed by other writers; retry",
            session_id=session_id,
        )

    def _recalled(self, session_id: str, owner: str, step_number: int) -> SessionRecord | None:
        """The record this replica last wrote, if a step numbered ``step_number`` would apply
        to it (the next step, or 0) and it is live by its TTL."""
        record = self._recent.get(session_id)
        if (
            record is None
            or record.owner != owner
            or record.expires_at <= self._clock()
            or step_number not in (0, record.step_count + 1)
        ):
            return None
        return record

    def _remember(self, record: SessionRecord, *, with_steps: bool = False) -> None:
        # Without its steps' results unless a window of steps keeps them (a step that applies
        # only reads them to carry them over): a remembered record costs its state, not its
        # replies.
        if not with_steps:
            record = replace(record, last_step=None, earlier_steps=())
        self._forget(record.session_id)
        self._recent[record.session_id] = record
        self._recent_bytes += record_bytes(record)
        while len(self._recent) > _RECENT_RECORDS or self._recent_bytes > _RECENT_BYTES:
            _, dropped = self._recent.popitem(last=False)
            self._recent_bytes -= record_bytes(dropped)

    @property
    def remembered_bytes(self) -> int:
        """What the records this replica remembers to step faster hold (kept replies
        included), within its own bound whatever the store."""
        return self._recent_bytes

    def _forget(self, session_id: str) -> None:
        """Drop the record remembered for a session (its bytes leave the cache's count)."""
        dropped = self._recent.pop(session_id, None)
        if dropped is not None:
            self._recent_bytes -= record_bytes(dropped)

    def _forget_expired(self, expired: list[str]) -> None:
        """Drop what is remembered of sessions that ended by their TTL: the ones the store reaped
        and any whose TTL has run out here."""
        for session_id in expired:
            self._forget(session_id)
        now = self._clock()
        for session_id in [k for k, r in self._recent.items() if r.expires_at <= now]:
            self._forget(session_id)

    async def _stored(self, updated: SessionRecord, expected_revision: int) -> bool:
        """Compare-and-set a step. If the store fails to answer, the write may still have been
        made (Redis ran the script, the reply was lost): read the session back once and see
        whether this very write (its ``write_id``) is the one stored."""
        try:
            return await self.store.compare_and_set(updated, expected_revision=expected_revision)
        except StoreUnavailable:
            assert updated.last_step is not None
            try:
                stored = await self.store.get(updated.session_id)
            except ServingError:
                stored = None
            last = None if stored is None else stored.last_step
            if last is None or last.write_id != updated.last_step.write_id:
                raise
            log.info("a step's write was made although the store did not confirm it in time")
            await self.store.confirm(updated.session_id)
            return True

    @staticmethod
    def _check_model(record: SessionRecord, info: ModelInfo) -> None:
        """The version a session is pinned to must still have the weights it was made with (a
        repository whose version folder was overwritten, or replicas given other weights under
        the same version, must not carry a state over to weights it was not made for)."""
        if record.model_version != info.version:
            raise ModelMismatch(
                f"session {record.session_id} was made with model {record.model_version}; "
                f"the server now serves {info.version} as version {info.version_number} of "
                f"model '{info.name}'",
                session_id=record.session_id,
                session_version=record.model_version,
                served_version=info.version,
            )
        if record.state.h.size != info.state_size:
            raise ModelMismatch(
                f"session {record.session_id} holds a state of {record.state.h.size} values; "
                f"the model's has {info.state_size}",
                session_id=record.session_id,
                session_version=record.model_version,
                served_version=info.version,
            )

    @staticmethod
    def _replay(
        record: SessionRecord, step_number: int, digest: str, info: ModelInfo
    ) -> StepOutcome | None:
        if step_number == 0 or step_number > record.step_count:
            return None
        kept = [step for step in record.kept_steps() if step.step_number == step_number]
        if not kept:
            return None
        [last] = kept
        if last.input_digest != digest:
            raise StepConflict(
                f"step {step_number} of session {record.session_id} was already applied with "
                f"another input; the next step is {record.step_count + 1}",
                reason="STEP_INPUT_MISMATCH",
                session_id=record.session_id,
                expected_step_number=record.step_count + 1,
                step_number=step_number,
            )
        state = record.state if last.state is None else last.state
        return StepOutcome(
            record.session_id, step_number, last.hidden_sequence, state, replayed=True, model=info
        )

    def _stepped(self, record: SessionRecord, model: ModelInfo, *, replayed: bool) -> None:
        if self._observer is not None:
            self._observer.session_stepped(
                record.session_id, record.expires_at, model, replayed=replayed
            )

    async def reset(
        self,
        session_id: str,
        state: GivenState | None,
        *,
        owner: str = "",
        fields: Fields = LSTM_V1,
    ) -> SessionInfo:
        """Back to zeros or to ``state``; the step count restarts at 0. The session stays on its
        model version; if that version is no longer served (or has other weights now), it moves
        to the newest version of its model, since nothing of its past is kept."""
        async with self._locks.hold(session_id):
            for _ in range(_CAS_ATTEMPTS):
                record = await self._record(session_id, owner)
                async with self.models.acquire(await self._reset_target(record)) as served:
                    new_state = optional_state(
                        state, fields.reset_state, fields.reset_layer_states, served.info, fields
                    )
                    updated = replace(
                        record,
                        state=new_state,
                        step_count=0,
                        revision=record.revision + 1,
                        model_version=served.info.version,
                        model_name=served.name,
                        version_number=served.version,
                        expires_at=self._clock() + record.ttl_seconds,
                        last_step=None,
                        earlier_steps=(),
                    )
                    stored = await self.store.compare_and_set(
                        updated, expected_revision=record.revision
                    )
                if stored:
                    self._remember(updated)
                    return SessionInfo.of(updated, served.info)
        raise ConcurrentChange(
            f"session {session_id} is being changed by other writers; retry",
            session_id=session_id,
        )

    async def _reset_target(self, record: SessionRecord) -> ModelRef:
        """The session's own version if it is still served with the weights it was made with;
        else its model's newest version."""
        name, version = self._pin(record)
        pinned = ModelRef(name, version)
        try:
            async with self.models.acquire(pinned, pinned=True) as served:
                if served.info.version == record.model_version:
                    return pinned
        except ModelNotFound as error:
            if error.reason != "MODEL_VERSION_UNLOADED" and version:
                raise
        return ModelRef(name)

    async def restart(
        self,
        session_id: str,
        initial_state: GivenState | None,
        *,
        model: ModelRef | None = None,
        owner: str = "",
        fields: Fields = LSTM_V1,
    ) -> SessionInfo:
        """The session the caller names, on ``model``, from ``initial_state`` with no steps:
        reset if it is live on that model version, made (again) if not (callers that name their
        sessions, as the Open Inference Protocol's sequences do, start them this way)."""
        check_session_id(session_id)
        try:
            record: SessionRecord | None = await self.store.get(session_id)
        except SessionNotFound:
            record = None
        if record is not None and record.owner != owner:
            raise SessionNotFound.ended(session_id, None)  # never another owner's session
        async with self.models.acquire(model or ModelRef()) as served:
            if record is not None and self._pin(record) == (served.name, served.version):
                return await self.reset(session_id, initial_state, owner=owner, fields=fields)
            if record is not None:  # on another model or version: made anew
                self._forget(session_id)
                await self.store.delete(session_id)
            return await self._create(served, initial_state, 0, owner, session_id, fields)

    async def sequence_step(
        self,
        session_id: str,
        model: ModelRef,
        sequence: RaggedSequence,
        step_number: int,
        *,
        start: bool,
        end: bool,
        prepare: Callable[[ServedModel], GivenState | None],
        owner: str = "",
        deadline: float | None = None,
        fields: Fields = LSTM_V1,
    ) -> StepOutcome:
        """One request of a sequence the caller names (Triton's sequence extension). Its start
        (re)makes the session on ``model`` from the initial state ``prepare`` reads; every
        request steps the session on the version it is pinned to; its end closes the session
        after its step. ``prepare`` is called with each version the request runs on, before the
        model runs, to read the request's inputs for it (``fields``: how the protocol names
        them; the values are checked here). A start that repeats a session's
        only step (a retry whose reply was lost) is answered from the session, never applied
        again."""
        outcome: StepOutcome | None = None
        if start:
            async with self.models.acquire(model, deadline=deadline) as served:
                state = prepare(served)
                pinned = ModelRef(served.name, served.version)
            if step_number == 1:
                with contextlib.suppress(SessionNotFound, StepConflict):
                    outcome = await self.step(
                        session_id,
                        sequence,
                        1,
                        owner=owner,
                        deadline=deadline,
                        before_run=prepare,
                        fields=fields,
                    )
            if outcome is None:
                await self.restart(session_id, state, model=pinned, owner=owner, fields=fields)
        if outcome is None:
            try:
                outcome = await self.step(
                    session_id,
                    sequence,
                    step_number,
                    owner=owner,
                    deadline=deadline,
                    before_run=prepare,
                    fields=fields,
                )
            except SessionNotFound as error:
                replied = self._ended_reply(session_id, owner, step_number, sequence, error)
                if replied is None:
                    raise
                return replied
        if end:
            with contextlib.suppress(SessionNotFound):
                await self.close(session_id, owner=owner)
            self._keep_ended(session_id, (owner, outcome.step_number, _digest(sequence), outcome))
        return outcome

    def _keep_ended(self, session_id: str, kept: tuple[str, int, str, StepOutcome]) -> None:
        """Keep the reply of a sequence's last request, within a count and a size."""
        replaced = self._ended.pop(session_id, None)
        if replaced is not None:
            self._ended_bytes -= replaced[3].sequence.nbytes
        self._ended[session_id] = kept
        self._ended_bytes += kept[3].sequence.nbytes
        while len(self._ended) > _ENDED_REPLIES or self._ended_bytes > _ENDED_BYTES:
            _, (_, _, _, dropped) = self._ended.popitem(last=False)
            self._ended_bytes -= dropped.sequence.nbytes

    def _ended_reply(
        self,
        session_id: str,
        owner: str,
        step_number: int,
        sequence: RaggedSequence,
        error: SessionNotFound,
    ) -> StepOutcome | None:
        """The reply of the request that ended the sequence, for a retry of it (the same step
        number and input) that finds the sequence ended."""
        kept = self._ended.get(session_id)
        if error.reason != "SESSION_CLOSED" or kept is None or not step_number:
            return None
        if kept[:3] != (owner, step_number, _digest(sequence)):
            return None
        return replace(kept[3], replayed=True)

    async def close(self, session_id: str, *, owner: str = "") -> None:
        """End the session; NOT_FOUND if it is not live."""
        await self._record(session_id, owner)
        self._forget(session_id)
        if not await self.store.delete(session_id):
            raise SessionNotFound.ended(session_id, None)
        if self._observer is not None:
            self._observer.session_closed(session_id)

    async def reap_expired(self) -> int:
        expired = await self.store.reap_expired()
        self._forget_expired(expired)
        return len(expired)
