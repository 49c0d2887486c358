"""The asyncio SDK: ``AsyncLstmClient`` and ``AsyncSession``, twins of the blocking ones.

They share everything but I/O with them through ``lstm_client.calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from lstm_client import calls, codec
from lstm_client.calls import RequestLimit, SessionHandle, SessionStream, StepRetries, UnaryCall
from lstm_client.client import retry_policy
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
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

R = TypeVar("R")


class AsyncLstmClient:
    """An asyncio client of lstm.v1.LstmService; use ``async with``. The arguments are those of
    ``LstmClient`` (``channel``: a ``grpc.aio`` channel)."""

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
        channel: grpc.aio.Channel | None = None,
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
        self._channel = channel or open_channel(target, settings, aio=True)
        self._stub = pb_grpc.LstmServiceStub(self._channel)
        self._limit = RequestLimit()

    async def __aenter__(self) -> AsyncLstmClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (not one the caller passed in)."""
        if self._owns_channel:
            await self._channel.close()

    async def _invoke(
        self, call: UnaryCall[R], timeout: float | None = None, metadata: Metadata | None = None
    ) -> R:
        await self._fits(call.request)
        method: Callable[..., Awaitable[Any]] = getattr(self._stub, call.method)
        try:
            reply = await method(call.request, **self.call_options.kwargs(timeout, metadata))
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        return call.read(reply)

    async def _retried(
        self, call: UnaryCall[R], timeout: float | None = None, metadata: Metadata | None = None
    ) -> R:
        """``call``, sent again after a lost reply as a session step is (``StepRetries``)."""
        retries = StepRetries(self.retry)
        while True:
            try:
                return await self._invoke(call, timeout, metadata)
            except LstmError as error:
                await asyncio.sleep(retries.delay_after(error))

    async def _fits(self, request: Any) -> None:
        """Refuse a request over the server's size limit before sending it."""
        size = self._limit.size_to_check(request)
        if size:
            if self._limit.value is None:
                self._limit.learn(await self._invoke(calls.metadata(self.model)))
            self._limit.check(size)

    def with_model(self, model: str, model_version: int = 0) -> AsyncLstmClient:
        """A client for another model (and version; 0: its newest) of the same server, on this
        client's channel: the channel stays this client's to close."""
        other = copy.copy(self)
        other.model = codec.model_spec(model, model_version)
        other._owns_channel = False
        return other

    async def list_models(
        self,
        *,
        ready: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[ModelStatus]:
        """Every model version the server has (``ready``: only those that take calls)."""
        return await self._invoke(calls.list_models(ready), timeout, metadata)

    async def metadata(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> ModelMetadata:
        """The model this client calls and the server's limits (``LstmClient.metadata``)."""
        return await self._invoke(calls.metadata(self.model), timeout, metadata)

    async def predict(
        self,
        x: ArrayLike,
        initial_state: StateLike | None = None,
        *,
        include: Include = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> PredictResult:
        return await self._invoke(
            calls.predict(x, initial_state, include, self.model), timeout, metadata
        )

    async def predict_many(
        self,
        sequences: Iterable[ArrayLike],
        initial_states: Iterable[StateLike] | None = None,
        *,
        include: Include = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[PredictResult]:
        call = calls.predict_many(sequences, initial_states, include, self.model)
        return await self._invoke(call, timeout, metadata)

    async def stream(
        self,
        x: ArrayLike,
        initial_state: StateLike | None = None,
        *,
        timesteps_per_message: int = 1,
        include: Include = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[StreamChunk | FinalState]:
        """Results as the server computes them (``LstmClient.stream``)."""
        request = calls.stream_request(x, initial_state, timesteps_per_message, include, self.model)
        await self._fits(request)
        kwargs = self.call_options.kwargs(metadata=metadata, stream=True)
        call = self._stub.PredictStream(request, **kwargs)
        wait = self.timeout if timeout is None else timeout
        try:
            while (message := await _read_within(call, wait)) is not None:
                for item in calls.stream_items(message):
                    yield item
        finally:
            call.cancel()

    async def session(
        self,
        initial_state: StateLike | None = None,
        ttl: int | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncSession:
        """A new server-held session (``LstmClient.session``), retried as a step is."""
        call = calls.create_session(initial_state, ttl, self.model)
        return AsyncSession(self._invoke, await self._retried(call, timeout, metadata), self.retry)

    async def attach(
        self, session_id: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> AsyncSession:
        """A handle on an existing session (``LstmClient.attach``)."""
        info = await self._retried(calls.get_session(session_id), timeout, metadata)
        return AsyncSession(self._invoke, info, self.retry)

    async def stream_session(
        self,
        chunks: Iterable[ArrayLike] | AsyncIterable[ArrayLike],
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
    ) -> AsyncIterator[StepResult]:
        """Step through ``chunks`` (an iterable or an async iterable: a queue, a websocket)
        over one stream, as ``LstmClient.stream_session`` does (``window`` steps in flight),
        resuming it the same way."""
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
        wait = self.timeout if timeout is None else timeout
        kwargs = self.call_options.kwargs(metadata=metadata, stream=True)
        retries = self.retry.delays()
        source = _aiter(chunks)
        while True:
            call = self._stub.StreamSession(**kwargs)
            try:
                await _write(call, stream.opening)
                for message in stream.opened(await _reply(call, wait)):
                    await _write(call, message)
                while True:
                    while stream.open_slots and (chunk := await anext(source, _END)) is not _END:
                        message = stream.step(chunk)
                        await self._fits(message)
                        await _write(call, message)
                    if not stream.pending:
                        break
                    yield stream.result(await _reply(call, wait))
                await call.done_writing()  # the server closes a close_on_end session, then ends
                while await _read_within(call, wait) is not None:
                    pass
                return
            except LstmError as error:
                delay = next(retries, None) if stream.resume(error) else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)
            finally:
                call.cancel()


_END = object()  # what an exhausted iterator of chunks gives


async def _aiter(chunks: Iterable[ArrayLike] | AsyncIterable[ArrayLike]) -> AsyncIterator[Any]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


async def _write(call: Any, message: Any) -> None:
    try:
        await call.write(message)
    except grpc.RpcError as error:
        raise LstmError.from_rpc_error(error) from None
    except asyncio.InvalidStateError:  # the call already ended
        raise LstmError(grpc.StatusCode.UNAVAILABLE, "the stream ended") from None


async def _read_within(call: Any, seconds: float | None) -> Any:
    """The next message (None at the stream's end), waiting at most ``seconds``."""
    try:
        message = await asyncio.wait_for(call.read(), seconds)
    except TimeoutError:
        raise LstmError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no message within {seconds} s",
            reason="DEADLINE_EXCEEDED",
        ) from None
    except grpc.RpcError as error:
        raise LstmError.from_rpc_error(error) from None
    return None if message is grpc.aio.EOF else message


async def _reply(call: Any, seconds: float | None) -> Any:
    message = await _read_within(call, seconds)
    if message is None:
        raise LstmError(grpc.StatusCode.UNAVAILABLE, "the stream ended before its reply")
    return message


AsyncInvoke = Callable[..., Awaitable[Any]]


class AsyncSession(SessionHandle):
    """The asyncio twin of ``lstm_client.Session``."""

    def __init__(
        self, invoke: AsyncInvoke, info: SessionInfo, retry: RetryPolicy | int = 3
    ) -> None:
        super().__init__(info)
        self._invoke = invoke
        self._retry = retry if isinstance(retry, RetryPolicy) else RetryPolicy(attempts=retry + 1)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        with contextlib.suppress(LstmError):  # the body's own exception is what the caller sees
            await self.close()

    async def step(
        self,
        x: ArrayLike,
        *,
        include: Include = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> StepResult:
        """Run ``x`` from the session's state (``Session.step``)."""
        call = calls.step(self.info, x, include)
        return self.stepped(await self._retried(call, timeout, metadata))

    async def _retried(
        self, call: UnaryCall[R], timeout: float | None, metadata: Metadata | None
    ) -> R:
        retries = StepRetries(self._retry)
        while True:
            try:
                return await self._invoke(call, timeout, metadata)  # type: ignore[no-any-return]
            except LstmError as error:
                await asyncio.sleep(retries.delay_after(error))

    async def refresh(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> SessionInfo:
        """Read the session from the server (``Session.refresh``)."""
        self.info = await self._retried(calls.get_session(self.session_id), timeout, metadata)
        return self.info

    async def reset(
        self,
        state: StateLike | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> SessionInfo:
        """Back to zeros, or to ``state`` (``Session.reset``)."""
        call = calls.reset_session(self.session_id, state)
        self.info = await self._invoke(call, timeout, metadata)
        return self.info

    async def close(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> None:
        """End the session on the server; idempotent (``Session.close``)."""
        if self.closed:
            return
        try:
            await self._retried(calls.close_session(self.session_id), timeout, metadata)
        except LstmError as error:
            if not calls.closed_already(error):
                raise
        self.closed = True
