"""Graceful shutdown of the real process, and sessions that survive a restart."""

from __future__ import annotations

import queue
import signal
import threading
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lstm_client import LstmClient
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests.helpers import seq_msg
from tests.reference import NumpyLstm
from tests.servers import ServerProcess


def test_sigterm_drains_in_flight_calls_refuses_new_ones_and_exits_zero(tmp_path: Path) -> None:
    server = ServerProcess(["--features", "8", "--units", "16", "--grace", "20"], log_dir=tmp_path)
    statuses: queue.SimpleQueue[int] = queue.SimpleQueue()
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

        def follow() -> None:
            try:
                for reply in watch:
                    statuses.put(reply.status)
            except grpc.RpcError:
                pass

        threading.Thread(target=follow, daemon=True).start()
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.LstmServiceStub(channel)
        request = pb.PredictRequest(
            sequences=[seq_msg(np.ones((3000, 8)))], timesteps_per_message=1
        )
        stream = stub.PredictStream(request)
        first = next(stream)
        server.process.send_signal(signal.SIGTERM)
        assert statuses.get(timeout=10) == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(server.target) as fresh:
            try:
                pb_grpc.LstmServiceStub(fresh).GetModelMetadata(
                    pb.GetModelMetadataRequest(), timeout=5
                )
                refused = None
            except grpc.RpcError as error:
                refused = error.code()
        rest = list(stream)  # the call in flight finishes
        watch.cancel()
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert first.start_timestep == 0
    assert len(rest) == 2999
    assert rest[-1].HasField("final_state")
    assert server.process.wait(timeout=30) == 0, server.log()
    assert "stopped" in server.log()


def test_sessions_survive_a_restart_with_a_snapshot(tmp_path: Path, rng) -> None:
    snapshot = tmp_path / "sessions.json"
    model = tmp_path / "model.keras"
    args = ["--features", "4", "--units", "8", "--session-snapshot", str(snapshot)]
    x = rng.normal(size=(6, 4)).astype(np.float32)
    first = ServerProcess([*args, "--save-model", str(model)], log_dir=tmp_path)
    with LstmClient(first.target) as client:
        sessions = [client.session(), client.session(ttl=600)]
        early = [[s.step(x[:2]).sequence, s.step(x[2:3]).sequence] for s in sessions]
        ids = [s.session_id for s in sessions]
    assert first.stop(signal.SIGTERM) == 0, first.log()
    assert snapshot.exists()

    second = ServerProcess(args, log_dir=tmp_path)
    try:
        reference = NumpyLstm.from_saved_model(model)
        with LstmClient(second.target) as client, grpc.insecure_channel(second.target) as channel:
            assert "restored 2 sessions" in second.log()
            stub = pb_grpc.LstmServiceStub(channel)
            for sid, outputs in zip(ids, early, strict=True):
                session = client.attach(sid)
                assert session.step_count == 2
                # a retry of the last step before the restart still gets its reply, unapplied
                retry = stub.Step(
                    pb.StepRequest(session_id=sid, input=seq_msg(x[2:3]), step_number=2)
                )
                np.testing.assert_array_equal([v.values for v in retry.hidden_sequence], outputs[1])
                outputs.append(session.step(x[3:]).sequence)
                assert session.step_count == 3
                seq, h, c = reference.run(x)
                np.testing.assert_allclose(np.concatenate(outputs), seq, atol=1e-5)
                np.testing.assert_allclose(session.state[0], h, atol=1e-5)
                np.testing.assert_allclose(session.state[1], c, atol=1e-5)
    finally:
        second.stop()
