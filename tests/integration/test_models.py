"""Serving users' bare-LSTM .keras models: the four tutorial listings, a stateful layer, a wider
model with initial states, and files that must be refused at start-up (stacks, heads and the
models refused for their layers are in test_model_zoo)."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from lstm_client import LstmClient
from lstm_server.core.errors import ModelLoadError
from lstm_server.runtime.chain import load_chain

from tests.reference import NumpyLstm
from tests.servers import ThreadedServer, server_command, settings

TUTORIAL_X = np.array([[0.1], [0.2], [0.3]], np.float32)


def _functional(path: Path, make_layer, features: int = 1, timesteps: int | None = 3) -> Path:
    inputs = keras.Input((timesteps, features))
    outputs = make_layer()(inputs)
    keras.Model(inputs, outputs).save(path)
    return path


LISTINGS = {
    "plain": lambda: keras.layers.LSTM(1),
    "return_sequences": lambda: keras.layers.LSTM(1, return_sequences=True),
    "return_state": lambda: keras.layers.LSTM(1, return_state=True),
    "both": lambda: keras.layers.LSTM(1, return_sequences=True, return_state=True),
}


@pytest.mark.parametrize("listing", sorted(LISTINGS))
def test_every_tutorial_listing_serves_sequence_h_and_c(tmp_path: Path, listing: str) -> None:
    path = _functional(tmp_path / f"{listing}.keras", LISTINGS[listing])
    reference = NumpyLstm.from_saved_model(path)
    server = ThreadedServer(settings(model=path, xla=listing != "plain"))
    try:
        with LstmClient(server.target) as client:
            result = client.predict(TUTORIAL_X)
            meta = client.metadata()
    finally:
        server.stop()
    seq, h, c = reference.run(TUTORIAL_X)
    assert meta.name == listing
    assert meta.return_sequences
    assert meta.return_state
    np.testing.assert_allclose(result.sequence, seq, atol=1e-5)
    np.testing.assert_allclose(result.h, h, atol=1e-5)
    np.testing.assert_allclose(result.c, c, atol=1e-5)


def test_wider_sequential_model_with_initial_states(tmp_path: Path, rng) -> None:
    path = tmp_path / "wide.keras"
    model = keras.Sequential(
        [
            keras.Input((None, 8)),
            keras.layers.LSTM(
                16, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False
            ),
        ]
    )
    model.save(path)
    reference = NumpyLstm.from_saved_model(path)
    x = rng.normal(size=(2, 9, 8)).astype(np.float32)
    h0 = rng.normal(size=(2, 16)).astype(np.float32)
    c0 = rng.normal(size=(2, 16)).astype(np.float32)
    server = ThreadedServer(settings(model=path))
    try:
        with LstmClient(server.target) as client:
            result = client.predict(x, initial_state=(h0, c0))
            meta = client.metadata()
    finally:
        server.stop()
    assert (meta.activation, meta.recurrent_activation, meta.use_bias) == (
        "relu",
        "hard_sigmoid",
        False,
    )
    for b in range(2):
        seq, h, c = reference.run(x[b], h0[b], c0[b])
        np.testing.assert_allclose(result.sequence[b], seq, atol=1e-5)
        np.testing.assert_allclose(result.h[b], h, atol=1e-5)
        np.testing.assert_allclose(result.c[b], c, atol=1e-5)


def test_stateful_layer_is_served_stateless(tmp_path: Path) -> None:
    path = tmp_path / "stateful.keras"
    inputs = keras.Input(batch_shape=(1, 3, 1))
    keras.Model(inputs, keras.layers.LSTM(2, stateful=True)(inputs)).save(path)
    reference = NumpyLstm.from_saved_model(path)
    server = ThreadedServer(settings(model=path))
    try:
        with LstmClient(server.target) as client:
            first = client.predict(TUTORIAL_X)
            again = client.predict(TUTORIAL_X)  # a stateful layer would carry state over
    finally:
        server.stop()
    np.testing.assert_allclose(first.sequence, reference.run(TUTORIAL_X)[0], atol=1e-5)
    np.testing.assert_array_equal(first.sequence, again.sequence)


def _rewritten(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    """A saved tutorial-size model, its archive rewritten: ``change(members)`` edits the
    members (name -> bytes) before they are written back."""
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(3, return_sequences=True)])
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _inflating_config(members: dict[str, bytes]) -> None:
    members["config.json"] = members["config.json"] + b" " * (64 * 1024 * 1024)


def _huge_features(members: dict[str, bytes]) -> None:
    config = members["config.json"].decode()
    members["config.json"] = config.replace("null, 2]", f"null, {10**12}]").encode()


def _huge_weights(members: dict[str, bytes]) -> None:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as weights:  # declared 64 GiB, stored in a few bytes
        weights.create_dataset("bomb", shape=(2**20, 2**14), dtype="f4", chunks=(1024, 1024))
    [name] = [n for n in members if n.endswith(".h5")]
    members[name] = buffer.getvalue()


REFUSED = {
    "inflating config": (
        lambda p: _rewritten(p, _inflating_config),
        "config.json inflates",
    ),
    "10^12 input features": (lambda p: _rewritten(p, _huge_features), "input is declared"),
    "weights declared huge": (lambda p: _rewritten(p, _huge_weights), "weights declare"),
    "gru": (lambda p: _functional(p, lambda: keras.layers.GRU(2)), "is a GRU"),
    "backwards": (
        lambda p: _functional(p, lambda: keras.layers.LSTM(2, go_backwards=True)),
        "go_backwards=True",
    ),
    "corrupt": (lambda p: p.write_bytes(b"this is not a keras archive"), "cannot load model file"),
    "missing": (lambda p: None, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unservable_models_are_refused_with_the_reason(tmp_path: Path, case: str) -> None:
    make, reason = REFUSED[case]
    path = tmp_path / f"{''.join(c if c.isalnum() else '-' for c in case)}.keras"
    make(path)
    with pytest.raises(ModelLoadError, match=reason):
        load_chain(path)


@pytest.mark.parametrize("case", ["corrupt", "missing", "10^12 input features"])
def test_server_exits_nonzero_naming_the_problem(tmp_path: Path, case: str) -> None:
    make, reason = REFUSED[case]
    path = tmp_path / f"{''.join(c if c.isalnum() else '-' for c in case)}.keras"
    make(path)
    done = subprocess.run(
        server_command("--port", "0", "--model", str(path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert reason in done.stderr
    assert "Traceback" not in done.stderr
