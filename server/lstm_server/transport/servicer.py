"""The lstm.v1.LstmService servicer: convert in, call the core, convert out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from grpc.aio import ServicerContext as Context
from lstm_client.v1 import lstm_service_pb2 as pb
from lstm_client.v1 import lstm_service_pb2_grpc as pb_grpc

from lstm_server.core.errors import InvalidInput, ModelNotReady, ServingError, SessionNotFound
from lstm_server.core.inference import InferenceService
from lstm_server.core.sessions import SessionInfo, SessionService
from lstm_server.transport import converters as conv
from lstm_server.transport.auth import principal
from lstm_server.transport.errors import rpc_status


@dataclass(frozen=True)
class Services:
    """The core the servicer calls; set once the model is loaded and warmed."""

    inference: InferenceService
    sessions: SessionService


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class LstmServicer(pb_grpc.LstmServiceServicer):
    """Every RPC of lstm.v1.LstmService. Errors are mapped by ErrorMappingInterceptor."""

    def __init__(self) -> None:
        self.services: Services | None = None

    @property
    def _core(self) -> Services:
        if self.services is None:
            raise ModelNotReady("the model is still loading; retry when health reports SERVING")
        return self.services

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: Context
    ) -> pb.ModelMetadata:
        inference = self._core.inference
        return conv.metadata_out(inference.info, inference.limits)

    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        results = await self._core.inference.predict(
            conv.sequences_in(request.sequences),
            [conv.state_in(s) for s in request.initial_states],
            deadline=_deadline(context),
        )
        return conv.predict_out(results)

    async def PredictStream(
        self, request: pb.PredictRequest, context: Context
    ) -> AsyncIterator[pb.PredictStreamResponse]:
        chunks = self._core.inference.predict_stream(
            conv.sequences_in(request.sequences),
            [conv.state_in(s) for s in request.initial_states],
            timesteps_per_message=request.timesteps_per_message,
            deadline=_deadline(context),
        )
        async for chunk in chunks:
            yield conv.stream_chunk_out(chunk)

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.Session:
        return conv.session_out(await self._create(request))

    async def Step(self, request: pb.StepRequest, context: Context) -> pb.StepResponse:
        outcome = await self._core.sessions.step(
            request.session_id,
            conv.sequence_in(request.input),
            request.step_number,
            owner=principal(),
            deadline=_deadline(context),
        )
        return conv.step_out(outcome)

    async def StreamSession(
        self, request_iterator: AsyncIterator[pb.SessionStreamRequest], context: Context
    ) -> AsyncIterator[pb.SessionStreamResponse]:
        sessions = self._core.sessions
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("kind") != "open":
            raise InvalidInput.single("open", "the first message of a stream must open a session")
        opening = first.open
        if opening.WhichOneof("target") == "resume_session_id":
            session = await sessions.get(opening.resume_session_id, owner=principal())
        else:
            session = await self._create(opening.create)
        yield pb.SessionStreamResponse(session=conv.session_out(session))
        try:
            async for message in request_iterator:
                yield await self._stream_step(session.session_id, message)
        finally:
            if opening.close_on_end:
                with contextlib.suppress(SessionNotFound):
                    await sessions.close(session.session_id, owner=principal())

    async def _stream_step(
        self, session_id: str, message: pb.SessionStreamRequest
    ) -> pb.SessionStreamResponse:
        """One step of a stream; a refused step is answered in-band and the stream goes on."""
        try:
            if message.WhichOneof("kind") != "step":
                raise InvalidInput.single(
                    "step", "after the opening message, every message is a step"
                )
            outcome = await self._core.sessions.step(
                session_id,
                conv.sequence_in(message.step.input),
                message.step.step_number,
                owner=principal(),
            )
        except ServingError as error:
            return pb.SessionStreamResponse(error=rpc_status(error))
        return pb.SessionStreamResponse(step=conv.step_out(outcome))

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.Session:
        session = await self._core.sessions.get(request.session_id, owner=principal())
        return conv.session_out(session)

    async def ResetSession(self, request: pb.ResetSessionRequest, context: Context) -> pb.Session:
        session = await self._core.sessions.reset(
            request.session_id, conv.optional_state_in(request, "state"), owner=principal()
        )
        return conv.session_out(session)

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> pb.CloseSessionResponse:
        await self._core.sessions.close(request.session_id, owner=principal())
        return pb.CloseSessionResponse()

    async def _create(self, request: pb.CreateSessionRequest) -> SessionInfo:
        return await self._core.sessions.create(
            conv.optional_state_in(request, "initial_state"),
            ttl_seconds=request.ttl_seconds,
            owner=principal(),
        )
