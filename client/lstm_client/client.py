"""The synchronous SDK: ``LstmClient`` and its server-held ``Session``."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import grpc

from lstm_client import codec
from lstm_client.codec import ArrayLike, StateLike
from lstm_client.connection import TlsOptions, call_metadata
from lstm_client.errors import RETRYABLE_CODES, LstmError, retry_delays
from lstm_client.results import (
    FinalState,
    ModelMetadata,
    PredictResult,
    SessionInfo,
    StepResult,
    StreamChunk,
)
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

T = TypeVar("T")


class LstmClient:
    """A blocking client of lstm.v1.LstmService.

    ``timeout`` (seconds) applies to each call; ``metadata`` is sent with every call, and so is
    ``token`` as a Bearer token; ``tls`` connects over TLS (mutual TLS with a client certificate).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        metadata: Iterable[tuple[str, str]] | None = None,
        retries: int = 3,
        token: str | None = None,
        tls: TlsOptions | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata = call_metadata(metadata, token)
        self.retries = retries
        self._channel = (
            grpc.insecure_channel(target)
            if tls is None
            else grpc.secure_channel(target, tls.credentials())
        )
        self._stub = pb_grpc.LstmServiceStub(self._channel)

    def __enter__(self) -> LstmClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None

    def metadata(self) -> ModelMetadata:
        return codec.model_metadata(
            self._call(self._stub.GetModelMetadata, pb.GetModelMetadataRequest())
        )

    def predict(self, x: ArrayLike, initial_state: StateLike | None = None) -> PredictResult:
        """Run (T, F) or (B, T, F) input; the result keeps the batch axis if the input had one."""
        request, batched = codec.batch_of(x, initial_state)
        results = codec.predict_results(self._call(self._stub.Predict, request))
        return codec.stack(results) if batched else results[0]

    def predict_many(
        self, sequences: Iterable[ArrayLike], initial_states: Iterable[StateLike] | None = None
    ) -> list[PredictResult]:
        """Run sequences of different lengths in one request; one result per sequence."""
        request = codec.predict_request(sequences, initial_states)
        return codec.predict_results(self._call(self._stub.Predict, request))

    def stream(
        self,
        x: ArrayLike,
        initial_state: StateLike | None = None,
        *,
        timesteps_per_message: int = 1,
    ) -> Iterator[StreamChunk | FinalState]:
        """Yield hidden outputs as the server computes them, then each sequence's final state."""
        request, _ = codec.batch_of(x, initial_state)
        request.timesteps_per_message = timesteps_per_message
        try:
            for message in self._stub.PredictStream(
                request, timeout=self.timeout, metadata=self._metadata
            ):
                yield from codec.stream_items(message)
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None

    def session(self, initial_state: StateLike | None = None, ttl: int | None = None) -> Session:
        """Create a server-held session; use it as a context manager to close it on exit."""
        message = self._call(self._stub.CreateSession, codec.create_request(initial_state, ttl))
        return Session(self, codec.session_info(message))

    def attach(self, session_id: str) -> Session:
        """A handle on an existing session (for example one created by another process)."""
        message = self._call(self._stub.GetSession, pb.GetSessionRequest(session_id=session_id))
        return Session(self, codec.session_info(message))

    def stream_session(
        self,
        chunks: Iterable[ArrayLike],
        *,
        initial_state: StateLike | None = None,
        ttl: int | None = None,
        session_id: str | None = None,
        close_on_end: bool | None = None,
    ) -> Iterator[StepResult]:
        """Step through ``chunks`` over one bidirectional stream; yield each step's result.

        Opens a new session, or resumes ``session_id``. A new session is closed when the stream
        ends unless ``close_on_end=False``; a resumed one is kept unless ``close_on_end=True``.
        """
        opening = pb.OpenSession(
            close_on_end=session_id is None if close_on_end is None else close_on_end
        )
        if session_id is None:
            opening.create.CopyFrom(codec.create_request(initial_state, ttl))
        else:
            opening.resume_session_id = session_id
        outbox: queue.SimpleQueue[pb.SessionStreamRequest | None] = queue.SimpleQueue()
        outbox.put(pb.SessionStreamRequest(open=opening))
        replies = self._stub.StreamSession(
            iter(outbox.get, None), timeout=self.timeout, metadata=self._metadata
        )
        try:
            opened = next(replies).session
            number = opened.step_count
            for chunk in chunks:
                number += 1
                step = pb.SessionStep(input=codec.sequence_message(chunk), step_number=number)
                outbox.put(pb.SessionStreamRequest(step=step))
                reply = next(replies)
                if reply.HasField("error"):
                    raise LstmError.from_status(reply.error)
                yield codec.step_result(reply.step)
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        finally:
            outbox.put(None)
            replies.cancel()


class Session:
    """A server-held session. ``step`` numbers steps itself and retries a step whose reply was
    lost (UNAVAILABLE, DEADLINE_EXCEEDED) with the same number, so no step is applied twice."""

    def __init__(self, client: LstmClient, info: SessionInfo) -> None:
        self._client = client
        self.info = info

    @property
    def session_id(self) -> str:
        return self.info.session_id

    @property
    def state(self) -> tuple[Any, Any]:
        """``[h, c]`` after the last step."""
        return self.info.h, self.info.c

    @property
    def step_count(self) -> int:
        return self.info.step_count

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def step(self, x: ArrayLike) -> StepResult:
        request = pb.StepRequest(
            session_id=self.session_id,
            input=codec.sequence_message(x),
            step_number=self.step_count + 1,
        )
        delays = retry_delays(self._client.retries)
        while True:
            try:
                reply = self._client._call(self._client._stub.Step, request)
                break
            except LstmError as error:
                delay = next(delays, None)
                if error.code not in RETRYABLE_CODES or delay is None:
                    raise
                time.sleep(delay)
        result = codec.step_result(reply)
        self.info = codec.advanced(self.info, result)
        return result

    def refresh(self) -> SessionInfo:
        """Read the session from the server (also how its state is exported)."""
        stub = self._client._stub
        self.info = codec.session_info(
            self._client._call(stub.GetSession, pb.GetSessionRequest(session_id=self.session_id))
        )
        return self.info

    def reset(self, state: StateLike | None = None) -> SessionInfo:
        """Back to zeros, or to ``state``; the step count restarts at 0."""
        stub = self._client._stub
        self.info = codec.session_info(
            self._client._call(stub.ResetSession, codec.reset_request(self.session_id, state))
        )
        return self.info

    def close(self) -> None:
        stub = self._client._stub
        self._client._call(stub.CloseSession, pb.CloseSessionRequest(session_id=self.session_id))
