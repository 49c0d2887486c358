"""Checks of request values against the served model and the server's limits.

Every check names the offending field by its path in the API (``sequences[0].timesteps[2].values``)
and collects all problems before raising one ``InvalidInput``.
"""

from __future__ import annotations

import numpy as np

from lstm_server.core.errors import FieldViolation, InvalidInput
from lstm_server.core.types import Array, Limits, ModelInfo, RaggedSequence, State

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
    """Shape one sequence as (T, input_features), or record why it cannot be."""
    steps = int(seq.widths.size)
    if steps == 0:
        out.add(f"{field}.timesteps", "is empty: a sequence needs at least one timestep")
        return None
    if steps > limits.max_timesteps:
        out.add(
            f"{field}.timesteps",
            f"has {steps} timesteps, more than the limit {limits.max_timesteps}",
        )
        return None
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


def state_value(
    h: Array | None, c: Array | None, field: str, info: ModelInfo, out: Violations
) -> State | None:
    """Check an [h, c] pair: both present, ``units`` finite values each."""
    ok = True
    for name, v in (("h", h), ("c", c)):
        size = 0 if v is None else v.size
        if size != info.units:
            out.add(f"{field}.{name}.values", f"has {size} values, expected units={info.units}")
            ok = False
        elif v is not None and not np.isfinite(v).all():
            out.add(f"{field}.{name}.values", "contains NaN or infinite values")
            ok = False
    if not ok or h is None or c is None:
        return None
    return State(np.asarray(h, np.float32), np.asarray(c, np.float32))


def predict_rows(
    sequences: list[RaggedSequence],
    initial_states: list[tuple[Array | None, Array | None]],
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
    if initial_states and len(initial_states) != len(sequences):
        out.add(
            "initial_states",
            f"has {len(initial_states)} states; send none (zeros) or one per sequence "
            f"({len(sequences)})",
        )
    out.raise_if_any()
    xs = [sequence_array(s, f"sequences[{i}]", info, limits, out) for i, s in enumerate(sequences)]
    states = [
        state_value(h, c, f"initial_states[{i}]", info, out)
        for i, (h, c) in enumerate(initial_states)
    ]
    out.raise_if_any()
    if not states:
        states = [State.zeros(info.units) for _ in xs]
    return [(x, s) for x, s in zip(xs, states, strict=True) if x is not None and s is not None]


def step_input(seq: RaggedSequence, field: str, info: ModelInfo, limits: Limits) -> Array:
    """Validate the input of one session step."""
    out = Violations()
    x = sequence_array(seq, field, info, limits, out)
    out.raise_if_any()
    assert x is not None
    return x


def optional_state(h: Array | None, c: Array | None, field: str, info: ModelInfo) -> State:
    """A state that may be absent (both None): zeros then."""
    if h is None and c is None:
        return State.zeros(info.units)
    out = Violations()
    state = state_value(h, c, field, info, out)
    out.raise_if_any()
    assert state is not None
    return state
