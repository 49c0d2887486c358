"""Property tests: random shapes, values, field combinations and raw bytes to every RPC get only
documented status codes, the server stays up, and valid requests keep returning the reference."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lstm_client.v1 import lstm_service_pb2 as pb

from tests.helpers import seq_msg

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
PROBE = np.linspace(-1, 1, 3 * 8, dtype=np.float32).reshape(3, 8)

values = st.floats(width=32, allow_nan=True, allow_infinity=True)
vectors = st.builds(pb.Vector, values=st.lists(values, max_size=10))
sequences = st.builds(pb.Sequence, timesteps=st.lists(vectors, max_size=5))
states = st.builds(pb.LstmState, h=vectors, c=vectors) | st.just(pb.LstmState())
predict_requests = st.builds(
    pb.PredictRequest,
    sequences=st.lists(sequences, max_size=4),
    initial_states=st.lists(states, max_size=4),
    timesteps_per_message=st.integers(0, 2**32 - 1),
)
session_ids = st.text(max_size=40) | st.just("0" * 32)
step_numbers = st.integers(0, 2**64 - 1)


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
def probe(stub, wide_reference):
    """A valid request whose answer is checked against the reference after each example."""

    def check() -> None:
        out = stub.Predict(pb.PredictRequest(sequences=[seq_msg(PROBE)])).outputs[0]
        got = np.array([v.values for v in out.hidden_sequence])
        np.testing.assert_allclose(got, wide_reference.run(PROBE)[0], atol=1e-5)

    return check


@FUZZ
@given(request=predict_requests)
def test_predict_and_stream(stub, probe, request: pb.PredictRequest) -> None:
    assert code_of(lambda: stub.Predict(request)) in DOCUMENTED
    assert code_of(lambda: list(stub.PredictStream(request))) in DOCUMENTED
    probe()


@FUZZ
@given(
    initial=states | st.none(),
    ttl=st.integers(0, 2**32 - 1),
    step=st.builds(pb.Sequence, timesteps=st.lists(vectors, max_size=3)),
    number=step_numbers,
    other_id=session_ids,
)
def test_session_rpcs(stub, probe, initial, ttl, step, number, other_id) -> None:
    create = pb.CreateSessionRequest(ttl_seconds=ttl)
    if initial is not None:
        create.initial_state.CopyFrom(initial)
    created: list[pb.Session] = []
    assert code_of(lambda: created.append(stub.CreateSession(create))) in DOCUMENTED
    sid = created[0].session_id if created else other_id
    calls = [
        lambda: stub.Step(pb.StepRequest(session_id=sid, input=step, step_number=number)),
        lambda: stub.Step(pb.StepRequest(session_id=other_id, input=step, step_number=number)),
        lambda: stub.GetSession(pb.GetSessionRequest(session_id=other_id)),
        lambda: stub.ResetSession(pb.ResetSessionRequest(session_id=sid, state=initial)),
        lambda: list(
            stub.StreamSession(
                iter(
                    [
                        pb.SessionStreamRequest(open=pb.OpenSession(resume_session_id=sid)),
                        pb.SessionStreamRequest(
                            step=pb.SessionStep(input=step, step_number=number)
                        ),
                    ]
                )
            )
        ),
        lambda: stub.CloseSession(pb.CloseSessionRequest(session_id=sid)),
    ]
    for call in calls:
        assert code_of(call) in DOCUMENTED
    probe()


METHODS = pb.DESCRIPTOR.services_by_name["LstmService"].methods


@FUZZ
@given(payload=st.binary(max_size=200), index=st.integers(0, len(METHODS) - 1))
def test_raw_bytes(wide_server, probe, payload: bytes, index: int) -> None:
    method = METHODS[index]
    with grpc.insecure_channel(wide_server.target) as channel:
        path = f"/lstm.v1.LstmService/{method.name}"
        if method.client_streaming:
            call = (
                channel.stream_stream(path)
                if method.server_streaming
                else channel.stream_unary(path)
            )
            request = iter([payload, payload])
        else:
            call = (
                channel.unary_stream(path) if method.server_streaming else channel.unary_unary(path)
            )
            request = payload

        def invoke() -> None:
            reply = call(request, timeout=10)
            if method.server_streaming:
                list(reply)

        assert code_of(invoke) in DOCUMENTED
    probe()
