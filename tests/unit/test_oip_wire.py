"""The Open Inference Protocol's gRPC converters against protobuf itself: typed FP32 contents are
read from every encoding protobuf allows (packed, unpacked, split, among unknown fields) and
written byte for byte as protobuf writes them; raw contents round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lstm_server.core.errors import InvalidInput
from lstm_server.transport.oip import grpc_servicer as conv
from lstm_server.transport.oip import messages as oip
from lstm_server.transport.oip.tensors import InferResponse, Tensor
from tritonclient.grpc import service_pb2

from tests.helpers import length_delimited, tag, varint

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
floats = st.lists(st.floats(width=32, allow_nan=False), max_size=64).map(
    lambda v: np.array(v, np.float32)
)

CONTENTS = 5  # ModelInferRequest.InferInputTensor.contents
FP32 = 6  # InferTensorContents.fp32_contents
INPUTS = 5  # ModelInferRequest.inputs


def _tensor_header(n: int) -> bytes:
    return (
        length_delimited(1, b"x")
        + length_delimited(2, b"FP32")
        + length_delimited(3, b"".join(varint(d) for d in (1, n, 1)))
    )


def _request(contents: bytes, n: int) -> bytes:
    tensor = _tensor_header(n) + length_delimited(CONTENTS, contents)
    return length_delimited(1, b"m") + length_delimited(INPUTS, tensor)


def _read(data: bytes) -> np.ndarray:
    request = conv.request_in(oip.ModelInferRequest.FromString(data))
    [tensor] = request.inputs
    return tensor.data


@PROPERTY
@given(floats)
def test_typed_floats_are_read_from_every_encoding(values: np.ndarray) -> None:
    written = service_pb2.ModelInferRequest(model_name="m")
    tensor = written.inputs.add(name="x", datatype="FP32", shape=[1, values.size, 1])
    tensor.contents.fp32_contents.extend(values.tolist())
    packed = written.SerializeToString()
    unpacked = b"".join(tag(FP32, 5) + v.tobytes() for v in values)
    half = values.size // 2
    split = length_delimited(FP32, values[:half].tobytes()) + length_delimited(
        FP32, values[half:].tobytes()
    )
    unknown = length_delimited(99, b"ignored") + split + tag(98, 0) + varint(7)
    for data in (packed, _request(unpacked, values.size), _request(split, values.size),
                 _request(unknown, values.size)):  # fmt: skip
        np.testing.assert_array_equal(_read(data), values)


@PROPERTY
@given(floats)
def test_typed_replies_are_what_protobuf_writes(values: np.ndarray) -> None:
    response = InferResponse("m", "v", "id", [Tensor("y", "FP32", (values.size,), values)])
    mine = conv.response_out(response, raw=False).SerializeToString()
    theirs = service_pb2.ModelInferResponse(model_name="m", model_version="v", id="id")
    out = theirs.outputs.add(name="y", datatype="FP32", shape=[values.size])
    out.contents.fp32_contents.extend(values.tolist())
    assert mine == theirs.SerializeToString()
    parsed = service_pb2.ModelInferResponse.FromString(mine)
    np.testing.assert_array_equal(
        np.array(parsed.outputs[0].contents.fp32_contents, np.float32), values
    )


@PROPERTY
@given(floats)
def test_raw_contents_round_trip_bit_for_bit(values: np.ndarray) -> None:
    written = service_pb2.ModelInferRequest(model_name="m")
    written.inputs.add(name="x", datatype="FP32", shape=[values.size])
    written.raw_input_contents.append(values.tobytes())
    assert _read(written.SerializeToString()).tobytes() == values.tobytes()
    response = InferResponse("m", "v", "", [Tensor("y", "FP32", (values.size,), values)])
    raw = conv.response_out(response, raw=True).SerializeToString()
    assert service_pb2.ModelInferResponse.FromString(raw).raw_output_contents[0] == values.tobytes()


def test_values_outside_the_datatypes_field_are_refused() -> None:
    written = service_pb2.ModelInferRequest(model_name="m")
    tensor = written.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.int64_contents.append(3)
    with pytest.raises(InvalidInput, match=r"contents\.int64_contents; a FP32 tensor's are in"):
        _read(written.SerializeToString())


def test_parameters_keep_their_types() -> None:
    written = service_pb2.ModelInferRequest(model_name="m")
    written.parameters["sequence_id"].string_param = "s-1"
    written.parameters["sequence_start"].bool_param = True
    written.parameters["lstm_step_number"].int64_param = 4
    written.parameters["ratio"].double_param = 0.5
    request = conv.request_in(oip.ModelInferRequest.FromString(written.SerializeToString()))
    assert request.parameters == {
        "sequence_id": "s-1",
        "sequence_start": True,
        "lstm_step_number": 4,
        "ratio": 0.5,
    }
