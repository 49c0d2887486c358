"""The Open Inference Protocol (KServe V2) over gRPC and HTTP, driven by the real ``tritonclient``
(sync, asyncio, streaming), plain protobuf stubs (typed contents) and ``curl``: results equal
lstm.v1 Predict and the numpy reference; sequences are sessions; bad tensors get
INVALID_ARGUMENT / HTTP 400 with the protocol's error body, and the server goes on serving."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from lstm_client import LstmClient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests import zoo
from tests.conftest import reference_of
from tests.helpers import scrape, value
from tests.reference import NumpyLstm
from tests.servers import ThreadedServer, free_port, settings

F, U = 8, 16
ATOL = 1e-5


class Oip:
    """A server with both bindings, its model's name and the numpy reference."""

    def __init__(
        self, server: ThreadedServer, reference: NumpyLstm | None = None, token: str | None = None
    ) -> None:
        self.server = server
        self.reference = reference
        self.http = f"127.0.0.1:{server.server.http_port}"
        self.metrics = f"http://127.0.0.1:{server.server.metrics_server.port}/metrics"
        with LstmClient(server.target, token=token) as client:
            self.name = client.metadata().name
        self.grpc = triton_grpc.InferenceServerClient(server.target)
        self.rest = triton_http.InferenceServerClient(self.http)

    def close(self) -> None:
        self.grpc.close()
        self.rest.close()
        self.server.stop()


@pytest.fixture(scope="module")
def oip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oip]:
    saved = tmp_path_factory.mktemp("models") / "oip.keras"
    server = ThreadedServer(
        settings(
            features=F,
            units=U,
            seed=5,
            save_model=saved,
            http_port=free_port(),
            metrics_port=free_port(),
        )
    )
    made = Oip(server, reference_of(server))
    yield made
    made.close()


def _grpc_input(name: str, array: np.ndarray, datatype: str = "FP32") -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _http_input(
    name: str, array: np.ndarray, datatype: str = "FP32", binary: bool = True
) -> triton_http.InferInput:
    tensor = triton_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _reference(oip: Oip, x: np.ndarray, h0=None, c0=None):  # type: ignore[no-untyped-def]
    assert oip.reference is not None
    return oip.reference.run(x, h0, c0)


# Metadata and health


def test_health_and_metadata_over_both_bindings(oip: Oip) -> None:
    for client in (oip.grpc, oip.rest):
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(oip.name)
        assert not client.is_model_ready("another-model")
    server = oip.grpc.get_server_metadata(as_json=True)
    assert server["name"] == "lstm-serving"
    assert "sequence" in server["extensions"]
    assert oip.rest.get_server_metadata()["extensions"] == server["extensions"]
    rest = oip.rest.get_model_metadata(oip.name)
    assert rest == oip.grpc.get_model_metadata(oip.name, as_json=True) | {
        "inputs": rest["inputs"],
        "outputs": rest["outputs"],
    }
    assert rest["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, -1, F]},
        {"name": "lengths", "datatype": "INT32", "shape": [-1]},
        {"name": "h0", "datatype": "FP32", "shape": [-1, U]},
        {"name": "c0", "datatype": "FP32", "shape": [-1, U]},
    ]
    assert [o["name"] for o in rest["outputs"]] == ["sequence", "state_h", "state_c"]
    grpc_shapes = [
        [int(d) for d in o["shape"]]
        for o in oip.grpc.get_model_metadata(oip.name, as_json=True)["outputs"]
    ]
    assert grpc_shapes == [[-1, -1, U], [-1, U], [-1, U]]
    version = rest["versions"][0]
    assert oip.rest.get_model_metadata(oip.name, model_version=version)["name"] == oip.name
    for client in (oip.grpc, oip.rest):
        with pytest.raises(InferenceServerException, match="unknown model: 'nope'"):
            client.get_model_metadata("nope")


# Inference: equal to lstm.v1 and to the reference


def test_grpc_infer_of_ragged_rows_with_states_equals_predict_and_reference(oip: Oip, rng) -> None:
    x = rng.normal(size=(3, 9, F)).astype(np.float32)
    lengths = np.array([9, 5, 1], np.int32)
    h0, c0 = (rng.normal(size=(3, U)).astype(np.float32) for _ in range(2))
    result = oip.grpc.infer(
        oip.name,
        [
            _grpc_input("x", x),
            _grpc_input("lengths", lengths, "INT32"),
            _grpc_input("h0", h0),
            _grpc_input("c0", c0),
        ],
    )
    sequence = result.as_numpy("sequence")
    assert sequence.shape == (3, 9, U)
    with LstmClient(oip.server.target) as client:
        rows = [x[i, : lengths[i]] for i in range(3)]
        predicted = client.predict_many(rows, initial_states=list(zip(h0, c0, strict=True)))
    for i, (row, mine) in enumerate(zip(rows, predicted, strict=True)):
        seq, h, c = _reference(oip, row, h0[i], c0[i])
        np.testing.assert_allclose(sequence[i, : lengths[i]], seq, atol=ATOL)
        np.testing.assert_array_equal(sequence[i, lengths[i] :], 0.0)  # past the row's end
        np.testing.assert_allclose(sequence[i, : lengths[i]], mine.sequence, atol=ATOL)
        np.testing.assert_allclose(result.as_numpy("state_h")[i], h, atol=ATOL)
        np.testing.assert_allclose(result.as_numpy("state_c")[i], c, atol=ATOL)
        np.testing.assert_allclose(result.as_numpy("state_h")[i], mine.h, atol=ATOL)


def test_requested_outputs_only_come_back(oip: Oip, rng) -> None:
    x = rng.normal(size=(1, 4, F)).astype(np.float32)
    wanted = [triton_grpc.InferRequestedOutput("state_c")]
    result = oip.grpc.infer(oip.name, [_grpc_input("x", x)], outputs=wanted)
    assert [o.name for o in result.get_response().outputs] == ["state_c"]
    np.testing.assert_allclose(result.as_numpy("state_c")[0], _reference(oip, x[0])[2], atol=ATOL)
    http = oip.rest.infer(
        oip.name, [_http_input("x", x)], outputs=[triton_http.InferRequestedOutput("state_h")]
    )
    assert [o["name"] for o in http.get_response()["outputs"]] == ["state_h"]


def test_typed_contents_in_and_out_over_plain_stubs(oip: Oip, rng) -> None:
    """Typed ``fp32_contents`` (as any protobuf client writes them) get typed contents back."""
    x = rng.normal(size=(2, 6, F)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name=oip.name, id="typed-1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(oip.server.target) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert reply.id == "typed-1"
    assert not reply.raw_output_contents
    outputs = {o.name: o for o in reply.outputs}
    sequence = np.array(outputs["sequence"].contents.fp32_contents, np.float32)
    assert list(outputs["sequence"].shape) == [2, 6, U]
    raw = oip.grpc.infer(oip.name, [_grpc_input("x", x)])
    np.testing.assert_array_equal(sequence.reshape(2, 6, U), raw.as_numpy("sequence"))
    np.testing.assert_allclose(sequence.reshape(2, 6, U)[1], _reference(oip, x[1])[0], atol=ATOL)


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_json_and_binary_tensors(oip: Oip, rng, binary: bool) -> None:
    x = rng.normal(size=(2, 7, F)).astype(np.float32)
    result = oip.rest.infer(
        oip.name,
        [_http_input("x", x, binary=binary)],
        outputs=[
            triton_http.InferRequestedOutput(name, binary_data=binary)
            for name in ("sequence", "state_h", "state_c")
        ],
    )
    raw = oip.grpc.infer(oip.name, [_grpc_input("x", x)])
    for name in ("sequence", "state_h", "state_c"):
        np.testing.assert_array_equal(result.as_numpy(name), raw.as_numpy(name))
    np.testing.assert_allclose(result.as_numpy("sequence")[0], _reference(oip, x[0])[0], atol=ATOL)


def test_asyncio_clients_of_both_bindings(oip: Oip, rng) -> None:
    x = rng.normal(size=(1, 5, F)).astype(np.float32)

    async def both() -> list[np.ndarray]:
        grpc_client = triton_grpc_aio.InferenceServerClient(oip.server.target)
        http_client = triton_http_aio.InferenceServerClient(oip.http)
        try:
            tensor = triton_grpc_aio.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            by_grpc = await grpc_client.infer(oip.name, [tensor])
            http_tensor = triton_http_aio.InferInput("x", list(x.shape), "FP32")
            http_tensor.set_data_from_numpy(x)
            by_http = await http_client.infer(oip.name, [http_tensor])
            return [by_grpc.as_numpy("sequence"), by_http.as_numpy("sequence")]
        finally:
            await grpc_client.close()
            await http_client.close()

    for sequence in asyncio.run(both()):
        np.testing.assert_allclose(sequence[0], _reference(oip, x[0])[0], atol=ATOL)


# Sequences


def _step_input(x: np.ndarray) -> list[triton_grpc.InferInput]:
    return [_grpc_input("x", x[None])]


@pytest.mark.parametrize("sequence_id", [41, "order-41"])
def test_a_sequence_stepped_request_by_request_equals_one_predict(
    oip: Oip, rng, sequence_id: int | str
) -> None:
    x = rng.normal(size=(7, F)).astype(np.float32)
    h0, c0 = (rng.normal(size=(1, U)).astype(np.float32) for _ in range(2))
    parts = [x[:2], x[2:3], x[3:6], x[6:]]
    outputs = []
    for n, part in enumerate(parts):
        inputs = _step_input(part)
        if n == 0:
            inputs += [_grpc_input("h0", h0), _grpc_input("c0", c0)]
        result = oip.grpc.infer(
            oip.name,
            inputs,
            sequence_id=sequence_id,
            sequence_start=n == 0,
            sequence_end=n == len(parts) - 1,
        )
        outputs.append(result.as_numpy("sequence")[0])
        parameters = result.get_response().parameters
        assert parameters["lstm_step_number"].int64_param == n + 1
    seq, h, c = _reference(oip, x, h0[0], c0[0])
    np.testing.assert_allclose(np.concatenate(outputs), seq, atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("state_h")[0], h, atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("state_c")[0], c, atol=ATOL)
    with pytest.raises(InferenceServerException, match="must specify the START flag") as ended:
        oip.grpc.infer(oip.name, _step_input(x[:1]), sequence_id=sequence_id)
    assert ended.value.status() == "StatusCode.NOT_FOUND"


def test_a_stream_of_sequence_requests_answers_each_in_order(oip: Oip, rng) -> None:
    x = rng.normal(size=(6, F)).astype(np.float32)
    answers: queue.Queue = queue.Queue()
    oip.grpc.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for t in range(6):
            oip.grpc.async_stream_infer(
                oip.name,
                _step_input(x[t : t + 1]),
                request_id=str(t),
                sequence_id=9001,
                sequence_start=t == 0,
                sequence_end=t == 5,
            )
            if t == 2:  # a bad request in the middle is answered in-band; the stream goes on
                oip.grpc.async_stream_infer(
                    oip.name, [_grpc_input("x", x[None, :1].astype(np.float64), "FP64")],
                    request_id="bad", sequence_id=9001,
                )  # fmt: skip
        got = [answers.get(timeout=30) for _ in range(7)]
    finally:
        oip.grpc.stop_stream()
    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1
    assert "data-type is 'FP64', but model" in errors[0].message()
    results = [result for result, error in got if error is None]
    assert [r.get_response().id for r in results] == [str(t) for t in range(6)]
    outputs = np.concatenate([r.as_numpy("sequence")[0] for r in results])
    np.testing.assert_allclose(outputs, _reference(oip, x)[0], atol=ATOL)


def test_http_sequence_with_a_string_id(oip: Oip, rng) -> None:
    x = rng.normal(size=(3, F)).astype(np.float32)
    outputs = []
    for t in range(3):
        result = oip.rest.infer(
            oip.name,
            [_http_input("x", x[None, t : t + 1])],
            sequence_id="http-seq",
            sequence_start=t == 0,
            sequence_end=t == 2,
        )
        outputs.append(result.as_numpy("sequence")[0])
    np.testing.assert_allclose(np.concatenate(outputs), _reference(oip, x)[0], atol=ATOL)


def test_a_retried_request_with_its_step_number_is_answered_once(oip: Oip, rng) -> None:
    x = rng.normal(size=(3, F)).astype(np.float32)

    def step(t: int, number: int, start: bool = False):  # type: ignore[no-untyped-def]
        return oip.grpc.infer(
            oip.name,
            _step_input(x[t : t + 1]),
            sequence_id=77,
            sequence_start=start,
            parameters={"lstm_step_number": number},
        )

    first = step(0, 1, start=True)
    again = step(0, 1, start=True)  # a retried start: answered from the session, not restarted
    np.testing.assert_array_equal(first.as_numpy("sequence"), again.as_numpy("sequence"))
    second = step(1, 2)
    retried = step(1, 2)
    np.testing.assert_array_equal(second.as_numpy("sequence"), retried.as_numpy("sequence"))
    third = step(2, 3)
    np.testing.assert_allclose(
        third.as_numpy("sequence")[0, 0], _reference(oip, x)[0][2], atol=ATOL
    )
    with pytest.raises(InferenceServerException, match="expects step_number 4") as skipped:
        step(0, 6)
    assert skipped.value.status() == "StatusCode.FAILED_PRECONDITION"
    with pytest.raises(InferenceServerException, match="starts a sequence is its step 1"):
        step(0, 2, start=True)  # refused before the sequence is touched
    assert step(2, 3).get_response().parameters["lstm_step_number"].int64_param == 3


def test_a_retried_end_request_gets_its_reply_and_the_sequence_stays_ended(oip: Oip, rng) -> None:
    x = rng.normal(size=(2, F)).astype(np.float32)

    def step(t: int, number: int, **flags: bool):  # type: ignore[no-untyped-def]
        return oip.grpc.infer(
            oip.name,
            _step_input(x[t : t + 1]),
            sequence_id=78,
            parameters={"lstm_step_number": number},
            **flags,
        )

    step(0, 1, sequence_start=True)
    ended = step(1, 2, sequence_end=True)
    again = step(1, 2, sequence_end=True)  # its reply was lost: the retry gets it
    np.testing.assert_array_equal(ended.as_numpy("sequence"), again.as_numpy("sequence"))
    np.testing.assert_allclose(again.as_numpy("state_h")[0], _reference(oip, x)[1], atol=ATOL)
    with pytest.raises(InferenceServerException, match="START flag") as other_input:
        step(0, 2, sequence_end=True)  # another input is not a retry
    assert other_input.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="START flag"):
        step(1, 3)  # the sequence is still ended


@pytest.mark.parametrize("sequence", [2**63, 2**64 - 1])
def test_sequence_ids_over_the_whole_uint64_range(oip: Oip, rng, sequence: int) -> None:
    """Past int64's range a sequence id travels as uint64_param; the reply echoes it so."""
    x = rng.normal(size=(2, F)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name=oip.name)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1, F])
    request.parameters["sequence_id"].uint64_param = sequence
    replies = []
    with grpc.insecure_channel(oip.server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for t in range(2):
            del request.raw_input_contents[:]
            request.raw_input_contents.append(x[t : t + 1].tobytes())
            request.parameters["sequence_start"].bool_param = t == 0
            replies.append(stub.ModelInfer(request))
    assert [r.parameters["sequence_id"].uint64_param for r in replies] == [sequence] * 2
    assert [r.parameters["lstm_step_number"].int64_param for r in replies] == [1, 2]
    state_h = np.frombuffer(replies[1].raw_output_contents[-2], np.float32)
    np.testing.assert_allclose(state_h, _reference(oip, x)[1], atol=ATOL)
    status, body = _http_error(
        f"http://{oip.http}/v2/models/{oip.name}/infer",
        json.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 1, F], "data": [0.5] * F}
                ],
                "parameters": {"sequence_id": 2**64, "sequence_start": True},
            }
        ).encode(),
    )
    assert (status, body["reason"]) == (400, "INVALID_INPUT")
    assert "2**64 - 1" in body["error"]


# curl, as the README shows it


def test_curl_against_the_http_endpoint(oip: Oip, rng) -> None:
    base = f"http://{oip.http}/v2"
    ready = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/health/ready"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ready.stdout == "200"
    x = rng.normal(size=(1, 2, F)).astype(np.float32)
    body = {
        "inputs": [
            {"name": "x", "shape": [1, 2, F], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    done = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{base}/models/{oip.name}/infer",
         "-H", "Content-Type: application/json", "-d", json.dumps(body)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    reply = json.loads(done.stdout)
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["sequence"]["shape"] == [1, 2, U]
    sequence = np.array(outputs["sequence"]["data"], np.float32).reshape(2, U)
    np.testing.assert_allclose(sequence, _reference(oip, x[0])[0], atol=ATOL)


# Bad input


def _http_error(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    return refused.value.code, json.loads(refused.value.read())


BAD_TENSORS = {
    "wrong datatype": ([("x", (1, 2, F), "FP64")], "data-type is 'FP64', but model"),
    "wrong shape": ([("x", (1, 2, F + 1), "FP32")], f"has shape [1, 2, {F + 1}]"),
    "missing x": ([("lengths", (1,), "INT32")], "inputs[x]: is missing"),
    "unknown input": (
        [("x", (1, 2, F), "FP32"), ("y", (1,), "FP32")],
        "inputs[y]: is not an input any model here takes",
    ),
    "NaN": ([("x", (1, 2, F), "FP32", np.nan)], "inputs[x][0][1]: contains NaN or infinite values"),
    "NaN in a state": (
        [("x", (1, 2, F), "FP32"), ("h0", (1, U), "FP32", np.nan), ("c0", (1, U), "FP32")],
        "inputs[h0][0]: contains NaN or infinite values",
    ),
    "too many timesteps": ([("x", (1, 10_001, F), "FP32")], "inputs[x][0]: has 10001 timesteps"),
    "half a state": ([("x", (1, 2, F), "FP32"), ("h0", (1, U), "FP32")], "inputs[c0]: is missing"),
    "length past the end": ([("x", (1, 2, F), "FP32"), ("lengths", (1,), "INT32", 3)], "between 1"),
}  # fmt: skip


def _tensors(spec: list) -> list[tuple[str, np.ndarray, str]]:  # type: ignore[type-arg]
    made = []
    for name, shape, datatype, *fill in spec:
        dtype = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32}[datatype]
        array = np.full(shape, fill[0] if fill else 0.5).astype(dtype)
        if fill and np.isnan(fill[0]):
            array = np.zeros(shape, dtype)
            array[(0, 1, 0)[: array.ndim]] = np.nan
        made.append((name, array, datatype))
    return made


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_are_invalid_argument_and_http_400(oip: Oip, case: str) -> None:
    spec, words = BAD_TENSORS[case]
    tensors = _tensors(spec)
    with pytest.raises(InferenceServerException) as by_grpc:
        oip.grpc.infer(oip.name, [_grpc_input(n, a, d) for n, a, d in tensors])
    assert by_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert words in by_grpc.value.message()
    body = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": d, "data": a.ravel().tolist()}
            for n, a, d in tensors
        ]
    }
    text = json.dumps(body).encode()  # NaN as JavaScript writes it, which JSON parsers take
    code, error = _http_error(f"http://{oip.http}/v2/models/{oip.name}/infer", text)
    assert code == 400
    assert words in error["error"]
    assert oip.grpc.is_server_ready()
    x = np.ones((1, 1, F), np.float32)
    assert oip.grpc.infer(oip.name, [_grpc_input("x", x)]).as_numpy("sequence").shape == (1, 1, U)


def test_malformed_http_bodies_are_400(oip: Oip) -> None:
    url = f"http://{oip.http}/v2/models/{oip.name}/infer"
    for body, words in [
        (b"{not json", "is not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"inputs": 3}', "must be a list of tensors"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8]}]}', "has no data"),
        (b"[" * 200_000 + b"]" * 200_000, "is JSON nested too deeply"),
    ]:
        code, error = _http_error(url, body)
        assert code == 400
        assert words in error["error"]
    code, error = _http_error(
        url,
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8], '
        b'"parameters": {"binary_data_size": 32}}]}' + b"\0" * 16,
        {"Inference-Header-Content-Length": "96"},
    )
    assert code == 400
    code, error = _http_error(f"http://{oip.http}/v2/models/nope/infer", b'{"inputs": []}')
    assert code == 404
    assert error["error"] == "Request for unknown model: 'nope' is not found"


def test_raw_contents_must_match_the_inputs(oip: Oip) -> None:
    request = service_pb2.ModelInferRequest(model_name=oip.name)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1, F])
    request.raw_input_contents.append(b"\0" * (4 * F - 4))
    with grpc.insecure_channel(oip.server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as short:
            stub.ModelInfer(request)
        assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has 7 values; its shape [1, 1, 8] holds 8" in short.value.details()
        request.raw_input_contents.append(b"")
        with pytest.raises(grpc.RpcError) as extra:
            stub.ModelInfer(request)
        assert "one per input" in extra.value.details()


def test_sequence_parameters_are_checked(oip: Oip) -> None:
    x = np.ones((2, 1, F), np.float32)
    with pytest.raises(InferenceServerException, match="a request of a sequence carries one row"):
        oip.grpc.infer(oip.name, [_grpc_input("x", x)], sequence_id=5, sequence_start=True)
    zeros = np.zeros((1, U), np.float32)
    states = [_grpc_input("h0", zeros), _grpc_input("c0", zeros)]
    with pytest.raises(InferenceServerException, match="only by the request that starts"):
        oip.grpc.infer(oip.name, [_grpc_input("x", x[:1]), *states], sequence_id=5)


# Operations: metrics, reflection


def test_metrics_count_the_protocols_calls(oip: Oip) -> None:
    x = np.ones((1, 2, F), np.float32)
    oip.grpc.infer(oip.name, [_grpc_input("x", x)])
    oip.rest.infer(oip.name, [_http_input("x", x)])
    oip.grpc.infer(
        oip.name, [_grpc_input("x", x)], sequence_id=3, sequence_start=True, sequence_end=True
    )
    samples = scrape(oip.metrics)
    labels = {"grpc_service": "inference.GRPCInferenceService", "grpc_method": "ModelInfer"}
    assert (
        value(samples, "grpc_server_handled_total", grpc_code="OK", grpc_type="unary", **labels)
        >= 2
    )
    assert value(samples, "lstm_http_requests_total", handler="infer", code="200") >= 1
    assert value(samples, "lstm_http_request_seconds_count", handler="infer") >= 1
    assert value(samples, "lstm_session_step_seconds_count", grpc_method="ModelInfer") >= 1


def test_reflection_serves_the_protocols_service(oip: Oip) -> None:
    with grpc.insecure_channel(oip.server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"inference.GRPCInferenceService", "lstm.v1.LstmService"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


# Other models: stacks with heads, token ids


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oip]:
    path = zoo.save("masked_stack", tmp_path_factory.mktemp("zoo"), seed=2)
    made = Oip(
        ThreadedServer(settings(model=path, http_port=free_port(), metrics_port=free_port()))
    )
    yield made
    made.close()


def test_a_stack_takes_and_gives_a_state_per_layer_and_its_head(stack: Oip, rng) -> None:
    metadata = stack.rest.get_model_metadata(stack.name)
    names = [t["name"] for t in metadata["inputs"]]
    assert names == ["x", "lengths", "h0_0", "c0_0", "h0_1", "c0_1"]
    outputs = [t["name"] for t in metadata["outputs"]]
    assert outputs == ["sequence", "outputs", "state_h_0", "state_c_0", "state_h_1", "state_c_1"]
    x = rng.normal(size=(2, 5, zoo.F)).astype(np.float32)
    with LstmClient(stack.server.target) as client:
        start = client.predict_many([x[0], x[1]])
        whole = client.predict_many(
            [x[0], x[1]],
            initial_states=[[(s.h, s.c) for s in r.states] for r in start],
            include=["outputs", "hidden"],
        )
    inputs = [_grpc_input("x", x)]
    for k in range(2):
        h = np.stack([start[i].states[k].h for i in range(2)])
        c = np.stack([start[i].states[k].c for i in range(2)])
        inputs += [_grpc_input(f"h0_{k}", h), _grpc_input(f"c0_{k}", c)]
    result = stack.grpc.infer(stack.name, inputs)
    for i in range(2):
        np.testing.assert_allclose(result.as_numpy("outputs")[i], whole[i].outputs, atol=ATOL)
        np.testing.assert_allclose(result.as_numpy("sequence")[i], whole[i].sequence, atol=ATOL)
        for k in range(2):
            np.testing.assert_allclose(
                result.as_numpy(f"state_h_{k}")[i], whole[i].states[k].h, atol=ATOL
            )


def test_a_token_model_takes_int64_ids(tmp_path: Path, rng) -> None:
    path = zoo.save("token_model", tmp_path, seed=1)
    served = Oip(
        ThreadedServer(settings(model=path, http_port=free_port(), metrics_port=free_port()))
    )
    try:
        assert served.rest.get_model_metadata(served.name)["inputs"][0]["datatype"] == "INT64"
        ids = rng.integers(0, zoo.V, size=(1, 6)).astype(np.int64)
        result = served.grpc.infer(served.name, [_grpc_input("x", ids, "INT64")])
        with LstmClient(served.server.target) as client:
            expected = client.predict(ids[0], include=["hidden"])
        np.testing.assert_allclose(result.as_numpy("sequence")[0], expected.sequence, atol=ATOL)
        http = served.rest.infer(served.name, [_http_input("x", ids.astype(np.int32), "INT32")])
        np.testing.assert_allclose(http.as_numpy("sequence")[0], expected.sequence, atol=ATOL)
        with pytest.raises(InferenceServerException, match="outside the vocabulary"):
            served.grpc.infer(served.name, [_grpc_input("x", ids + zoo.V, "INT64")])
    finally:
        served.close()


# Authentication: the same tokens, sequences per principal


def test_tokens_guard_both_bindings_and_sequences_are_per_principal(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token\nbob bob-token\n")
    served = Oip(
        ThreadedServer(
            settings(auth_tokens_file=tokens, http_port=free_port(), metrics_port=free_port())
        ),
        token="alice-token",
    )
    try:
        x = np.ones((1, 1, 1), np.float32)
        alice = {"authorization": "Bearer alice-token"}
        bob = {"authorization": "Bearer bob-token"}
        with pytest.raises(InferenceServerException) as anonymous:
            served.grpc.infer(served.name, [_grpc_input("x", x)])
        assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"
        assert served.rest.is_server_live()  # health needs no token
        code, error = _http_error(f"http://{served.http}/v2/models/{served.name}/infer", b"{}")
        assert code == 401
        assert "Bearer" in error["error"]
        started = served.grpc.infer(
            served.name, [_grpc_input("x", x)], sequence_id=1, sequence_start=True, headers=alice
        )
        with pytest.raises(InferenceServerException, match="START flag") as theirs:
            served.rest.infer(served.name, [_http_input("x", x)], sequence_id=1, headers=bob)
        assert theirs.value.status() == "404"
        mine = served.rest.infer(served.name, [_http_input("x", x)], sequence_id=1, headers=alice)
        assert mine.get_response()["parameters"]["lstm_step_number"] == 2
        assert started.as_numpy("sequence").shape == (1, 1, 1)
    finally:
        served.close()


def test_http_over_tls_with_the_grpc_ports_certificate(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    port = free_port()
    server = ThreadedServer(settings(tls_cert=cert_path, tls_key=key_path, http_port=port))
    try:
        import ssl

        context = ssl.create_default_context(cafile=str(ca_path))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/v2/health/ready", context=context, timeout=30
        ) as reply:
            assert json.loads(reply.read()) == {"ready": True}
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: refused
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5)
    finally:
        server.stop()
