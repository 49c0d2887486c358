"""Malformed requests get INVALID_ARGUMENT naming the field, and the server keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from lstm_client import LstmClient, LstmError
from lstm_client.v1 import lstm_service_pb2 as pb

from tests.helpers import seq_msg, state_msg

GOOD = np.linspace(-1, 1, 8 * 3, dtype=np.float32).reshape(3, 8)
ZEROS16 = np.zeros(16, np.float32)


def _bad_values(value: float) -> pb.Sequence:
    x = GOOD.copy()
    x[1, 5] = value
    return seq_msg(x)


CASES = {
    "wrong feature count": (
        pb.PredictRequest(
            sequences=[
                pb.Sequence(timesteps=[pb.Vector(values=[1.0] * 8), pb.Vector(values=[1.0] * 7)])
            ]
        ),
        "sequences[0].timesteps[1].values",
        "expected input_features=8",
    ),
    "empty batch": (pb.PredictRequest(), "sequences", "is empty"),
    "empty sequence": (
        pb.PredictRequest(sequences=[seq_msg(GOOD), pb.Sequence()]),
        "sequences[1].timesteps",
        "at least one timestep",
    ),
    "NaN": (
        pb.PredictRequest(sequences=[_bad_values(np.nan)]),
        "sequences[0].timesteps[1].values",
        "NaN",
    ),
    "infinity": (
        pb.PredictRequest(sequences=[_bad_values(np.inf)]),
        "sequences[0].timesteps[1].values",
        "infinite",
    ),
    "state count": (
        pb.PredictRequest(
            sequences=[seq_msg(GOOD)] * 3,
            initial_states=[state_msg(ZEROS16, ZEROS16)] * 2,
        ),
        "initial_states",
        "one per sequence (3)",
    ),
    "h size": (
        pb.PredictRequest(
            sequences=[seq_msg(GOOD)], initial_states=[state_msg(np.zeros(15), ZEROS16)]
        ),
        "initial_states[0].h.values",
        "expected units=16",
    ),
    "c size": (
        pb.PredictRequest(
            sequences=[seq_msg(GOOD)], initial_states=[state_msg(ZEROS16, np.zeros(17))]
        ),
        "initial_states[0].c.values",
        "has 17 values",
    ),
    "c missing": (
        pb.PredictRequest(
            sequences=[seq_msg(GOOD)], initial_states=[pb.LstmState(h=pb.Vector(values=ZEROS16))]
        ),
        "initial_states[0].c.values",
        "has 0 values",
    ),
    "NaN in state": (
        pb.PredictRequest(
            sequences=[seq_msg(GOOD)],
            initial_states=[state_msg(np.full(16, np.nan), ZEROS16)],
        ),
        "initial_states[0].h.values",
        "NaN",
    ),
    "too many timesteps": (
        pb.PredictRequest(sequences=[seq_msg(np.zeros((10_001, 8)))]),
        "sequences[0].timesteps",
        "more than the limit 10000",
    ),
    "too many sequences": (
        pb.PredictRequest(sequences=[seq_msg(GOOD)] * 65),
        "sequences",
        "more than the limit 64",
    ),
}


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry a google.rpc.Status"
    found = []
    reasons = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reasons.append(info.reason)
            continue
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        found += [(v.field, v.description) for v in bad.field_violations]
    assert reasons == ["INVALID_INPUT"]
    return found


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rpc", ["Predict", "PredictStream"])
def test_bad_predict_request(stub, case: str, rpc: str) -> None:
    request, field, words = CASES[case]
    call = stub.Predict if rpc == "Predict" else lambda r: list(stub.PredictStream(r))
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()
    assert words in error.details()
    assert any(f == field and words in d for f, d in _violations(error))
    # and the server keeps serving
    assert len(stub.Predict(pb.PredictRequest(sequences=[seq_msg(GOOD)])).outputs) == 1


def test_every_violation_is_reported(stub) -> None:
    request = pb.PredictRequest(sequences=[_bad_values(np.nan), pb.Sequence(), _bad_values(np.inf)])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request)
    fields = [f for f, _ in _violations(caught.value)]
    assert fields == [
        "sequences[0].timesteps[1].values",
        "sequences[1].timesteps",
        "sequences[2].timesteps[1].values",
    ]


def test_sdk_exposes_violations(client: LstmClient) -> None:
    with pytest.raises(LstmError) as caught:
        client.predict(np.zeros((2, 5)))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.violations] == [
        "sequences[0].timesteps[0].values",
        "sequences[0].timesteps[1].values",
    ]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            pb.CreateSessionRequest(initial_state=state_msg(np.zeros(3), ZEROS16)),
            "initial_state.h.values",
        ),
        (pb.CreateSessionRequest(ttl_seconds=10**9), "ttl_seconds"),
    ],
)
def test_bad_create_session(stub, request_, field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateSession(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


def test_bad_step_leaves_the_session_unchanged(stub) -> None:
    session = stub.CreateSession(pb.CreateSessionRequest())
    bad_inputs = [pb.Sequence(), _bad_values(np.nan), seq_msg(np.zeros((2, 3)))]
    for bad in bad_inputs:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Step(pb.StepRequest(session_id=session.session_id, input=bad, step_number=1))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input.timesteps" in caught.value.details()
    after = stub.GetSession(pb.GetSessionRequest(session_id=session.session_id))
    assert after.step_count == 0
    assert list(after.state.h.values) == [0.0] * 16
    assert (
        stub.Step(
            pb.StepRequest(session_id=session.session_id, input=seq_msg(GOOD), step_number=1)
        ).step_number
        == 1
    )


def test_empty_session_id(stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetSession(pb.GetSessionRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "session_id" in caught.value.details()
