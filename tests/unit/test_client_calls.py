"""The SDK's shared, I/O-free logic: how a session stream numbers its steps and resumes, how
errors are read, how long retries wait."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from lstm_client import LstmError, RetryPolicy
from lstm_client.calls import SessionStream, StepRetries
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_server.core import errors
from lstm_server.transport.errors import rpc_status


def opened(step_count: int) -> pb.SessionStreamResponse:
    return pb.SessionStreamResponse(session=pb.Session(session_id="s", step_count=step_count))


def numbers(stream: SessionStream, chunks: int) -> list[int]:
    return [stream.step(np.zeros((1, 1))).step.step_number for _ in range(chunks)]


def test_steps_follow_the_step_count_the_server_reports() -> None:
    stream = SessionStream(initial_state=None, ttl=None, session_id="s", close_on_end=None)
    stream.opened(opened(5))
    assert numbers(stream, 3) == [6, 7, 8]
    assert not stream.opening.open.close_on_end  # a resumed session is kept by default


def test_a_resume_may_say_which_step_comes_first() -> None:
    stream = SessionStream(
        initial_state=None, ttl=None, session_id="s", close_on_end=None, first_step_number=5
    )
    stream.opened(opened(5))  # step 5 was applied, its reply lost: it is sent again as 5
    assert numbers(stream, 2) == [5, 6]


@pytest.mark.parametrize(("session_id", "first"), [(None, 3), ("s", 0)])
def test_first_step_number_needs_a_session_and_a_number(session_id, first) -> None:
    with pytest.raises(LstmError, match="first_step_number"):
        SessionStream(
            initial_state=None,
            ttl=None,
            session_id=session_id,
            close_on_end=None,
            first_step_number=first,
        )


def _error(code: grpc.StatusCode, *, in_band: bool = False) -> LstmError:
    return LstmError(code, "x", in_band=in_band)


def test_a_broken_stream_resumes_the_session_and_resends_the_unanswered_step() -> None:
    stream = SessionStream(initial_state=None, ttl=60, session_id=None, close_on_end=None)
    assert stream.opening.open.WhichOneof("target") == "create"
    stream.opened(opened(0))
    first = stream.step(np.zeros((1, 1)))
    stream.result(pb.SessionStreamResponse(step=pb.StepResponse(step_number=1)))
    second = stream.step(np.ones((1, 1)))  # sent; its reply lost with the connection
    assert stream.resume(_error(grpc.StatusCode.UNAVAILABLE))
    assert stream.opening.open.resume_session_id == "s"
    assert stream.opening.open.close_on_end  # as the stream that created it said
    assert stream.opened(opened(2)) == [second]  # sent again with its number: replayed
    assert (first.step.step_number, second.step.step_number) == (1, 2)
    stream.result(pb.SessionStreamResponse(step=pb.StepResponse(step_number=2)))
    assert numbers(stream, 1) == [3]


def test_a_resume_after_every_reply_goes_on_from_the_next_step() -> None:
    stream = SessionStream(initial_state=None, ttl=None, session_id="s", close_on_end=None)
    stream.opened(opened(4))
    stream.step(np.zeros((1, 1)))
    stream.result(pb.SessionStreamResponse(step=pb.StepResponse(step_number=5)))
    assert stream.resume(_error(grpc.StatusCode.UNAVAILABLE))
    assert stream.opened(opened(5)) == []
    assert numbers(stream, 1) == [6]


def test_a_broken_window_resends_every_unanswered_step_in_order() -> None:
    stream = SessionStream(
        initial_state=None, ttl=None, session_id=None, close_on_end=None, window=3
    )
    assert stream.opening.open.window == 3
    stream.opened(opened(0))
    sent = [stream.step(np.full((1, 1), n, np.float32)) for n in range(3)]
    assert stream.open_slots == 0
    stream.result(pb.SessionStreamResponse(step=pb.StepResponse(step_number=1)))
    assert stream.open_slots == 1
    assert stream.resume(_error(grpc.StatusCode.UNAVAILABLE))
    assert stream.opening.open.window == 3  # the resumed stream keeps the window
    assert stream.opened(opened(3)) == sent[1:]  # steps 2 and 3, answered from kept replies
    assert numbers(stream, 1) == [4]


@pytest.mark.parametrize(
    "error",
    [
        _error(grpc.StatusCode.INVALID_ARGUMENT),
        _error(grpc.StatusCode.UNAVAILABLE, in_band=True),  # a refused step, the stream went on
    ],
)
def test_only_a_broken_stream_of_a_known_session_resumes(error: LstmError) -> None:
    stream = SessionStream(initial_state=None, ttl=None, session_id="s", close_on_end=None)
    stream.opened(opened(0))
    assert not stream.resume(error)
    unknown = SessionStream(initial_state=None, ttl=None, session_id=None, close_on_end=None)
    assert not unknown.resume(_error(grpc.StatusCode.UNAVAILABLE))  # its creation unanswered


def test_in_band_errors_keep_their_reason_and_violations() -> None:
    status = rpc_status(
        errors.InvalidInput.single("input.timesteps", "is empty")
    )  # what the server sends in-band
    stream = SessionStream(initial_state=None, ttl=None, session_id="s", close_on_end=None)
    stream.opened(opened(0))
    stream.step(np.zeros((1, 1)))
    with pytest.raises(LstmError) as refused:
        stream.result(pb.SessionStreamResponse(error=status))
    assert refused.value.in_band
    assert refused.value.reason == "INVALID_INPUT"
    assert [(v.field, v.description) for v in refused.value.violations] == [
        ("input.timesteps", "is empty")
    ]
    stopped = rpc_status(errors.StepConflict("x", expected_step_number=4))
    stream.step(np.zeros((1, 1)))
    with pytest.raises(LstmError) as conflict:
        stream.result(pb.SessionStreamResponse(error=stopped))
    assert conflict.value.metadata == {"expected_step_number": "4"}


def test_retry_waits_grow_with_jitter_and_stop() -> None:
    policy = RetryPolicy(attempts=6, initial_backoff=0.1, max_backoff=0.5, jitter=0.2)
    waits = list(policy.delays())
    assert len(waits) == 5
    for wait, base in zip(waits, [0.1, 0.2, 0.4, 0.5, 0.5], strict=True):
        assert base * 0.8 <= wait <= base * 1.2
    assert sum(RetryPolicy().delays()) > 8  # longer than a replica takes to restart
    config = json.loads(policy.service_config())["methodConfig"][0]
    assert {n["method"] for n in config["name"]} == {"GetModelMetadata", "Predict", "GetSession"}
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


@pytest.mark.parametrize(
    ("code", "retried"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.CANCELLED, True),  # a server shutting down cancels calls not begun
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.FAILED_PRECONDITION, False),
    ],
)
def test_a_step_is_retried_only_when_its_reply_may_have_been_lost(
    code: grpc.StatusCode, retried: bool
) -> None:
    retries = StepRetries(RetryPolicy(attempts=3, initial_backoff=0.5, jitter=0.0))
    error = LstmError(code, "x")
    if retried:
        assert [retries.delay_after(error), retries.delay_after(error)] == [0.5, 1.0]
        with pytest.raises(LstmError):  # attempts spent
            retries.delay_after(error)
    else:
        with pytest.raises(LstmError) as raised:
            retries.delay_after(error)
        assert raised.value is error
