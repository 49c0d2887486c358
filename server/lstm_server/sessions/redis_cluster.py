"""A ``SessionStore`` on a Redis Cluster: sessions sharded over its primaries by hash slot.

Layout (``prefix`` defaults to ``lstm:``; ``{...}`` is a hash tag, so a session's keys share
one slot and every write to a session is one atomic script on one primary):
- ``{prefix}session:{<id>}``: the session hash, as in the single-Redis store, with a Redis TTL;
- ``{prefix}ended:{<id>}``: why the session ended. Written "expired" with every write, with a
  TTL of the session's plus a day, and "closed" when it is closed: when Redis drops an expired
  session, its tombstone already says so. Reading a session is one round trip to one node;
- ``{prefix}sessions``, ``{prefix}owner:<owner>``, ``{prefix}pinned:<model>/<version>``: sorted
  sets of ids (for the caps, reaping and pinned versions), each in its own slot, scored by the
  expiry a session had when it was created. A step does not touch them, so steps scale with
  the primaries; the score is a lower bound of the true expiry, and an entry whose score has
  passed is checked against its session (re-scored if it lives, dropped if it does not) before
  a cap refuses and before anything is counted;
- ``{prefix}indexes``: the names of the owner and pinned sets, for the reaper.

Caps hold across slots: creating a session first admits its id into ``sessions`` and into its
owner's set, each with one atomic script that checks the cap (both in one round trip), then
writes the session; a refusal takes the id out again. An admission whose session is never
written (a crash in between) counts against the cap until its score passes, never for more
than the session's TTL, so the caps can refuse early for that long but are never exceeded.

A write to a session is confirmed only once a replica of its primary has it (``WAIT``), when
the primary has replicas: a step the client saw acknowledged survives a failover. A step whose
replication is not confirmed in time fails with ``StoreUnavailable``; its retry is answered
from the kept reply if the step survived, or applies it if it did not, never twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from lstm_server.core.errors import SessionNotFound, StoreSetupError, StoreUnavailable
from lstm_server.core.store import SessionRecord
from lstm_server.sessions.memory import too_many_owner_sessions, too_many_sessions
from lstm_server.sessions.redis import (
    CHECK_REVISION_AND_DROP_STEPS,
    TOMBSTONE_SECONDS,
    hash_fields,
    record_of_hash,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# What redis-py raises when the cluster cannot serve (its cluster errors are not RedisErrors).
FAILURES = (RedisError, RedisClusterException)
SCHEMES = ("redis+cluster://", "rediss+cluster://")
TOPOLOGY_SECONDS = 1.0
# The session hash's fields that say which indexes it belongs in.
FIELDS_OF_INDEXES = ("expires_at", "owner", "model_name", "version_number")

# KEYS: an index. ARGV: cap (0: none), id, score. Returns 1 (admitted) or 0 (the cap is reached).
_ADMIT = """
local cap = tonumber(ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return 1
"""

# KEYS: session hash, tombstone. ARGV: ttl ms, tombstone ms, field/value pairs.
_CREATE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], 'expired', 'PX', ARGV[2])
return 1
"""

# KEYS: session hash, tombstone. ARGV: expected revision, ttl ms, tombstone ms, field/value pairs.
_COMPARE_AND_SET = (
    CHECK_REVISION_AND_DROP_STEPS
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], 'expired', 'PX', ARGV[3])
return 1
"""
)

# KEYS: tombstone. A write that changes nothing but is replicated (the tombstone's expiry, set
# to what it is): ``WAIT`` after it waits for every earlier write of the primary.
_TOUCH = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return ttl
"""

# KEYS: session hash, tombstone. ARGV: tombstone seconds. Returns {} (no live session) or
# {owner, model name, version number}.
_DELETE = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'model_name', 'version_number')
if redis.call('DEL', KEYS[1]) == 0 then return {} end
redis.call('SET', KEYS[2], 'closed', 'EX', ARGV[1])
return {held[1] or '', held[2] or '', held[3] or '0'}
"""


def _online_replicas(shards: list[dict[Any, Any]]) -> dict[str, int]:
    """``CLUSTER SHARDS`` as the number of replicas of each primary that have not failed, by
    address (Redis 7.0 calls a replica in sync "loading" until the first write reaches it)."""
    counts: dict[str, int] = {}
    for shard in shards:
        nodes = [{_text(k): _text(v) for k, v in n.items()} for n in shard.get("nodes", [])]
        online = sum(
            1
            for n in nodes
            if n.get("role") == "replica" and n.get("health") not in ("fail", "failed")
        )
        for n in nodes:
            if n.get("role") == "master":
                for host in {n.get("ip"), n.get("endpoint")} - {None, "", "?"}:
                    counts[f"{host}:{n['port']}"] = online
    return counts


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class ClusterAddress:
    """Where a cluster is: its seed nodes and the credentials and options they share."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    replicas_to_confirm: int = 1

    @classmethod
    def parse(cls, url: str) -> ClusterAddress:
        """``redis+cluster://[user:password@]host:port[,host:port...][/][?confirm=N]``
        (``rediss+cluster://`` for TLS). ``confirm``: replicas that must have a write before
        it is acknowledged (default 1; 0 acknowledges on the primary's word)."""
        scheme, _, rest = url.partition("://")
        if scheme + "://" not in SCHEMES:
            raise ValueError(f"a cluster URL begins with {' or '.join(SCHEMES)}")
        rest, _, query = rest.partition("?")
        rest = rest.rstrip("/")
        credentials, _, hosts = rest.rpartition("@")
        username = password = None
        if credentials:
            user, has_password, secret = credentials.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if has_password else None
        seeds = []
        for seed in filter(None, hosts.split(",")):
            host, _, port = seed.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"seed {seed!r} is not HOST:PORT")
            seeds.append((host.strip("[]"), int(port)))
        if not seeds:
            raise ValueError("name at least one seed node: redis+cluster://HOST:PORT,HOST:PORT")
        options = parse_qs(query)
        unknown = set(options) - {"confirm"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r}; the one option is confirm")
        confirm = options.get("confirm", ["1"])[-1]
        if not confirm.isdigit():
            raise ValueError(f"confirm must be a number of replicas, not {confirm!r}")
        return cls(tuple(seeds), username, password, scheme == "rediss+cluster", int(confirm))


class RedisClusterSessionStore:
    """Sessions on a Redis Cluster (redis-py's cluster client: it follows MOVED and ASK
    redirections and refreshes the slot map; bounded timeouts, no retries of its own: a
    failing node fails calls fast with ``StoreUnavailable``, which callers retry)."""

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
        address = ClusterAddress.parse(url)
        self._redis = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
            username=address.username,
            password=address.password,
            ssl=address.tls,
            # Start with slots uncovered (readiness says NOT_SERVING until they are).
            require_full_coverage=False,
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._address = address
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._confirm = address.replicas_to_confirm
        self._online_replicas: dict[str, int] = {}
        self._topology_read = -TOPOLOGY_SECONDS
        # Under the socket timeout: a replica that does not answer gives a count, not a timeout.
        self._wait_ms = max(1, int(timeout * 500))
        self._prefix = prefix
        self._index = f"{prefix}sessions"
        self._indexes = f"{prefix}indexes"
        self._clock = clock
        self._on_end = on_end
        self._admit = self._redis.register_script(_ADMIT)
        self._create = self._redis.register_script(_CREATE)
        self._cas = self._redis.register_script(_COMPARE_AND_SET)
        self._delete = self._redis.register_script(_DELETE)
        self._touch = self._redis.register_script(_TOUCH)

    async def open(self) -> None:
        """Learn the cluster's slot map from the first seed that answers. No seed answering is
        a setup error; seeds that answer for a cluster that cannot be read whole (a shard down)
        are not: the server starts, readiness says NOT_SERVING until the map can be read."""
        try:
            await self._redis.initialize()
        except FAILURES as exc:
            if not await self._a_seed_answers():
                seeds = ", ".join(f"{host}:{port}" for host, port in self._address.seeds)
                raise StoreSetupError(
                    f"no seed node of the session store's cluster answered ({seeds}): "
                    f"{type(exc).__name__}"
                ) from None
            log.warning(
                "the session store's cluster answers but cannot be read whole (%s: %s); "
                "not ready until it can",
                type(exc).__name__,
                exc,
            )
            return
        await self._load_scripts()

    async def _a_seed_answers(self) -> bool:
        address = self._address
        for host, port in address.seeds:
            seed = Redis(
                host=host,
                port=port,
                username=address.username,
                password=address.password,
                ssl=address.tls,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
            )
            try:
                if await seed.ping():
                    return True
            except FAILURES:
                continue
            finally:
                await seed.aclose()
        return False

    async def _load_scripts(self) -> None:
        """Now rather than on each primary's first call (a primary that missed them gets
        them then)."""
        try:
            for script in (self._admit, self._create, self._cas, self._delete, self._touch):
                await self._redis.script_load(script.script)
        except FAILURES as exc:
            log.warning("could not load the store's scripts on every primary: %s", exc)

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}session:{{{session_id}}}"

    def _tombstone(self, session_id: str) -> str:
        return f"{self._prefix}ended:{{{session_id}}}"

    def _owner_key(self, owner: str) -> str:
        return f"{self._prefix}owner:{owner}"

    def _pinned_key(self, model_name: str, version_number: int | str) -> str:
        return f"{self._prefix}pinned:{model_name}/{version_number}"

    def _indexes_of(self, fields: list[Any]) -> set[str]:
        """The indexes a session with these ``FIELDS_OF_INDEXES`` belongs in now (a session
        moved to another model version belongs in that version's index only)."""
        _, owner, model_name, version = (_text(f) if f is not None else "" for f in fields)
        pinned = self._pinned_key(model_name, version or 0)
        return {self._index, self._owner_key(owner), pinned}

    async def _do(self, operation: Awaitable[T]) -> T:
        try:
            # Beyond ``max_connections`` operations at once, wait (up to the timeout) for one
            # to end: redis-py's cluster client fails an operation that finds every connection
            # of a node taken, where its single-node pool can wait.
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            close = getattr(operation, "close", None)
            if close is not None:
                close()  # it will not run: close it without an un-awaited warning
            raise StoreUnavailable(
                "the session store is busy: every connection stayed taken; retry later"
            ) from None
        try:
            return await operation
        except FAILURES as exc:
            log.warning("session store operation failed: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable(
                f"the session store is unavailable ({type(exc).__name__}); retry later"
            ) from exc
        finally:
            self._slots.release()

    def _report(self, ended: int, reason: str) -> None:
        if self._on_end is not None:
            for _ in range(ended):
                self._on_end(reason)

    def _expiry_args(self, record: SessionRecord) -> list[int]:
        ttl_ms = max(1, int((record.expires_at - self._clock()) * 1000))
        return [ttl_ms, ttl_ms + TOMBSTONE_SECONDS * 1000]

    async def _written(self, key: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a write script, then wait for a replica of its primary to have it, on the same
        connection (``WAIT`` counts that connection's writes)."""
        node = self._redis.get_node_from_key(key)
        if node is None:
            raise StoreUnavailable("no node of the session store serves this session's slot")
        replicas = await self._replicas_of(node)
        if not replicas:
            return await self._do(script(keys=keys, args=args))
        result, confirmed = await self._do(self._confirmed(node, script, keys, args, replicas))
        if self._redis.get_node_from_key(key) is not node or int(confirmed) < replicas:
            # Moved, or not replicated in time: the write may not survive a failover.
            raise StoreUnavailable(
                "the session store could not confirm the write on a replica; retry"
            )
        return result

    async def _confirmed(
        self, node: ClusterNode, script: Any, keys: list[str], args: list[Any], replicas: int
    ) -> list[Any]:
        def commands(pipe: Any) -> None:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", replicas, self._wait_ms, target_nodes=node)

        return await self._pipelined(commands, script)

    async def _pipelined(self, commands: Callable[[Any], None], script: Any) -> list[Any]:
        """``commands`` in one cluster pipeline (one round trip to each node they name); a
        primary that has not seen ``script`` yet (new, or just promoted) is given it, once."""
        for attempt in (1, 2):
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    commands(pipe)
                    return await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                await self._redis.script_load(script.script)
        raise AssertionError("unreachable")

    async def _replicas_of(self, node: ClusterNode) -> int:
        """How many replicas must confirm a write to ``node``: ``confirm``, at most the online
        replicas it had when the topology was last read (``CLUSTER SHARDS``, at most once a
        second: after a failover, the promoted primary has none until one joins it)."""
        if not self._confirm:
            return 0
        if self._clock() - self._topology_read >= TOPOLOGY_SECONDS:
            self._topology_read = self._clock()
            try:
                shards = await self._do(
                    self._redis.cluster_shards(target_nodes=RedisCluster.RANDOM)
                )
            except StoreUnavailable:
                pass  # logged; the counts read last stand
            else:
                self._online_replicas = _online_replicas(shards)
        return min(self._confirm, self._online_replicas.get(node.name, 0))

    async def _resolve(self, index: str) -> list[str]:
        """Check the index's entries whose score has passed against their sessions: re-score
        those that live and still belong in it, drop the others; return the dropped ids."""
        now = self._clock()
        found: list[Any] = await self._do(self._redis.zrangebyscore(index, "-inf", now))
        stale = [_text(i) for i in found]
        if not stale:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in stale:
                pipe.hmget(self._key(session_id), FIELDS_OF_INDEXES)
            held = await self._do(pipe.execute())
        live = {
            session_id: float(fields[0])
            for session_id, fields in zip(stale, held, strict=True)
            if fields[0] is not None
            and float(fields[0]) > now
            and index in self._indexes_of(fields)
        }
        gone = [session_id for session_id in stale if session_id not in live]
        async with self._redis.pipeline(transaction=False) as pipe:
            if gone:
                pipe.zrem(index, *gone)
            if live:
                pipe.zadd(index, live, xx=True)
            await self._do(pipe.execute())
        return gone

    async def create(
        self, record: SessionRecord, *, max_sessions: int, max_owner_sessions: int = 0
    ) -> None:
        owner_index = self._owner_key(record.owner)
        for attempt in (1, 2):
            admitted = await self._do(
                self._admitted(record, owner_index, max_sessions, max_owner_sessions)
            )
            if all(admitted):
                break
            await self._do(self._withdrawn(record, owner_index))
            # Entries of sessions that ended may fill an index: check them, then try again.
            refused = [
                i for i, ok in zip((self._index, owner_index), admitted, strict=True) if not ok
            ]
            if attempt == 2 or not any([await self._resolve(i) for i in refused]):
                if not admitted[0]:
                    raise too_many_sessions(max_sessions)
                raise too_many_owner_sessions(record.owner, max_owner_sessions)
        key = self._key(record.session_id)
        args = [*self._expiry_args(record), *hash_fields(record)]
        await self._written(key, self._create, [key, self._tombstone(record.session_id)], args)

    async def _admitted(
        self, record: SessionRecord, owner_index: str, max_sessions: int, max_owner: int
    ) -> tuple[bool, bool]:
        """Admit the id into the global and the owner's index (each an atomic check of its
        cap) and enter it in its model version's index, in one round trip."""
        pinned = self._pinned_key(record.model_name, record.version_number)
        entry = (record.session_id, record.expires_at)

        def commands(pipe: Any) -> None:
            pipe.execute_command("EVALSHA", self._admit.sha, 1, self._index, max_sessions, *entry)
            pipe.execute_command("EVALSHA", self._admit.sha, 1, owner_index, max_owner, *entry)
            pipe.zadd(pinned, {record.session_id: record.expires_at})
            pipe.sadd(self._indexes, owner_index, pinned)

        in_global, in_owner, *_ = await self._pipelined(commands, self._admit)
        return bool(in_global), bool(in_owner)

    async def _withdrawn(self, record: SessionRecord, owner_index: str) -> None:
        pinned = self._pinned_key(record.model_name, record.version_number)
        async with self._redis.pipeline(transaction=False) as pipe:
            for index in (self._index, owner_index, pinned):
                pipe.zrem(index, record.session_id)
            await pipe.execute()

    async def get(self, session_id: str) -> SessionRecord:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key(session_id))
            pipe.get(self._tombstone(session_id))
            raw, reason = await self._do(pipe.execute())
        if raw:
            record = record_of_hash(session_id, raw)
            if record.expires_at > self._clock():
                return record
            reason = b"expired"  # Redis will drop it; its TTL has not fired yet
        raise SessionNotFound.ended(session_id, reason.decode() if reason else None)

    async def compare_and_set(self, record: SessionRecord, *, expected_revision: int) -> bool:
        key = self._key(record.session_id)
        args = [expected_revision, *self._expiry_args(record), *hash_fields(record)]
        keys = [key, self._tombstone(record.session_id)]
        return bool(await self._written(key, self._cas, keys, args))

    async def delete(self, session_id: str) -> bool:
        key = self._key(session_id)
        keys = [key, self._tombstone(session_id)]
        held = await self._written(key, self._delete, keys, [TOMBSTONE_SECONDS])
        if not held:
            return False
        owner, model_name, version = (v.decode() for v in held)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._index, session_id)
            pipe.zrem(self._owner_key(owner), session_id)
            pipe.zrem(self._pinned_key(model_name, version), session_id)
            await self._do(pipe.execute())
        self._report(1, "closed")
        return True

    async def confirm(self, session_id: str) -> None:
        """Touch the session's tombstone and wait for a replica to have it: the replication
        stream is in order, so the replica then has every earlier write of the session too."""
        key = self._key(session_id)
        await self._written(key, self._touch, [self._tombstone(session_id)], [])

    async def reap_expired(self) -> list[str]:
        """Drop the entries of sessions Redis has expired from every index; their tombstones
        already say "expired"."""
        expired = await self._resolve(self._index)
        indexes = await self._do(self._redis.smembers(self._indexes))
        for index in sorted(_text(i) for i in indexes):
            await self._resolve(index)
            if not await self._do(self._redis.exists(index)):
                await self._do(self._redis.srem(self._indexes, index))
        self._report(len(expired), "expired")
        return expired

    async def count(self) -> int:
        await self._resolve(self._index)
        return int(await self._do(self._redis.zcard(self._index)))

    async def count_pinned(self, model_name: str, version_number: int) -> int:
        key = self._pinned_key(model_name, version_number)
        await self._resolve(key)
        return int(await self._do(self._redis.zcard(key)))

    async def ping(self) -> bool:
        """Whether the cluster says every slot is served (``cluster_state:ok``), as the first
        node that answers sees it (a dead node the client still knows is skipped); a cluster
        not read whole yet is read first."""
        async with self._slots:
            if not self._redis.get_primaries():
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._redis.initialize()
                except (*FAILURES, TimeoutError):
                    return False
                await self._load_scripts()
            for node in self._redis.get_primaries() + self._redis.get_replicas():
                try:
                    info = await self._redis.cluster_info(target_nodes=node)
                except FAILURES:
                    continue
                return info.get("cluster_state") == "ok"
        return False

    async def close(self) -> None:
        await self._redis.aclose()

    def primaries(self) -> Sequence[str]:
        """The primaries' addresses as the client knows them (for logs and tests)."""
        return [n.name for n in self._redis.get_primaries()]
