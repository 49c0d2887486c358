"""The asyncio SDK: ``AsyncLstmClient`` and ``AsyncSession``, twins of the blocking ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
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


class AsyncLstmClient:
    """An asyncio client of lstm.v1.LstmService; use ``async with``."""

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

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None

    async def metadata(self) -> ModelMetadata:
        return codec.model_metadata(
            await self._call(self._stub.GetModelMetadata, pb.GetModelMetadataRequest())
        )

    async def predict(self, x: ArrayLike, initial_state: StateLike | None = None) -> PredictResult:
        request, batched = codec.batch_of(x, initial_state)
        results = codec.predict_results(await self._call(self._stub.Predict, request))
        return codec.stack(results) if batched else results[0]

    async def predict_many(
        self, sequences: Iterable[ArrayLike], initial_states: Iterable[StateLike] | None = None
    ) -> list[PredictResult]:
        request = codec.predict_request(sequences, initial_states)
        return codec.predict_results(await self._call(self._stub.Predict, request))

    async def stream(
        self,
        x: ArrayLike,
        initial_state: StateLike | None = None,
        *,
        timesteps_per_message: int = 1,
    ) -> AsyncIterator[StreamChunk | FinalState]:
        request, _ = codec.batch_of(x, initial_state)
        request.timesteps_per_message = timesteps_per_message
        call = self._stub.PredictStream(request, timeout=self.timeout, metadata=self._metadata)
        try:
            async for message in call:
                for item in codec.stream_items(message):
                    yield item
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        finally:
            call.cancel()

    async def session(
        self, initial_state: StateLike | None = None, ttl: int | None = None
    ) -> AsyncSession:
        message = await self._call(
            self._stub.CreateSession, codec.create_request(initial_state, ttl)
        )
        return AsyncSession(self, codec.session_info(message))

    async def attach(self, session_id: str) -> AsyncSession:
        message = await self._call(
            self._stub.GetSession, pb.GetSessionRequest(session_id=session_id)
        )
        return AsyncSession(self, codec.session_info(message))

    async def stream_session(
        self,
        chunks: Iterable[ArrayLike],
        *,
        initial_state: StateLike | None = None,
        ttl: int | None = None,
        session_id: str | None = None,
        close_on_end: bool | None = None,
    ) -> AsyncIterator[StepResult]:
        """Step through ``chunks`` over one stream, as ``LstmClient.stream_session`` does."""
        opening = pb.OpenSession(
            close_on_end=session_id is None if close_on_end is None else close_on_end
        )
        if session_id is None:
            opening.create.CopyFrom(codec.create_request(initial_state, ttl))
        else:
            opening.resume_session_id = session_id
        call = self._stub.StreamSession(timeout=self.timeout, metadata=self._metadata)
        try:
            await call.write(pb.SessionStreamRequest(open=opening))
            number = (await call.read()).session.step_count
            for chunk in chunks:
                number += 1
                step = pb.SessionStep(input=codec.sequence_message(chunk), step_number=number)
                await call.write(pb.SessionStreamRequest(step=step))
                reply = await call.read()
                if reply.HasField("error"):
                    raise LstmError.from_status(reply.error)
                yield codec.step_result(reply.step)
            await call.done_writing()
        except grpc.RpcError as error:
            raise LstmError.from_rpc_error(error) from None
        finally:
            call.cancel()


class AsyncSession:
    """The asyncio twin of ``lstm_client.Session``."""

    def __init__(self, client: AsyncLstmClient, info: SessionInfo) -> None:
        self._client = client
        self.info = info

    @property
    def session_id(self) -> str:
        return self.info.session_id

    @property
    def state(self) -> tuple[Any, Any]:
        return self.info.h, self.info.c

    @property
    def step_count(self) -> int:
        return self.info.step_count

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def step(self, x: ArrayLike) -> StepResult:
        request = pb.StepRequest(
            session_id=self.session_id,
            input=codec.sequence_message(x),
            step_number=self.step_count + 1,
        )
        delays = retry_delays(self._client.retries)
        while True:
            try:
                reply = await self._client._call(self._client._stub.Step, request)
                break
            except LstmError as error:
                delay = next(delays, None)
                if error.code not in RETRYABLE_CODES or delay is None:
                    raise
                await asyncio.sleep(delay)
        result = codec.step_result(reply)
        self.info = codec.advanced(self.info, result)
        return result

    async def refresh(self) -> SessionInfo:
        stub = self._client._stub
        request = pb.GetSessionRequest(session_id=self.session_id)
        self.info = codec.session_info(await self._client._call(stub.GetSession, request))
        return self.info

    async def reset(self, state: StateLike | None = None) -> SessionInfo:
        stub = self._client._stub
        request = codec.reset_request(self.session_id, state)
        self.info = codec.session_info(await self._client._call(stub.ResetSession, request))
        return self.info

    async def close(self) -> None:
        stub = self._client._stub
        await self._client._call(
            stub.CloseSession, pb.CloseSessionRequest(session_id=self.session_id)
        )
