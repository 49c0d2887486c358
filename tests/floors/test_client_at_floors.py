"""The SDK at its dependency floors (tests/floors/requirements.txt), against a real server.

Run by `make test` in a venv pinned at the floors, without the suite's conftest (this venv has
no server, TensorFlow or test helpers): the server runs as a subprocess of the main venv's
Python, ``LSTM_SERVER_PYTHON``. Numbers are checked against the independent numpy LSTM.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import grpc
import numpy as np
import pytest
from lstm_client import AsyncLstmClient, LstmClient, LstmError

from tests.reference import NumpyLstm

FLOORS = Path(__file__).with_name("requirements.txt")


def _pins() -> dict[str, str]:
    pins = {}
    for line in FLOORS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def _reference(python: str, model: Path) -> NumpyLstm:
    """The independent numpy LSTM on the served model's weights, read by the main venv (this
    one has no Keras)."""
    code = (
        "import json, sys, keras; "
        "m = keras.saving.load_model(sys.argv[1], compile=False); "
        "print(json.dumps([w.tolist() for w in m.layers[-1].cell.get_weights()]))"
    )
    weights = json.loads(
        subprocess.run(
            [python, "-c", code, str(model)], capture_output=True, text=True, check=True
        ).stdout
    )
    return NumpyLstm(*(np.asarray(w, np.float32) for w in weights))


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, NumpyLstm]]:
    python = os.environ.get("LSTM_SERVER_PYTHON")
    if not python:
        pytest.fail("LSTM_SERVER_PYTHON names the Python of the main venv (make test sets it)")
    directory = Path(tempfile.mkdtemp())
    ports, model = directory / "ports.json", directory / "model.keras"
    process = subprocess.Popen(
        [python, "-m", "lstm_server", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "off",
         "--http-port", "off", "--features", "3", "--units", "5", "--seed", "11",
         "--save-model", str(model), "--port-file", str(ports)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(1200):
            if ports.exists() and ports.read_text().strip().endswith("}"):
                break
            assert process.poll() is None, "the server exited"
            time.sleep(0.1)
        port = json.loads(ports.read_text())["port"]
        yield f"127.0.0.1:{port}", _reference(python, model)
    finally:
        process.terminate()
        process.wait(30)


def test_this_venv_is_at_the_floors() -> None:
    for name, version in _pins().items():
        assert metadata.version(name) == version


def test_the_sdk_at_its_floors(server, rng) -> None:
    target, reference = server
    x = rng.normal(size=(6, 3)).astype(np.float32)
    seq, _, c = reference.run(x)
    with LstmClient(target, timeout=30) as client:
        assert client.metadata().units == 5
        result = client.predict(x)
        np.testing.assert_allclose(result.sequence, seq, atol=1e-5)
        chunks = list(client.stream(x, timesteps_per_message=2))
        assert len(chunks) == 4  # three chunks, then the final state
        with client.session() as session:
            stepped = [session.step(x[t : t + 2]).sequence for t in range(0, 6, 2)]
        np.testing.assert_allclose(np.concatenate(stepped), seq, atol=1e-5)
        streamed = list(client.stream_session([x[:1], x[1:]]))
        np.testing.assert_allclose(streamed[-1].c, c, atol=1e-5)
        with pytest.raises(LstmError) as missing:
            client.attach("no-such-session")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        assert missing.value.reason == "SESSION_NOT_FOUND"


def test_the_asyncio_sdk_at_its_floors(server, rng) -> None:
    target, reference = server
    x = rng.normal(size=(4, 3)).astype(np.float32)

    async def run() -> np.ndarray:
        async with AsyncLstmClient(target, timeout=30) as client:
            return (await client.predict(x)).h

    np.testing.assert_allclose(asyncio.run(run()), reference.run(x)[1], atol=1e-5)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_a_client_only_install_has_an_lstm_server_that_says_what_to_install() -> None:
    """This venv has the client's dependencies only: its lstm-server names the missing server
    packages and the extra to install, and exits 2 (no traceback)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lstm-server"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'lstm-serving[server]'" in done.stderr
    assert "tensorflow" in done.stderr
    assert "Traceback" not in done.stderr
