"""Value types shared by the core, the runtime and the transport."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, fields, replace

import numpy as np

Array = np.ndarray
# A state as received: (h, c), each None where the request left it out.
StateInput = tuple[Array | None, Array | None]
# What a request gave as a model's state: one (h, c) (the single-layer form) or a list of one
# (h, c) per LSTM layer, bottom to top.
GivenState = StateInput | list[StateInput]


@dataclass(frozen=True)
class RaggedSequence:
    """A sequence as received: all values flattened, and how many values each timestep had;
    or, for token models, one id per timestep in ``tokens``."""

    values: Array
    widths: Array
    tokens: Array | None = None

    @property
    def timesteps(self) -> int:
        return int(self.widths.size if self.tokens is None else self.tokens.size)


@dataclass(frozen=True)
class LayerInfo:
    """A layer of the served chain: its Keras type and name, the values per timestep it outputs,
    and whether it is an LSTM (with a state)."""

    type: str
    name: str
    units: int
    lstm: bool = False


@functools.cache
def _layer_slices(units: tuple[int, ...]) -> tuple[slice, ...]:
    bounds = itertools.accumulate(units, initial=0)
    return tuple(slice(a, b) for a, b in itertools.pairwise(bounds))


@dataclass(frozen=True)
class ModelInfo:
    """What is served: the chain of layers, its top LSTM's configuration and a digest of its
    weights.

    Shapes the core passes around follow from it. A state is every LSTM layer's ``h`` (and
    ``c``) one after the other, bottom to top: ``state_size`` values. Each timestep's result is
    every LSTM layer's hidden output, bottom to top, then the output layers' values (when the
    model has output layers): ``timestep_width`` values. Token models take one id per timestep,
    carried as one float (exact below 2**24, the largest vocabulary served).
    """

    name: str
    version: str
    input_features: int
    units: int
    activation: str
    recurrent_activation: str
    use_bias: bool
    dtype: str = "float32"
    vocabulary_size: int = 0
    lstm_units: tuple[int, ...] = ()  # bottom to top; () means one layer of ``units``
    output_size: int = 0  # values per timestep of the output layers; 0: none
    layers: tuple[LayerInfo, ...] = ()
    version_number: int = 1  # the version's number in the model repository (``version``: digest)

    @property
    def layer_units(self) -> tuple[int, ...]:
        return self.lstm_units or (self.units,)

    @property
    def lstm_layers(self) -> int:
        return len(self.layer_units)

    @property
    def state_size(self) -> int:
        return sum(self.layer_units)

    @property
    def has_output_layers(self) -> bool:
        return self.output_size > 0

    @property
    def timestep_width(self) -> int:
        return self.state_size + self.output_size

    @property
    def input_width(self) -> int:
        """Values per timestep the runtime takes: the features, or one token id."""
        return 1 if self.vocabulary_size else self.input_features

    def layer_slices(self) -> list[slice]:
        """Where each LSTM layer's part of a state (or of a timestep's result) lies."""
        return list(_layer_slices(self.layer_units))

    def hidden_columns(self) -> slice:
        """The top LSTM's hidden output within a timestep's result."""
        return self.layer_slices()[-1]

    def output_columns(self) -> slice:
        """The model's outputs within a timestep's result."""
        if self.has_output_layers:
            return slice(self.state_size, self.timestep_width)
        return self.hidden_columns()


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
    session_memory_per_principal: int = 0

    def exported(self) -> dict[str, int]:
        """Every limit by its name (the flag's, with underscores)."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

    def shared_by(self, principals: int) -> Limits:
        """These limits with each per-principal cap left at 0 (none) set to a fair share among
        ``principals`` (two or more): an equal part of the server's own cap, so that no one
        principal can take every session, call or byte of session memory."""
        if principals < 2:
            return self

        def share(total: int, given: int) -> int:
            return given if given or not total else max(1, total // principals)

        return replace(
            self,
            max_sessions_per_principal=share(self.max_sessions, self.max_sessions_per_principal),
            max_concurrent_rpcs_per_principal=share(
                self.max_concurrent_rpcs, self.max_concurrent_rpcs_per_principal
            ),
            session_memory_per_principal=share(
                self.session_memory_budget, self.session_memory_per_principal
            ),
        )


@dataclass(frozen=True)
class State:
    """The recurrent state in Keras order ``[h, c]``; each a float32 vector of ``state_size``
    (every LSTM layer's, bottom to top)."""

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
    """What Keras returns for one sequence: every timestep's result (T, timestep_width) and the
    final state."""

    sequence: Array
    state: State
