"""Value types shared by the core, the runtime and the transport."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray
# A state as received: (h, c), each None where the request left it out.
StateInput = tuple[Array | None, Array | None]


@dataclass(frozen=True)
class RaggedSequence:
    """A sequence as received: all values flattened, and how many values each timestep had."""

    values: Array
    widths: Array


@dataclass(frozen=True)
class ModelInfo:
    """What is served: the LSTM's configuration and a digest of its weights."""

    name: str
    version: str
    input_features: int
    units: int
    activation: str
    recurrent_activation: str
    use_bias: bool
    dtype: str = "float32"


@dataclass(frozen=True)
class Limits:
    """Limits the server enforces on requests and sessions."""

    max_timesteps: int = 10_000
    max_batch_size: int = 64
    max_sessions: int = 100_000
    max_sessions_per_principal: int = 0
    default_session_ttl_seconds: int = 3600
    max_session_ttl_seconds: int = 86_400
    max_message_bytes: int = 4 * 1024 * 1024
    max_response_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 1024
    max_concurrent_rpcs_per_principal: int = 0
    session_memory_budget: int = 0


@dataclass(frozen=True)
class State:
    """The recurrent state in Keras order ``[h, c]``; each a float32 vector of ``units``."""

    h: Array
    c: Array

    @classmethod
    def zeros(cls, units: int) -> State:
        return cls(np.zeros(units, np.float32), np.zeros(units, np.float32))


@dataclass(frozen=True)
class Row:
    """One sequence to run: inputs of shape (T, F) and its initial state."""

    x: Array
    initial_state: State
    continues: bool = False  # a later chunk of a sequence already counted


@dataclass(frozen=True)
class RowResult:
    """What Keras returns for one sequence: the hidden sequence (T, units) and the final state."""

    sequence: Array
    state: State
