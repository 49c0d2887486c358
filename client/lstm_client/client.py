"""The synchronous SDK: ``LstmClient`` and its server-held ``Session``.

What each call sends and how its reply is read live in ``lstm_client.calls``, shared with the
asyncio twin (``lstm_client.aio``); this module only carries them over a blocking channel.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from lstm_client import calls, codec
from lstm_client.calls import RequestLimit, SessionHandle, SessionStream, StepRetries, UnaryCall
from lstm_client.codec import ArrayLike, Include, StateLike
from lstm_client.connection import (
    CallOptions,
    ChannelSettings,
    Metadata,
    RetryPolicy,
    TlsOptions,
    call_metadata,
    open_channel,
)
from lstm_client.errors import LstmError
from lstm_client.results import (
    FinalState,
    ModelMetadata,
    ModelStatus,
    PredictResult,
    SessionInfo,
    StepResult,
    StreamChunk,
)
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

R = TypeVar("R")
T = TypeVar("T")


def retry_policy(retry: RetryPolicy | None, retries: int | None) -> RetryPolicy:
    """``retry``, or the default; ``retries`` (the older way to say it) sets its attempts."""
    if retries is not None:
        return RetryPolicy(attempts=retries + 1)
    return retry or RetryPolicy()


class LstmClient:
    """A blocking client of lstm.v1.LstmService.

    ``timeout`` (seconds) applies to each unary call, and to each message of a stream (a stream
    has no deadline of its own); ``metadata`` is sent with every call, and so is ``token`` as a
    Bearer token; ``tls`` connects over TLS (mutual TLS with a client certificate). ``options``
    are gRPC channel options, merged over the defaults (no limit on received messages; a
    ``("grpc.lb_policy_name", "round_robin")`` spreads calls over every address a name
    resolves to); ``channel`` uses a channel the caller made instead. ``retry`` says how
    session steps, session streams and idempotent calls ride over a restarting replica;
    ``wait_for_ready`` waits for a connection instead of failing fast; ``compression`` applies
    to every call. Every call also takes its own ``timeout`` and ``metadata``.
    """

    def __init__(
        self,
        target: str = "",
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        retries: int | None = None,
        token: str | None = None,
        tls: TlsOptions | None = None,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
        retry: RetryPolicy | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
        model: str = "",
        model_version: int = 0,
    ) -> None:
        self.target = target
        self.model = codec.model_spec(model, model_version)
        self.timeout = timeout
        self.retry = retry_policy(retry, retries)
        self.call_options = CallOptions(
            timeout, call_metadata(metadata, token), wait_for_ready, compression
        )
        settings = ChannelSettings(tls, tuple(options), self.retry, compression)
        self._owns_channel = channel is None
        self._channel = channel or open_channel(target, settings, aio=False)
        self._stub = pb_grpc.LstmServiceStub(self._channel)
        self._limit = RequestLimit()

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
        """Close the channel (not one the caller passed in)."""
        if self._owns_channel:
            self._channel.close()

    def _invoke(
        self, call: UnaryCall[R], timeout: float | None = None, metadata: Metadata | None = None
    ) -> R:
        self._fits(call.request)
        method: Callable[..., Any] = getattr(self._stub, call.method)
        try:
            reply = method(call.request, **self.call_options.kwargs(timeout, metadata))
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        return call.read(reply)

    def _retried(
        self, call: UnaryCall[R], timeout: float | None = None, metadata: Metadata | None = None
    ) -> R:
        """``call``, sent again after a lost reply as a session step is (``StepRetries``)."""
        retries = StepRetries(self.retry)
        while True:
            try:
                return self._invoke(call, timeout, metadata)
            except LstmError as error:
                time.sleep(retries.delay_after(error))

    def _fits(self, request: Any) -> None:
        """Refuse a request over the server's size limit before sending it."""
        size = self._limit.size_to_check(request)
        if size:
            if self._limit.value is None:
                self._limit.learn(self._invoke(calls.metadata(self.model)))
            self._limit.check(size)

    def with_model(self, model: str, model_version: int = 0) -> LstmClient:
        """A client for another model (and version; 0: its newest) of the same server, on this
        client's channel: the channel stays this client's to close."""
        other = copy.copy(self)
        other.model = codec.model_spec(model, model_version)
        other._owns_channel = False
        return other

    def list_models(
        self,
        *,
        ready: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[ModelStatus]:
        """Every model version the server has (``ready``: only those that take calls)."""
        return self._invoke(calls.list_models(ready), timeout, metadata)

    def metadata(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> ModelMetadata:
        """The model this client calls (its features, units, layers, version) and the server's
        limits."""
        return self._invoke(calls.metadata(self.model), timeout, metadata)

    def predict(
        self,
        x: ArrayLike,
        initial_state: StateLike | None = None,
        *,
        include: Include = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> PredictResult:
        """Run (T, F) or (B, T, F) input; the result keeps the batch axis if the input had one."""
        return self._invoke(calls.predict(x, initial_state, include, self.model), timeout, metadata)

    def predict_many(
        self,
        sequences: Iterable[ArrayLike],
        initial_states: Iterable[StateLike] | None = None,
        *,
        include: Include = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[PredictResult]:
        """Run sequences of different lengths in one request; one result per sequence."""
        call = calls.predict_many(sequences, initial_states, include, self.model)
        return self._invoke(call, timeout, metadata)

    def stream(
        self,
        x: ArrayLike,
        initial_state: StateLike | None = None,
        *,
        timesteps_per_message: int = 1,
        include: Include = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Iterator[StreamChunk | FinalState]:
        """Yield results as the server computes them, then each sequence's final state.

        ``timeout`` (default: the client's) bounds the wait for each message, not the stream.
        Stopping early (``break``, or closing the iterator) cancels the call, which stops the
        server's computation."""
        request = calls.stream_request(x, initial_state, timesteps_per_message, include, self.model)
        self._fits(request)
        kwargs = self.call_options.kwargs(metadata=metadata, stream=True)
        replies = _Replies(self._stub.PredictStream(request, **kwargs), self._per_message(timeout))
        try:
            while (message := replies.next()) is not None:
                yield from calls.stream_items(message)
        finally:
            replies.close()

    def _per_message(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def session(
        self,
        initial_state: StateLike | None = None,
        ttl: int | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Session:
        """Create a server-held session (from zeros, or ``initial_state``; ``ttl``: seconds it
        lives idle, default the server's) on this client's model; use it as a context manager to
        close it on exit. Retried as a step is when the server cannot be reached."""
        call = calls.create_session(initial_state, ttl, self.model)
        return Session(self._invoke, self._retried(call, timeout, metadata), self.retry)

    def attach(
        self, session_id: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> Session:
        """A handle on an existing session (for example one created by another process, or by
        this one before a restart), at its current step."""
        info = self._retried(calls.get_session(session_id), timeout, metadata)
        return Session(self._invoke, info, self.retry)

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
        window: int = 1,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Iterator[StepResult]:
        """Step through ``chunks`` over a bidirectional stream; yield each step's result.

        ``window`` steps (1 to 64) are sent before their replies are read, so one stream's
        throughput is not bound by the round trip; ``chunks`` is then read that far ahead of
        the results.

        Opens a new session, or resumes ``session_id``. A new session is closed when the stream
        ends unless ``close_on_end=False``; a resumed one is kept unless ``close_on_end=True``.
        To resume after a lost reply, pass ``first_step_number``: the number of the first chunk
        (the first step not acknowledged), so a step that was applied is answered, not repeated.
        A stream that breaks (UNAVAILABLE: a replica restarts, a balancer moves) is resumed on
        a new one by itself, as ``retry`` allows, with the same guarantee. ``timeout`` (default:
        the client's) bounds the wait for each step's reply, not the stream.
        """
        stream = SessionStream(
            initial_state=initial_state,
            ttl=ttl,
            session_id=session_id,
            close_on_end=close_on_end,
            first_step_number=first_step_number,
            include=include,
            window=window,
            model=self.model,
        )
        wait = self._per_message(timeout)
        kwargs = self.call_options.kwargs(metadata=metadata, stream=True)
        retries = self.retry.delays()
        source = iter(chunks)
        while True:
            outbox: queue.SimpleQueue[pb.SessionStreamRequest | None] = queue.SimpleQueue()
            replies = _Replies(self._stub.StreamSession(iter(outbox.get, None), **kwargs), wait)
            try:
                outbox.put(stream.opening)
                for message in stream.opened(replies.reply()):
                    outbox.put(message)
                while True:
                    while stream.open_slots and (chunk := next(source, _END)) is not _END:
                        message = stream.step(chunk)
                        self._fits(message)
                        outbox.put(message)
                    if not stream.pending:
                        break
                    yield stream.result(replies.reply())
                outbox.put(None)  # done writing: the server closes a close_on_end session
                while replies.next() is not None:
                    pass
                return
            except LstmError as error:
                delay = next(retries, None) if stream.resume(error) else None
                if delay is None:
                    raise
                time.sleep(delay)
            finally:
                outbox.put(None)
                replies.close()


_END = object()  # what an exhausted iterator of chunks gives


class _Replies:
    """The messages of a streaming call, each awaited at most ``seconds`` (None: no limit):
    past them the call is cancelled and DEADLINE_EXCEEDED raised. One watchdog thread per
    stream keeps the time (a timer thread per message would cost more than the message)."""

    def __init__(self, call: Any, seconds: float | None) -> None:
        self.call = call
        self._seconds = seconds
        self._due: float | None = None  # when the message awaited now is late
        self._expired = False
        self._closed = False
        self._changed = threading.Condition()
        if seconds is not None:
            threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                if self._due is None:
                    self._changed.wait()
                elif (left := self._due - time.monotonic()) > 0:
                    self._changed.wait(left)
                else:
                    self._expired = True
                    self.call.cancel()
                    return

    def next(self) -> Any:
        """The next message, or None at the stream's end."""
        if self._seconds is not None:
            with self._changed:
                idle = self._due is None
                self._due = time.monotonic() + self._seconds
                if idle:  # a watchdog waiting for a later time wakes up by itself
                    self._changed.notify()
        try:
            return next(self.call, None)
        except grpc.RpcError as error:
            if self._expired:
                raise LstmError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no message within {self._seconds} s",
                    reason="DEADLINE_EXCEEDED",
                ) from None
            raise LstmError.from_rpc_error(error) from None
        finally:
            self._due = None

    def reply(self) -> Any:
        """The next message, which must come: a stream that ends instead is UNAVAILABLE."""
        message = self.next()
        if message is None:
            raise LstmError(grpc.StatusCode.UNAVAILABLE, "the stream ended before its reply")
        return message

    def close(self) -> None:
        """Cancel the call (if it is still running) and stop the watchdog."""
        self.call.cancel()
        with self._changed:
            self._closed = True
            self._changed.notify()


Invoke = Callable[..., Any]


class Session(SessionHandle):
    """A server-held session. ``step`` numbers steps itself and retries a step whose reply was
    lost (UNAVAILABLE, DEADLINE_EXCEEDED) with the same number, so no step is applied twice."""

    def __init__(self, invoke: Invoke, info: SessionInfo, retry: RetryPolicy | int = 3) -> None:
        super().__init__(info)
        self._invoke = invoke
        self._retry = retry if isinstance(retry, RetryPolicy) else RetryPolicy(attempts=retry + 1)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        with contextlib.suppress(LstmError):  # the body's own exception is what the caller sees
            self.close()

    def step(
        self,
        x: ArrayLike,
        *,
        include: Include = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> StepResult:
        """Run ``x`` from the session's state; the returned state is the next step's."""
        return self.stepped(self._retried(calls.step(self.info, x, include), timeout, metadata))

    def _retried(self, call: UnaryCall[R], timeout: float | None, metadata: Metadata | None) -> R:
        retries = StepRetries(self._retry)
        while True:
            try:
                return self._invoke(call, timeout, metadata)  # type: ignore[no-any-return]
            except LstmError as error:
                time.sleep(retries.delay_after(error))

    def refresh(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> SessionInfo:
        """Read the session from the server (also how its state is exported)."""
        self.info = self._retried(calls.get_session(self.session_id), timeout, metadata)
        return self.info

    def reset(
        self,
        state: StateLike | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> SessionInfo:
        """Back to zeros, or to ``state``; the step count restarts at 0."""
        self.info = self._invoke(calls.reset_session(self.session_id, state), timeout, metadata)
        return self.info

    def close(self, *, timeout: float | None = None, metadata: Metadata | None = None) -> None:
        """End the session on the server. Idempotent: closing a closed (or expired) session is
        done, not an error; a lost reply is retried."""
        if self.closed:
            return
        try:
            self._retried(calls.close_session(self.session_id), timeout, metadata)
        except LstmError as error:
            if not calls.closed_already(error):
                raise
        self.closed = True
