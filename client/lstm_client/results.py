"""What calls return: small frozen dataclasses of float32 numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import numpy as np


class LayerState(NamedTuple):
    """One LSTM layer's state in Keras order ``[h, c]``."""

    h: np.ndarray
    c: np.ndarray


# What a call takes as the next call's initial state: (h, c) for a single-layer model, or a list
# of every layer's LayerState, bottom to top.
NextState = tuple[np.ndarray, np.ndarray] | list[LayerState]


def _next_state(h: np.ndarray, c: np.ndarray, states: tuple[LayerState, ...]) -> NextState:
    return list(states) if len(states) > 1 else (h, c)


@dataclass(frozen=True)
class PredictResult:
    """Keras' ``[sequence, h, c]`` and the model's outputs.

    ``sequence`` is the top LSTM's hidden output per timestep (T, units); ``outputs`` the
    model's (T, output_size): the same array for a model without output layers; ``h`` and ``c``
    the top LSTM's final state and ``states`` every LSTM layer's, bottom to top. A leading batch
    axis is kept when the input had one. ``sequence`` is None for a model with output layers
    unless ``include`` asked for "hidden"; ``layer_sequences`` (every LSTM's hidden output)
    is filled when it asked for "layer_hidden".
    """

    sequence: np.ndarray | None
    h: np.ndarray
    c: np.ndarray
    outputs: np.ndarray | None = None
    states: tuple[LayerState, ...] = ()
    layer_sequences: tuple[np.ndarray, ...] = ()

    @property
    def state(self) -> NextState:
        """The final state, ready to pass as the next call's ``initial_state``: ``(h, c)`` for
        a single-layer model, every layer's ``LayerState`` for a stack."""
        return _next_state(self.h, self.c, self.states)


@dataclass(frozen=True)
class StreamChunk:
    """Results of one sequence from timestep ``start_timestep``: the top LSTM's hidden outputs
    (k, units) and the model's outputs (see ``PredictResult``)."""

    sequence_index: int
    start_timestep: int
    hidden: np.ndarray | None
    outputs: np.ndarray | None = None
    layer_hidden: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class FinalState:
    """The final state of one streamed sequence; it follows the sequence's last chunk."""

    sequence_index: int
    h: np.ndarray
    c: np.ndarray
    states: tuple[LayerState, ...] = ()


@dataclass(frozen=True)
class StepResult:
    """One applied session step: every timestep's results and the state after it (fields as in
    ``PredictResult``)."""

    session_id: str
    step_number: int
    sequence: np.ndarray | None
    h: np.ndarray
    c: np.ndarray
    outputs: np.ndarray | None = None
    states: tuple[LayerState, ...] = ()
    layer_sequences: tuple[np.ndarray, ...] = ()

    @property
    def state(self) -> NextState:
        return _next_state(self.h, self.c, self.states)


@dataclass(frozen=True)
class SessionInfo:
    """A session as the server holds it (``h``, ``c``: the top LSTM's state)."""

    session_id: str
    h: np.ndarray
    c: np.ndarray
    step_count: int
    model_version: str
    expires_at: datetime
    ttl_seconds: int
    states: tuple[LayerState, ...] = ()
    model_name: str = ""  # the model and version the session runs on
    version_number: int = 0

    @property
    def state(self) -> NextState:
        return _next_state(self.h, self.c, self.states)


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
    vocabulary_size: int = 0
    layers: list[dict[str, object]] = field(default_factory=list)
    output_size: int = 0
    has_output_layers: bool = False
    lstm_layers: int = 1
    version_number: int = 1  # the version's number in the model repository (version: digest)


@dataclass(frozen=True)
class ModelStatus:
    """A model version the server has: ``state`` is LOADING, READY, DRAINING, UNLOADING or
    UNAVAILABLE (``reason`` says why); ``digest`` is ``ModelMetadata.version`` once loaded."""

    name: str
    version: int
    state: str
    reason: str = ""
    digest: str = ""
