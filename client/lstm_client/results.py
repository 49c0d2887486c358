"""What calls return: small frozen dataclasses of float32 numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np


@dataclass(frozen=True)
class PredictResult:
    """Keras' ``[sequence, h, c]``: the hidden output of every timestep and the final state.

    Shapes are (T, units), (units,), (units,), with a leading batch axis when the input had one.
    """

    sequence: np.ndarray
    h: np.ndarray
    c: np.ndarray

    @property
    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """``[h, c]``, ready to pass as the next call's ``initial_state``."""
        return self.h, self.c


@dataclass(frozen=True)
class StreamChunk:
    """Hidden outputs (k, units) of one sequence, starting at timestep ``start_timestep``."""

    sequence_index: int
    start_timestep: int
    hidden: np.ndarray


@dataclass(frozen=True)
class FinalState:
    """The final state of one streamed sequence; it follows the sequence's last chunk."""

    sequence_index: int
    h: np.ndarray
    c: np.ndarray


@dataclass(frozen=True)
class StepResult:
    """One applied session step: every timestep's hidden output and the state after it."""

    session_id: str
    step_number: int
    sequence: np.ndarray
    h: np.ndarray
    c: np.ndarray

    @property
    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.h, self.c


@dataclass(frozen=True)
class SessionInfo:
    """A session as the server holds it."""

    session_id: str
    h: np.ndarray
    c: np.ndarray
    step_count: int
    model_version: str
    expires_at: datetime
    ttl_seconds: int


@dataclass(frozen=True)
class ModelMetadata:
    """The served model and the server's limits."""

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
    limits: dict[str, int] = field(default_factory=dict)
