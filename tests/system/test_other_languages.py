"""The API for other languages: buf lint and buf breaking (against the baseline image in
proto/baseline) on the .proto, and a Node.js client (@grpc/grpc-js, stubs generated at run time
by @grpc/proto-loader) that calls Predict and a session on a real server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from tests.helpers import ROOT, project_tool, system_binary
from tests.reference import NumpyLstm

NODE = ROOT / "tests" / "node"


def _buf(*args: str) -> subprocess.CompletedProcess[str]:
    buf = project_tool("tests/node/node_modules/.bin/buf", "make test (npm install in tests/node)")
    return subprocess.run([str(buf), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_buf_lint_is_clean() -> None:
    done = _buf("lint")
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_breaking_change_against_the_baseline() -> None:
    done = _buf("breaking", "--against", "proto/baseline/lstm-v1.binpb")
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_breaking_catches_a_change_that_breaks_clients(tmp_path: Path) -> None:
    """The check can fail: the same API with one field's type changed is refused."""
    changed = tmp_path / "proto"
    subprocess.run(["cp", "-r", str(ROOT / "proto"), str(changed)], check=True)
    source = changed / "lstm" / "v1" / "lstm_service.proto"
    text = source.read_text()
    source.write_text(text.replace("uint64 step_number = 3;", "uint32 step_number = 3;", 1))
    (tmp_path / "buf.yaml").write_text((ROOT / "buf.yaml").read_text())
    buf = project_tool("tests/node/node_modules/.bin/buf", "make test (npm install in tests/node)")
    done = subprocess.run(
        [str(buf), "breaking", "--against", str(ROOT / "proto/baseline/lstm-v1.binpb")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert 'changed type from "uint64" to "uint32"' in done.stdout


def test_a_node_client_calls_predict_and_a_session(wide_server, wide_reference: NumpyLstm) -> None:
    node = system_binary("node", "nodejs")
    project_tool("tests/node/node_modules/@grpc/grpc-js", "make test (npm install in tests/node)")
    done = subprocess.run(
        [node, str(NODE / "client.mjs"), wide_server.target, str(ROOT / "proto")],
        capture_output=True, text=True, timeout=120, cwd=NODE,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    x = np.array([[0.5, -0.25, 1.0], [0.1, 0.2, 0.3], [-1.0, 0.0, 0.75]], np.float32)
    x = np.pad(x, ((0, 0), (0, 5)))  # the wide model takes 8 features
    seq, h, c = wide_reference.run(x)
    assert (got["units"], got["input_features"]) == (16, 8)
    np.testing.assert_allclose(got["hidden"], seq, atol=1e-5)
    np.testing.assert_allclose(got["h"], h, atol=1e-5)
    np.testing.assert_allclose(got["stepped"], seq, atol=1e-5)
    assert got["step_numbers"] == [1, 2]
    assert got["step_count"] == 2
    np.testing.assert_allclose(got["exported_c"], c, atol=1e-5)
    assert got["refused"]["code"] == 9  # FAILED_PRECONDITION
    assert "expects step_number 3" in got["refused"]["details"]
