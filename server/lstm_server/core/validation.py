"""Checks of request values against the served model and the server's limits.

Every check names the offending field by its path in the API (``sequences[0].timesteps[2].values``)
and collects all problems before raising one ``InvalidInput``.
"""

from __future__ import annotations

import numpy as np

from lstm_server.core.errors import FieldViolation, InvalidInput
from lstm_server.core.types import Array, GivenState, Limits, ModelInfo, RaggedSequence, State

_MAX_REPORTED = 20


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
    seq: RaggedSequence, field: str, info: ModelInfo, limits: Limits, out: Violations
) -> Array | None:
    """Shape one sequence as (T, input_width), or record why it cannot be."""
    if info.vocabulary_size and seq.tokens is None and seq.widths.size:
        out.add(f"{field}.timesteps", "must be empty: this model takes token ids in tokens")
        return None
    if not info.vocabulary_size and seq.tokens is not None:
        out.add(
            f"{field}.tokens",
            f"must be empty: this model takes {info.input_features} features per timestep "
            "in timesteps",
        )
        return None
    steps = seq.timesteps
    if steps == 0:
        what = "tokens" if info.vocabulary_size else "timesteps"
        out.add(f"{field}.{what}", "is empty: a sequence needs at least one timestep")
        return None
    if steps > limits.max_timesteps:
        what = "tokens" if info.vocabulary_size else "timesteps"
        out.add(
            f"{field}.{what}",
            f"has {steps} timesteps, more than the limit {limits.max_timesteps}",
        )
        return None
    if seq.tokens is not None:
        return _token_array(seq.tokens, field, info, out)
    wrong = np.flatnonzero(seq.widths != info.input_features)
    for t in wrong[:_MAX_REPORTED]:
        out.add(
            f"{field}.timesteps[{t}].values",
            f"has {seq.widths[t]} values, expected input_features={info.input_features}",
        )
    if wrong.size:
        return None
    x = seq.values.reshape(steps, info.input_features)
    start = len(out.items)
    for t in np.flatnonzero(~np.isfinite(x).all(axis=1))[:_MAX_REPORTED]:
        out.add(f"{field}.timesteps[{t}].values", "contains NaN or infinite values")
    return x if len(out.items) == start else None


def _token_array(tokens: Array, field: str, info: ModelInfo, out: Violations) -> Array | None:
    """Token ids as a (T, 1) float32 column (exact: vocabularies are below 2**24)."""
    outside = np.flatnonzero((tokens < 0) | (tokens >= info.vocabulary_size))
    for t in outside[:_MAX_REPORTED]:
        out.add(
            f"{field}.tokens[{t}]",
            f"is {int(tokens[t])}, outside the vocabulary [0, {info.vocabulary_size})",
        )
    if outside.size:
        return None
    return tokens.astype(np.float32).reshape(-1, 1)


def _pair(
    h: Array | None, c: Array | None, field: str, units: int, out: Violations
) -> tuple[Array, Array] | None:
    ok = True
    for name, v in (("h", h), ("c", c)):
        size = 0 if v is None else v.size
        if size != units:
            out.add(f"{field}.{name}.values", f"has {size} values, expected units={units}")
            ok = False
        elif v is not None and not np.isfinite(v).all():
            out.add(f"{field}.{name}.values", "contains NaN or infinite values")
            ok = False
    if not ok or h is None or c is None:
        return None
    return np.asarray(h, np.float32), np.asarray(c, np.float32)


def state_value(
    given: GivenState, field: str, layers_field: str, info: ModelInfo, out: Violations
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
        pair = _pair(*given, field, info.units, out)
        return None if pair is None else State(*pair)
    if len(given) != info.lstm_layers:
        out.add(
            f"{layers_field}.layers",
            f"has {len(given)} states, expected one per LSTM layer ({info.lstm_layers})",
        )
        return None
    pairs = [
        _pair(h, c, f"{layers_field}.layers[{k}]", units, out)
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
) -> list[tuple[Array, State]]:
    """Validate a Predict request; return (x, initial_state) per sequence."""
    out = Violations()
    if not sequences:
        out.add("sequences", "is empty: send at least one sequence")
    elif len(sequences) > limits.max_batch_size:
        out.add(
            "sequences",
            f"has {len(sequences)} sequences, more than the limit {limits.max_batch_size}",
        )
    layered = bool(initial_states) and isinstance(initial_states[0], list)
    states_field = "initial_layer_states" if layered else "initial_states"
    if initial_states and len(initial_states) != len(sequences):
        out.add(
            states_field,
            f"has {len(initial_states)} states; send none (zeros) or one per sequence "
            f"({len(sequences)})",
        )
    out.raise_if_any()
    xs = [sequence_array(s, f"sequences[{i}]", info, limits, out) for i, s in enumerate(sequences)]
    states = [
        state_value(given, f"initial_states[{i}]", f"initial_layer_states[{i}]", info, out)
        for i, given in enumerate(initial_states)
    ]
    out.raise_if_any()
    if not states:
        states = [State.zeros(info.state_size) for _ in xs]
    return [(x, s) for x, s in zip(xs, states, strict=True) if x is not None and s is not None]


def step_input(seq: RaggedSequence, field: str, info: ModelInfo, limits: Limits) -> Array:
    """Validate the input of one session step."""
    out = Violations()
    x = sequence_array(seq, field, info, limits, out)
    out.raise_if_any()
    assert x is not None
    return x


def optional_state(
    given: GivenState | None, field: str, layers_field: str, info: ModelInfo
) -> State:
    """A state that may be absent (None): zeros then."""
    if given is None:
        return State.zeros(info.state_size)
    out = Violations()
    state = state_value(given, field, layers_field, info, out)
    out.raise_if_any()
    assert state is not None
    return state
