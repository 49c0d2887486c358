"""lstm-serving client SDK: call a served Keras LSTM model over gRPC and get numpy arrays back.

Carries the generated lstm.v1 protobuf modules (``lstm_client.v1``); never imports TensorFlow.
"""

from lstm_client.aio import AsyncLstmClient, AsyncSession
from lstm_client.client import LstmClient, Session
from lstm_client.connection import RetryPolicy, TlsOptions
from lstm_client.errors import FieldViolation, LstmError
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

__all__ = [
    "AsyncLstmClient",
    "AsyncSession",
    "FieldViolation",
    "FinalState",
    "LayerState",
    "LstmClient",
    "LstmError",
    "ModelMetadata",
    "ModelStatus",
    "PredictResult",
    "RetryPolicy",
    "Session",
    "SessionInfo",
    "StepResult",
    "StreamChunk",
    "TlsOptions",
]
