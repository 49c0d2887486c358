"""A rollout end to end, as the README's "Rolling out new weights" describes it: two replicas on one
model repository (poll mode) and one Redis, behind the shipped nginx, 32 sessions streaming steps
through the SDK. Version 2 is dropped into the repository: new sessions go to it, the 32 keep
stepping on version 1 with no error, each step applied once and equal to version 1's weights.
Version 1 is removed and unloads once its sessions close. Once more with a replica restarted in
the middle: it loads version 1 again when a session pinned to it arrives."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from lstm_client import LstmClient, LstmError
from lstm_server.runtime.keras_model import default_chain, save_chain

from tests.nginx_server import NginxServer
from tests.redis_server import RedisServer
from tests.reference import NumpyLstm
from tests.servers import ServerProcess

FEATURES, UNITS = 8, 16
SESSIONS = 32
TOL = 1e-5


def drop_version(root: Path, version: int) -> NumpyLstm:
    """Write a version beside the repository, then move it in whole (what the README advises:
    a poll never sees half a file)."""
    staging = root.parent / f"staging-{version}"
    save_chain(default_chain(FEATURES, UNITS, seed=version), staging / "model.keras")
    os.rename(staging, root / "lstm" / str(version))
    return NumpyLstm.from_saved_model(root / "lstm" / str(version) / "model.keras")


def replica(root: Path, redis_url: str, directory: Path, port: int = 0) -> ServerProcess:
    return ServerProcess(
        [
            "--model-repository",
            str(root),
            "--model-control-mode",
            "poll",
            "--repository-poll-interval",
            "0.5",
            "--session-store",
            redis_url,
            "--grace",
            "5",
        ],
        log_dir=directory,
        wait=False,
        port=port,
    )


def states(server: ServerProcess) -> set[tuple[int, str]]:
    with LstmClient(server.target, timeout=10) as client:
        return {(m.version, m.state) for m in client.list_models()}


def wait_for(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


class Stepper(threading.Thread):
    """One session stepping through nginx until told to stop; keeps what it sent and got."""

    def __init__(self, target: str, seed: int, stop: threading.Event) -> None:
        super().__init__()
        self.target = target
        self.rng = np.random.default_rng(seed)
        self.halt = stop
        self.sent: list[np.ndarray] = []
        self.got: list[np.ndarray] = []
        self.errors: list[BaseException] = []
        self.version = 0
        self.step_count = -1
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            with LstmClient(self.target, timeout=30) as client:
                session = client.session(ttl=600)
                self.version = session.info.version_number
                self.ready.set()
                while not self.halt.is_set():
                    x = self.rng.normal(size=(1, FEATURES)).astype(np.float32)
                    self.got.append(session.step(x).sequence)
                    self.sent.append(x)
                    time.sleep(0.05)
                self.step_count = session.refresh().step_count
                session.close()
        except (LstmError, AssertionError) as error:
            self.errors.append(error)
        finally:
            self.ready.set()


@pytest.mark.parametrize("restart", [False, True], ids=["steady", "replica-restarted"])
def test_a_rollout_keeps_every_session_on_its_version(tmp_path: Path, restart: bool) -> None:
    root = tmp_path / "models"
    (root / "lstm").mkdir(parents=True)
    v1 = drop_version(root, 1)
    redis = RedisServer(tmp_path)
    servers = [replica(root, redis.url, tmp_path) for _ in range(2)]
    nginx: NginxServer | None = None
    stop = threading.Event()
    steppers = [Stepper("", seed, stop) for seed in range(SESSIONS)]
    try:
        for server in servers:
            server.wait_serving()
        nginx = NginxServer([s.target for s in servers], tmp_path)
        steppers = [Stepper(nginx.target, seed, stop) for seed in range(SESSIONS)]
        for stepper in steppers:
            stepper.start()
        for stepper in steppers:
            stepper.ready.wait(60)
        time.sleep(1)

        v2 = drop_version(root, 2)
        for server in servers:
            wait_for(lambda s=server: (2, "READY") in states(s))
            assert (1, "DRAINING") in states(server)  # its sessions are live
        if restart:
            port = servers[0].port  # nginx knows the replica by it
            assert servers[0].stop(signal.SIGTERM) == 0, servers[0].log()
            servers[0] = replica(root, redis.url, tmp_path, port=port)
            servers[0].wait_serving()
            # Sessions pinned to version 1 reach it: it loads version 1 again to serve them.
            wait_for(lambda: (1, "DRAINING") in states(servers[0]))

        with LstmClient(nginx.target, timeout=30) as client:
            for seed in range(4):
                x = np.random.default_rng(100 + seed).normal(size=(5, FEATURES))
                session = client.session()
                assert session.info.version_number == 2
                seq, h, _ = v2.run(x.astype(np.float32))
                result = session.step(x.astype(np.float32))
                np.testing.assert_allclose(result.sequence, seq, atol=TOL)
                np.testing.assert_allclose(result.h, h, atol=TOL)
                session.close()
            assert client.metadata().version_number == 2

        shutil.rmtree(root / "lstm" / "1")  # the loaded copies serve its sessions on
        time.sleep(2)
        stop.set()
        for stepper in steppers:
            stepper.join(timeout=120)

        assert [e for s in steppers for e in s.errors] == []
        for stepper in steppers:
            assert stepper.version == 1
            assert stepper.step_count == len(stepper.sent) > 10  # each step applied once
            seq, _, _ = v1.run(np.concatenate(stepper.sent))
            np.testing.assert_allclose(np.concatenate(stepper.got), seq, atol=TOL)
        for server in servers:  # its sessions closed: version 1 unloads everywhere
            wait_for(lambda s=server: (1, "UNAVAILABLE") in states(s))
            assert (2, "READY") in states(server)
    finally:
        stop.set()
        for stepper in steppers:
            if stepper.is_alive():
                stepper.join(timeout=60)
        if nginx is not None:
            nginx.stop()
        for server in servers:
            server.stop()
        redis.stop()
