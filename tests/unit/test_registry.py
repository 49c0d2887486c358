"""The model registry over a real repository directory, with numpy runtimes as the loaded
versions: load before unload, sessions pinned to their version through a version change,
draining and its deadline, loads on demand, failed loads, and calls in flight across an unload."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from lstm_server.core.errors import (
    LimitExceeded,
    ModelControlRefused,
    ModelLoadError,
    ModelNotFound,
)
from lstm_server.core.registry import (
    ControlMode,
    ModelRef,
    ModelRegistry,
    VersionState,
)
from lstm_server.core.repository import DirectoryRepository, ModelSource
from lstm_server.core.sessions import SessionService
from lstm_server.core.types import Limits
from lstm_server.sessions import MemorySessionStore

from tests.helpers import NumpyRuntime, ragged
from tests.reference import NumpyLstm

TOL = 1e-5


class Loader:
    """Loads version N of any model as a numpy runtime seeded with N; counts loads; fails the
    versions in ``broken``; waits for ``gate`` when one is set."""

    def __init__(self) -> None:
        self.loads: Counter[tuple[str, int]] = Counter()
        self.broken: set[tuple[str, int]] = set()
        self.gate: asyncio.Event | None = None
        self.runtimes: dict[tuple[str, int], NumpyRuntime] = {}
        self.background: dict[tuple[str, int], bool] = {}
        self.releases = 0

    async def load(self, source: ModelSource, *, background: bool = False) -> NumpyRuntime:
        key = (source.name, source.version)
        self.loads[key] += 1
        self.background[key] = background
        if self.gate is not None:
            await self.gate.wait()
        if key in self.broken:
            raise ModelLoadError(f"model {source.path} cannot be served: a corrupt file")
        runtime = self.runtimes[key] = NumpyRuntime(seed=source.version)
        return runtime

    def released(self) -> None:
        self.releases += 1


def add_version(root: Path, name: str, number: int) -> None:
    folder = root / name / str(number)
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(f"{name} {number}".encode())


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
async def store() -> MemorySessionStore:
    made = MemorySessionStore()
    await made.open()
    return made


@pytest.fixture
async def models(
    tmp_path: Path, loader: Loader, store: MemorySessionStore
) -> AsyncIterator[ModelRegistry]:
    add_version(tmp_path, "lstm", 1)
    registry = ModelRegistry(
        DirectoryRepository(tmp_path),
        loader,
        Limits(),
        mode=ControlMode.EXPLICIT,
        poll_interval=3600,
        live_sessions=store.count_pinned,
    )
    await registry.start()
    yield registry
    await registry.stop()


@pytest.fixture
async def sessions(store: MemorySessionStore, models: ModelRegistry) -> SessionService:
    return SessionService(store, models, Limits())


def root(models: ModelRegistry) -> Path:
    repository = models.repository
    assert isinstance(repository, DirectoryRepository)
    return repository.root


def state_of(models: ModelRegistry, name: str, version: int) -> VersionState:
    [status] = [s for s in models.index() if (s.name, s.version) == (name, version)]
    return status.state


def reference(version: int) -> NumpyLstm:
    return NumpyLstm(*NumpyRuntime(seed=version).weights)


async def test_sessions_stay_on_their_version_through_a_rollout(
    models: ModelRegistry, sessions: SessionService, loader: Loader, rng
) -> None:
    x = rng.normal(size=(6, 3)).astype(np.float32)
    old = await sessions.create(None)
    assert (old.model_name, old.version_number) == ("lstm", 1)
    await sessions.step(old.session_id, ragged(x[:2]), 1)

    add_version(root(models), "lstm", 2)
    await models.sync()
    assert state_of(models, "lstm", 2) is VersionState.READY
    assert state_of(models, "lstm", 1) is VersionState.DRAINING  # its session lives
    # Loaded while serving: at the lowest CPU priority; the start's load was not.
    assert loader.background == {("lstm", 1): False, ("lstm", 2): True}
    new = await sessions.create(None)
    assert new.version_number == 2

    outcome = await sessions.step(old.session_id, ragged(x[2:]), 2)
    seq, h, c = reference(1).run(x)
    np.testing.assert_allclose(outcome.sequence, seq[2:], atol=TOL)
    np.testing.assert_allclose(outcome.state.h, h, atol=TOL)
    np.testing.assert_allclose(outcome.state.c, c, atol=TOL)
    assert outcome.model is not None
    assert outcome.model.version_number == 1
    fresh = await sessions.step(new.session_id, ragged(x), 1)
    np.testing.assert_allclose(fresh.sequence, reference(2).run(x)[0], atol=TOL)

    await models.retire_drained()
    assert state_of(models, "lstm", 1) is VersionState.DRAINING  # still a live session
    await sessions.close(old.session_id)
    await models.retire_drained()
    assert state_of(models, "lstm", 1) is VersionState.UNAVAILABLE
    assert loader.runtimes[("lstm", 1)].closed
    assert [m.version for m in models.loaded()] == [2]


async def test_a_version_gone_past_its_drain_deadline_is_refused_with_a_way_on(
    models: ModelRegistry, sessions: SessionService, rng
) -> None:
    old = await sessions.create(None)
    await sessions.step(old.session_id, ragged(rng.normal(size=(2, 3))), 1)
    add_version(root(models), "lstm", 2)
    shutil.rmtree(root(models) / "lstm" / "1")
    await models.sync()
    models.drain_seconds = 0.0
    await models.retire_drained()
    with pytest.raises(ModelNotFound, match="start a session on version 2") as gone:
        await sessions.step(old.session_id, ragged(rng.normal(size=(1, 3))), 2)
    assert gone.value.reason == "MODEL_VERSION_UNLOADED"
    exported = await sessions.get(old.session_id)  # the state can still be carried over
    assert exported.step_count == 1
    assert exported.model is not None
    assert exported.model.version_number == 1
    carried = await sessions.create((exported.state.h, exported.state.c))
    assert carried.version_number == 2
    reset = await sessions.reset(old.session_id, None)  # a reset moves it to the newest
    assert reset.version_number == 2


async def test_a_version_no_replica_here_has_is_loaded_on_demand(
    models: ModelRegistry, loader: Loader
) -> None:
    add_version(root(models), "lstm", 2)
    await models.sync()
    await models.sync()  # v1 left the policy: drained with no session, then unloaded
    await models.retire_drained()
    assert state_of(models, "lstm", 1) is VersionState.UNAVAILABLE
    loader.gate = asyncio.Event()
    first = asyncio.create_task(_version_of(models, ModelRef("lstm", 1)))
    second = asyncio.create_task(_version_of(models, ModelRef("lstm", 1)))
    await asyncio.sleep(0.05)
    loader.gate.set()
    assert await first == await second == 1
    assert loader.loads[("lstm", 1)] == 2  # once at start, once now for both calls
    assert state_of(models, "lstm", 1) is VersionState.DRAINING  # out of the policy


async def _version_of(models: ModelRegistry, ref: ModelRef) -> int:
    async with models.acquire(ref) as served:
        return served.version


async def test_a_broken_version_fails_visibly_and_traffic_stays_on_what_is_loaded(
    models: ModelRegistry, loader: Loader
) -> None:
    add_version(root(models), "lstm", 2)
    loader.broken.add(("lstm", 2))
    await models.sync()
    [status] = [s for s in models.index() if s.version == 2]
    assert status.state is VersionState.UNAVAILABLE
    assert "a corrupt file" in status.reason
    assert state_of(models, "lstm", 1) is VersionState.READY  # nothing replaced it
    assert models.resolve(ModelRef("lstm")).version == 1
    with pytest.raises(ModelNotFound, match=r"failed to load: .*a corrupt file") as refused:
        await _version_of(models, ModelRef("lstm", 2))
    assert refused.value.reason == "MODEL_LOAD_FAILED"
    await models.sync()
    assert loader.loads[("lstm", 2)] == 1  # not tried again until its file changes


async def test_an_unload_waits_for_calls_in_flight(models: ModelRegistry, loader: Loader) -> None:
    async with models.acquire(ModelRef("lstm")) as served:
        unloading = asyncio.create_task(models.unload_model("lstm"))
        await asyncio.sleep(0.05)
        assert state_of(models, "lstm", 1) is VersionState.UNLOADING
        assert not loader.runtimes[("lstm", 1)].closed
        [result] = await served.scheduler.run([_row()])  # the call in flight still runs
        assert result.sequence.shape == (1, 4)
    await unloading
    assert loader.runtimes[("lstm", 1)].closed
    await asyncio.sleep(0)
    assert loader.releases == 1  # told, to give back what the version held
    with pytest.raises(ModelNotFound, match="has no version loaded") as unloaded:
        models.resolve(ModelRef("lstm"))
    assert unloaded.value.reason == "MODEL_NOT_LOADED"


def _row():  # type: ignore[no-untyped-def]
    from lstm_server.core.types import Row, State

    return Row(np.zeros((1, 3), np.float32), State.zeros(4))


async def test_names_unknown_models_and_versions_and_asks_to_name_one_of_several(
    models: ModelRegistry,
) -> None:
    with pytest.raises(ModelNotFound, match="'nope' is not served here"):
        models.resolve(ModelRef("nope"))
    with pytest.raises(ModelNotFound, match="has no version 9") as missing:
        await _version_of(models, ModelRef("lstm", 9))
    assert missing.value.reason == "MODEL_VERSION_NOT_FOUND"
    add_version(root(models), "other", 1)
    await models.load_model("other")
    with pytest.raises(ModelNotFound, match="several models") as unnamed:
        models.resolve(ModelRef())
    assert unnamed.value.reason == "MODEL_NOT_NAMED"


async def test_loads_past_the_cap_are_refused_with_the_reason(
    tmp_path: Path, loader: Loader
) -> None:
    for name in ("a", "b"):
        add_version(tmp_path, name, 1)
    registry = ModelRegistry(DirectoryRepository(tmp_path), loader, Limits(), max_loaded_versions=1)
    await registry.start()
    try:
        [refused] = [s for s in registry.index() if s.state is VersionState.UNAVAILABLE]
        assert "maximum of 1 loaded model versions" in refused.reason
        with pytest.raises(LimitExceeded, match="unload one first"):
            await _version_of(registry, ModelRef(refused.name, 1))
    finally:
        await registry.stop()


async def test_model_control_is_refused_outside_explicit_mode(
    tmp_path: Path, loader: Loader
) -> None:
    add_version(tmp_path, "m", 1)
    registry = ModelRegistry(DirectoryRepository(tmp_path), loader, Limits())
    await registry.start()
    try:
        with pytest.raises(ModelControlRefused, match="explicit model control mode"):
            await registry.load_model("m")
        with pytest.raises(ModelControlRefused):
            await registry.unload_model("m")
    finally:
        await registry.stop()


async def test_counted_calls_and_model_calls_go_into_the_versions_statistics(
    models: ModelRegistry,
) -> None:
    async with models.acquire(ModelRef("lstm"), counted=True) as served:
        await served.scheduler.run([_row()])
    with pytest.raises(RuntimeError):
        async with models.acquire(ModelRef("lstm"), counted=True):
            raise RuntimeError("the request failed")
    async with models.acquire(ModelRef("lstm")):
        pass  # not an inference request: not counted
    stats = served.statistics
    assert (stats.success_count, stats.failure_count) == (1, 1)
    assert stats.success_seconds > 0
    assert (stats.execution_count, stats.inference_count, stats.queued_count) == (1, 1, 1)
    assert list(stats.batches) == [1]
    assert stats.compute_seconds > 0
    assert stats.last_inference_ms > 0


async def test_a_session_whose_version_left_the_repository_is_told_it_is_gone(
    tmp_path: Path, loader: Loader, store: MemorySessionStore, rng
) -> None:
    """A replica started after version 1 was removed: a session pinned to it gets the way on."""
    add_version(tmp_path, "lstm", 1)
    first = ModelRegistry(DirectoryRepository(tmp_path), loader, Limits())
    await first.start()
    old = await SessionService(store, first, Limits()).create(None)
    await first.stop()
    add_version(tmp_path, "lstm", 2)
    shutil.rmtree(tmp_path / "lstm" / "1")
    restarted = ModelRegistry(DirectoryRepository(tmp_path), loader, Limits())
    await restarted.start()
    sessions = SessionService(store, restarted, Limits())
    try:
        with pytest.raises(ModelNotFound, match="start a session on version 2") as gone:
            await sessions.step(old.session_id, ragged(rng.normal(size=(1, 3))), 1)
        assert gone.value.reason == "MODEL_VERSION_UNLOADED"
        moved = await sessions.reset(old.session_id, None)  # or reset: onto the newest
        assert moved.version_number == 2
    finally:
        await restarted.stop()
