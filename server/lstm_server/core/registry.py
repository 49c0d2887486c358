"""The one place that hands out models: every loaded model version with its description, limits
and scheduler, kept in step with the model repository.

A request takes a handle (``acquire``) that keeps its version alive until the call ends. A new
version is loaded and warmed before it takes traffic, and before any version it replaces stops
taking it (load before unload). A version that leaves the version policy *drains*: it keeps
serving the sessions pinned to it (and calls that name it) until none is live in the session
store, or until the drain deadline passes, and is then unloaded once its calls in flight end.

A version that a call or a session names but that is not loaded here (another replica created
the session; this one restarted since) is loaded on demand if the repository holds it, within
the call's deadline, so that replicas behind a balancer need no sticky routing during a rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from lstm_server.core.errors import (
    InvalidInput,
    LimitExceeded,
    ModelControlRefused,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
    ServingError,
)
from lstm_server.core.repository import (
    ModelSource,
    Repository,
    RepositoryError,
    RepositoryModel,
    check_model_name,
)
from lstm_server.core.scheduler import BatchObservation, BatchScheduler, BatchTracer, Runtime
from lstm_server.core.statistics import ModelStatistics
from lstm_server.core.types import Limits, ModelInfo

log = logging.getLogger(__name__)


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    DRAINING = "DRAINING"  # out of the policy, serving its live sessions until they end
    UNLOADING = "UNLOADING"  # finishing its calls in flight
    UNAVAILABLE = "UNAVAILABLE"  # in the repository, not loaded (see the reason)


TAKES_CALLS = (VersionState.READY, VersionState.DRAINING)


class ControlMode(enum.Enum):
    """How the set of loaded models changes after start-up (Triton's ``--model-control-mode``):
    ``none``, never (but versions that sessions or calls name are loaded on demand); ``poll``,
    when the repository changes; ``explicit``, when asked (the repository extension's load and
    unload)."""

    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


@dataclass(frozen=True)
class ModelRef:
    """What a request names: a model (empty: the default one) and a version (0: the newest)."""

    name: str = ""
    version: int = 0


@dataclass(frozen=True)
class VersionStatus:
    """One version as the repository index reports it."""

    name: str
    version: int
    state: VersionState
    reason: str = ""
    digest: str = ""


class ModelLoader(Protocol):
    """Loads and warms one version; raises ``ModelLoadError`` saying why it cannot be served.
    ``background``: the server is already serving, and the load should leave it the CPU."""

    async def load(self, source: ModelSource, *, background: bool = False) -> Runtime: ...

    def released(self) -> None:
        """A version it loaded has been unloaded and let go: give back what it held."""


class RegistryObserver(Protocol):
    """Told of loads and unloads (metrics implement it)."""

    def model_loaded(self, info: ModelInfo, seconds: float) -> None: ...

    def model_load_failed(self, name: str) -> None: ...

    def model_unloaded(self, info: ModelInfo) -> None: ...


class ModelTracer(Protocol):
    """Told which version serves the current request (tracing tags its span)."""

    def model_used(self, name: str, version: int) -> None: ...


@dataclass(frozen=True)
class SchedulerSettings:
    """How each version's scheduler batches (a model's config may change the first two), and
    who observes its model calls (told which version made each)."""

    max_batch_rows: int = 64
    batching: bool = True
    observer: Callable[[ModelInfo, BatchObservation], None] | None = None
    tracer: BatchTracer | None = None
    lone: Callable[[], bool] | None = None  # the server serves one call only (BatchScheduler)


class ServedModel:
    """A loaded version: its description (``info``: name, version number, digest, shapes), the
    limits its requests are held to, the scheduler that runs it and what it has done."""

    def __init__(
        self,
        source: ModelSource,
        info: ModelInfo,
        limits: Limits,
        scheduler: BatchScheduler,
        statistics: ModelStatistics,
    ) -> None:
        self.source = source
        self.info = info
        self.limits = limits
        self.scheduler = scheduler
        self.statistics = statistics
        self.name = source.name
        self.version = source.version
        self.users = 0
        self.idle = asyncio.Event()
        self.idle.set()


@dataclass
class _Entry:
    """The registry's record of one (model, version)."""

    source: ModelSource
    state: VersionState = VersionState.UNAVAILABLE
    reason: str = ""
    served: ServedModel | None = None
    loading: asyncio.Task[ServedModel] | None = None
    draining_since: float = 0.0
    failed_stamp: tuple[int, int] | None = None  # the file whose load failed, not tried again


def _unloaded(name: str, version: int, newest: int | None) -> ModelNotFound:
    instead = (
        f"; start a session on version {newest} (read this one's state with GetSession to carry "
        "it over)"
        if newest is not None
        else ""
    )
    return ModelNotFound(
        f"version {version} of model '{name}' is no longer served{instead}",
        reason="MODEL_VERSION_UNLOADED",
        model=name,
        version=version,
    )


class ModelRegistry:
    """Every model version this server holds, and the repository they come from."""

    def __init__(
        self,
        repository: Repository,
        loader: ModelLoader,
        limits: Limits,
        *,
        scheduling: SchedulerSettings | None = None,
        mode: ControlMode = ControlMode.NONE,
        default_model: str = "",
        poll_interval: float = 5.0,
        drain_seconds: float = 3600.0,
        max_loaded_versions: int = 0,
        live_sessions: Callable[[str, int], Awaitable[int]] | None = None,
        observer: RegistryObserver | None = None,
        tracer: ModelTracer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``live_sessions(name, version)`` counts the live sessions pinned to a version (in the
        shared store: every replica's); without it, a draining version waits for its deadline."""
        self.repository = repository
        self.mode = mode
        self.limits = limits
        self.poll_interval = poll_interval
        self.drain_seconds = drain_seconds
        self.max_loaded_versions = max_loaded_versions
        self._loader = loader
        self._scheduling = scheduling or SchedulerSettings()
        self._default = default_model
        self._live_sessions = live_sessions
        self._observer = observer
        self._tracer = tracer
        self._clock = clock
        self._models: dict[str, RepositoryModel] = {}
        self._entries: dict[tuple[str, int], _Entry] = {}
        # Every version ever loaded here, described (a few hundred bytes each): what a session
        # pinned to a version that is gone still reads its state with.
        self._described: dict[tuple[str, int], ModelInfo] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        self._started = False
        self._closed = False

    # Life

    async def start(self, *, strict: bool = False) -> None:
        """Scan the repository and load what the policies serve, newest first; with ``strict``,
        a version that fails to load fails start-up (one model named on the command line).
        Then watch: poll the repository (``poll`` mode) and retire drained versions."""
        await self.sync(strict=strict)
        if self._default and self._default not in self._models:
            raise RepositoryError(
                f"--default-model {self._default!r} is not in the model repository "
                f"(it has {', '.join(sorted(self._models)) or 'no model'})"
            )
        self._started = True
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="models")

    async def stop(self) -> None:
        """Stop watching, then unload everything (each version's queued work runs first)."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for entry in list(self._entries.values()):
            if entry.loading is not None:
                entry.loading.cancel()
                with contextlib.suppress(BaseException):
                    await entry.loading
            if entry.served is not None:
                await self._release(entry)

    async def _watch(self) -> None:
        interval = self.poll_interval if self.mode is ControlMode.POLL else 1.0
        while True:
            await asyncio.sleep(min(interval, 1.0) if self._draining() else interval)
            try:
                if self.mode is ControlMode.POLL:
                    await self.sync()
                await self.retire_drained()
            except RepositoryError as error:
                log.warning("model repository: %s", error)
            except Exception:
                log.exception("watching the model repository failed")

    def _draining(self) -> bool:
        return any(e.state is VersionState.DRAINING for e in self._entries.values())

    # What requests get

    @property
    def default_model(self) -> str:
        """The model an empty name means: ``--default-model``, else the only model there is."""
        if self._default:
            return self._default
        names = {name for name, _ in self._entries} | set(self._models)
        return next(iter(names)) if len(names) == 1 else ""

    def _name(self, name: str) -> str:
        if name:
            return name
        default = self.default_model
        if not default:
            served = ", ".join(sorted(self._models))
            raise ModelNotFound(
                f"this server serves several models ({served}) and none is the default: name one",
                reason="MODEL_NOT_NAMED",
            )
        return default

    def _newest(self, name: str, *, draining: bool = False) -> ServedModel | None:
        states = TAKES_CALLS if draining else (VersionState.READY,)
        found = [
            e for (n, _), e in self._entries.items() if n == name and e.state in states and e.served
        ]
        if not found:
            return None
        newest = max(found, key=lambda e: e.source.version)
        assert newest.served is not None
        return newest.served

    def resolve(self, ref: ModelRef) -> ServedModel:
        """The version ``ref`` names if it takes calls now; NOT_FOUND saying why if it does not
        exist or is gone, UNAVAILABLE (MODEL_LOADING) while it loads."""
        name = self._name(ref.name)
        if ref.version == 0:
            served = self._newest(name) or self._newest(name, draining=True)
            if served is not None:
                return served
            if any(
                n == name and e.state is VersionState.LOADING for (n, _), e in self._entries.items()
            ):
                raise ModelNotReady(f"model '{name}' is loading; retry shortly", model=name)
            raise self._unknown(name)
        entry = self._entries.get((name, ref.version))
        if entry is not None and entry.state in TAKES_CALLS and entry.served is not None:
            return entry.served
        if entry is not None and entry.state is VersionState.LOADING:
            raise ModelNotReady(
                f"version {ref.version} of model '{name}' is loading; retry shortly",
                model=name,
                version=ref.version,
            )
        raise self._missing_version(name, ref.version)

    def _unknown(self, name: str) -> ModelNotFound:
        if name in self._models or any(n == name for n, _ in self._entries):
            return ModelNotFound(
                f"model '{name}' has no version loaded (see the repository index for why)",
                reason="MODEL_NOT_LOADED",
                model=name,
            )
        return ModelNotFound(f"model '{name}' is not served here", model=name)

    def _missing_version(self, name: str, version: int) -> ModelNotFound:
        if name not in self._models and not any(n == name for n, _ in self._entries):
            return ModelNotFound(f"model '{name}' is not served here", model=name)
        newest = self._newest(name)
        entry = self._entries.get((name, version))
        if entry is not None and entry.reason and entry.state is VersionState.UNAVAILABLE:
            if entry.failed_stamp is not None:
                return ModelNotFound(
                    f"version {version} of model '{name}' failed to load: {entry.reason}",
                    reason="MODEL_LOAD_FAILED",
                    model=name,
                    version=version,
                )
            return _unloaded(name, version, None if newest is None else newest.version)
        return ModelNotFound(
            f"model '{name}' has no version {version}",
            reason="MODEL_VERSION_NOT_FOUND",
            model=name,
            version=version,
        )

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        ref: ModelRef,
        *,
        deadline: float | None = None,
        counted: bool = False,
        pinned: bool = False,
    ) -> AsyncIterator[ServedModel]:
        """The version ``ref`` names, kept loaded until the block ends. A version that the
        repository holds but this server has not loaded is loaded first, within ``deadline``
        (a ``time.monotonic()`` instant). ``counted``: the block is an inference request, and
        its outcome and time go into the version's statistics. ``pinned``: ``ref`` is a
        session's version, which existed: one the repository no longer holds is gone
        (MODEL_VERSION_UNLOADED, with the way on), not unknown."""
        try:
            served = self.resolve(ref)
        except ModelNotFound:
            if ref.version == 0:
                raise
            name = self._name(ref.name)
            try:
                served = await self._load_on_demand(name, ref.version, deadline)
            except ModelNotFound as missing:
                if not pinned or missing.reason not in (
                    "MODEL_NOT_FOUND",
                    "MODEL_VERSION_NOT_FOUND",
                ):
                    raise
                newest = self._newest(name)
                raise _unloaded(
                    name, ref.version, None if newest is None else newest.version
                ) from None
        except ModelNotReady:
            served = await self._wait_loading(self._name(ref.name), ref.version, deadline)
        if self._tracer is not None:
            self._tracer.model_used(served.name, served.version)
        served.users += 1
        served.idle.clear()
        began = time.perf_counter()
        ok = False
        try:
            yield served
            ok = True
        finally:
            if counted:
                served.statistics.request_done(time.perf_counter() - began, ok=ok)
            served.users -= 1
            if served.users == 0:
                served.idle.set()

    async def _wait_loading(self, name: str, version: int, deadline: float | None) -> ServedModel:
        if version == 0:
            loading = [
                e for (n, _), e in self._entries.items() if n == name and e.loading is not None
            ]
            entry = max(loading, key=lambda e: e.source.version) if loading else None
        else:
            entry = self._entries.get((name, version))
        if entry is None or entry.loading is None:
            return self.resolve(ModelRef(name, version))
        return await self._within(asyncio.shield(entry.loading), deadline, name, entry)

    async def _within(
        self,
        waiting: Awaitable[ServedModel],
        deadline: float | None,
        name: str,
        entry: _Entry,
    ) -> ServedModel:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            raise ModelNotReady(
                f"version {entry.source.version} of model '{name}' is still loading; retry shortly",
                model=name,
                version=entry.source.version,
            ) from None

    async def _load_on_demand(self, name: str, version: int, deadline: float | None) -> ServedModel:
        model = self._models.get(name)
        source = None if model is None else model.versions.get(version)
        if model is None or source is None or model.error:
            raise self._missing_version(name, version)
        entry = self._entry(source)
        if entry.failed_stamp == source.stamp:
            raise self._missing_version(name, version)
        log.info("loading version %d of model %s on demand", version, name)
        task = self._start_load(entry, retire=version not in model.wanted())
        return await self._within(asyncio.shield(task), deadline, name, entry)

    # The repository index and model control

    def index(self) -> list[VersionStatus]:
        """Every version in the repository or loaded here, by model and version."""
        statuses: dict[tuple[str, int], VersionStatus] = {}
        for model in self._models.values():
            for version in model.versions:
                reason = model.error or "not in the version policy"
                statuses[(model.name, version)] = VersionStatus(
                    model.name, version, VersionState.UNAVAILABLE, reason
                )
            if model.error and not model.versions:
                statuses[(model.name, 0)] = VersionStatus(
                    model.name, 0, VersionState.UNAVAILABLE, model.error
                )
        for key, entry in self._entries.items():
            digest = entry.served.info.version if entry.served is not None else ""
            statuses[key] = VersionStatus(key[0], key[1], entry.state, entry.reason, digest)
        return [statuses[key] for key in sorted(statuses)]

    def loaded(self) -> list[ServedModel]:
        """The versions that take calls."""
        return [
            e.served
            for _, e in sorted(self._entries.items())
            if e.state in TAKES_CALLS and e.served is not None
        ]

    def serves(self, name: str) -> bool:
        """Whether the repository (or this server) has a model of that name."""
        return name in self._models or any(n == name for n, _ in self._entries)

    def described(self, name: str, version: int) -> ModelInfo | None:
        """The description of a version loaded here now or before, if any."""
        return self._described.get((name, version))

    def version_of(self, name: str, digest: str) -> int:
        """The version of ``name`` whose weights have ``digest`` (0 if none is known here)."""
        for (model, version), info in self._described.items():
            if model == name and info.version == digest:
                return version
        return 0

    def ready(self, ref: ModelRef) -> bool:
        try:
            self.resolve(ref)
        except ServingError:
            return False
        return True

    async def sync(self, *, strict: bool = False, only: str | None = None) -> None:
        """Read the repository again and bring the loaded versions in line with it: load what
        the policies add (waiting for it), then drain what they drop (``only``: this model)."""
        async with self._sync_lock:
            found = await asyncio.to_thread(self.repository.scan)
            if only is not None:
                if only not in found:
                    raise ModelNotFound(
                        f"model '{only}' is not in the model repository", model=only
                    )
                found = {**self._models, only: found[only]}
            self._models = found
            loads = []
            for model in found.values():
                for version in sorted(model.wanted(), reverse=True):
                    entry = self._entry(model.versions[version])
                    entry.source = model.versions[version]
                    if entry.state is VersionState.DRAINING:
                        entry.state, entry.reason = VersionState.READY, ""  # back in the policy
                    if entry.served is None and entry.loading is None:
                        if entry.failed_stamp == entry.source.stamp:
                            continue  # failed, and its file has not changed since
                        try:
                            loads.append(self._start_load(entry, retire=False))
                        except LimitExceeded as error:
                            entry.state, entry.reason = VersionState.UNAVAILABLE, error.message
                            log.error("%s", error.message)
                    elif entry.loading is not None:
                        loads.append(entry.loading)
            results = await asyncio.gather(*loads, return_exceptions=True)
            if strict:
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
            self._drain_unwanted(found, only)

    def _drain_unwanted(self, found: dict[str, RepositoryModel], only: str | None) -> None:
        for (name, version), entry in self._entries.items():
            if only is not None and name != only:
                continue
            model = found.get(name)
            wanted = model.wanted() if model is not None else set()
            if version in wanted or entry.state is not VersionState.READY:
                continue
            if self._newest_wanted_ready(name, wanted) is None and model is not None:
                continue  # nothing ready replaces it yet: keep it (load before unload)
            self._drain(entry, "out of the version policy" if model else "gone from the repository")

    def _newest_wanted_ready(self, name: str, wanted: set[int]) -> ServedModel | None:
        for version in sorted(wanted, reverse=True):
            entry = self._entries.get((name, version))
            if entry is not None and entry.state is VersionState.READY and entry.served:
                return entry.served
        return None

    def _drain(self, entry: _Entry, why: str) -> None:
        entry.state = VersionState.DRAINING
        entry.reason = f"{why}; serving its live sessions until they end"
        entry.draining_since = self._clock()
        log.info(
            "model %s version %d drains: %s",
            entry.source.name,
            entry.source.version,
            why,
        )

    def _controlled(self, what: str) -> None:
        if self.mode is not ControlMode.EXPLICIT:
            raise ModelControlRefused(
                f"models are {what}ed on request only in explicit model control mode "
                f"(--model-control-mode explicit); this server's is {self.mode.value}",
                mode=self.mode.value,
            )

    async def load_model(self, name: str) -> None:
        """Load (or reload) a model from the repository: the versions its policy serves now,
        loaded before the versions it no longer serves drain (the repository extension's load;
        explicit model control mode only)."""
        self._controlled("load")
        try:
            check_model_name(name)
        except RepositoryError as error:
            raise InvalidInput.single("model_name", str(error)) from None
        await self.sync(only=name)
        model = self._models[name]
        failed = [
            e
            for v in model.wanted()
            if (e := self._entries.get((name, v))) is not None
            and e.state is VersionState.UNAVAILABLE
        ]
        if model.error:
            raise ModelLoadFailed(f"model '{name}' cannot be loaded: {model.error}", model=name)
        if failed:
            raise ModelLoadFailed(
                f"version {failed[0].source.version} of model '{name}' failed to load: "
                f"{failed[0].reason}",
                model=name,
                version=failed[0].source.version,
            )

    async def unload_model(self, name: str) -> None:
        """Stop serving a model: every version drains (its live sessions go on until they end or
        the drain deadline), then unloads (explicit model control mode only)."""
        self._controlled("unload")
        if not self.serves(name):
            raise ModelNotFound(f"model '{name}' is not served here", model=name)
        for (n, _), entry in self._entries.items():
            if n == name and entry.state is VersionState.READY:
                self._drain(entry, "unloaded on request")
        self._models.pop(name, None)
        await self.retire_drained()

    async def retire_drained(self) -> None:
        """Unload each draining version whose sessions have ended (or whose drain deadline has
        passed), once its calls in flight finish."""
        now = self._clock()
        for entry in list(self._entries.values()):
            if entry.state is not VersionState.DRAINING or entry.served is None:
                continue
            overdue = now - entry.draining_since >= self.drain_seconds
            if not overdue and self._live_sessions is not None:
                try:
                    live = await self._live_sessions(entry.source.name, entry.source.version)
                except ServingError as error:
                    log.warning("cannot count a draining version's sessions: %s", error.message)
                    continue
                if live:
                    continue
            elif not overdue:
                continue
            if entry.state is VersionState.DRAINING:  # unchanged while counting
                why = "drain deadline passed" if overdue else "no live session left"
                await self._unload(entry, why)

    async def _unload(self, entry: _Entry, why: str) -> None:
        served = entry.served
        assert served is not None
        entry.state, entry.reason = VersionState.UNLOADING, why
        await served.idle.wait()
        await self._release(entry)
        entry.state, entry.reason = VersionState.UNAVAILABLE, f"unloaded: {why}"
        log.info("unloaded model %s version %d: %s", served.name, served.version, why)
        # Once this call's frames (which still hold the version) are gone.
        asyncio.get_running_loop().call_soon(self._loader.released)

    async def _release(self, entry: _Entry) -> None:
        served = entry.served
        if served is None:
            return
        entry.served = None
        await served.scheduler.stop()
        served.scheduler.runtime.close()
        if self._observer is not None:
            self._observer.model_unloaded(served.info)

    # Loading

    def _entry(self, source: ModelSource) -> _Entry:
        key = (source.name, source.version)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(source)
        return entry

    def _start_load(self, entry: _Entry, *, retire: bool) -> asyncio.Task[ServedModel]:
        if entry.loading is not None:
            return entry.loading
        loaded = sum(e.served is not None or e.loading is not None for e in self._entries.values())
        if self.max_loaded_versions and loaded >= self.max_loaded_versions:
            raise LimitExceeded(
                f"the server holds its maximum of {self.max_loaded_versions} loaded model "
                f"versions; cannot load version {entry.source.version} of model "
                f"'{entry.source.name}' (unload one first)",
                limit="max_loaded_versions",
                value=self.max_loaded_versions,
            )
        entry.state, entry.reason = VersionState.LOADING, ""
        entry.loading = asyncio.get_running_loop().create_task(
            self._load(entry, retire), name=f"load {entry.source.name}/{entry.source.version}"
        )
        return entry.loading

    async def _load(self, entry: _Entry, retire: bool) -> ServedModel:
        source = entry.source
        began = time.perf_counter()
        try:
            runtime = await self._loader.load(source, background=self._started)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            entry.state, entry.reason = VersionState.UNAVAILABLE, message
            entry.failed_stamp = source.stamp
            entry.loading = None
            log.error(
                "cannot load version %d of model %s: %s", source.version, source.name, message
            )
            if self._observer is not None:
                self._observer.model_load_failed(source.name)
            raise
        if self._closed:
            runtime.close()
            raise ModelNotReady("the server is shutting down", reason="SHUTTING_DOWN")
        info = replace(runtime.info, name=source.name, version_number=source.version)
        settings = source.config.settings
        limits = replace(
            self.limits,
            max_timesteps=int(settings.get("max_timesteps", self.limits.max_timesteps)),
            max_batch_size=int(settings.get("max_batch_size", self.limits.max_batch_size)),
        )
        s = self._scheduling
        statistics = ModelStatistics()

        def observe(batch: BatchObservation) -> None:
            statistics.batch_done(batch)
            if s.observer is not None:
                s.observer(info, batch)

        scheduler = BatchScheduler(
            runtime,
            max_batch_rows=int(settings.get("max_batch_rows", s.max_batch_rows)),
            batching=bool(settings.get("batching", s.batching)),
            observer=observe,
            tracer=s.tracer,
            lone=s.lone,
        )
        scheduler.start()
        served = ServedModel(source, info, limits, scheduler, statistics)
        self._described[(source.name, source.version)] = info
        entry.served, entry.loading, entry.failed_stamp = served, None, None
        entry.state, entry.reason = VersionState.READY, ""
        seconds = time.perf_counter() - began
        log.info(
            "model %s version %d (%s) ready in %.1f s",
            source.name,
            source.version,
            info.version,
            seconds,
        )
        if self._observer is not None:
            self._observer.model_loaded(info, seconds)
        if retire:
            self._drain(entry, "loaded on demand, out of the version policy")
        return served
