"""Conversions between lstm.v1 messages and domain values for the small messages (metadata,
sessions, states). The messages that carry sequences are read and written as bytes, at array
speed, by ``transport.wire``."""

from __future__ import annotations

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from lstm_client.v1 import lstm_service_pb2 as pb

from lstm_server.core.sessions import SessionInfo
from lstm_server.core.types import (
    Limits,
    ModelInfo,
    State,
    StateInput,
)

# proto -> domain


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


def fill_state(field: pb.LstmState, state: State) -> None:
    """Set an LstmState field in place."""
    field.h.values.extend(state.h.tolist())
    field.c.values.extend(state.c.tolist())


def state_out(state: State) -> pb.LstmState:
    message = pb.LstmState()
    fill_state(message, state)
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
            max_response_bytes=limits.max_response_bytes,
            max_sessions_per_principal=limits.max_sessions_per_principal,
            max_concurrent_rpcs_per_principal=limits.max_concurrent_rpcs_per_principal,
            session_memory_budget=limits.session_memory_budget,
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
