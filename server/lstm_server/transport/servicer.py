"""The lstm.v1.LstmService servicer: convert in, call the core, convert out.

The methods whose messages carry sequences (Predict, PredictStream, Step, StreamSession) receive
their request's bytes and return their reply's bytes, read and written by ``transport.wire`` at
array speed: limits are checked before anything is converted, and large requests are read (and
large replies written) off the event loop, so that no request holds the loop, and the health
checks it serves, for long.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf import message_factory
from grpc.aio import ServicerContext as Context
from lstm_client.v1 import lstm_service_pb2 as pb

from lstm_server.core.errors import InvalidInput, ModelNotReady, ServingError, SessionNotFound
from lstm_server.core.inference import InferenceService
from lstm_server.core.registry import TAKES_CALLS, ModelRegistry, ServedModel
from lstm_server.core.sessions import (
    BeforeRun,
    SessionInfo,
    SessionService,
    StepOutcome,
    check_window,
)
from lstm_server.core.types import Limits, RaggedSequence
from lstm_server.transport import converters as conv
from lstm_server.transport import handlers, wire
from lstm_server.transport.auth import principal
from lstm_server.transport.calls import GRPC
from lstm_server.transport.errors import rpc_status
from lstm_server.transport.limits import check_reply_bytes
from lstm_server.transport.observation import StepObserver, timed_step
from lstm_server.transport.off_loop import OFF_LOOP_BYTES, converted
from lstm_server.transport.read_ahead import read_ahead
from lstm_server.transport.traced import RpcTracer

T = TypeVar("T")
# Methods whose handlers take and return bytes (see the module docstring).
RAW_METHODS = ("Predict", "PredictStream", "Step", "StreamSession")


@dataclass(frozen=True)
class Services:
    """The core the servicer calls; set once the model is loaded and warmed."""

    inference: InferenceService
    sessions: SessionService

    @property
    def models(self) -> ModelRegistry:
        return self.inference.models


def ready(services: Services | None) -> Services:
    """The core, or ModelNotReady while the model loads."""
    if services is None:
        raise ModelNotReady("the model is still loading; retry when health reports SERVING")
    return services


def deadline_of(context: Context) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def _read(read: Callable[[bytes, Limits], T], data: bytes, limits: Limits) -> T:
    return await converted(len(data) > OFF_LOOP_BYTES, read, data, limits)


class LstmServicer:
    """Every RPC of lstm.v1.LstmService. Errors are mapped by the gRPC door (``handlers``)."""

    def __init__(
        self, step_observer: StepObserver | None = None, tracing: RpcTracer | None = None
    ) -> None:
        self.services: Services | None = None
        self.stopping = False  # set when the server shuts down
        self._step_observer = step_observer
        self._tracing = tracing

    def _step(self, method: str) -> contextlib.AbstractContextManager[None]:
        """Report one session step's time and code to the step observer."""
        return timed_step(self._step_observer, method)

    @property
    def _core(self) -> Services:
        return ready(self.services)

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: Context
    ) -> pb.ModelMetadata:
        ref = conv.model_ref_in(request.model)
        async with self._core.inference.model(ref, deadline=deadline_of(context)) as model:
            return conv.metadata_out(model.info, model.limits)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        models = self._core.models
        statuses = [s for s in models.index() if not request.ready or s.state in TAKES_CALLS]
        return conv.models_out(statuses, models.default_model)

    async def Predict(self, request: bytes, context: Context) -> bytes:
        inference = self._core.inference
        batch = await _read(wire.predict_request, request, inference.limits)
        selection = wire.selection(batch.include)
        deadline = deadline_of(context)
        async with inference.model(batch.model, deadline=deadline) as model:
            size = wire.predict_reply_bytes(batch.sequences, model.info, selection)
            check_reply_bytes(size, model.limits, "use PredictStream, which sends them in parts")
            results = await inference.predict(
                model, batch.sequences, batch.initial_states, deadline=deadline
            )
        replies = wire.Replies(model.info, selection)
        return await converted(size > OFF_LOOP_BYTES, replies.predict_response, results)

    async def PredictStream(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        inference = self._core.inference
        batch = await _read(wire.predict_request, request, inference.limits)
        selection = wire.selection(batch.include)
        deadline = deadline_of(context)
        async with inference.model(batch.model, deadline=deadline) as model:
            size = wire.stream_message_bytes(batch.timesteps_per_message, model.info, selection)
            check_reply_bytes(size, model.limits, "ask for fewer timesteps_per_message")
            chunks = inference.predict_stream(
                model,
                batch.sequences,
                batch.initial_states,
                timesteps_per_message=batch.timesteps_per_message,
                deadline=deadline,
            )
            replies = wire.Replies(model.info, selection)
            async for chunk in chunks:
                yield replies.stream_response(chunk)

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.Session:
        return self._session_out(await self._create(request))

    async def Step(self, request: bytes, context: Context) -> bytes:
        with self._step("Step"):
            return await self._unary_step(request, context)

    async def _unary_step(self, request: bytes, context: Context) -> bytes:
        sessions = self._core.sessions
        step = await _read(wire.step_request, request, sessions.limits)
        selection = wire.selection(step.include)
        outcome = await sessions.step(
            step.session_id,
            step.input,
            step.step_number,
            owner=principal(),
            deadline=deadline_of(context),
            before_run=_reply_fits(step.input, selection),
        )
        return await _reply(outcome, step.input, selection, wire.Replies.step_response)

    async def StreamSession(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        sessions = self._core.sessions
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        opening = (await _read(wire.stream_message, first, sessions.limits)).open
        if opening is None:
            raise InvalidInput.single("open", "the first message of a stream must open a session")
        check_window(opening.window, "open.window")
        if opening.WhichOneof("target") == "resume_session_id":
            session = await sessions.get(opening.resume_session_id, owner=principal())
        else:
            session = await self._create(opening.create)
        yield pb.SessionStreamResponse(session=self._session_out(session)).SerializeToString()
        # Steps are read ahead of the one being applied (as many as the window sends before
        # reading replies, within the bytes of one largest message), and applied in order.
        steps = read_ahead(
            request_iterator,
            count=max(opening.window, 1),
            budget_bytes=sessions.limits.max_message_bytes,
        )
        async with contextlib.aclosing(steps):
            async for message in steps:
                yield await self._stream_step(session.session_id, message, opening.window)
        # Only a client that ends the stream ends a close_on_end session. A stream cut by the
        # network or by a server shutdown (whose streams end as if their clients had ended
        # them) leaves it for a resume; its TTL still runs.
        if opening.close_on_end and not context.cancelled() and not self.stopping:
            with contextlib.suppress(SessionNotFound):
                await sessions.close(session.session_id, owner=principal())

    async def _stream_step(self, session_id: str, message: bytes, window: int) -> bytes:
        """One step of a stream; a refused step is answered in-band and the stream goes on."""
        spanned = (
            contextlib.nullcontext()
            if self._tracing is None
            else self._tracing.span("lstm.v1.LstmService/StreamSession step")
        )
        try:
            with spanned, self._step("StreamSession"):
                return await self._applied_stream_step(session_id, message, window)
        except ServingError as error:
            if self._step_observer is not None:
                self._step_observer.refused(GRPC, error.reason)
            return pb.SessionStreamResponse(error=rpc_status(error)).SerializeToString()

    async def _applied_stream_step(self, session_id: str, message: bytes, window: int) -> bytes:
        sessions = self._core.sessions
        step = (await _read(wire.stream_message, message, sessions.limits)).step
        if step is None:
            raise InvalidInput.single("step", "after the opening message, every message is a step")
        selection = wire.selection(step.include)
        outcome = await sessions.step(
            session_id,
            step.input,
            step.step_number,
            owner=principal(),
            window=window,
            before_run=_reply_fits(step.input, selection),
        )
        return await _reply(outcome, step.input, selection, wire.Replies.stream_step_response)

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.Session:
        session = await self._core.sessions.get(request.session_id, owner=principal())
        return self._session_out(session)

    async def ResetSession(self, request: pb.ResetSessionRequest, context: Context) -> pb.Session:
        session = await self._core.sessions.reset(
            request.session_id,
            conv.optional_state_in(request, "state", "layer_states"),
            owner=principal(),
        )
        return self._session_out(session)

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> pb.CloseSessionResponse:
        await self._core.sessions.close(request.session_id, owner=principal())
        return pb.CloseSessionResponse()

    @staticmethod
    def _session_out(session: SessionInfo) -> pb.Session:
        return conv.session_out(session)

    async def _create(self, request: pb.CreateSessionRequest) -> SessionInfo:
        return await self._core.sessions.create(
            conv.optional_state_in(request, "initial_state", "initial_layer_states"),
            model=conv.model_ref_in(request.model),
            ttl_seconds=request.ttl_seconds,
            owner=principal(),
        )


def _reply_fits(sequence: RaggedSequence, selection: wire.Selection) -> BeforeRun:
    """A step's check, once its session's model is known, that its reply will not be too large."""

    def check(model: ServedModel) -> None:
        size = wire.step_reply_bytes(sequence, model.info, selection)
        check_reply_bytes(size, model.limits, "send the input in smaller steps")

    return check


async def _reply(
    outcome: StepOutcome,
    sequence: RaggedSequence,
    selection: wire.Selection,
    write: Callable[[wire.Replies, StepOutcome], bytes],
) -> bytes:
    """A step's reply, written for the model version it ran on."""
    assert outcome.model is not None
    replies = wire.Replies(outcome.model, selection)
    size = wire.step_reply_bytes(sequence, outcome.model, selection)
    return await converted(size > OFF_LOOP_BYTES, write, replies, outcome)


def method_handlers(servicer: LstmServicer) -> grpc.GenericRpcHandler:
    """A handler for every method of the service; the methods of ``RAW_METHODS`` take and
    return bytes."""
    service = pb.DESCRIPTOR.services_by_name["LstmService"]
    return handlers.method_handlers(
        service, servicer, message_factory.GetMessageClass, raw=RAW_METHODS
    )
