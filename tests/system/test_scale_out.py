"""Several replicas sharing one Redis, behind nginx: real processes, real Redis, real nginx."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis as redis_py
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_client import AsyncLstmClient, LstmClient, LstmError
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.helpers import seq_msg
from tests.nginx_server import NginxServer
from tests.redis_server import RedisServer
from tests.reference import NumpyLstm
from tests.servers import REPLICA_MODEL, ServerProcess, replicas

TOL = 1e-5
MODEL = REPLICA_MODEL


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory,
) -> Iterator[tuple[RedisServer, list[ServerProcess], NginxServer, NumpyLstm]]:
    directory = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(directory)
    servers = replicas(2, redis.url, directory)
    nginx = NginxServer([s.target for s in servers], directory)
    try:
        yield redis, servers, nginx, NumpyLstm.from_saved_model(directory / "model.keras")
    finally:
        nginx.stop()
        for server in servers:
            server.stop()
        redis.stop()


def test_a_session_stepped_alternately_through_two_replicas(cluster, rng) -> None:
    _, replicas_, _, reference = cluster
    x = rng.normal(size=(9, 4)).astype(np.float32)
    with (
        grpc.insecure_channel(replicas_[0].target) as ch_a,
        grpc.insecure_channel(replicas_[1].target) as ch_b,
    ):
        stubs = [pb_grpc.LstmServiceStub(ch_a), pb_grpc.LstmServiceStub(ch_b)]
        sid = stubs[0].CreateSession(pb.CreateSessionRequest()).session_id
        replies = [
            stubs[n % 2].Step(
                pb.StepRequest(session_id=sid, input=seq_msg(x[n : n + 1]), step_number=n + 1)
            )
            for n in range(9)
        ]
        assert stubs[1].GetSession(pb.GetSessionRequest(session_id=sid)).step_count == 9
    seq, h, c = reference.run(x)
    np.testing.assert_allclose([list(r.hidden_sequence[0].values) for r in replies], seq, atol=TOL)
    np.testing.assert_allclose(replies[-1].state.h.values, h, atol=TOL)
    np.testing.assert_allclose(replies[-1].state.c.values, c, atol=TOL)


def test_racing_the_same_step_through_two_replicas_applies_it_once(cluster, rng) -> None:
    _, (a, b), _, reference = cluster
    x = rng.normal(size=(6, 4)).astype(np.float32)
    with grpc.insecure_channel(a.target) as ch_a, grpc.insecure_channel(b.target) as ch_b:
        stubs = [pb_grpc.LstmServiceStub(ch_a), pb_grpc.LstmServiceStub(ch_b)]
        sid = stubs[0].CreateSession(pb.CreateSessionRequest()).session_id
        outputs = []
        for n in range(1, 7):
            request = pb.StepRequest(session_id=sid, input=seq_msg(x[n - 1 : n]), step_number=n)
            replies: list[pb.StepResponse] = [pb.StepResponse(), pb.StepResponse()]
            barrier = threading.Barrier(2)

            def race(i: int, request=request, replies=replies, barrier=barrier) -> None:
                barrier.wait()
                replies[i] = stubs[i].Step(request)

            threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert replies[0] == replies[1]
            assert replies[0].step_number == n
            outputs.append(np.array([v.values for v in replies[0].hidden_sequence]))
        assert stubs[1].GetSession(pb.GetSessionRequest(session_id=sid)).step_count == 6
        np.testing.assert_allclose(np.concatenate(outputs), reference.run(x)[0], atol=TOL)


async def test_many_concurrent_sessions_through_nginx(cluster, rng) -> None:
    _, _, nginx, reference = cluster
    inputs = [rng.normal(size=(8, 4)).astype(np.float32) for _ in range(32)]

    async def drive(client: AsyncLstmClient, x: np.ndarray) -> list[np.ndarray]:
        async with await client.session() as session:
            return [(await session.step(x[i : i + 2])).sequence for i in range(0, 8, 2)]

    async with AsyncLstmClient(nginx.target, timeout=30) as client:
        results = await asyncio.gather(*(drive(client, x) for x in inputs))
    for x, outputs in zip(inputs, results, strict=True):
        np.testing.assert_allclose(np.concatenate(outputs), reference.run(x)[0], atol=TOL)


def test_a_replica_killed_mid_run_loses_no_step(tmp_path: Path, rng) -> None:
    redis = RedisServer(tmp_path)
    servers = replicas(2, redis.url, tmp_path)
    nginx = NginxServer([s.target for s in servers], tmp_path)
    reference = NumpyLstm.from_saved_model(tmp_path / "model.keras")
    x = rng.normal(size=(40, 4)).astype(np.float32)
    try:
        with LstmClient(nginx.target, timeout=10, retries=6) as client:
            session = client.session()
            outputs = []
            for t in range(40):
                if t == 15:
                    servers[0].process.send_signal(signal.SIGKILL)
                outputs.append(session.step(x[t : t + 1]).sequence)
            assert session.refresh().step_count == 40  # none lost, none applied twice
            seq, h, c = reference.run(x)
            np.testing.assert_allclose(np.concatenate(outputs), seq, atol=TOL)
            np.testing.assert_allclose(session.state[0], h, atol=TOL)
            np.testing.assert_allclose(session.state[1], c, atol=TOL)
        assert servers[0].process.wait(timeout=10) == -signal.SIGKILL
    finally:
        nginx.stop()
        for server in servers:
            server.stop()
        redis.stop()


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            .status
        )


def _wait_health(target: str, service: str, status: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while _health(target, service) != status:
        assert time.monotonic() < deadline, f"health of {service!r} never became {status}"
        time.sleep(0.1)


def test_redis_outage_fails_fast_and_recovers(tmp_path: Path, rng) -> None:
    redis = RedisServer(tmp_path, persist=True)
    (server,) = replicas(1, redis.url, tmp_path)
    reference = NumpyLstm.from_saved_model(tmp_path / "model.keras")
    x = rng.normal(size=(3, 4)).astype(np.float32)
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    try:
        with LstmClient(server.target, timeout=10, retries=0) as client:
            session = client.session()
            first = session.step(x[:1])
            redis.stop()
            began = time.monotonic()
            with pytest.raises(LstmError) as caught:
                session.step(x[1:2])
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert "session store is unavailable" in caught.value.details
            assert time.monotonic() - began < 3, "a Redis outage must fail fast"
            with pytest.raises(LstmError) as caught:
                client.session()
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            _wait_health(server.target, "", not_serving)
            assert _health(server.target, "lstm.v1.LstmService") == not_serving
            assert _health(server.target, "liveness") == serving
            assert client.predict(x).sequence.shape == (3, 8)  # no session, no Redis needed

            redis.start()  # the same data directory: the append-only file brings the sessions back
            _wait_health(server.target, "", serving)
            rest = session.step(x[1:])
            assert rest.step_number == 2
            seq, h, c = reference.run(x)
            np.testing.assert_allclose(
                np.concatenate([first.sequence, rest.sequence]), seq, atol=TOL
            )
            np.testing.assert_allclose(rest.h, h, atol=TOL)
            np.testing.assert_allclose(rest.c, c, atol=TOL)

            redis_py.Redis.from_url(redis.url).flushall()  # a Redis that kept no data
            with pytest.raises(LstmError) as caught:
                session.step(x[:1])
            assert caught.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()
        redis.stop()
