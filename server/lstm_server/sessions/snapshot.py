"""Writing the in-memory sessions to a file on shutdown and reading them back on start.

The file is JSON with float32 arrays as base64 (never pickle), written to a temporary file,
flushed to disk, then renamed over the old one, so a crash mid-write leaves the last good snapshot.
A snapshot is read whole and checked before any record is used, and moved aside once restored.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lstm_server.core.errors import InvalidInput
from lstm_server.core.sessions import check_session_id
from lstm_server.core.store import AppliedStep, SessionRecord
from lstm_server.core.types import State

FORMAT = "lstm-serving-sessions/1"


def _array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, np.float32)
    return {"shape": list(a.shape), "float32": base64.b64encode(a.tobytes()).decode()}


def _from_array(d: Any, what: str, dims: int) -> np.ndarray:
    if not isinstance(d, dict) or not isinstance(d.get("float32"), str):
        raise ValueError(f"{what} is not an array")
    shape = d.get("shape")
    if not (isinstance(shape, list) and len(shape) == dims):
        raise ValueError(f"{what} does not have {dims} dimension(s)")
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"{what} has a bad shape {shape}")
    raw = base64.b64decode(d["float32"], validate=True)
    if len(raw) != 4 * int(np.prod(shape)):
        raise ValueError(f"{what} holds {len(raw)} bytes, not {4 * int(np.prod(shape))}")
    array = np.frombuffer(raw, np.float32).reshape(shape).copy()
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return array


def _step_out(step: AppliedStep) -> dict[str, Any]:
    out = {
        "step_number": step.step_number,
        "input_digest": step.input_digest,
        "hidden_sequence": _array(step.hidden_sequence),
        "write_id": step.write_id,
    }
    if step.state is not None:
        out |= {"h": _array(step.state.h), "c": _array(step.state.c)}
    return out


def _encode(r: SessionRecord) -> dict[str, Any]:
    last = r.last_step
    return {
        "session_id": r.session_id,
        "h": _array(r.state.h),
        "c": _array(r.state.c),
        "step_count": r.step_count,
        "model_version": r.model_version,
        "model_name": r.model_name,
        "version_number": r.version_number,
        "ttl_seconds": r.ttl_seconds,
        "expires_at": r.expires_at,
        "owner": r.owner,
        "revision": r.revision,
        "last_step": None if last is None else _step_out(last),
        "earlier_steps": [_step_out(step) for step in r.earlier_steps],
    }


def _field(d: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = d.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{what}.{name} is missing or of the wrong type")
    return value


def _decode(d: Any, what: str) -> SessionRecord:
    if not isinstance(d, dict):
        raise ValueError(f"{what} is not an object")
    session_id = _field(d, "session_id", str, what)
    check_session_id(session_id)
    h = _from_array(d.get("h"), f"{what}.h", 1)
    c = _from_array(d.get("c"), f"{what}.c", 1)
    if h.size != c.size or h.size == 0:
        raise ValueError(f"{what}: h and c have {h.size} and {c.size} values")
    counts = {
        name: _field(d, name, int, what) for name in ("step_count", "revision", "ttl_seconds")
    }
    if min(counts.values()) < 0 or counts["ttl_seconds"] == 0:
        raise ValueError(f"{what} has a negative count or no ttl")
    expires_at = _field(d, "expires_at", (int, float), what)
    last = d.get("last_step")
    last_step = None
    if last is not None:
        last_step = _step_in(last, f"{what}.last_step", h.size, with_state=False)
        if last_step.step_number != counts["step_count"]:
            raise ValueError(f"{what}.last_step is not the last step applied")
    earlier = d.get("earlier_steps", [])
    if not isinstance(earlier, list) or (earlier and last_step is None):
        raise ValueError(f"{what}.earlier_steps is not a list of steps before the last")
    earlier_steps = tuple(
        _step_in(step, f"{what}.earlier_steps[{i}]", h.size, with_state=True)
        for i, step in enumerate(earlier)
    )
    numbers = [step.step_number for step in earlier_steps] + [counts["step_count"]]
    if any(a >= b for a, b in itertools.pairwise(numbers)):
        raise ValueError(f"{what}.earlier_steps are not in order before the last step")
    return SessionRecord(
        session_id=session_id,
        state=State(h, c),
        step_count=counts["step_count"],
        model_version=_field(d, "model_version", str, what),
        model_name=_field(d, "model_name", str, what) if "model_name" in d else "",
        version_number=_field(d, "version_number", int, what) if "version_number" in d else 0,
        ttl_seconds=counts["ttl_seconds"],
        expires_at=float(expires_at),
        owner=_field(d, "owner", str, what),
        revision=counts["revision"],
        last_step=last_step,
        earlier_steps=earlier_steps,
    )


def _step_in(d: Any, what: str, state_size: int, *, with_state: bool) -> AppliedStep:
    """A kept step, checked: its outputs hold at least the state's values per timestep, and an
    earlier step carries the state after it."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} is not an object")
    hidden = _from_array(d.get("hidden_sequence"), f"{what}.hidden_sequence", 2)
    if hidden.shape[1] < state_size:  # every LSTM's hidden output, then any output layers'
        raise ValueError(
            f"{what} has {hidden.shape[1]} values per timestep, fewer than the state's {state_size}"
        )
    number = _field(d, "step_number", int, what)
    digest = _field(d, "input_digest", str, what)
    write_id = d.get("write_id", "")
    if not isinstance(write_id, str):
        raise ValueError(f"{what}.write_id is not a string")
    state = None
    if with_state:
        h = _from_array(d.get("h"), f"{what}.h", 1)
        c = _from_array(d.get("c"), f"{what}.c", 1)
        if h.size != state_size or c.size != state_size:
            raise ValueError(f"{what}: h and c do not have the state's {state_size} values")
        state = State(h, c)
    return AppliedStep(number, digest, hidden, write_id, state)


def write_snapshot(path: Path, records: list[SessionRecord]) -> None:
    """Atomically replace ``path`` with these records, readable by this user only (sessions
    hold their callers' states)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an old partial file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w") as f:
        json.dump({"format": FORMAT, "sessions": [_encode(r) for r in records]}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def read_snapshot(path: Path) -> list[SessionRecord]:
    """The records in ``path``; raises ValueError, saying what is wrong, for anything that is not
    a whole, consistent snapshot (no record is trusted before every one has been checked)."""
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lstm-serving session snapshot")
    sessions = data.get("sessions")
    if not isinstance(sessions, list):
        raise ValueError(f"{path} has no list of sessions")
    try:
        records = [_decode(d, f"sessions[{i}]") for i, d in enumerate(sessions)]
    except (InvalidInput, binascii.Error) as exc:
        raise ValueError(str(exc)) from None
    if len({r.session_id for r in records}) != len(records):
        raise ValueError(f"{path} holds a session twice")
    return records


def check_writable(path: Path) -> None:
    """Raise OSError now if a snapshot could not be written to ``path`` at shutdown."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    probe.write_bytes(b"")
    probe.unlink()


def consume(path: Path) -> Path:
    """Move a restored snapshot aside, so that it can never be restored a second time (after a
    crash, say, when it would bring back sessions older than the ones served since)."""
    restored = path.with_name(f"{path.name}.restored")
    os.replace(path, restored)
    return restored
