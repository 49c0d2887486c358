"""A ``SessionStore`` in Redis, shared by replicas: any replica can serve any session's next step.

Layout (``prefix`` defaults to ``lstm:``):
- ``{prefix}session:{id}``: a hash with the state as float32 bytes, the step count, revision,
  model version, owner and the last applied step (and, for a stream with a window of steps in
  flight, the steps before it, packed in one field); it carries a Redis TTL of the session's TTL;
- ``{prefix}sessions``: a sorted set of live ids scored by expiry time, for the cap and reaping;
- ``{prefix}owner:{owner}`` and ``{prefix}pinned:{model}/{version}``: the same, per principal (for
  its cap) and per model version (so that a draining version stays loaded while its sessions
  live); expired entries are dropped when they are next counted;
- ``{prefix}ended:{id}``: why a session ended ("closed" or "expired"), kept for a day.

Every write is one Lua script, so it is atomic: creation checks the cap, compare-and-set checks the
revision, and two replicas racing on one step apply it once. No pickle: only numbers and bytes.
Compare-and-sets asked for while one is on its way (the steps of many session streams) wait for it
and then go to Redis together, in one pipeline: one round trip for all of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from lstm_server.core.errors import SessionNotFound, StoreUnavailable
from lstm_server.core.store import AppliedStep, SessionRecord
from lstm_server.core.types import State
from lstm_server.sessions.memory import too_many_owner_sessions, too_many_sessions

log = logging.getLogger(__name__)
T = TypeVar("T")
TOMBSTONE_SECONDS = 86_400

# Moves sessions whose expiry has passed from the index to tombstones; returns their ids.
_REAP = """
local function reap(index, prefix, now)
  local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now)
  for _, id in ipairs(expired) do
    redis.call('DEL', prefix .. 'session:' .. id)
    redis.call('SET', prefix .. 'ended:' .. id, 'expired', 'EX', ARGV[2])
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', index, '-inf', now) end
  return expired
end
"""

# KEYS: session hash, index, owner's index, model version's index. ARGV: now, tombstone seconds,
# prefix, id, max_sessions, ttl ms, expires_at, max_owner_sessions, then field/value pairs.
# Returns 1 (created), 0 (the store's cap is reached) or -1 (the owner's cap is reached).
_CREATE = (
    _REAP
    + """
reap(KEYS[2], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
local cap = tonumber(ARGV[5])
if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then return 0 end
local owner_cap = tonumber(ARGV[8])
if owner_cap > 0 and redis.call('ZCARD', KEYS[3]) >= owner_cap then return -1 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[4])
return 1
"""
)

# A compare-and-set's first lines, in both Redis stores: refuse a stale revision, then drop the
# kept steps' fields (``hash_fields`` writes them again when the record has them).
CHECK_REVISION_AND_DROP_STEPS = """
if redis.call('HGET', KEYS[1], 'revision') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'last_step', 'last_digest', 'last_hidden', 'last_shape', 'last_write',
  'earlier')
"""

# KEYS: session hash, index, owner's index, model version's index. ARGV: expected revision, id,
# ttl ms, expires_at, field/value pairs.
_COMPARE_AND_SET = (
    CHECK_REVISION_AND_DROP_STEPS
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[4], 'XX', ARGV[4], ARGV[2])
return 1
"""
)

# KEYS: session hash, index, tombstone. ARGV: id, tombstone seconds, prefix.
_DELETE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
local pinned = redis.call('HMGET', KEYS[1], 'model_name', 'version_number')
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if owner then redis.call('ZREM', ARGV[3] .. 'owner:' .. owner, ARGV[1]) end
if pinned[1] then
  redis.call('ZREM', ARGV[3] .. 'pinned:' .. pinned[1] .. '/' .. pinned[2], ARGV[1])
end
redis.call('SET', KEYS[3], 'closed', 'EX', ARGV[2])
return 1
"""

# KEYS: index. ARGV: now, tombstone seconds, prefix.
_REAP_ALL = _REAP + "return reap(KEYS[1], ARGV[3], ARGV[1])"


def hash_fields(record: SessionRecord) -> list[Any]:
    """The record as the field/value pairs of its Redis hash (numbers and bytes, no pickle)."""
    fields: dict[str, Any] = {
        "h": record.state.h.astype(np.float32).tobytes(),
        "c": record.state.c.astype(np.float32).tobytes(),
        "step_count": record.step_count,
        "model_version": record.model_version,
        "model_name": record.model_name,
        "version_number": record.version_number,
        "ttl_seconds": record.ttl_seconds,
        "expires_at": repr(record.expires_at),
        "owner": record.owner,
        "revision": record.revision,
    }
    if record.last_step is not None:
        hidden = record.last_step.hidden_sequence.astype(np.float32)
        fields |= {
            "last_step": record.last_step.step_number,
            "last_digest": record.last_step.input_digest,
            "last_hidden": hidden.tobytes(),
            "last_shape": ",".join(map(str, hidden.shape)),
            "last_write": record.last_step.write_id,
        }
    if record.earlier_steps:
        fields["earlier"] = _packed(record.earlier_steps)
    return [item for pair in fields.items() for item in pair]


def _packed(steps: tuple[AppliedStep, ...]) -> bytes:
    """Steps with their states as one value: the length of a JSON header (numbers, digests,
    shapes), the header, then the float32 bytes of each step's outputs, h and c in order."""
    header: list[list[Any]] = []
    arrays: list[np.ndarray] = []
    for step in steps:
        assert step.state is not None
        hidden = np.ascontiguousarray(step.hidden_sequence, np.float32)
        header.append([step.step_number, step.input_digest, step.write_id, *hidden.shape])
        arrays += [hidden, step.state.h.astype(np.float32), step.state.c.astype(np.float32)]
    head = json.dumps(header).encode()
    return b"%d\n" % len(head) + head + b"".join(a.tobytes() for a in arrays)


def _unpacked(blob: bytes, state_size: int) -> tuple[AppliedStep, ...]:
    length, _, rest = blob.partition(b"\n")
    header = json.loads(rest[: int(length)])
    values = np.frombuffer(rest[int(length) :], np.float32)
    steps = []
    at = 0
    for number, digest, write_id, rows, columns in header:
        hidden = values[at : at + rows * columns].reshape(rows, columns)
        at += rows * columns
        h, c = values[at : at + state_size], values[at + state_size : at + 2 * state_size]
        at += 2 * state_size
        steps.append(AppliedStep(number, digest, hidden, write_id, State(h, c)))
    return tuple(steps)


def record_of_hash(session_id: str, raw: dict[bytes, bytes]) -> SessionRecord:
    """The record a Redis hash written from ``hash_fields`` holds."""
    f = {k.decode(): v for k, v in raw.items()}
    last = None
    if b"last_step" in raw:
        shape = tuple(int(n) for n in f["last_shape"].decode().split(","))
        last = AppliedStep(
            int(f["last_step"]),
            f["last_digest"].decode(),
            np.frombuffer(f["last_hidden"], np.float32).reshape(shape),
            f.get("last_write", b"").decode(),
        )
    state = State(np.frombuffer(f["h"], np.float32), np.frombuffer(f["c"], np.float32))
    earlier = _unpacked(f["earlier"], state.h.size) if b"earlier" in raw else ()
    return SessionRecord(
        session_id=session_id,
        state=state,
        step_count=int(f["step_count"]),
        model_version=f["model_version"].decode(),
        model_name=f.get("model_name", b"").decode(),
        version_number=int(f.get("version_number", b"0")),
        ttl_seconds=int(f["ttl_seconds"]),
        expires_at=float(f["expires_at"]),
        owner=f["owner"].decode(),
        revision=int(f["revision"]),
        last_step=last,
        earlier_steps=earlier,
    )


class RedisSessionStore:
    """Sessions in Redis (redis-py asyncio, one bounded connection pool, bounded timeouts, no
    retries: a Redis outage fails calls fast with ``StoreUnavailable`` instead of hanging them)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "lstm:",
        timeout: float = 1.0,
        max_connections: int = 64,
        clock: Callable[[], float] = time.time,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        # A blocking pool: beyond ``max_connections`` operations at once, an operation waits
        # (up to ``timeout``) for a connection, instead of failing with "too many connections".
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = redis.Redis(connection_pool=pool)
        self._prefix = prefix
        self._index = f"{prefix}sessions"
        self._clock = clock
        self._on_end = on_end
        self._create = self._redis.register_script(_CREATE)
        self._cas = self._redis.register_script(_COMPARE_AND_SET)
        self._delete = self._redis.register_script(_DELETE)
        self._reap = self._redis.register_script(_REAP_ALL)
        self._sending = False  # a compare-and-set is on its way to Redis
        self._writes: list[_Write] = []  # the ones waiting for it, to go in one pipeline
        self._sender: asyncio.Future[None] | None = None

    async def open(self) -> None:
        """Nothing to restore: Redis keeps the sessions. An unreachable Redis is not an error
        here; readiness reports it and calls fail with UNAVAILABLE until it returns."""

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    def _owner_key(self, owner: str) -> str:
        return f"{self._prefix}owner:{owner}"

    def _pinned_key(self, model_name: str, version_number: int) -> str:
        return f"{self._prefix}pinned:{model_name}/{version_number}"

    def _keys(self, record: SessionRecord) -> list[str]:
        return [
            self._key(record.session_id),
            self._index,
            self._owner_key(record.owner),
            self._pinned_key(record.model_name, record.version_number),
        ]

    async def _do(self, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except RedisError as exc:
            # The detail (addresses, Redis' own words) is for the log, not for callers.
            raise self._failed(exc) from exc

    def _report(self, ended: int, reason: str) -> None:
        if self._on_end is not None:
            for _ in range(ended):
                self._on_end(reason)

    async def create(
        self, record: SessionRecord, *, max_sessions: int, max_owner_sessions: int = 0
    ) -> None:
        ttl_ms = max(1, int((record.expires_at - self._clock()) * 1000))
        created = await self._do(
            self._create(
                keys=self._keys(record),
                args=[
                    self._clock(),
                    TOMBSTONE_SECONDS,
                    self._prefix,
                    record.session_id,
                    max_sessions,
                    ttl_ms,
                    record.expires_at,
                    max_owner_sessions,
                    *hash_fields(record),
                ],
            )
        )
        if created == 0:
            raise too_many_sessions(max_sessions)
        if created == -1:
            raise too_many_owner_sessions(record.owner, max_owner_sessions)

    async def get(self, session_id: str) -> SessionRecord:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key(session_id))
            pipe.get(f"{self._prefix}ended:{session_id}")
            pipe.zscore(self._index, session_id)
            raw, reason, expiry = await self._do(pipe.execute())
        now = self._clock()
        if raw:
            record = record_of_hash(session_id, raw)
            if record.expires_at > now:
                return record
        if raw or (expiry is not None and expiry <= now):
            reason = b"expired"  # Redis dropped it, or will; the reaper has not got to it yet
        raise SessionNotFound.ended(session_id, reason.decode() if reason else None)

    async def compare_and_set(self, record: SessionRecord, *, expected_revision: int) -> bool:
        ttl_ms = max(1, int((record.expires_at - self._clock()) * 1000))
        args = [expected_revision, record.session_id, ttl_ms, record.expires_at]
        write = _Write(self._keys(record), [*args, *hash_fields(record)])
        if self._sending:  # one is on its way: go with the next pipeline
            self._writes.append(write)
            return bool(await write.stored)
        self._sending = True  # nothing on its way: this caller sends its own, at once
        try:
            await self._send([write])
        finally:
            if self._writes:
                self._sender = asyncio.ensure_future(self._send_queued())
            else:
                self._sending = False
        return bool(await write.stored)

    async def _send_queued(self) -> None:
        """Send what queued while a write was on its way, then what queued meanwhile, until
        nothing has: one pipeline in flight at a time, on a task of its own (a caller that is
        cancelled does not take the others' writes with it)."""
        try:
            while self._writes:
                writes, self._writes = self._writes, []
                await self._send(writes)
        finally:
            self._sending, self._sender = False, None

    async def _send(self, writes: list[_Write]) -> None:
        """One write as one script call, several in one pipeline; a write whose caller has
        gone before it was sent is not sent. Each caller gets its own outcome."""
        writes = [write for write in writes if not write.stored.done()]
        try:
            if len(writes) == 1:
                [write] = writes
                _settle(write, await self._do(self._cas(keys=write.keys, args=write.args)))
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for write in writes:
                    pipe.evalsha(self._cas.sha, len(write.keys), *write.keys, *write.args)
                outcomes = await self._do(pipe.execute(raise_on_error=False))
            unknown = []  # Redis did not have the script: nothing ran; sent again with it
            for write, outcome in zip(writes, outcomes, strict=True):
                if isinstance(outcome, NoScriptError):
                    unknown.append(write)
                elif isinstance(outcome, Exception):
                    _settle(write, self._failed(outcome))
                else:
                    _settle(write, outcome)
            for write in unknown:
                _settle(write, await self._do(self._cas(keys=write.keys, args=write.args)))
        except Exception as error:  # StoreUnavailable, or a fault of this code: theirs too
            for write in writes:
                _settle(write, error)
        except BaseException:  # the loop is closing: the callers are cancelled with it
            for write in writes:
                write.stored.cancel()
            raise

    @staticmethod
    def _failed(error: Exception) -> StoreUnavailable:
        log.warning("session store operation failed: %s: %s", type(error).__name__, error)
        return StoreUnavailable("the session store is unavailable; retry later")

    async def delete(self, session_id: str) -> bool:
        deleted = await self._do(
            self._delete(
                keys=[self._key(session_id), self._index, f"{self._prefix}ended:{session_id}"],
                args=[session_id, TOMBSTONE_SECONDS, self._prefix],
            )
        )
        if deleted:
            self._report(1, "closed")
        return bool(deleted)

    async def confirm(self, session_id: str) -> None:
        """Nothing to wait for: one Redis, whose replicas (if any) this store does not know."""

    async def reap_expired(self) -> list[str]:
        ids = await self._do(
            self._reap(keys=[self._index], args=[self._clock(), TOMBSTONE_SECONDS, self._prefix])
        )
        expired = [i.decode() for i in ids]
        self._report(len(expired), "expired")
        return expired

    async def count(self) -> int:
        return int(await self._do(self._redis.zcount(self._index, f"({self._clock()}", "+inf")))

    async def count_pinned(self, model_name: str, version_number: int) -> int:
        key = self._pinned_key(model_name, version_number)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", self._clock())
            pipe.zcard(key)
            _, live = await self._do(pipe.execute())
        return int(live)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        if self._sender is not None:  # writes already asked for get their outcome first
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._redis.aclose()


class _Write:
    """A compare-and-set waiting for its turn's pipeline: the script's keys and arguments, and
    the caller's outcome (Redis' answer, or the error that stands for it)."""

    __slots__ = ("args", "keys", "stored")

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys = keys
        self.args = args
        self.stored: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


def _settle(write: _Write, outcome: object) -> None:
    """Give a write's caller its outcome, unless the caller has gone."""
    if write.stored.done():
        return
    if isinstance(outcome, BaseException):
        write.stored.set_exception(outcome)
    else:
        write.stored.set_result(outcome)
