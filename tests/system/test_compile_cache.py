"""The compile cache: on by default, shared by servers through whole entries only, and found by
a restarted server (programs are named by their content, not by the process that traced them),
which compiles the shapes calls met before it serves."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
from lstm_client import LstmClient

from tests.reference import NumpyLstm
from tests.servers import ServerProcess

WARMED = re.compile(r"(\d+) that calls met before\)")
AHEAD_DONE = re.compile(r"(\d+) of the (\d+) compilations so far found in the compile cache")


def _entries(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.pb")}


def _ahead_done(server: ServerProcess, timeout: float = 240.0) -> tuple[int, int]:
    """Once the server compiled its shapes ahead of traffic: (found in the cache, compiled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := AHEAD_DONE.search(server.log()):
            return int(found.group(1)), int(found.group(2))
        time.sleep(0.5)
    raise AssertionError("the shapes ahead of traffic were not compiled")


def test_a_restarted_server_finds_its_compiled_shapes_in_the_cache(tmp_path: Path, rng) -> None:
    cache = tmp_path / "xla"
    model = tmp_path / "model.keras"
    args = ["--features", "8", "--units", "16", "--compile-cache", str(cache)]
    x = rng.normal(size=(3, 40, 8)).astype(np.float32)  # a batch: a bucket of the background's
    first = ServerProcess([*args, "--save-model", str(model)], log_dir=tmp_path)
    try:
        with LstmClient(first.target, timeout=60) as client:
            before = client.predict(x)
        assert _ahead_done(first)[0] == 0  # an empty cache: everything compiled
        assert f"XLA compile cache in {cache}" in first.log()
    finally:
        first.stop()
    entries = _entries(cache)
    assert entries, "nothing was published to the compile cache"
    # Nothing half-written or private is left: each server's own directory goes with it.
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".pb")] == ["shapes"]
    met = {p.name.split("_")[1]: p for p in (cache / "shapes").glob("*.json")}
    assert [4, 40] in json.loads(met["exact"].read_text())["shapes"]  # the batch, 4 rows, unmasked
    # What the next server reads is checked: shapes it could never meet are not compiled.
    recorded = json.loads(met["exact"].read_text())
    met["exact"].write_text(json.dumps({"shapes": [[0, 5], [4096, 4096], *recorded["shapes"]]}))
    second = ServerProcess(args, log_dir=tmp_path)
    try:
        with LstmClient(second.target, timeout=60) as client:
            after = client.predict(x)
        found, compiled = _ahead_done(second)
        warmed = WARMED.search(second.log())
    finally:
        second.stop()
    assert warmed is not None
    assert int(warmed.group(1)) >= 1  # the shapes calls met, compiled before serving
    # XLA lowers some programs in one of two equivalent forms at random, so a restart finds
    # most of them, not always all; the cache gathers both forms over starts.
    assert found > 0, f"none of {compiled} compilations found in the cache"
    assert entries <= _entries(cache)
    reference = NumpyLstm.from_saved_model(model)
    for i in range(3):
        seq, h, c = reference.run(x[i])
        for served in (before, after):
            np.testing.assert_allclose(served.sequence[i], seq, atol=1e-5)
            np.testing.assert_allclose(served.h[i], h, atol=1e-5)
            np.testing.assert_allclose(served.c[i], c, atol=1e-5)


def test_the_cache_is_on_by_default_in_the_users_cache_directory(tmp_path: Path) -> None:
    server = ServerProcess(
        ["--features", "2", "--units", "4"], log_dir=tmp_path, env={"XDG_CACHE_HOME": str(tmp_path)}
    )
    try:
        assert f"XLA compile cache in {tmp_path / 'lstm-serving' / 'xla'}" in server.log()
    finally:
        server.stop()
    assert _entries(tmp_path / "lstm-serving" / "xla")


def test_a_cache_directory_that_cannot_be_used_leaves_the_cache_out(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    server = ServerProcess(
        ["--features", "2", "--units", "4", "--compile-cache", str(blocked / "xla")],
        log_dir=tmp_path,
    )
    try:
        with LstmClient(server.target, timeout=60) as client:
            assert client.predict(np.ones((1, 3, 2), np.float32)).h.shape == (1, 4)
        assert "no compile cache" in server.log()
    finally:
        server.stop()
