"""The shipped nginx configuration keeps the server's promises: large requests, long and large
session streams, idle streams, and a replica restart that SDK callers do not notice."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from lstm_client import LstmClient, LstmError

from tests.nginx_server import NginxServer
from tests.redis_server import RedisServer
from tests.reference import NumpyLstm
from tests.servers import ServerProcess

MODEL = ("--features", "8", "--units", "4", "--seed", "5")
LIMITS = ("--max-message-bytes", str(8 * 2**20))
TOL = 1e-5
IDLE_SECONDS = 90  # beyond nginx's 60 s defaults


def replica(redis_url: str, directory: Path, *extra: str, port: int = 0) -> ServerProcess:
    return ServerProcess(
        [*MODEL, *LIMITS, "--session-store", redis_url, "--grace", "5", *extra],
        log_dir=directory,
        wait=False,
        port=port,
    )


@pytest.fixture(scope="module")
def balanced(tmp_path_factory) -> Iterator[tuple[list[ServerProcess], NginxServer, NumpyLstm]]:
    directory = tmp_path_factory.mktemp("balanced")
    redis = RedisServer(directory)
    servers = [
        replica(redis.url, directory, "--save-model", str(directory / "model.keras")),
        replica(redis.url, directory),
    ]
    for server in servers:
        server.wait_serving()
    nginx = NginxServer([s.target for s in servers], directory)
    try:
        yield servers, nginx, NumpyLstm.from_saved_model(directory / "model.keras")
    finally:
        nginx.stop()
        for server in servers:
            server.stop()
        redis.stop()


def test_large_requests_long_streams_and_idle_streams_pass_nginx(balanced, rng) -> None:
    _, nginx, reference = balanced
    errors: list[BaseException] = []

    def idle_stream() -> None:
        x = rng.normal(size=(2, 8)).astype(np.float32)

        def chunks():  # type: ignore[no-untyped-def]
            yield x[:1]
            time.sleep(IDLE_SECONDS)
            yield x[1:]

        try:
            with LstmClient(nginx.target, timeout=IDLE_SECONDS + 60) as client:
                steps = list(client.stream_session(chunks()))
            assert [s.step_number for s in steps] == [1, 2]
            _, h, _ = reference.run(x)
            np.testing.assert_allclose(steps[-1].h, h, atol=TOL)
        except BaseException as error:
            errors.append(error)

    idle = threading.Thread(target=idle_stream)
    idle.start()
    with LstmClient(nginx.target, timeout=120) as client:
        big = rng.normal(size=(15, 10_000, 8)).astype(np.float32)  # a 5.4 MB request
        result = client.predict(big)
        seq, _, _ = reference.run(big[3])
        np.testing.assert_allclose(result.sequence[3], seq, atol=TOL)
        chunk = rng.normal(size=(10_000, 8)).astype(np.float32)  # 360 KB a step
        steps = list(client.stream_session([chunk] * 60))  # 21.6 MB over one stream
        assert [s.step_number for s in steps] == list(range(1, 61))
    idle.join(timeout=IDLE_SECONDS + 90)
    assert not idle.is_alive()
    assert errors == []


def test_a_replica_restart_behind_nginx_is_not_seen_by_sdk_callers(
    balanced, tmp_path: Path, rng
) -> None:
    servers, nginx, reference = balanced
    x = rng.normal(size=(400, 8)).astype(np.float32)
    failures: list[LstmError] = []
    done = threading.Event()
    stepped = 0

    def step_through() -> None:
        nonlocal stepped
        with LstmClient(nginx.target, timeout=10) as client:
            session = client.session(ttl=600)
            outputs = []
            for t in range(len(x)):
                try:
                    outputs.append(session.step(x[t : t + 1]).sequence)
                except LstmError as error:
                    failures.append(error)
                    return
                stepped += 1
                if done.is_set() and t > 100:
                    break
                time.sleep(0.02)
            assert session.refresh().step_count == stepped  # none lost, none applied twice
            seq, h, _ = reference.run(x[:stepped])
            np.testing.assert_allclose(np.concatenate(outputs), seq, atol=TOL)
            np.testing.assert_allclose(session.state[0], h, atol=TOL)

    caller = threading.Thread(target=step_through)
    caller.start()
    time.sleep(1)
    old = servers[0]
    port = old.port  # the same port again: nginx knows the replica by it
    store = next(str(a) for a in old.process.args if str(a).startswith("redis://"))
    assert old.stop(signal.SIGTERM) == 0, old.log()
    restarted = replica(store, tmp_path, port=port)
    restarted.wait_serving()
    servers[0] = restarted
    time.sleep(3)  # nginx takes the replica back after fail_timeout
    done.set()
    caller.join(timeout=120)
    assert failures == []
    assert stepped > 100
