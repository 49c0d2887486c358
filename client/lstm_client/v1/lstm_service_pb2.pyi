from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Output(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_UNSPECIFIED: _ClassVar[Output]
    OUTPUT_MODEL: _ClassVar[Output]
    OUTPUT_HIDDEN: _ClassVar[Output]
    OUTPUT_LAYER_HIDDEN: _ClassVar[Output]

class ModelVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_VERSION_STATE_UNSPECIFIED: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_LOADING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_READY: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_DRAINING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_UNLOADING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_UNAVAILABLE: _ClassVar[ModelVersionState]
OUTPUT_UNSPECIFIED: Output
OUTPUT_MODEL: Output
OUTPUT_HIDDEN: Output
OUTPUT_LAYER_HIDDEN: Output
MODEL_VERSION_STATE_UNSPECIFIED: ModelVersionState
MODEL_VERSION_STATE_LOADING: ModelVersionState
MODEL_VERSION_STATE_READY: ModelVersionState
MODEL_VERSION_STATE_DRAINING: ModelVersionState
MODEL_VERSION_STATE_UNLOADING: ModelVersionState
MODEL_VERSION_STATE_UNAVAILABLE: ModelVersionState

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class LstmState(_message.Message):
    __slots__ = ("h", "c")
    H_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    h: Vector
    c: Vector
    def __init__(self, h: _Optional[_Union[Vector, _Mapping]] = ..., c: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...

class LayerStates(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LstmState]
    def __init__(self, layers: _Optional[_Iterable[_Union[LstmState, _Mapping]]] = ...) -> None: ...

class Sequence(_message.Message):
    __slots__ = ("timesteps", "tokens")
    TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    timesteps: _containers.RepeatedCompositeFieldContainer[Vector]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, timesteps: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class LayerSequence(_message.Message):
    __slots__ = ("timesteps",)
    TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    timesteps: _containers.RepeatedCompositeFieldContainer[Vector]
    def __init__(self, timesteps: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("type", "name", "units", "lstm")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    LSTM_FIELD_NUMBER: _ClassVar[int]
    type: str
    name: str
    units: int
    lstm: bool
    def __init__(self, type: _Optional[str] = ..., name: _Optional[str] = ..., units: _Optional[int] = ..., lstm: bool = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class ModelVersionStatus(_message.Message):
    __slots__ = ("name", "version", "state", "reason", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    state: ModelVersionState
    reason: str
    digest: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[ModelVersionState, str]] = ..., reason: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("ready",)
    READY_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    def __init__(self, ready: bool = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_timesteps", "max_batch_size", "max_sessions", "default_session_ttl_seconds", "max_session_ttl_seconds", "max_message_bytes", "max_concurrent_rpcs", "max_response_bytes", "max_sessions_per_principal", "max_concurrent_rpcs_per_principal", "session_memory_budget", "session_memory_per_principal")
    MAX_TIMESTEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SESSION_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_RPCS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_PER_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_RPCS_PER_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SESSION_MEMORY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SESSION_MEMORY_PER_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    max_timesteps: int
    max_batch_size: int
    max_sessions: int
    default_session_ttl_seconds: int
    max_session_ttl_seconds: int
    max_message_bytes: int
    max_concurrent_rpcs: int
    max_response_bytes: int
    max_sessions_per_principal: int
    max_concurrent_rpcs_per_principal: int
    session_memory_budget: int
    session_memory_per_principal: int
    def __init__(self, max_timesteps: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_sessions: _Optional[int] = ..., default_session_ttl_seconds: _Optional[int] = ..., max_session_ttl_seconds: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_concurrent_rpcs: _Optional[int] = ..., max_response_bytes: _Optional[int] = ..., max_sessions_per_principal: _Optional[int] = ..., max_concurrent_rpcs_per_principal: _Optional[int] = ..., session_memory_budget: _Optional[int] = ..., session_memory_per_principal: _Optional[int] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("name", "version", "input_features", "units", "dtype", "return_sequences", "return_state", "activation", "recurrent_activation", "use_bias", "limits", "vocabulary_size", "layers", "output_size", "has_output_layers", "lstm_layers", "version_number")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    RETURN_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    RECURRENT_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    USE_BIAS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HAS_OUTPUT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LSTM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    input_features: int
    units: int
    dtype: str
    return_sequences: bool
    return_state: bool
    activation: str
    recurrent_activation: str
    use_bias: bool
    limits: ServerLimits
    vocabulary_size: int
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    output_size: int
    has_output_layers: bool
    lstm_layers: int
    version_number: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., input_features: _Optional[int] = ..., units: _Optional[int] = ..., dtype: _Optional[str] = ..., return_sequences: bool = ..., return_state: bool = ..., activation: _Optional[str] = ..., recurrent_activation: _Optional[str] = ..., use_bias: bool = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., vocabulary_size: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., output_size: _Optional[int] = ..., has_output_layers: bool = ..., lstm_layers: _Optional[int] = ..., version_number: _Optional[int] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("sequences", "initial_states", "timesteps_per_message", "include", "initial_layer_states", "model")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATES_FIELD_NUMBER: _ClassVar[int]
    TIMESTEPS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_LAYER_STATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[Sequence]
    initial_states: _containers.RepeatedCompositeFieldContainer[LstmState]
    timesteps_per_message: int
    include: _containers.RepeatedScalarFieldContainer[Output]
    initial_layer_states: _containers.RepeatedCompositeFieldContainer[LayerStates]
    model: ModelSpec
    def __init__(self, sequences: _Optional[_Iterable[_Union[Sequence, _Mapping]]] = ..., initial_states: _Optional[_Iterable[_Union[LstmState, _Mapping]]] = ..., timesteps_per_message: _Optional[int] = ..., include: _Optional[_Iterable[_Union[Output, str]]] = ..., initial_layer_states: _Optional[_Iterable[_Union[LayerStates, _Mapping]]] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class SequenceOutput(_message.Message):
    __slots__ = ("hidden_sequence", "final_state", "outputs", "layer_hidden", "final_layer_states")
    HIDDEN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LAYER_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    FINAL_LAYER_STATES_FIELD_NUMBER: _ClassVar[int]
    hidden_sequence: _containers.RepeatedCompositeFieldContainer[Vector]
    final_state: LstmState
    outputs: _containers.RepeatedCompositeFieldContainer[Vector]
    layer_hidden: _containers.RepeatedCompositeFieldContainer[LayerSequence]
    final_layer_states: LayerStates
    def __init__(self, hidden_sequence: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., final_state: _Optional[_Union[LstmState, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., layer_hidden: _Optional[_Iterable[_Union[LayerSequence, _Mapping]]] = ..., final_layer_states: _Optional[_Union[LayerStates, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[SequenceOutput]
    def __init__(self, outputs: _Optional[_Iterable[_Union[SequenceOutput, _Mapping]]] = ...) -> None: ...

class PredictStreamResponse(_message.Message):
    __slots__ = ("sequence_index", "start_timestep", "hidden", "final_state", "outputs", "layer_hidden", "final_layer_states")
    SEQUENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LAYER_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    FINAL_LAYER_STATES_FIELD_NUMBER: _ClassVar[int]
    sequence_index: int
    start_timestep: int
    hidden: _containers.RepeatedCompositeFieldContainer[Vector]
    final_state: LstmState
    outputs: _containers.RepeatedCompositeFieldContainer[Vector]
    layer_hidden: _containers.RepeatedCompositeFieldContainer[LayerSequence]
    final_layer_states: LayerStates
    def __init__(self, sequence_index: _Optional[int] = ..., start_timestep: _Optional[int] = ..., hidden: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., final_state: _Optional[_Union[LstmState, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., layer_hidden: _Optional[_Iterable[_Union[LayerSequence, _Mapping]]] = ..., final_layer_states: _Optional[_Union[LayerStates, _Mapping]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "state", "step_count", "model_version", "expires_at", "ttl_seconds", "layer_states", "model")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAYER_STATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: LstmState
    step_count: int
    model_version: str
    expires_at: _timestamp_pb2.Timestamp
    ttl_seconds: int
    layer_states: LayerStates
    model: ModelSpec
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[LstmState, _Mapping]] = ..., step_count: _Optional[int] = ..., model_version: _Optional[str] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., ttl_seconds: _Optional[int] = ..., layer_states: _Optional[_Union[LayerStates, _Mapping]] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("initial_state", "ttl_seconds", "initial_layer_states", "model")
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_LAYER_STATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    initial_state: LstmState
    ttl_seconds: int
    initial_layer_states: LayerStates
    model: ModelSpec
    def __init__(self, initial_state: _Optional[_Union[LstmState, _Mapping]] = ..., ttl_seconds: _Optional[int] = ..., initial_layer_states: _Optional[_Union[LayerStates, _Mapping]] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "input", "step_number", "include")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    input: Sequence
    step_number: int
    include: _containers.RepeatedScalarFieldContainer[Output]
    def __init__(self, session_id: _Optional[str] = ..., input: _Optional[_Union[Sequence, _Mapping]] = ..., step_number: _Optional[int] = ..., include: _Optional[_Iterable[_Union[Output, str]]] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("session_id", "step_number", "hidden_sequence", "state", "outputs", "layer_hidden", "layer_states")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LAYER_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    LAYER_STATES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step_number: int
    hidden_sequence: _containers.RepeatedCompositeFieldContainer[Vector]
    state: LstmState
    outputs: _containers.RepeatedCompositeFieldContainer[Vector]
    layer_hidden: _containers.RepeatedCompositeFieldContainer[LayerSequence]
    layer_states: LayerStates
    def __init__(self, session_id: _Optional[str] = ..., step_number: _Optional[int] = ..., hidden_sequence: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., state: _Optional[_Union[LstmState, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., layer_hidden: _Optional[_Iterable[_Union[LayerSequence, _Mapping]]] = ..., layer_states: _Optional[_Union[LayerStates, _Mapping]] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("create", "resume_session_id", "close_on_end", "window")
    CREATE_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLOSE_ON_END_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    create: CreateSessionRequest
    resume_session_id: str
    close_on_end: bool
    window: int
    def __init__(self, create: _Optional[_Union[CreateSessionRequest, _Mapping]] = ..., resume_session_id: _Optional[str] = ..., close_on_end: bool = ..., window: _Optional[int] = ...) -> None: ...

class SessionStep(_message.Message):
    __slots__ = ("input", "step_number", "include")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    input: Sequence
    step_number: int
    include: _containers.RepeatedScalarFieldContainer[Output]
    def __init__(self, input: _Optional[_Union[Sequence, _Mapping]] = ..., step_number: _Optional[int] = ..., include: _Optional[_Iterable[_Union[Output, str]]] = ...) -> None: ...

class SessionStreamRequest(_message.Message):
    __slots__ = ("open", "step")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    step: SessionStep
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., step: _Optional[_Union[SessionStep, _Mapping]] = ...) -> None: ...

class SessionStreamResponse(_message.Message):
    __slots__ = ("session", "step", "error")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session: Session
    step: StepResponse
    error: _status_pb2.Status
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., step: _Optional[_Union[StepResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ResetSessionRequest(_message.Message):
    __slots__ = ("session_id", "state", "layer_states")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAYER_STATES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: LstmState
    layer_states: LayerStates
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[LstmState, _Mapping]] = ..., layer_states: _Optional[_Union[LayerStates, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
