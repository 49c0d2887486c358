"""``--compile-cache``: XLA keeps the shapes a server compiles, and a restarted server uses them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from lstm_client import LstmClient

from tests.reference import NumpyLstm
from tests.servers import ServerProcess


def _cached(directory: Path) -> dict[str, int]:
    """The cache's entries and when each was written."""
    return {p.name: p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def test_a_restarted_server_finds_its_compiled_shapes_in_the_cache(tmp_path: Path, rng) -> None:
    cache = tmp_path / "xla"
    model = tmp_path / "model.keras"
    args = ["--features", "8", "--units", "16", "--compile-cache", str(cache)]
    x = rng.normal(size=(3, 40, 8)).astype(np.float32)  # a batch: a bucket of the background's
    first = ServerProcess([*args, "--save-model", str(model)], log_dir=tmp_path)
    try:
        with LstmClient(first.target, timeout=60) as client:
            before = client.predict(x)
        deadline = time.monotonic() + 120  # the background compiles what traffic may meet
        while not _cached(cache) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "XLA compile cache in" in first.log()
    finally:
        first.stop()
    entries = _cached(cache)
    assert entries, "nothing was written to the compile cache"
    second = ServerProcess(args, log_dir=tmp_path)
    try:
        with LstmClient(second.target, timeout=60) as client:
            after = client.predict(x)
    finally:
        second.stop()
    again = _cached(cache)
    # The same programs: read from the cache, not compiled and written again.
    assert {name: again[name] for name in entries} == entries
    reference = NumpyLstm.from_saved_model(model)
    for i in range(3):
        seq, h, c = reference.run(x[i])
        for served in (before, after):
            np.testing.assert_allclose(served.sequence[i], seq, atol=1e-5)
            np.testing.assert_allclose(served.h[i], h, atol=1e-5)
            np.testing.assert_allclose(served.c[i], c, atol=1e-5)
