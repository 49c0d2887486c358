"""Sessions on a real Redis Cluster (three primaries, a replica each) shared by two real
lstm-serving replicas: spread over the primaries, exactly once through a failover and through a
slot migration, refused with a reason when the cluster cannot serve."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_client import AsyncLstmClient, LstmClient, LstmError
from lstm_client.aio import AsyncSession

from tests.redis_cluster import RedisClusterNodes
from tests.reference import NumpyLstm
from tests.servers import REPLICA_MODEL, ServerProcess, free_port, replicas, server_command

LOCAL_PORTS = ("--host", "127.0.0.1", "--port", "0", "--metrics-port", "off", "--http-port", "off")
TOL = 1e-5
MODEL = REPLICA_MODEL
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisClusterNodes, list[ServerProcess], NumpyLstm]]:
    directory = tmp_path_factory.mktemp("redis-cluster")
    nodes = RedisClusterNodes(directory)
    servers = replicas(2, nodes.url, directory)
    try:
        yield nodes, servers, NumpyLstm.from_saved_model(directory / "model.keras")
    finally:
        for server in servers:
            server.stop()
        nodes.stop()


def session_key(session_id: str) -> str:
    return f"lstm:session:{{{session_id}}}"


async def run_sessions(
    targets: list[str], inputs: list[np.ndarray], *, started: asyncio.Event | None = None
) -> tuple[list[str], list[list[np.ndarray]], list[AsyncSession]]:
    """One session per input (on the replicas in turn), stepped one timestep at a time by the
    SDK (which retries a step after UNAVAILABLE with the same step number)."""
    clients = [AsyncLstmClient(t, timeout=10) for t in targets]
    try:
        sessions = [await clients[i % len(clients)].session() for i in range(len(inputs))]
        if started is not None:
            started.set()

        async def drive(session: AsyncSession, x: np.ndarray) -> list[np.ndarray]:
            outputs = []
            for t in range(len(x)):
                outputs.append((await session.step(x[t : t + 1])).sequence)
                await asyncio.sleep(0.02)
            return outputs

        outputs = await asyncio.gather(
            *(drive(s, x) for s, x in zip(sessions, inputs, strict=True))
        )
        for session in sessions:
            await session.refresh()
        return [s.session_id for s in sessions], outputs, sessions
    finally:
        for client in clients:
            await client.close()


async def stepping_sessions(
    nodes: RedisClusterNodes, servers: list[ServerProcess], rng: np.random.Generator
) -> tuple[list[np.ndarray], asyncio.Task, dict[int, list[str]], int]:
    """24 sessions stepping 60 times each in the background, once they are live: their inputs,
    the task, the session keys each primary holds, and the primary holding the most."""
    inputs = [rng.normal(size=(60, 4)).astype(np.float32) for _ in range(24)]
    started = asyncio.Event()
    stepping = asyncio.create_task(
        run_sessions([s.target for s in servers], inputs, started=started)
    )
    await started.wait()
    await asyncio.sleep(0.3)
    held = {p: nodes.keys(p, "lstm:session:*") for p in nodes.primaries()}
    return inputs, stepping, held, max(held, key=lambda p: len(held[p]))


def assert_each_step_once(
    reference: NumpyLstm,
    inputs: list[np.ndarray],
    outputs: list[list[np.ndarray]],
    sessions: list[AsyncSession],
) -> None:
    """Every acknowledged step is in the stored state, none applied twice: each reply and the
    stored state equal one pass of the reference over the inputs."""
    for x, got, session in zip(inputs, outputs, sessions, strict=True):
        seq, h, c = reference.run(x)
        np.testing.assert_allclose(np.concatenate(got), seq, atol=TOL)
        assert session.step_count == len(x)
        np.testing.assert_allclose(session.state[0], h, atol=TOL)
        np.testing.assert_allclose(session.state[1], c, atol=TOL)


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status


def wait_health(target: str, status: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while health(target) != status:
        assert time.monotonic() < deadline, f"health never became {status}"
        time.sleep(0.1)


async def test_sessions_spread_over_every_primary_and_step_through_either_replica(
    fleet, rng
) -> None:
    nodes, servers, reference = fleet
    inputs = [rng.normal(size=(4, 4)).astype(np.float32) for _ in range(30)]
    ids, outputs, sessions = await run_sessions([s.target for s in servers], inputs)
    assert_each_step_once(reference, inputs, outputs, sessions)
    held = {p: set(nodes.keys(p, "lstm:session:*")) for p in nodes.primaries()}
    assert len(held) == 3
    assert all(held.values()), f"sessions per primary: { {p: len(k) for p, k in held.items()} }"
    assert set().union(*held.values()) >= {session_key(i) for i in ids}
    # Either replica steps a session the other created.
    with LstmClient(servers[1].target) as client:
        session = client.attach(ids[0])
        more = session.step(inputs[0][:1])
        assert more.step_number == 5


async def test_a_slot_holding_live_sessions_moves_while_they_step(fleet, rng) -> None:
    """``redis-cli --cluster reshard`` moves slots holding live sessions from one primary to
    another while steps are in flight (MOVED and ASK followed): nothing lost, nothing twice."""
    nodes, servers, reference = fleet
    inputs, stepping, held, source = await stepping_sessions(nodes, servers, rng)
    target = next(p for p in held if p != source)
    low = min(int(r.split("-")[0]) for r in _slot_ranges(nodes, source))
    slots = sorted(nodes.keyslot(k) for k in held[source])
    count = slots[0] - low + 1  # reshard takes the source's lowest slots: this one moves
    await asyncio.to_thread(
        nodes.run_cli,
        "--cluster",
        "reshard",
        f"127.0.0.1:{source}",
        "--cluster-from",
        nodes.node_id(source),
        "--cluster-to",
        nodes.node_id(target),
        "--cluster-slots",
        str(count),
        "--cluster-yes",
        timeout=120,
    )
    assert nodes.primary_of_slot(slots[0]) == target
    assert not stepping.done(), "the steps must still be in flight after the migration"
    _, outputs, sessions = await stepping
    assert_each_step_once(reference, inputs, outputs, sessions)


def _slot_ranges(nodes: RedisClusterNodes, port: int) -> list[str]:
    row = next(n for n in nodes.nodes() if int(n["port"]) == port)
    return [r for r in row["slots"].split() if not r.startswith("[")]


async def test_steps_exactly_once_while_a_primary_fails_over(tmp_path: Path, rng) -> None:
    """A primary holding live sessions is killed mid-run; its replica is promoted. Every step
    the client saw acknowledged is stored, none twice; steps in flight are retried by the SDK.
    A step sent with no retries meanwhile is refused UNAVAILABLE with its reason. Then a
    replica starts with the dead node first among its seeds; with a whole shard gone,
    readiness says NOT_SERVING, also for a replica that starts then."""
    nodes = RedisClusterNodes(tmp_path)
    servers = replicas(2, nodes.url, tmp_path)
    reference = NumpyLstm.from_saved_model(tmp_path / "model.keras")
    try:
        inputs, stepping, held, victim = await stepping_sessions(nodes, servers, rng)
        probe_client = AsyncLstmClient(servers[0].target, timeout=10, retries=0)
        probe = await probe_client.session()
        while nodes.primary_of_slot(nodes.keyslot(session_key(probe.session_id))) != victim:
            await probe.close()
            probe = await probe_client.session()
        nodes.kill(victim)
        refused = None
        for _ in range(200):
            try:
                await probe.step(inputs[0][:1])
            except LstmError as error:
                refused = error
                break
            await asyncio.sleep(0.01)
        assert refused is not None, "a step on the dead primary's shard must be refused"
        assert refused.code == grpc.StatusCode.UNAVAILABLE
        assert refused.reason == "STORE_UNAVAILABLE"
        assert not stepping.done(), "the steps must still be in flight at the failover"
        _, outputs, sessions = await stepping
        assert_each_step_once(reference, inputs, outputs, sessions)
        await probe_client.close()
        nodes.wait_ok()
        for server in servers:  # the dead node is still known to their clients: not asked
            wait_health(server.target, SERVING)

        # A replica starts with a dead seed first: the next seed answers.
        dead_first = f"redis+cluster://127.0.0.1:{victim},127.0.0.1:{nodes.alive()[0]}"
        (tmp_path / "late").mkdir()
        (late,) = replicas(1, dead_first, tmp_path / "late")
        servers.append(late)
        async with AsyncLstmClient(late.target, timeout=10) as client:
            session = await client.session()
            assert (await session.step(inputs[0][:2])).step_number == 1

        # The promoted primary dies too: its slots are served by no one.
        promoted = next(
            p for p in nodes.primaries() if set(nodes.keys(p, "lstm:session:*")) & set(held[victim])
        )
        nodes.kill(promoted)
        for server in servers:
            wait_health(server.target, NOT_SERVING)
            assert health(server.target, "liveness") == SERVING
        # A replica that starts now, with slots not covered, starts and says NOT_SERVING.
        (tmp_path / "uncovered").mkdir()
        alive = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in nodes.alive())
        uncovered = ServerProcess(
            [*MODEL, "--session-store", alive, "--health-interval", "0.2"],
            log_dir=tmp_path / "uncovered",
            wait=False,
        )
        servers.append(uncovered)
        wait_health(uncovered.target, NOT_SERVING, timeout=60)
        await asyncio.sleep(2)  # ten readiness checks later, still
        assert health(uncovered.target) == NOT_SERVING
        assert health(uncovered.target, "liveness") == SERVING
    finally:
        for server in servers:
            server.stop()
        nodes.stop()


def test_a_seed_list_that_reaches_no_node_exits_2_with_the_reason(tmp_path: Path) -> None:
    url = f"redis+cluster://:s3cr3t@127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    done = subprocess.run(
        server_command(*LOCAL_PORTS, *MODEL, "--session-store", url),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cr3t" not in done.stderr + done.stdout
    assert "no seed node of the session store's cluster answered" in done.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "name at least one seed node"),
        ("redis+cluster://:pw@host:port", "seed 'host:port' is not HOST:PORT"),
        ("redis+cluster://h:1?confirm=two", "confirm must be a number"),
        ("redis+cluster://h:1?replicas=1", "unknown option 'replicas'"),
    ],
)
def test_a_mistyped_cluster_url_is_refused_at_start(tmp_path: Path, url: str, message: str) -> None:
    done = subprocess.run(
        server_command(*LOCAL_PORTS, *MODEL, "--session-store", url),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert message in done.stderr
    assert ":pw@" not in done.stderr
