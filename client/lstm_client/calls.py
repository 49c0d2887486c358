"""Everything the sync and asyncio clients share but I/O: what each call sends and how its reply
is read, how a session stream numbers its steps, and when a session step is retried.

``LstmClient`` and ``AsyncLstmClient`` only carry these over a channel, so both behave alike.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from lstm_client import codec
from lstm_client.codec import ArrayLike, Include, StateLike
from lstm_client.connection import RetryPolicy
from lstm_client.errors import RETRYABLE_CODES, LstmError, arguments, invalid_argument
from lstm_client.results import (
    FinalState,
    LayerState,
    ModelMetadata,
    ModelStatus,
    NextState,
    PredictResult,
    SessionInfo,
    StepResult,
    StreamChunk,
)
from lstm_client.v1 import lstm_service_pb2 as pb

R = TypeVar("R")


@contextlib.contextmanager
def _arguments() -> Iterator[None]:
    """What the block cannot make of its arguments, raised as ``LstmError`` (INVALID_INPUT)."""
    try:
        yield
    except (ValueError, TypeError, OverflowError) as error:
        raise invalid_argument(error) from error


# The most steps a session stream may keep in flight (the server's limit too).
MAX_WINDOW = 64


@dataclass(frozen=True)
class UnaryCall(Generic[R]):
    """One unary RPC: the stub method's name, the request, and how to read the reply."""

    method: str
    request: Any
    read: Callable[[Any], R]


def metadata(model: pb.ModelSpec) -> UnaryCall[ModelMetadata]:
    request = pb.GetModelMetadataRequest(model=model)
    return UnaryCall("GetModelMetadata", request, codec.model_metadata)


def list_models(ready: bool) -> UnaryCall[list[ModelStatus]]:
    return UnaryCall("ListModels", pb.ListModelsRequest(ready=ready), codec.model_statuses)


@arguments
def predict(
    x: ArrayLike, initial_state: StateLike | None, include: Include, model: pb.ModelSpec
) -> UnaryCall[PredictResult]:
    request, batched = codec.batch_of(x, initial_state, include)
    request.model.CopyFrom(model)

    def read(response: pb.PredictResponse) -> PredictResult:
        results = codec.predict_results(response)
        return codec.stack(results) if batched else results[0]

    return UnaryCall("Predict", request, read)


@arguments
def predict_many(
    sequences: Iterable[ArrayLike],
    initial_states: Iterable[StateLike] | None,
    include: Include,
    model: pb.ModelSpec,
) -> UnaryCall[list[PredictResult]]:
    request = codec.predict_request(sequences, initial_states, include)
    request.model.CopyFrom(model)
    return UnaryCall("Predict", request, codec.predict_results)


@arguments
def stream_request(
    x: ArrayLike,
    initial_state: StateLike | None,
    timesteps_per_message: int,
    include: Include,
    model: pb.ModelSpec,
) -> pb.PredictRequest:
    request, _ = codec.batch_of(x, initial_state, include)
    request.timesteps_per_message = timesteps_per_message
    request.model.CopyFrom(model)
    return request


def stream_items(message: pb.PredictStreamResponse) -> Iterator[StreamChunk | FinalState]:
    return codec.stream_items(message)


@arguments
def create_session(
    initial_state: StateLike | None, ttl: int | None, model: pb.ModelSpec
) -> UnaryCall[SessionInfo]:
    request = codec.create_request(initial_state, ttl)
    request.model.CopyFrom(model)
    return UnaryCall("CreateSession", request, codec.session_info)


def get_session(session_id: str) -> UnaryCall[SessionInfo]:
    request = pb.GetSessionRequest(session_id=session_id)
    return UnaryCall("GetSession", request, codec.session_info)


@arguments
def reset_session(session_id: str, state: StateLike | None) -> UnaryCall[SessionInfo]:
    request = codec.reset_request(session_id, state)
    return UnaryCall("ResetSession", request, codec.session_info)


def close_session(session_id: str) -> UnaryCall[None]:
    request = pb.CloseSessionRequest(session_id=session_id)
    return UnaryCall("CloseSession", request, lambda _: None)


@arguments
def step(info: SessionInfo, x: ArrayLike, include: Include = None) -> UnaryCall[StepResult]:
    """The next step of a session, numbered ``step_count + 1`` so that a retry is answered once."""
    request = pb.StepRequest(
        session_id=info.session_id,
        input=codec.sequence_message(x),
        step_number=info.step_count + 1,
        include=codec.include_values(include),
    )
    return UnaryCall("Step", request, codec.step_result)


# The smallest limit a server can have (--max-message-bytes is at least 1024): a request no
# larger is sent without knowing the server's.
SMALLEST_LIMIT = 1024


class RequestLimit:
    """The server's ``max_message_bytes``, learnt from its metadata the first time a request is
    larger than any server's smallest limit; a request over it is refused before it is sent
    (the server would refuse it with gRPC's own RESOURCE_EXHAUSTED, saying neither why nor the
    limit)."""

    def __init__(self) -> None:
        self.value: int | None = None

    @staticmethod
    def size_to_check(request: Any) -> int:
        """The request's size, if it must be checked against the server's limit; else 0."""
        size = int(request.ByteSize())
        return size if size > SMALLEST_LIMIT else 0

    def learn(self, meta: ModelMetadata) -> None:
        self.value = int(meta.limits.get("max_message_bytes", 0))

    def check(self, size: int) -> None:
        if self.value and size > self.value:
            raise LstmError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request takes {size} bytes, more than the server's limit of {self.value} "
                "bytes (max_message_bytes): send fewer or shorter sequences, or step a session "
                "through them",
                reason="LIMIT_EXCEEDED",
                metadata={"limit": "max_message_bytes", "value": str(self.value)},
            )


def closed_already(error: LstmError) -> bool:
    """Whether closing a session failed only because it had been closed (or had expired): close
    is idempotent, so that is done, not an error."""
    return error.code == grpc.StatusCode.NOT_FOUND and error.reason in (
        "SESSION_CLOSED",
        "SESSION_EXPIRED",
    )


class StepRetries:
    """When a session call whose reply was lost is sent again: a step (with the same number, so
    it is applied once), a session's creation, attach, refresh and close. After UNAVAILABLE or
    DEADLINE_EXCEEDED, and after CANCELLED, which a server shutting down answers calls it had
    not yet begun with (grpc/grpc#41785); waiting as ``policy`` says. A call is never cancelled
    by its caller: the SDK's calls are not exposed. (A creation whose reply was lost may leave
    a session behind; its TTL ends it.)"""

    def __init__(self, policy: RetryPolicy) -> None:
        self._delays = policy.delays()

    def delay_after(self, error: LstmError) -> float:
        """Seconds to wait before the retry; re-raises ``error`` when it is not retried."""
        if error.code not in RETRYABLE_CODES and error.code != grpc.StatusCode.CANCELLED:
            raise error
        delay = next(self._delays, None)
        if delay is None:
            raise error
        return delay


class SessionHandle:
    """What both ``Session`` twins know of their session between calls."""

    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self.closed = False

    @property
    def session_id(self) -> str:
        return self.info.session_id

    @property
    def state(self) -> NextState:
        """The state after the last step: ``(h, c)``, or every layer's for a stack."""
        return self.info.state

    @property
    def states(self) -> tuple[LayerState, ...]:
        """Every LSTM layer's state after the last step, bottom to top."""
        return self.info.states

    @property
    def step_count(self) -> int:
        return self.info.step_count

    def stepped(self, result: StepResult) -> StepResult:
        self.info = codec.advanced(self.info, result)
        return result


class SessionStream:
    """The messages of ``StreamSession`` calls for one run of chunks: an opening (create or
    resume), then one numbered step per chunk; replies are read back in order.

    Up to ``window`` steps are sent before their replies are read (the server answers in
    order, and keeps the replies of that many latest steps). Steps are numbered from the
    session's step count, or from ``first_step_number`` when a resume says which step its first
    chunk is: a step whose reply was lost is then answered again by the server, never applied
    twice. When a stream breaks (UNAVAILABLE) after the session is known, ``resume`` opens the
    next stream on the same session and the steps not answered are sent again with their
    numbers: each applied exactly once, on any replica."""

    def __init__(
        self,
        *,
        initial_state: StateLike | None,
        ttl: int | None,
        session_id: str | None,
        close_on_end: bool | None,
        first_step_number: int | None = None,
        include: Include = None,
        window: int = 1,
        model: pb.ModelSpec | None = None,
    ) -> None:
        """``model``: the model and version a new session runs on (a resumed one keeps its
        own)."""
        with _arguments():
            self._open(initial_state, ttl, session_id, close_on_end, include, window, model)
        self.session_id = session_id
        self._first = first_step_number
        if first_step_number is not None and (session_id is None or first_step_number < 1):
            raise invalid_argument(
                "first_step_number (1 or more) goes with the session_id it resumes"
            )
        self._number = 0
        self.pending: deque[pb.SessionStreamRequest] = deque()  # sent, not answered

    def _open(
        self,
        initial_state: StateLike | None,
        ttl: int | None,
        session_id: str | None,
        close_on_end: bool | None,
        include: Include,
        window: int,
        model: pb.ModelSpec | None,
    ) -> None:
        """The opening message: create a session (on ``model``), or resume ``session_id``."""
        self._include = codec.include_values(include)
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window is {window}: 1 to {MAX_WINDOW} steps may be in flight")
        self.window = window
        self._close_on_end = session_id is None if close_on_end is None else close_on_end
        opening = pb.OpenSession(close_on_end=self._close_on_end, window=window)
        if session_id is None:
            opening.create.CopyFrom(codec.create_request(initial_state, ttl))
            if model is not None:
                opening.create.model.CopyFrom(model)
        else:
            opening.resume_session_id = session_id
        self.opening = pb.SessionStreamRequest(open=opening)

    @property
    def open_slots(self) -> int:
        """How many more steps may be sent before a reply is read."""
        return self.window - len(self.pending)

    def opened(self, reply: pb.SessionStreamResponse) -> list[pb.SessionStreamRequest]:
        """The server's answer to the opening: steps continue from its step count, unless the
        caller (or a resume) said which step comes first. Returns the steps to send again (those
        sent on a broken stream and not answered), with their numbers."""
        self.session_id = reply.session.session_id
        count = reply.session.step_count
        self._number = count if self._first is None else self._first - 1
        if self.pending:
            self._number = self.pending[-1].step.step_number
        return list(self.pending)

    def step(self, chunk: ArrayLike) -> pb.SessionStreamRequest:
        with _arguments():
            given = codec.sequence_message(chunk)
        self._number += 1
        step = pb.SessionStep(input=given, step_number=self._number, include=self._include)
        message = pb.SessionStreamRequest(step=step)
        self.pending.append(message)
        return message

    def result(self, reply: pb.SessionStreamResponse) -> StepResult:
        """The oldest pending step's result; a step refused in-band raises its ``LstmError``
        (with its reason and violations)."""
        self.pending.popleft()
        if reply.HasField("error"):
            raise LstmError.from_status(reply.error, in_band=True)
        return codec.step_result(reply.step)

    def resume(self, error: LstmError) -> bool:
        """After ``error`` broke the stream: whether a new stream may go on (the session is
        known and the error is UNAVAILABLE); if so, ``opening`` now resumes it."""
        if error.in_band or error.code != grpc.StatusCode.UNAVAILABLE or not self.session_id:
            return False
        self._first = None if self.pending else self._number + 1
        opening = pb.OpenSession(
            resume_session_id=self.session_id, close_on_end=self._close_on_end, window=self.window
        )
        self.opening = pb.SessionStreamRequest(open=opening)
        return True
