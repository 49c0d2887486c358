"""Shared fixtures (real servers with the default model, clients, the reference LSTM) and the
test tiers: each test is marked ``unit``, ``integration`` or ``system`` by its folder, unless it
is marked ``system`` itself (a unit test's variant that needs a real Redis, say)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import pytest
from lstm_client import AsyncLstmClient, LstmClient
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.reference import NumpyLstm
from tests.servers import ThreadedServer, settings

TIERS = ("unit", "integration", "system")
# Run by `make test` in the venv pinned at the client's floors, without this conftest.
collect_ignore = ["floors"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("system") is not None:
            continue
        tier = Path(item.fspath).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def wide_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """8 features, 16 units: the default model at a size where mistakes show."""
    saved = tmp_path_factory.mktemp("models") / "wide.keras"
    server = ThreadedServer(
        settings(features=8, units=16, seed=7, max_sessions=1000, save_model=saved)
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """The embedded default as ``lstm-server`` starts it: 1 feature, 1 unit."""
    saved = tmp_path_factory.mktemp("models") / "tiny.keras"
    server = ThreadedServer(settings(save_model=saved))
    yield server
    server.stop()


def reference_of(server: ThreadedServer) -> NumpyLstm:
    """The numpy LSTM on the weights of the model the server saved with ``--save-model``."""
    assert server.server.settings.save_model is not None
    return NumpyLstm.from_saved_model(server.server.settings.save_model)


@pytest.fixture(scope="session")
def wide_reference(wide_server: ThreadedServer) -> NumpyLstm:
    return reference_of(wide_server)


@pytest.fixture(scope="session")
def tiny_reference(tiny_server: ThreadedServer) -> NumpyLstm:
    return reference_of(tiny_server)


@pytest.fixture
def client(wide_server: ThreadedServer) -> Iterator[LstmClient]:
    with LstmClient(wide_server.target, timeout=30) as c:
        yield c


@pytest.fixture
async def aclient(wide_server: ThreadedServer) -> AsyncLstmClient:
    async with AsyncLstmClient(wide_server.target, timeout=30) as c:
        yield c


@pytest.fixture
def stub(wide_server: ThreadedServer) -> Iterator[pb_grpc.LstmServiceStub]:
    with grpc.insecure_channel(wide_server.target) as channel:
        yield pb_grpc.LstmServiceStub(channel)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
