"""The synchronous SDK: ``LstmClient`` and its server-held ``Session``.

What each call sends and how its reply is read live in ``lstm_client.calls``, shared with the
asyncio twin (``lstm_client.aio``); this module only carries them over a blocking channel.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import grpc

from lstm_client import calls
from lstm_client.calls import SessionHandle, SessionStream, StepRetries, UnaryCall
from lstm_client.codec import ArrayLike, Include, StateLike
from lstm_client.connection import TlsOptions, call_metadata
from lstm_client.errors import LstmError
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

R = TypeVar("R")


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

    def _invoke(self, call: UnaryCall[R]) -> R:
        method: Callable[..., Any] = getattr(self._stub, call.method)
        try:
            reply = method(call.request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        return call.read(reply)

    def metadata(self) -> ModelMetadata:
        return self._invoke(calls.metadata())

    def predict(
        self, x: ArrayLike, initial_state: StateLike | None = None, *, include: Include = None
    ) -> PredictResult:
        """Run (T, F) or (B, T, F) input; the result keeps the batch axis if the input had one."""
        return self._invoke(calls.predict(x, initial_state, include))

    def predict_many(
        self,
        sequences: Iterable[ArrayLike],
        initial_states: Iterable[StateLike] | None = None,
        *,
        include: Include = None,
    ) -> list[PredictResult]:
        """Run sequences of different lengths in one request; one result per sequence."""
        return self._invoke(calls.predict_many(sequences, initial_states, include))

    def stream(
        self,
        x: ArrayLike,
        initial_state: StateLike | None = None,
        *,
        timesteps_per_message: int = 1,
        include: Include = None,
    ) -> Iterator[StreamChunk | FinalState]:
        """Yield hidden outputs as the server computes them, then each sequence's final state.

        Stopping early (``break``, or closing the iterator) cancels the call, which stops the
        server's computation."""
        request = calls.stream_request(x, initial_state, timesteps_per_message, include)
        call = self._stub.PredictStream(request, timeout=self.timeout, metadata=self._metadata)
        try:
            for message in call:
                yield from calls.stream_items(message)
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        finally:
            call.cancel()

    def session(self, initial_state: StateLike | None = None, ttl: int | None = None) -> Session:
        """Create a server-held session; use it as a context manager to close it on exit."""
        return Session(
            self._invoke, self._invoke(calls.create_session(initial_state, ttl)), self.retries
        )

    def attach(self, session_id: str) -> Session:
        """A handle on an existing session (for example one created by another process)."""
        return Session(self._invoke, self._invoke(calls.get_session(session_id)), self.retries)

    def stream_session(
        self,
        chunks: Iterable[ArrayLike],
        *,
        initial_state: StateLike | None = None,
        ttl: int | None = None,
        session_id: str | None = None,
        close_on_end: bool | None = None,
        first_step_number: int | None = None,
        include: Include = None,
    ) -> Iterator[StepResult]:
        """Step through ``chunks`` over one bidirectional stream; yield each step's result.

        Opens a new session, or resumes ``session_id``. A new session is closed when the stream
        ends unless ``close_on_end=False``; a resumed one is kept unless ``close_on_end=True``.
        To resume after a lost reply, pass ``first_step_number``: the number of the first chunk
        (the first step not acknowledged), so a step that was applied is answered, not repeated.
        """
        stream = SessionStream(
            initial_state=initial_state,
            ttl=ttl,
            session_id=session_id,
            close_on_end=close_on_end,
            first_step_number=first_step_number,
            include=include,
        )
        outbox: queue.SimpleQueue[pb.SessionStreamRequest | None] = queue.SimpleQueue()
        outbox.put(stream.opening)
        replies = self._stub.StreamSession(
            iter(outbox.get, None), timeout=self.timeout, metadata=self._metadata
        )
        try:
            stream.opened(next(replies))
            for chunk in chunks:
                outbox.put(stream.step(chunk))
                yield stream.result(next(replies))
            outbox.put(None)  # done writing: the server closes a close_on_end session, then ends
            for _ in replies:
                pass
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        finally:
            outbox.put(None)
            replies.cancel()


Invoke = Callable[[UnaryCall[Any]], Any]


class Session(SessionHandle):
    """A server-held session. ``step`` numbers steps itself and retries a step whose reply was
    lost (UNAVAILABLE, DEADLINE_EXCEEDED) with the same number, so no step is applied twice."""

    def __init__(self, invoke: Invoke, info: SessionInfo, retries: int = 3) -> None:
        super().__init__(info)
        self._invoke = invoke
        self._retries = retries

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def step(self, x: ArrayLike, *, include: Include = None) -> StepResult:
        call = calls.step(self.info, x, include)
        retries = StepRetries(self._retries)
        while True:
            try:
                return self.stepped(self._invoke(call))
            except LstmError as error:
                time.sleep(retries.delay_after(error))

    def refresh(self) -> SessionInfo:
        """Read the session from the server (also how its state is exported)."""
        self.info = self._invoke(calls.get_session(self.session_id))
        return self.info

    def reset(self, state: StateLike | None = None) -> SessionInfo:
        """Back to zeros, or to ``state``; the step count restarts at 0."""
        self.info = self._invoke(calls.reset_session(self.session_id, state))
        return self.info

    def close(self) -> None:
        self._invoke(calls.close_session(self.session_id))
