"""Every conversion between lstm.v1 messages and domain values, in one place."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from lstm_client.v1 import lstm_service_pb2 as pb

from lstm_server.core.inference import StreamChunk
from lstm_server.core.sessions import SessionInfo, StepOutcome
from lstm_server.core.types import (
    Array,
    Limits,
    ModelInfo,
    RaggedSequence,
    RowResult,
    State,
    StateInput,
)

# proto -> domain


def sequence_in(message: pb.Sequence) -> RaggedSequence:
    """A Sequence as flat float32 values plus each timestep's width; shapes are checked later."""
    timesteps = message.timesteps
    widths = np.fromiter((len(v.values) for v in timesteps), np.int64, count=len(timesteps))
    values = np.fromiter(
        chain.from_iterable(v.values for v in timesteps), np.float32, count=int(widths.sum())
    )
    return RaggedSequence(values, widths)


def sequences_in(messages: Iterable[pb.Sequence]) -> list[RaggedSequence]:
    return [sequence_in(m) for m in messages]


def state_in(message: pb.LstmState) -> StateInput:
    """(h, c) as float32 arrays, None where a part is absent."""
    h = np.asarray(message.h.values, np.float32) if message.HasField("h") else None
    c = np.asarray(message.c.values, np.float32) if message.HasField("c") else None
    return h, c


def optional_state_in(
    owner: pb.CreateSessionRequest | pb.ResetSessionRequest, field: str
) -> StateInput:
    return state_in(getattr(owner, field)) if owner.HasField(field) else (None, None)


# domain -> proto


def fill_vectors(field: Any, rows: Array) -> None:
    """Append one Vector per row to a repeated Vector field, built in place (no copies)."""
    add = field.add
    for row in rows.tolist():
        add(values=row)


def fill_state(field: pb.LstmState, state: State) -> None:
    """Set an LstmState field in place."""
    field.h.values.extend(state.h.tolist())
    field.c.values.extend(state.c.tolist())


def state_out(state: State) -> pb.LstmState:
    message = pb.LstmState()
    fill_state(message, state)
    return message


def predict_out(results: list[RowResult]) -> pb.PredictResponse:
    response = pb.PredictResponse()
    for result in results:
        output = response.outputs.add()
        fill_vectors(output.hidden_sequence, result.sequence)
        fill_state(output.final_state, result.state)
    return response


def stream_chunk_out(chunk: StreamChunk) -> pb.PredictStreamResponse:
    message = pb.PredictStreamResponse(
        sequence_index=chunk.sequence_index, start_timestep=chunk.start_timestep
    )
    fill_vectors(message.hidden, chunk.hidden)
    if chunk.final_state is not None:
        fill_state(message.final_state, chunk.final_state)
    return message


def metadata_out(info: ModelInfo, limits: Limits) -> pb.ModelMetadata:
    return pb.ModelMetadata(
        name=info.name,
        version=info.version,
        input_features=info.input_features,
        units=info.units,
        dtype=info.dtype,
        return_sequences=True,
        return_state=True,
        activation=info.activation,
        recurrent_activation=info.recurrent_activation,
        use_bias=info.use_bias,
        limits=pb.ServerLimits(
            max_timesteps=limits.max_timesteps,
            max_batch_size=limits.max_batch_size,
            max_sessions=limits.max_sessions,
            default_session_ttl_seconds=limits.default_session_ttl_seconds,
            max_session_ttl_seconds=limits.max_session_ttl_seconds,
            max_message_bytes=limits.max_message_bytes,
            max_concurrent_rpcs=limits.max_concurrent_rpcs,
        ),
    )


def session_out(session: SessionInfo) -> pb.Session:
    expires_at = Timestamp()
    expires_at.FromNanoseconds(int(session.expires_at * 1e9))
    return pb.Session(
        session_id=session.session_id,
        state=state_out(session.state),
        step_count=session.step_count,
        model_version=session.model_version,
        expires_at=expires_at,
        ttl_seconds=session.ttl_seconds,
    )


def step_out(outcome: StepOutcome) -> pb.StepResponse:
    message = pb.StepResponse(session_id=outcome.session_id, step_number=outcome.step_number)
    fill_state(message.state, outcome.state)
    fill_vectors(message.hidden_sequence, outcome.hidden_sequence)
    return message
