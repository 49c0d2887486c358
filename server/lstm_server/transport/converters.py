"""Conversions between lstm.v1 messages and domain values for the small messages (metadata,
sessions, states). The messages that carry sequences are read and written as bytes, at array
speed, by ``transport.wire``."""

from __future__ import annotations

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from lstm_client.v1 import lstm_service_pb2 as pb

from lstm_server.core.errors import InvalidInput
from lstm_server.core.registry import ModelRef, VersionState, VersionStatus
from lstm_server.core.sessions import SessionInfo
from lstm_server.core.types import (
    GivenState,
    Limits,
    ModelInfo,
    State,
    StateInput,
)

# proto -> domain


def model_ref_in(spec: pb.ModelSpec) -> ModelRef:
    """The model and version a request names (empty name: the default model; 0: the newest)."""
    return ModelRef(spec.name, spec.version)


def state_in(message: pb.LstmState) -> StateInput:
    """(h, c) as float32 arrays, None where a part is absent."""
    h = np.asarray(message.h.values, np.float32) if message.HasField("h") else None
    c = np.asarray(message.c.values, np.float32) if message.HasField("c") else None
    return h, c


def layer_states_in(message: pb.LayerStates) -> list[StateInput]:
    """Every layer's (h, c), bottom to top."""
    return [state_in(layer) for layer in message.layers]


def optional_state_in(
    owner: pb.CreateSessionRequest | pb.ResetSessionRequest, field: str, layers_field: str
) -> GivenState | None:
    """The state a request gave in either form, or None if it gave none."""
    single, layered = owner.HasField(field), owner.HasField(layers_field)  # type: ignore[arg-type]
    if single and layered:
        raise InvalidInput.single(layers_field, f"is set with {field}; send one or the other")
    if layered:
        return layer_states_in(getattr(owner, layers_field))
    return state_in(getattr(owner, field)) if single else None


# domain -> proto


def layer_state_out(state: State, part: slice) -> pb.LstmState:
    """One LSTM layer's part of a state."""
    message = pb.LstmState()
    message.h.values.extend(state.h[part].tolist())
    message.c.values.extend(state.c[part].tolist())
    return message


def layer_states_out(state: State, info: ModelInfo) -> pb.LayerStates | None:
    """Every layer's state, for models with several LSTM layers (None for one)."""
    if info.lstm_layers == 1:
        return None
    return pb.LayerStates(layers=[layer_state_out(state, part) for part in info.layer_slices()])


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
        vocabulary_size=info.vocabulary_size,
        layers=[
            pb.Layer(type=layer.type, name=layer.name, units=layer.units, lstm=layer.lstm)
            for layer in info.layers
        ],
        output_size=info.output_size or info.units,
        has_output_layers=info.has_output_layers,
        lstm_layers=info.lstm_layers,
        version_number=info.version_number,
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
            session_memory_per_principal=limits.session_memory_per_principal,
        ),
    )


def session_out(session: SessionInfo) -> pb.Session:
    """A session; its state split into layers as its model version has them (as one layer if
    this server has never had that version)."""
    expires_at = Timestamp()
    expires_at.FromNanoseconds(int(session.expires_at * 1e9))
    info = session.model
    return pb.Session(
        session_id=session.session_id,
        state=layer_state_out(
            session.state, slice(None) if info is None else info.hidden_columns()
        ),
        step_count=session.step_count,
        model_version=session.model_version,
        expires_at=expires_at,
        ttl_seconds=session.ttl_seconds,
        layer_states=None if info is None else layer_states_out(session.state, info),
        model=pb.ModelSpec(name=session.model_name, version=session.version_number),
    )


_STATES = {
    VersionState.LOADING: pb.MODEL_VERSION_STATE_LOADING,
    VersionState.READY: pb.MODEL_VERSION_STATE_READY,
    VersionState.DRAINING: pb.MODEL_VERSION_STATE_DRAINING,
    VersionState.UNLOADING: pb.MODEL_VERSION_STATE_UNLOADING,
    VersionState.UNAVAILABLE: pb.MODEL_VERSION_STATE_UNAVAILABLE,
}


def models_out(statuses: list[VersionStatus], default_model: str) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[
            pb.ModelVersionStatus(
                name=s.name,
                version=s.version,
                state=_STATES[s.state],
                reason=s.reason,
                digest=s.digest,
            )
            for s in statuses
        ],
        default_model=default_model,
    )
