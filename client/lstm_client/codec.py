"""numpy ⇄ lstm.v1 messages for the SDK; shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC
from itertools import chain
from typing import Any

import numpy as np
from google.protobuf.json_format import MessageToDict

from lstm_client.results import (
    FinalState,
    ModelMetadata,
    PredictResult,
    SessionInfo,
    StepResult,
    StreamChunk,
)
from lstm_client.v1 import lstm_service_pb2 as pb

ArrayLike = Any  # numpy arrays or nested lists of numbers
StateLike = tuple[ArrayLike, ArrayLike] | Sequence[ArrayLike]


def vectors_to_array(vectors: Sequence[pb.Vector]) -> np.ndarray:
    """Repeated Vectors of equal width as a (n, width) float32 array."""
    if not vectors:
        return np.zeros((0, 0), np.float32)
    width = len(vectors[0].values)
    flat = np.fromiter(chain.from_iterable(v.values for v in vectors), np.float32)
    return flat.reshape(len(vectors), width)


def vector_to_array(vector: pb.Vector) -> np.ndarray:
    return np.asarray(vector.values, np.float32)


def sequence_message(x: ArrayLike) -> pb.Sequence:
    """A (T, F) array as a Sequence; a 1-D array is read as one feature per timestep."""
    rows = np.asarray(x, np.float32)
    if rows.ndim == 1:
        rows = rows[:, None]
    if rows.ndim != 2:
        raise ValueError(f"a sequence has shape (timesteps, features), got {rows.shape}")
    return pb.Sequence(timesteps=[pb.Vector(values=r) for r in rows.tolist()])


def state_message(state: StateLike) -> pb.LstmState:
    h, c = state
    return pb.LstmState(
        h=pb.Vector(values=np.asarray(h, np.float32).ravel().tolist()),
        c=pb.Vector(values=np.asarray(c, np.float32).ravel().tolist()),
    )


def predict_request(
    sequences: Iterable[ArrayLike], initial_states: Iterable[StateLike] | None
) -> pb.PredictRequest:
    return pb.PredictRequest(
        sequences=[sequence_message(x) for x in sequences],
        initial_states=[state_message(s) for s in initial_states or ()],
    )


def batch_of(x: ArrayLike, initial_state: StateLike | None) -> tuple[pb.PredictRequest, bool]:
    """A request for (T, F) or (B, T, F) input; the flag says whether a batch axis was given."""
    array = np.asarray(x, np.float32)
    batched = array.ndim == 3
    if array.ndim not in (1, 2, 3):
        raise ValueError(f"x has shape (T, F) or (B, T, F), got {array.shape}")
    sequences = list(array) if batched else [array]
    states = None
    if initial_state is not None:
        h, c = (np.asarray(part, np.float32) for part in initial_state)
        states = list(zip(h, c, strict=True)) if batched else [(h, c)]
    return predict_request(sequences, states), batched


def predict_results(response: pb.PredictResponse) -> list[PredictResult]:
    return [
        PredictResult(
            vectors_to_array(o.hidden_sequence),
            vector_to_array(o.final_state.h),
            vector_to_array(o.final_state.c),
        )
        for o in response.outputs
    ]


def stack(results: list[PredictResult]) -> PredictResult:
    return PredictResult(
        np.stack([r.sequence for r in results]),
        np.stack([r.h for r in results]),
        np.stack([r.c for r in results]),
    )


def stream_items(message: pb.PredictStreamResponse) -> Iterator[StreamChunk | FinalState]:
    """A stream message as its chunk, followed by the final state when it carries one."""
    if message.hidden:
        yield StreamChunk(
            message.sequence_index, message.start_timestep, vectors_to_array(message.hidden)
        )
    if message.HasField("final_state"):
        yield FinalState(
            message.sequence_index,
            vector_to_array(message.final_state.h),
            vector_to_array(message.final_state.c),
        )


def step_result(message: pb.StepResponse) -> StepResult:
    return StepResult(
        message.session_id,
        message.step_number,
        vectors_to_array(message.hidden_sequence),
        vector_to_array(message.state.h),
        vector_to_array(message.state.c),
    )


def session_info(message: pb.Session) -> SessionInfo:
    return SessionInfo(
        session_id=message.session_id,
        h=vector_to_array(message.state.h),
        c=vector_to_array(message.state.c),
        step_count=message.step_count,
        model_version=message.model_version,
        expires_at=message.expires_at.ToDatetime(tzinfo=UTC),
        ttl_seconds=message.ttl_seconds,
    )


def create_request(initial_state: StateLike | None, ttl: int | None) -> pb.CreateSessionRequest:
    request = pb.CreateSessionRequest(ttl_seconds=ttl or 0)
    if initial_state is not None:
        request.initial_state.CopyFrom(state_message(initial_state))
    return request


def reset_request(session_id: str, state: StateLike | None) -> pb.ResetSessionRequest:
    request = pb.ResetSessionRequest(session_id=session_id)
    if state is not None:
        request.state.CopyFrom(state_message(state))
    return request


def model_metadata(message: pb.ModelMetadata) -> ModelMetadata:
    return ModelMetadata(
        name=message.name,
        version=message.version,
        input_features=message.input_features,
        units=message.units,
        dtype=message.dtype,
        return_sequences=message.return_sequences,
        return_state=message.return_state,
        activation=message.activation,
        recurrent_activation=message.recurrent_activation,
        use_bias=message.use_bias,
        limits={
            k: int(v)
            for k, v in MessageToDict(
                message.limits,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ).items()
        },
    )


def advanced(info: SessionInfo, result: StepResult) -> SessionInfo:
    """The session as it stands after ``result``."""
    return replace(info, h=result.h, c=result.c, step_count=result.step_number)
