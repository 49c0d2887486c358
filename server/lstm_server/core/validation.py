"""Checks of request values against the served model and the server's limits, for every
protocol: each is checked here once, whichever door the request came through.

Every check names the offending field by its path in the caller's API (``Fields``: lstm.v1's
``sequences[0].timesteps[2].values``, the Open Inference Protocol's ``inputs[x][0][2]``) and
collects all problems before raising one ``InvalidInput``.
"""

from __future__ import annotations

import numpy as np

from lstm_server.core.errors import FieldViolation, InvalidInput
from lstm_server.core.types import Array, GivenState, Limits, ModelInfo, RaggedSequence, State

_MAX_REPORTED = 20


class Fields:
    """How a protocol names the request fields the checks report: lstm.v1's names. A protocol
    with other names (the Open Inference Protocol's tensors) overrides them."""

    sequences = "sequences"
    step_input = "input"  # a session step's sequence
    # A session's state: when it is made, and when it is reset.
    created_state, created_layer_states = "initial_state", "initial_layer_states"
    reset_state, reset_layer_states = "state", "layer_states"

    def row(self, i: int) -> str:
        return f"sequences[{i}]"

    def steps(self, row: str, tokens: bool) -> str:
        return f"{row}.tokens" if tokens else f"{row}.timesteps"

    def timestep(self, row: str, t: int, tokens: bool) -> str:
        return f"{row}.tokens[{t}]" if tokens else f"{row}.timesteps[{t}].values"

    def states(self, layered: bool) -> str:
        return "initial_layer_states" if layered else "initial_states"

    def state(self, states: str, i: int) -> str:
        return f"{states}[{i}]"

    def layers(self, state: str) -> str:
        return f"{state}.layers"

    def part(self, state: str, layer: int | None, name: str) -> str:
        """``name`` (h or c) of ``state`` (of its ``layer`` for a stack's)."""
        base = state if layer is None else f"{state}.layers[{layer}]"
        return f"{base}.{name}.values"


LSTM_V1 = Fields()


class Violations:
    """Collects field violations; ``raise_if_any`` raises them together."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidInput(self.items)


def sequence_array(
    seq: RaggedSequence,
    field: str,
    info: ModelInfo,
    limits: Limits,
    out: Violations,
    fields: Fields = LSTM_V1,
) -> Array | None:
    """Shape one sequence (the request's ``field``) as (T, input_width), or record why it
    cannot be."""
    tokens = bool(info.vocabulary_size)
    if tokens and seq.tokens is None and seq.widths.size:
        out.add(fields.steps(field, False), "must be empty: this model takes token ids in tokens")
        return None
    if not tokens and seq.tokens is not None:
        out.add(
            fields.steps(field, True),
            f"must be empty: this model takes {info.input_features} features per timestep "
            "in timesteps",
        )
        return None
    steps = seq.timesteps
    if steps == 0:
        out.add(fields.steps(field, tokens), "is empty: a sequence needs at least one timestep")
        return None
    if steps > limits.max_timesteps:
        out.add(
            fields.steps(field, tokens),
            f"has {steps} timesteps, more than the limit {limits.max_timesteps}",
        )
        return None
    if seq.tokens is not None:
        return _token_array(seq.tokens, field, info, out, fields)
    wrong = np.flatnonzero(seq.widths != info.input_features)
    for t in wrong[:_MAX_REPORTED]:
        out.add(
            fields.timestep(field, int(t), False),
            f"has {seq.widths[t]} values, expected input_features={info.input_features}",
        )
    if wrong.size:
        return None
    x = seq.values.reshape(steps, info.input_features)
    start = len(out.items)
    for t in np.flatnonzero(~np.isfinite(x).all(axis=1))[:_MAX_REPORTED]:
        out.add(fields.timestep(field, int(t), False), "contains NaN or infinite values")
    return x if len(out.items) == start else None


def _token_array(
    tokens: Array, field: str, info: ModelInfo, out: Violations, fields: Fields
) -> Array | None:
    """Token ids as a (T, 1) float32 column (exact: vocabularies are below 2**24)."""
    outside = np.flatnonzero((tokens < 0) | (tokens >= info.vocabulary_size))
    for t in outside[:_MAX_REPORTED]:
        out.add(
            fields.timestep(field, int(t), True),
            f"is {int(tokens[t])}, outside the vocabulary [0, {info.vocabulary_size})",
        )
    if outside.size:
        return None
    return tokens.astype(np.float32).reshape(-1, 1)


def _pair(
    h: Array | None,
    c: Array | None,
    field: str,
    layer: int | None,
    units: int,
    out: Violations,
    fields: Fields,
) -> tuple[Array, Array] | None:
    ok = True
    for name, v in (("h", h), ("c", c)):
        size = 0 if v is None else v.size
        if size != units:
            out.add(fields.part(field, layer, name), f"has {size} values, expected units={units}")
            ok = False
        elif v is not None and not np.isfinite(v).all():
            out.add(fields.part(field, layer, name), "contains NaN or infinite values")
            ok = False
    if not ok or h is None or c is None:
        return None
    return np.asarray(h, np.float32), np.asarray(c, np.float32)


def state_value(
    given: GivenState,
    field: str,
    layers_field: str,
    info: ModelInfo,
    out: Violations,
    fields: Fields = LSTM_V1,
) -> State | None:
    """Check a given state: one (h, c) (at ``field``, single-layer models only) or one per LSTM
    layer (at ``layers_field``), each with the layer's units of finite values."""
    if isinstance(given, tuple):
        if info.lstm_layers > 1:
            out.add(
                field,
                f"holds one layer's state; this model has {info.lstm_layers} LSTM layers: "
                f"send {layers_field} with one state per layer",
            )
            return None
        pair = _pair(*given, field, None, info.units, out, fields)
        return None if pair is None else State(*pair)
    if len(given) != info.lstm_layers:
        out.add(
            fields.layers(layers_field),
            f"has {len(given)} states, expected one per LSTM layer ({info.lstm_layers})",
        )
        return None
    pairs = [
        _pair(h, c, layers_field, k, units, out, fields)
        for k, ((h, c), units) in enumerate(zip(given, info.layer_units, strict=True))
    ]
    if any(p is None for p in pairs):
        return None
    hs, cs = zip(*(p for p in pairs if p is not None), strict=True)
    return State(np.concatenate(hs), np.concatenate(cs))


def predict_rows(
    sequences: list[RaggedSequence],
    initial_states: list[GivenState],
    info: ModelInfo,
    limits: Limits,
    fields: Fields = LSTM_V1,
) -> list[tuple[Array, State]]:
    """Validate a Predict request; return (x, initial_state) per sequence."""
    out = Violations()
    if not sequences:
        out.add(fields.sequences, "is empty: send at least one sequence")
    elif len(sequences) > limits.max_batch_size:
        out.add(
            fields.sequences,
            f"has {len(sequences)} sequences, more than the limit {limits.max_batch_size}",
        )
    layered = bool(initial_states) and isinstance(initial_states[0], list)
    states_field = fields.states(layered)
    if initial_states and len(initial_states) != len(sequences):
        out.add(
            states_field,
            f"has {len(initial_states)} states; send none (zeros) or one per sequence "
            f"({len(sequences)})",
        )
    out.raise_if_any()
    xs = [
        sequence_array(s, fields.row(i), info, limits, out, fields) for i, s in enumerate(sequences)
    ]
    one, per_layer = fields.states(False), fields.states(True)
    states = [
        state_value(given, fields.state(one, i), fields.state(per_layer, i), info, out, fields)
        for i, given in enumerate(initial_states)
    ]
    out.raise_if_any()
    if not states:
        states = [State.zeros(info.state_size) for _ in xs]
    return [(x, s) for x, s in zip(xs, states, strict=True) if x is not None and s is not None]


def step_input(
    seq: RaggedSequence, info: ModelInfo, limits: Limits, fields: Fields = LSTM_V1
) -> Array:
    """Validate the input of one session step."""
    out = Violations()
    x = sequence_array(seq, fields.step_input, info, limits, out, fields)
    out.raise_if_any()
    assert x is not None
    return x


def optional_state(
    given: GivenState | None,
    field: str,
    layers_field: str,
    info: ModelInfo,
    fields: Fields = LSTM_V1,
) -> State:
    """A state that may be absent (None): zeros then."""
    if given is None:
        return State.zeros(info.state_size)
    out = Violations()
    state = state_value(given, field, layers_field, info, out, fields)
    out.raise_if_any()
    assert state is not None
    return state
