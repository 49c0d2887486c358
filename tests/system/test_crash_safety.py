"""What a crash, a restart, a bad snapshot, a bad store URL or a signal at the wrong moment can do
to sessions and to the process: never stale state, never a traceback, a clear exit code."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_client import LstmClient, LstmError
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.helpers import seq_msg
from tests.servers import ServerProcess, server_command

ARGS = ["--features", "2", "--units", "3"]
LOCAL_PORTS = ("--host", "127.0.0.1", "--port", "0", "--metrics-port", "off", "--http-port", "off")


def _snapshot_args(snapshot: Path) -> list[str]:
    return [*ARGS, "--session-snapshot", str(snapshot)]


def test_sigkill_after_a_restore_loses_sessions_but_never_brings_back_stale_ones(
    tmp_path: Path, rng
) -> None:
    snapshot = tmp_path / "sessions.json"
    x = rng.normal(size=(9, 2)).astype(np.float32)
    first = ServerProcess(_snapshot_args(snapshot), log_dir=tmp_path)
    with LstmClient(first.target) as client:
        kept, closed = client.session(ttl=600), client.session(ttl=600)
        for t in range(3):
            kept.step(x[t : t + 1])
    assert first.stop(signal.SIGTERM) == 0, first.log()

    second = ServerProcess(_snapshot_args(snapshot), log_dir=tmp_path)
    assert "restored 2 sessions" in second.log()
    assert not snapshot.exists()  # moved aside: it can be restored once only
    with LstmClient(second.target) as client:
        again = client.attach(kept.session_id)
        for t in range(3, 7):
            again.step(x[t : t + 1])
        assert again.step_count == 7
        client.attach(closed.session_id).close()
    assert second.stop(signal.SIGKILL) != 0

    third = ServerProcess(_snapshot_args(snapshot), log_dir=tmp_path)
    try:
        with grpc.insecure_channel(third.target) as channel:
            stub = pb_grpc.LstmServiceStub(channel)
            for sid in (kept.session_id, closed.session_id):
                with pytest.raises(grpc.RpcError) as gone:
                    stub.GetSession(pb.GetSessionRequest(session_id=sid))
                assert gone.value.code() == grpc.StatusCode.NOT_FOUND  # not back at step 3
            append = pb.StepRequest(
                session_id=kept.session_id, input=seq_msg(np.zeros((1, 2))), step_number=0
            )
            with pytest.raises(grpc.RpcError) as gone:
                stub.Step(append)
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND  # step 0 appends to nothing
    finally:
        assert third.stop() == 0, third.log()


def _start_fails(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        server_command(*LOCAL_PORTS, *args),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_an_unwritable_snapshot_path_is_refused_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    done = _start_fails([*ARGS, "--session-snapshot", str(blocker / "sessions.json")], tmp_path)
    assert done.returncode == 2
    assert "cannot use --session-snapshot" in done.stderr


def _array(values: list[float], shape: list[int] | None = None) -> dict[str, object]:
    raw = np.asarray(values, np.float32).tobytes()
    return {"shape": shape or [len(values)], "float32": base64.b64encode(raw).decode()}


GOOD = {
    "session_id": "a" * 32,
    "h": _array([0, 0, 0]),
    "c": _array([0, 0, 0]),
    "step_count": 0,
    "model_version": "sha256:x",
    "ttl_seconds": 600,
    "expires_at": time.time() + 600,
    "owner": "",
    "revision": 0,
    "last_step": None,
}
CORRUPT = {
    "not json": b"\x00\xff garbage",
    "not an object": b"[1, 2]",
    "sessions not a list": json.dumps({"format": "lstm-serving-sessions/1", "sessions": 3}),
    "a session not an object": json.dumps({"format": "lstm-serving-sessions/1", "sessions": [1]}),
    "bad base64": json.dumps(
        {
            "format": "lstm-serving-sessions/1",
            "sessions": [{**GOOD, "h": {"shape": [3], "float32": "!!"}}],
        }
    ),
    "h and c of other sizes": json.dumps(
        {"format": "lstm-serving-sessions/1", "sessions": [{**GOOD, "c": _array([0, 0])}]}
    ),
    "wrong type": json.dumps(
        {"format": "lstm-serving-sessions/1", "sessions": [{**GOOD, "step_count": "3"}]}
    ),
    "last step of another width": json.dumps(
        {
            "format": "lstm-serving-sessions/1",
            "sessions": [
                {
                    **GOOD,
                    "step_count": 1,
                    "last_step": {
                        "step_number": 1,
                        "input_digest": "d",
                        "hidden_sequence": _array([0, 0], [1, 2]),
                    },
                }
            ],
        }
    ),
    "huge session id": json.dumps(
        {"format": "lstm-serving-sessions/1", "sessions": [{**GOOD, "session_id": "x" * 16384}]}
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_corrupt_snapshot_is_refused_at_start_with_a_message(tmp_path: Path, case: str) -> None:
    snapshot = tmp_path / "sessions.json"
    content = CORRUPT[case]
    snapshot.write_bytes(content if isinstance(content, bytes) else content.encode())
    done = _start_fails(_snapshot_args(snapshot), tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"cannot use --session-snapshot {snapshot}" in done.stderr
    assert snapshot.exists()  # left for the operator to look at


def test_shutdown_keeps_the_sessions_of_open_streams(tmp_path: Path, rng) -> None:
    snapshot = tmp_path / "sessions.json"
    x = rng.normal(size=(4, 2)).astype(np.float32)
    first = ServerProcess([*_snapshot_args(snapshot), "--grace", "1"], log_dir=tmp_path)
    steps: list[object] = []
    stop_feeding = threading.Event()

    def chunks():  # type: ignore[no-untyped-def]
        yield x[:2]
        stop_feeding.wait(30)  # the stream stays open, as a caller's would

    def consume() -> None:
        with (
            LstmClient(first.target) as client,  # close_on_end: the SDK's default
            contextlib.suppress(LstmError),
        ):
            steps.extend(client.stream_session(chunks()))

    feeder = threading.Thread(target=consume)
    feeder.start()
    deadline = time.monotonic() + 30
    while not steps and time.monotonic() < deadline:
        time.sleep(0.05)
    assert steps, first.log()
    assert first.stop(signal.SIGTERM) == 0, first.log()
    stop_feeding.set()
    feeder.join(timeout=30)

    second = ServerProcess(_snapshot_args(snapshot), log_dir=tmp_path)
    try:
        with LstmClient(second.target) as client:
            session = client.attach(steps[0].session_id)  # type: ignore[attr-defined]
            assert session.step_count == 1
    finally:
        second.stop()


def test_a_mistyped_redis_url_shows_no_password_and_no_traceback(tmp_path: Path) -> None:
    done = _start_fails([*ARGS, "--session-store", "redis://:s3cr3t@localhost:63x79/0"], tmp_path)
    assert done.returncode == 2
    assert "s3cr3t" not in done.stderr + done.stdout
    assert "redis://:***@localhost:63x79/0" in done.stderr


def test_sigterm_during_start_up_exits_at_once(tmp_path: Path) -> None:
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        server_command(*LOCAL_PORTS, *ARGS),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    time.sleep(1.5)  # importing TensorFlow, loading the model
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - began < 10
    assert "stopping during start-up" in (tmp_path / "server.log").read_text()


def test_drain_keeps_serving_while_reporting_not_serving(tmp_path: Path) -> None:
    server = ServerProcess([*ARGS, "--drain", "3"], log_dir=tmp_path)
    ready_url = server.metrics_url.replace("/metrics", "/readyz")
    with grpc.insecure_channel(server.target) as channel, LstmClient(server.target) as client:
        health = health_pb2_grpc.HealthStub(channel)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while health.Check(health_pb2.HealthCheckRequest(), timeout=1).status != (
            health_pb2.HealthCheckResponse.NOT_SERVING
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(ready_url, timeout=2)
        assert not_ready.value.code == 503
        assert client.predict([[0.1, 0.2]]).sequence.shape == (1, 3)  # still served
    assert server.stop() == 0
    assert "draining for 3.0 s" in server.log()


def test_the_server_module_runs_as_a_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lstm_server", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "--drain" in done.stdout
