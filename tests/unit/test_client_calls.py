"""The SDK's shared, I/O-free logic: how a session stream numbers its steps."""

from __future__ import annotations

import numpy as np
import pytest
from lstm_client.calls import SessionStream
from lstm_client.v1 import lstm_service_pb2 as pb


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
    with pytest.raises(ValueError, match="first_step_number"):
        SessionStream(
            initial_state=None,
            ttl=None,
            session_id=session_id,
            close_on_end=None,
            first_step_number=first,
        )
