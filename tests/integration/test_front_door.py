"""One front door: every protocol answers the same mistake the same way (the status from the one
table, the same ErrorInfo reason and metadata; over HTTP the protocol's ``{"error": ...}`` body
with the reason beside it), runs through the same policies (tokens, one concurrency count for
gRPC and HTTP, per principal and in all), and the server keeps serving after each refusal."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc
from lstm_server.transport.limits import ConcurrencyLimitPolicy
from lstm_server.transport.status import HTTP_STATUS
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.helpers import GatedRuntime, scrape, seq_msg, value
from tests.servers import ThreadedServer, settings

F = 2
TOKENS = {"alice": "alice-token", "bob": "bob-token", "carol": "carol-token"}
MODEL = "default-lstm"
CAP = 20  # sessions per principal
REPLY_LIMIT = 200_000
# 20 rows of 3,000 timesteps: a 480 KB request whose reply (3 units a timestep) passes the limit
X_LONG = np.ones((20, 3000, 2), np.float32)


def auth(who: str | None) -> tuple[tuple[str, str], ...]:
    return () if who is None else (("authorization", f"Bearer {TOKENS[who]}"),)


@dataclass
class Doors:
    """A server with every door open, and a caller for each."""

    server: ThreadedServer
    channel: grpc.Channel
    http: str
    metrics: str

    @property
    def lstm(self) -> pb_grpc.LstmServiceStub:
        return pb_grpc.LstmServiceStub(self.channel)

    @property
    def oip(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        return service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def post(
        self, path: str, body: dict[str, Any], who: str | None = "alice"
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json", **dict(auth(who))}
        request = urllib.request.Request(
            f"http://{self.http}{path}", json.dumps(body).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def _tokens_file(directory: Path) -> Path:
    path = directory / "tokens"
    path.write_text("".join(f"{who} {token}\n" for who, token in TOKENS.items()))
    return path


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doors]:
    server = ThreadedServer(
        settings(
            features=F,
            units=3,
            auth_tokens_file=_tokens_file(tmp_path_factory.mktemp("tokens")),
            max_sessions_per_principal=CAP,
            max_response_bytes=REPLY_LIMIT,
            http_port=0,
            metrics_port=0,
        )
    )
    channel = grpc.insecure_channel(server.target)
    made = Doors(
        server,
        channel,
        f"127.0.0.1:{server.server.http_port}",
        f"http://127.0.0.1:{server.server.metrics_server.port}/metrics",
    )
    # carol holds all her sessions: her next one is over her cap, through any door
    for _ in range(CAP):
        made.lstm.CreateSession(pb.CreateSessionRequest(), metadata=auth("carol"))
    yield made
    channel.close()
    server.stop()


# The mistakes, through each door. A door's trigger raises grpc.RpcError (gRPC) or returns the
# HTTP status and body.

X_GOOD = np.ones((1, 1, F), np.float32)
X_BAD = np.ones((1, 1, F + 1), np.float32)


def predict(doors: Doors, x: np.ndarray, who: str | None = "alice", **model: Any) -> None:
    request = pb.PredictRequest(sequences=[seq_msg(row) for row in x], model=pb.ModelSpec(**model))
    doors.lstm.Predict(request, metadata=auth(who))


def new_session(doors: Doors, who: str = "alice") -> str:
    return doors.lstm.CreateSession(pb.CreateSessionRequest(), metadata=auth(who)).session_id


def step(doors: Doors, session_id: str, number: int = 0) -> None:
    request = pb.StepRequest(session_id=session_id, input=seq_msg(X_GOOD[0]), step_number=number)
    doors.lstm.Step(request, metadata=auth("alice"))


def closed_session(doors: Doors) -> str:
    session_id = new_session(doors)
    doors.lstm.CloseSession(pb.CloseSessionRequest(session_id=session_id), metadata=auth("alice"))
    return session_id


def infer_message(
    x: np.ndarray, model: str = MODEL, version: str = "", **parameters: Any
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    for key, given in parameters.items():
        kind = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(given)]
        setattr(request.parameters[key], kind, given)
    return request


def infer(doors: Doors, x: np.ndarray, who: str | None = "alice", **fields: Any) -> None:
    doors.oip.ModelInfer(infer_message(x, **fields), metadata=auth(who))


def http_infer(
    doors: Doors,
    x: np.ndarray,
    who: str | None = "alice",
    model: str = MODEL,
    version: str = "",
    **parameters: Any,
) -> tuple[int, dict[str, Any]]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
        "parameters": parameters,
    }
    return doors.post(path, body, who)


_sequences = iter(range(1000, 100_000))


def sequence_id() -> int:
    return next(_sequences)


def ended_sequence(doors: Doors) -> int:
    sequence = sequence_id()
    infer(doors, X_GOOD, sequence_id=sequence, sequence_start=True, sequence_end=True)
    return sequence


def started_sequence(doors: Doors) -> int:
    sequence = sequence_id()
    infer(doors, X_GOOD, sequence_id=sequence, sequence_start=True)
    return sequence


Trigger = Callable[[Doors], Any]


@dataclass(frozen=True)
class Mistake:
    code: str
    reason: str
    lstm: Trigger | None
    oip: Trigger
    http: Trigger


MISTAKES = {
    "no token": Mistake(
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
        lambda d: predict(d, X_GOOD, who=None),
        lambda d: infer(d, X_GOOD, who=None),
        lambda d: http_infer(d, X_GOOD, who=None),
    ),
    "wrong feature count": Mistake(
        "INVALID_ARGUMENT",
        "INVALID_INPUT",
        lambda d: predict(d, X_BAD),
        lambda d: infer(d, X_BAD),
        lambda d: http_infer(d, X_BAD),
    ),
    "unknown model": Mistake(
        "NOT_FOUND",
        "MODEL_NOT_FOUND",
        lambda d: predict(d, X_GOOD, name="nope"),
        lambda d: infer(d, X_GOOD, model="nope"),
        lambda d: http_infer(d, X_GOOD, model="nope"),
    ),
    "unknown version": Mistake(
        "NOT_FOUND",
        "MODEL_VERSION_NOT_FOUND",
        lambda d: predict(d, X_GOOD, name=MODEL, version=9),
        lambda d: infer(d, X_GOOD, version="9"),
        lambda d: http_infer(d, X_GOOD, version="9"),
    ),
    "unknown session": Mistake(
        "NOT_FOUND",
        "SESSION_NOT_FOUND",
        lambda d: step(d, "no-such-session"),
        lambda d: infer(d, X_GOOD, sequence_id=sequence_id()),
        lambda d: http_infer(d, X_GOOD, sequence_id=sequence_id()),
    ),
    "closed session": Mistake(
        "NOT_FOUND",
        "SESSION_CLOSED",
        lambda d: step(d, closed_session(d)),
        lambda d: infer(d, X_GOOD, sequence_id=ended_sequence(d)),
        lambda d: http_infer(d, X_GOOD, sequence_id=ended_sequence(d)),
    ),
    "step out of order": Mistake(
        "FAILED_PRECONDITION",
        "STEP_OUT_OF_ORDER",
        lambda d: step(d, new_session(d), number=5),
        lambda d: infer(d, X_GOOD, sequence_id=started_sequence(d), lstm_step_number=5),
        lambda d: http_infer(d, X_GOOD, sequence_id=started_sequence(d), lstm_step_number=5),
    ),
    "over a session cap": Mistake(
        "RESOURCE_EXHAUSTED",
        "LIMIT_EXCEEDED",
        lambda d: new_session(d, who="carol"),
        lambda d: infer(d, X_GOOD, who="carol", sequence_id=sequence_id(), sequence_start=True),
        lambda d: http_infer(
            d, X_GOOD, who="carol", sequence_id=sequence_id(), sequence_start=True
        ),
    ),
    "reply over the limit": Mistake(
        "RESOURCE_EXHAUSTED",
        "LIMIT_EXCEEDED",
        lambda d: predict(d, X_LONG),
        lambda d: infer(d, X_LONG),
        lambda d: http_infer(d, X_LONG),
    ),
    "model control off": Mistake(
        "FAILED_PRECONDITION",
        "MODEL_CONTROL_DISABLED",
        None,  # lstm.v1 has no load call
        lambda d: d.oip.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name=MODEL), metadata=auth("alice")
        ),
        lambda d: d.post(f"/v2/repository/models/{MODEL}/load", {}),
    ),
}


def grpc_refusal(trigger: Trigger, doors: Doors) -> tuple[str, str, dict[str, str]]:
    """The code, ErrorInfo reason and metadata a gRPC call was refused with."""
    with pytest.raises(grpc.RpcError) as refused:
        trigger(doors)
    status = rpc_status.from_call(refused.value)
    assert status is not None, refused.value
    [info] = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    error_info = error_details_pb2.ErrorInfo()
    info.Unpack(error_info)
    return refused.value.code().name, error_info.reason, dict(error_info.metadata)


def assert_serving(doors: Doors) -> None:
    predict(doors, X_GOOD)
    infer(doors, X_GOOD)
    status, body = http_infer(doors, X_GOOD)
    assert status == 200, body


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_every_door_gives_the_same_answer_to_the_same_mistake(doors: Doors, name: str) -> None:
    mistake = MISTAKES[name]
    answers = []
    if mistake.lstm is not None:
        answers.append(grpc_refusal(mistake.lstm, doors))
    answers.append(grpc_refusal(mistake.oip, doors))
    status, body = mistake.http(doors)
    assert status == HTTP_STATUS[mistake.code], body
    assert body["error"]
    answers.append((mistake.code, body["reason"], body.get("metadata", {})))
    for code, reason, _ in answers:
        assert (code, reason) == (mistake.code, mistake.reason)
    # the metadata a program reads agrees too (ids that differ per call aside)
    keys = [set(metadata) - {"session_id", "sequence_id"} for _, _, metadata in answers]
    assert all(k == keys[0] for k in keys), answers
    if mistake.reason == "LIMIT_EXCEEDED":  # and the same limit, whichever door
        assert len({m["limit"] for _, _, m in answers}) == 1, answers
    assert_serving(doors)


def test_an_unknown_model_over_http_is_404_before_its_body_is_read(doors: Doors) -> None:
    request = urllib.request.Request(
        f"http://{doors.http}/v2/models/nope/infer", b"", dict(auth("alice")), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404
    assert json.loads(refused.value.read())["reason"] == "MODEL_NOT_FOUND"


def test_refusals_are_counted_by_reason_for_both_protocols(doors: Doors) -> None:
    before = scrape(doors.metrics)
    with pytest.raises(grpc.RpcError):
        infer(doors, X_BAD)
    http_infer(doors, X_BAD)
    after = scrape(doors.metrics)
    for protocol in ("grpc", "http"):
        labels = {"protocol": protocol, "reason": "INVALID_INPUT"}
        grew = value(after, "lstm_refused_total", **labels) - value(
            before, "lstm_refused_total", **labels
        )
        assert grew == 1, protocol
    infer_route = {"handler": "infer", "code": "400"}
    assert value(after, "lstm_http_requests_total", **infer_route) >= 1


# One concurrency count for both doors


def _held_http(doors: Doors, who: str, results: list[int]) -> threading.Thread:
    def call() -> None:
        results.append(http_infer(doors, X_GOOD, who=who)[0])

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _held_grpc(doors: Doors, who: str, results: list[int]) -> threading.Thread:
    def call() -> None:
        predict(doors, X_GOOD, who=who)
        results.append(200)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _wait_in_flight(policy: ConcurrencyLimitPolicy, count: int) -> None:
    deadline = time.monotonic() + 30
    while policy.in_flight != count:
        assert time.monotonic() < deadline, policy.in_flight
        time.sleep(0.02)


def test_concurrency_caps_count_grpc_and_http_calls_together(tmp_path: Path) -> None:
    runtime = GatedRuntime(features=F, units=3)
    server = ThreadedServer.with_runtime(
        settings(
            batching=False,
            auth_tokens_file=_tokens_file(tmp_path),
            max_concurrent_rpcs=3,
            max_concurrent_rpcs_per_principal=2,
            http_port=0,
        ),
        runtime,
    )
    channel = grpc.insecure_channel(server.target)
    doors = Doors(server, channel, f"127.0.0.1:{server.server.http_port}", "")
    [policy] = [p for p in server.server.chain.policies if isinstance(p, ConcurrencyLimitPolicy)]
    results: list[int] = []
    held: list[threading.Thread] = []
    try:
        runtime.gate.clear()
        # alice at her cap of 2, one call through each door
        held += [_held_http(doors, "alice", results), _held_grpc(doors, "alice", results)]
        _wait_in_flight(policy, 2)
        status, body = http_infer(doors, X_GOOD, who="alice")
        assert (status, body["reason"]) == (429, "LIMIT_EXCEEDED")
        assert body["metadata"]["limit"] == "max_concurrent_rpcs_per_principal"
        code, reason, metadata = grpc_refusal(lambda d: infer(d, X_GOOD), doors)
        assert (code, reason) == ("RESOURCE_EXHAUSTED", "LIMIT_EXCEEDED")
        assert metadata["limit"] == "max_concurrent_rpcs_per_principal"
        # bob's one call makes 3 in flight: the server's cap, whichever door comes next
        held.append(_held_http(doors, "bob", results))
        _wait_in_flight(policy, 3)
        code, reason, metadata = grpc_refusal(lambda d: predict(d, X_GOOD, who="bob"), doors)
        assert (code, metadata["limit"]) == ("RESOURCE_EXHAUSTED", "max_concurrent_rpcs")
        status, body = http_infer(doors, X_GOOD, who="bob")
        assert (status, body["metadata"]["limit"]) == (429, "max_concurrent_rpcs")
    finally:
        runtime.gate.set()
        for thread in held:
            thread.join(timeout=30)
    assert results == [200, 200, 200]
    _wait_in_flight(policy, 0)
    assert_serving(doors)
    channel.close()
    server.stop()
