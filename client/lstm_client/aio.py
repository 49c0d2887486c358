"""The asyncio SDK: ``AsyncLstmClient`` and ``AsyncSession``, twins of the blocking ones.

They share everything but I/O with them through ``lstm_client.calls``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
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
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

R = TypeVar("R")


class AsyncLstmClient:
    """An asyncio client of lstm.v1.LstmService; use ``async with``. The arguments are those of
    ``LstmClient``."""

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
            grpc.aio.insecure_channel(target)
            if tls is None
            else grpc.aio.secure_channel(target, tls.credentials())
        )
        self._stub = pb_grpc.LstmServiceStub(self._channel)

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
        await self._channel.close()

    async def _invoke(self, call: UnaryCall[R]) -> R:
        method: Callable[..., Awaitable[Any]] = getattr(self._stub, call.method)
        try:
            reply = await method(call.request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        return call.read(reply)

    async def metadata(self) -> ModelMetadata:
        return await self._invoke(calls.metadata())

    async def predict(
        self, x: ArrayLike, initial_state: StateLike | None = None, *, include: Include = None
    ) -> PredictResult:
        return await self._invoke(calls.predict(x, initial_state, include))

    async def predict_many(
        self,
        sequences: Iterable[ArrayLike],
        initial_states: Iterable[StateLike] | None = None,
        *,
        include: Include = None,
    ) -> list[PredictResult]:
        return await self._invoke(calls.predict_many(sequences, initial_states, include))

    async def stream(
        self,
        x: ArrayLike,
        initial_state: StateLike | None = None,
        *,
        timesteps_per_message: int = 1,
        include: Include = None,
    ) -> AsyncIterator[StreamChunk | FinalState]:
        request = calls.stream_request(x, initial_state, timesteps_per_message, include)
        call = self._stub.PredictStream(request, timeout=self.timeout, metadata=self._metadata)
        try:
            async for message in call:
                for item in calls.stream_items(message):
                    yield item
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        finally:
            call.cancel()

    async def session(
        self, initial_state: StateLike | None = None, ttl: int | None = None
    ) -> AsyncSession:
        info = await self._invoke(calls.create_session(initial_state, ttl))
        return AsyncSession(self._invoke, info, self.retries)

    async def attach(self, session_id: str) -> AsyncSession:
        info = await self._invoke(calls.get_session(session_id))
        return AsyncSession(self._invoke, info, self.retries)

    async def stream_session(
        self,
        chunks: Iterable[ArrayLike],
        *,
        initial_state: StateLike | None = None,
        ttl: int | None = None,
        session_id: str | None = None,
        close_on_end: bool | None = None,
        first_step_number: int | None = None,
        include: Include = None,
    ) -> AsyncIterator[StepResult]:
        """Step through ``chunks`` over one stream, as ``LstmClient.stream_session`` does."""
        stream = SessionStream(
            initial_state=initial_state,
            ttl=ttl,
            session_id=session_id,
            close_on_end=close_on_end,
            first_step_number=first_step_number,
            include=include,
        )
        call = self._stub.StreamSession(timeout=self.timeout, metadata=self._metadata)
        try:
            await call.write(stream.opening)
            stream.opened(await call.read())
            for chunk in chunks:
                await call.write(stream.step(chunk))
                yield stream.result(await call.read())
            await call.done_writing()  # the server closes a close_on_end session, then ends
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        finally:
            call.cancel()


AsyncInvoke = Callable[[UnaryCall[Any]], Awaitable[Any]]


class AsyncSession(SessionHandle):
    """The asyncio twin of ``lstm_client.Session``."""

    def __init__(self, invoke: AsyncInvoke, info: SessionInfo, retries: int = 3) -> None:
        super().__init__(info)
        self._invoke = invoke
        self._retries = retries

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def step(self, x: ArrayLike, *, include: Include = None) -> StepResult:
        call = calls.step(self.info, x, include)
        retries = StepRetries(self._retries)
        while True:
            try:
                return self.stepped(await self._invoke(call))
            except LstmError as error:
                await asyncio.sleep(retries.delay_after(error))

    async def refresh(self) -> SessionInfo:
        self.info = await self._invoke(calls.get_session(self.session_id))
        return self.info

    async def reset(self, state: StateLike | None = None) -> SessionInfo:
        self.info = await self._invoke(calls.reset_session(self.session_id, state))
        return self.info

    async def close(self) -> None:
        await self._invoke(calls.close_session(self.session_id))
