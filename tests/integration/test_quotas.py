"""Budgets and quotas: a memory budget for held sessions, per-principal caps on live sessions and
on calls in flight, a cap on health watches, and the smaller limits on what a caller may send."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_client import LstmClient, LstmError
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc
from lstm_server.app import load_runtime

from tests.helpers import seq_msg
from tests.servers import ThreadedServer, settings

TOKENS = "alice alice-token\nbob bob-token\n"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(TOKENS)
    return path


def test_the_memory_budget_refuses_what_would_exceed_it_and_frees_on_close(rng) -> None:
    # 4 units: a session holds 32 bytes of state, 1 KiB of allowance, and 16 bytes per timestep
    # of its last step's outputs, kept for a retry.
    server = ThreadedServer(settings(features=1, units=4, session_memory_budget=8 * 1024))
    try:
        with LstmClient(server.target) as client:
            held = [client.session() for _ in range(7)]
            with pytest.raises(LstmError) as full:
                client.session()
            assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "memory budget of 8192 bytes" in full.value.details
            with pytest.raises(LstmError) as big_step:
                held[0].step(np.zeros((200, 1)))  # 3.2 KB of outputs to keep
            assert big_step.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert held[0].refresh().step_count == 0  # refused whole: nothing applied
            held[0].step(np.zeros((5, 1)))
            assert held[0].step_count == 1
            held[1].close()
            client.session().close()  # room again
            meta = client.metadata()
            assert meta.limits["session_memory_budget"] == 8 * 1024
    finally:
        server.stop()


def test_one_principal_cannot_take_every_session(tokens: Path) -> None:
    server = ThreadedServer(
        settings(auth_tokens_file=tokens, max_sessions=10, max_sessions_per_principal=3)
    )
    try:
        with (
            LstmClient(server.target, token="alice-token") as alice,
            LstmClient(server.target, token="bob-token") as bob,
        ):
            mine = [alice.session() for _ in range(3)]
            with pytest.raises(LstmError) as capped:
                alice.session()
            assert capped.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "principal 'alice' holds its maximum of 3 sessions" in capped.value.details
            bob.session().close()  # bob is not locked out
            mine[0].close()
            alice.session()
    finally:
        server.stop()


def test_with_tokens_each_principal_gets_a_fair_share_by_default(tokens: Path) -> None:
    """Two principals, no per-principal caps set: each may hold half of the sessions and half
    of the session memory, so one cannot lock the other out; ``--no-fair-share`` turns it off."""
    budget = 16 * 1024  # 4 units: a session holds about 1 KiB
    server = ThreadedServer(
        settings(auth_tokens_file=tokens, max_sessions=8, units=4, session_memory_budget=budget)
    )
    try:
        with (
            LstmClient(server.target, token="alice-token") as alice,
            LstmClient(server.target, token="bob-token") as bob,
        ):
            limits = alice.metadata().limits
            assert limits["max_sessions_per_principal"] == 4
            assert limits["session_memory_per_principal"] == budget // 2
            assert limits["max_concurrent_rpcs_per_principal"] == 512
            mine = [alice.session() for _ in range(4)]
            with pytest.raises(LstmError) as capped:
                alice.session()
            assert capped.value.metadata["limit"] == "max_sessions_per_principal"
            with pytest.raises(LstmError) as full:  # 5 KB of outputs kept: past alice's half
                mine[0].step(np.zeros((300, 1)))
            assert full.value.metadata["limit"] == "session_memory_per_principal"
            theirs = bob.session()
            assert theirs.step(np.zeros((300, 1))).step_number == 1  # bob's half is his
    finally:
        server.stop()
    unshared = ThreadedServer(settings(auth_tokens_file=tokens, max_sessions=8, fair_share=False))
    try:
        with LstmClient(unshared.target, token="alice-token") as alice:
            assert alice.metadata().limits["max_sessions_per_principal"] == 0
            held = [alice.session() for _ in range(8)]
            assert len(held) == 8
    finally:
        unshared.stop()


class HeldRuntime:
    """The real runtime behind a gate the test opens: calls stay in flight until then."""

    def __init__(self) -> None:
        self._runtime = load_runtime(settings().runtime)
        self.info = self._runtime.info
        self.gate = threading.Event()

    def runs_inline(self, rows: int, timesteps: int) -> bool:
        return False

    def runs_briefly(self, rows: int, timesteps: int) -> bool:
        return False  # held calls stay on the worker's thread, not the event loop

    def run(self, x, lengths, h0, c0):  # type: ignore[no-untyped-def]
        self.gate.wait(timeout=30)
        return self._runtime.run(x, lengths, h0, c0)

    def close(self) -> None:
        self._runtime.close()


def test_one_principal_cannot_take_every_call(tokens: Path) -> None:
    runtime = HeldRuntime()
    server = ThreadedServer.with_runtime(
        settings(auth_tokens_file=tokens, max_concurrent_rpcs_per_principal=2, batching=False),
        runtime,
    )
    try:
        with (
            LstmClient(server.target, token="alice-token", timeout=30) as alice,
            LstmClient(server.target, token="bob-token", timeout=30) as bob,
        ):
            held = [threading.Thread(target=alice.predict, args=([[0.5]],)) for _ in range(2)]
            for thread in held:
                thread.start()
            time.sleep(0.5)  # both of alice's calls are in flight, held at the gate
            with pytest.raises(LstmError) as capped:
                alice.predict([[0.5]])
            assert capped.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "principal 'alice' is at its limit of 2 concurrent calls" in (
                capped.value.details
            )
            bob_call = threading.Thread(target=bob.predict, args=([[0.5]],))
            bob_call.start()  # bob is not refused: his call waits for the model like any other
            time.sleep(0.2)
            runtime.gate.set()
            bob_call.join(timeout=30)
            for thread in held:
                thread.join(timeout=30)
            assert alice.predict([[0.5]]).sequence.shape == (1, 1)  # places freed
    finally:
        runtime.gate.set()
        server.stop()


def test_health_watches_are_capped() -> None:
    server = ThreadedServer(settings(max_health_watches=2))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watches.append(stub.Watch(health_pb2.HealthCheckRequest()))
            with pytest.raises(grpc.RpcError) as capped:
                next(watches[2])
            assert capped.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 2 health watches" in capped.value.details()
            check = stub.Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING  # checks still answer
            watches[0].cancel()
            deadline = time.monotonic() + 5
            while True:  # a place frees once a watch ends
                again = stub.Watch(health_pb2.HealthCheckRequest())
                try:
                    assert next(again).status == health_pb2.HealthCheckResponse.SERVING
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            again.cancel()
            watches[1].cancel()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain() -> Iterator[pb_grpc.LstmServiceStub]:
    server = ThreadedServer(settings())
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.LstmServiceStub(channel)
    server.stop()


@pytest.mark.parametrize("session_id", ["x" * 16384, "has spaces", "é" * 10])
def test_a_session_id_that_cannot_be_one_is_refused_without_echo(plain, session_id: str) -> None:
    for call in (
        lambda: plain.GetSession(pb.GetSessionRequest(session_id=session_id)),
        lambda: plain.Step(
            pb.StepRequest(session_id=session_id, input=seq_msg(np.ones((1, 1))), step_number=1)
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "session_id: is not a session id" in refused.value.details()
        assert session_id not in refused.value.details()
        assert len(refused.value.details()) < 200
