"""numpy ⇄ lstm.v1 messages for the SDK; shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC
from itertools import chain
from typing import Any

import numpy as np
from google.protobuf.json_format import MessageToDict

from lstm_client.errors import arguments
from lstm_client.results import (
    FinalState,
    LayerState,
    ModelMetadata,
    ModelStatus,
    PredictResult,
    SessionInfo,
    StepResult,
    StreamChunk,
)
from lstm_client.v1 import lstm_service_pb2 as pb

ArrayLike = Any  # numpy arrays or nested lists of numbers
# (h, c) for a single-layer model, or one (h, c) per LSTM layer (a list of LayerState).
StateLike = tuple[ArrayLike, ArrayLike] | Sequence[ArrayLike] | Sequence[LayerState]
# Per-timestep results to ask for: "outputs" (the default), "hidden", "layer_hidden".
Include = Iterable[str] | None

OUTPUTS: dict[str, pb.Output] = {
    "outputs": pb.OUTPUT_MODEL,
    "hidden": pb.OUTPUT_HIDDEN,
    "layer_hidden": pb.OUTPUT_LAYER_HIDDEN,
}


def include_values(include: Include) -> list[pb.Output]:
    if include is None:
        return []
    names = [include] if isinstance(include, str) else list(include)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise ValueError(f"include takes {sorted(OUTPUTS)}, got {unknown}")
    return [OUTPUTS[n] for n in names]


def vectors_to_array(vectors: Sequence[pb.Vector]) -> np.ndarray:
    """Repeated Vectors of equal width as a (n, width) float32 array."""
    if not vectors:
        return np.zeros((0, 0), np.float32)
    width = len(vectors[0].values)
    flat = np.fromiter(chain.from_iterable(v.values for v in vectors), np.float32)
    return flat.reshape(len(vectors), width)


def vector_to_array(vector: pb.Vector) -> np.ndarray:
    return np.asarray(vector.values, np.float32)


def is_tokens(x: ArrayLike) -> bool:
    """Integer input is token ids (for models that start with an Embedding)."""
    return np.asarray(x).dtype.kind in "iu"


def sequence_message(x: ArrayLike) -> pb.Sequence:
    """A (T, F) array as a Sequence (a 1-D float array is one feature per timestep); a 1-D
    integer array is one token id per timestep."""
    if is_tokens(x):
        ids = np.asarray(x)
        if ids.ndim != 1:
            raise ValueError(f"token ids have shape (timesteps,), got {ids.shape}")
        return pb.Sequence(tokens=ids.tolist())
    rows = np.asarray(x, np.float32)
    if rows.ndim == 1:
        rows = rows[:, None]
    if rows.ndim != 2:
        raise ValueError(f"a sequence has shape (timesteps, features), got {rows.shape}")
    return pb.Sequence(timesteps=[pb.Vector(values=r) for r in rows.tolist()])


def state_message(state: tuple[ArrayLike, ArrayLike] | Sequence[ArrayLike]) -> pb.LstmState:
    h, c = state
    return pb.LstmState(
        h=pb.Vector(values=np.asarray(h, np.float32).ravel().tolist()),
        c=pb.Vector(values=np.asarray(c, np.float32).ravel().tolist()),
    )


def is_layered(state: StateLike) -> bool:
    """Whether ``state`` is one (h, c) per layer: LayerStates, or pairs whose h is a vector."""
    items = list(state)
    return bool(items) and all(
        isinstance(item, LayerState)
        or (isinstance(item, tuple) and len(item) == 2 and np.ndim(item[0]) >= 1)
        for item in items
    )


def layer_states_message(state: StateLike) -> pb.LayerStates:
    return pb.LayerStates(layers=[state_message(layer) for layer in state])


def predict_request(
    sequences: Iterable[ArrayLike],
    initial_states: Iterable[StateLike] | None,
    include: Include = None,
) -> pb.PredictRequest:
    request = pb.PredictRequest(
        sequences=[sequence_message(x) for x in sequences], include=include_values(include)
    )
    for state in initial_states or ():
        if is_layered(state):
            request.initial_layer_states.append(layer_states_message(state))
        else:
            request.initial_states.append(state_message(state))  # type: ignore[arg-type]
    return request


def _rows(part: ArrayLike, batched: bool) -> list[np.ndarray]:
    array = np.asarray(part, np.float32)
    return list(array) if batched else [array]


def batch_of(
    x: ArrayLike, initial_state: StateLike | None, include: Include = None
) -> tuple[pb.PredictRequest, bool]:
    """A request for (T, F) or (B, T, F) input, or (T,) or (B, T) token ids; the flag says
    whether a batch axis was given."""
    tokens = is_tokens(x)
    array = np.asarray(x) if tokens else np.asarray(x, np.float32)
    batched = array.ndim == (2 if tokens else 3)
    if not 1 <= array.ndim <= (2 if tokens else 3):
        shapes = "(T,) or (B, T) token ids" if tokens else "(T, F) or (B, T, F)"
        raise ValueError(f"x has shape {shapes}, got {array.shape}")
    sequences = list(array) if batched else [array]
    states: list[StateLike] | None = None
    if initial_state is not None:
        if is_layered(initial_state):
            per_layer = [
                list(zip(_rows(h, batched), _rows(c, batched), strict=True))
                for h, c in initial_state
            ]
            states = [[LayerState(*pair) for pair in row] for row in zip(*per_layer, strict=True)]
        else:
            h, c = initial_state  # type: ignore[misc]
            states = list(zip(_rows(h, batched), _rows(c, batched), strict=True))
    return predict_request(sequences, states, include), batched


def _layer_states(message: pb.LayerStates, single: pb.LstmState) -> tuple[LayerState, ...]:
    layers = message.layers or [single]
    return tuple(LayerState(vector_to_array(s.h), vector_to_array(s.c)) for s in layers)


def _timesteps(
    hidden: Sequence[pb.Vector],
    outputs: Sequence[pb.Vector],
    layer_hidden: Sequence[pb.LayerSequence],
) -> tuple[np.ndarray | None, np.ndarray | None, tuple[np.ndarray, ...]]:
    """(top hidden, model outputs, every layer's hidden) of a reply; for a model without output
    layers, its outputs are the hidden sequence."""
    top = vectors_to_array(hidden) if hidden else None
    model = vectors_to_array(outputs) if outputs else top
    layers = tuple(vectors_to_array(layer.timesteps) for layer in layer_hidden)
    if top is None and layers and not outputs:
        top = layers[-1]
    return top, model, layers


def predict_results(response: pb.PredictResponse) -> list[PredictResult]:
    results = []
    for o in response.outputs:
        top, model, layers = _timesteps(o.hidden_sequence, o.outputs, o.layer_hidden)
        results.append(
            PredictResult(
                top,
                vector_to_array(o.final_state.h),
                vector_to_array(o.final_state.c),
                model,
                _layer_states(o.final_layer_states, o.final_state),
                layers,
            )
        )
    return results


def _stacked(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
    return None if any(a is None for a in arrays) else np.stack(arrays)  # type: ignore[arg-type]


def stack(results: list[PredictResult]) -> PredictResult:
    layers = len(results[0].states)
    return PredictResult(
        _stacked([r.sequence for r in results]),
        np.stack([r.h for r in results]),
        np.stack([r.c for r in results]),
        _stacked([r.outputs for r in results]),
        tuple(
            LayerState(
                np.stack([r.states[k].h for r in results]),
                np.stack([r.states[k].c for r in results]),
            )
            for k in range(layers)
        ),
        tuple(
            np.stack([r.layer_sequences[k] for r in results])
            for k in range(len(results[0].layer_sequences))
        ),
    )


def stream_items(message: pb.PredictStreamResponse) -> Iterator[StreamChunk | FinalState]:
    """A stream message as its chunk, followed by the final state when it carries one."""
    top, model, layers = _timesteps(message.hidden, message.outputs, message.layer_hidden)
    if model is not None or top is not None or layers:
        yield StreamChunk(message.sequence_index, message.start_timestep, top, model, layers)
    if message.HasField("final_state"):
        yield FinalState(
            message.sequence_index,
            vector_to_array(message.final_state.h),
            vector_to_array(message.final_state.c),
            _layer_states(message.final_layer_states, message.final_state),
        )


def step_result(message: pb.StepResponse) -> StepResult:
    top, model, layers = _timesteps(message.hidden_sequence, message.outputs, message.layer_hidden)
    return StepResult(
        message.session_id,
        message.step_number,
        top,
        vector_to_array(message.state.h),
        vector_to_array(message.state.c),
        model,
        _layer_states(message.layer_states, message.state),
        layers,
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
        states=_layer_states(message.layer_states, message.state),
        model_name=message.model.name,
        version_number=message.model.version,
    )


def _set_state(
    request: pb.CreateSessionRequest | pb.ResetSessionRequest,
    state: StateLike | None,
    single: str,
    layered: str,
) -> None:
    if state is None:
        return
    if is_layered(state):
        getattr(request, layered).CopyFrom(layer_states_message(state))
    else:
        getattr(request, single).CopyFrom(state_message(state))  # type: ignore[arg-type]


def create_request(initial_state: StateLike | None, ttl: int | None) -> pb.CreateSessionRequest:
    request = pb.CreateSessionRequest(ttl_seconds=ttl or 0)
    _set_state(request, initial_state, "initial_state", "initial_layer_states")
    return request


def reset_request(session_id: str, state: StateLike | None) -> pb.ResetSessionRequest:
    request = pb.ResetSessionRequest(session_id=session_id)
    _set_state(request, state, "state", "layer_states")
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
        vocabulary_size=message.vocabulary_size,
        layers=[
            {"type": layer.type, "name": layer.name, "units": layer.units, "lstm": layer.lstm}
            for layer in message.layers
        ],
        output_size=message.output_size,
        has_output_layers=message.has_output_layers,
        lstm_layers=message.lstm_layers or 1,
        version_number=message.version_number or 1,
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
    return replace(
        info, h=result.h, c=result.c, states=result.states, step_count=result.step_number
    )


@arguments
def model_spec(name: str = "", version: int = 0) -> pb.ModelSpec:
    """Which model and version a call is for (empty: the server's default model; 0: its newest
    version)."""
    if version < 0:
        raise ValueError(f"model_version is {version}; versions are 1, 2, ... (0: the newest)")
    return pb.ModelSpec(name=name, version=version)


def model_statuses(message: pb.ListModelsResponse) -> list[ModelStatus]:
    return [
        ModelStatus(
            name=m.name,
            version=m.version,
            state=pb.ModelVersionState.Name(m.state).removeprefix("MODEL_VERSION_STATE_"),
            reason=m.reason,
            digest=m.digest,
        )
        for m in message.models
    ]
