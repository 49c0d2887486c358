"""Sessions of a stacked model with an output layer carry every layer's state through the stores:
two replicas on one real Redis, and the memory store's snapshot across a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lstm_client import LstmClient
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from tests import zoo
from tests.redis_server import RedisServer
from tests.servers import ThreadedServer, settings

ATOL = 1e-5


def _layer_states(states) -> pb.LayerStates:  # type: ignore[no-untyped-def]
    return pb.LayerStates(
        layers=[
            pb.LstmState(h=pb.Vector(values=s.h.tolist()), c=pb.Vector(values=s.c.tolist()))
            for s in states
        ]
    )


def test_steps_alternate_between_replicas_on_redis_and_retries_replay(tmp_path: Path, rng) -> None:
    path = zoo.save("masked_stack", tmp_path, seed=4)
    redis = RedisServer(tmp_path)
    servers = [ThreadedServer(settings(model=path, session_store=redis.url)) for _ in range(2)]
    try:
        with LstmClient(servers[0].target) as a, LstmClient(servers[1].target) as b:
            x = rng.normal(size=(8, zoo.F)).astype(np.float32)
            x[3] = 0.0  # a masked timestep
            start = a.predict(rng.normal(size=(3, zoo.F)).astype(np.float32))
            whole = a.predict(x, initial_state=start.state, include=["outputs", "layer_hidden"])
            sid = a.session(initial_state=start.state).session_id
            stubs = [pb_grpc.LstmServiceStub(c._channel) for c in (a, b)]
            outputs = []
            for n in range(8):
                request = pb.StepRequest(
                    session_id=sid,
                    input=pb.Sequence(timesteps=[pb.Vector(values=x[n].tolist())]),
                    step_number=n + 1,
                    include=[pb.OUTPUT_MODEL, pb.OUTPUT_LAYER_HIDDEN],
                )
                reply = stubs[n % 2].Step(request)
                retried = stubs[(n + 1) % 2].Step(request)  # the other replica answers the retry
                assert retried == reply
                outputs.append([v.values for v in reply.outputs])
                assert len(reply.layer_hidden) == 2
                assert len(reply.layer_states.layers) == 2
            np.testing.assert_allclose(np.concatenate(outputs), whole.outputs, atol=ATOL)
            exported = b.attach(sid).info.states
            for mine, theirs in zip(exported, whole.states, strict=True):
                np.testing.assert_allclose(mine.h, theirs.h, atol=ATOL)
                np.testing.assert_allclose(mine.c, theirs.c, atol=ATOL)
    finally:
        for server in servers:
            server.stop()
        redis.stop()


def test_a_snapshot_keeps_every_layer_state_across_a_restart(tmp_path: Path, rng) -> None:
    path = zoo.save("three_layers", tmp_path, seed=6)
    config = settings(model=path, session_snapshot=tmp_path / "sessions.json")
    x = rng.normal(size=(6, zoo.F)).astype(np.float32)
    server = ThreadedServer(config)
    try:
        with LstmClient(server.target) as client:
            whole = client.predict(x)
            session = client.session()
            session.step(x[:4])
            sid = session.session_id
    finally:
        server.stop()
    server = ThreadedServer(config)
    try:
        with LstmClient(server.target) as client:
            session = client.attach(sid)
            assert len(session.states) == 3
            tail = session.step(x[4:])
            np.testing.assert_allclose(tail.outputs, whole.outputs[4:], atol=ATOL)
            for mine, theirs in zip(tail.states, whole.states, strict=True):
                np.testing.assert_allclose(mine.c, theirs.c, atol=ATOL)
    finally:
        server.stop()
