"""Writing the in-memory sessions to a file on shutdown and reading them back on start.

The file is JSON with float32 arrays as base64 (never pickle), written to a temporary file,
flushed to disk, then renamed over the old one, so a crash mid-write leaves the last good snapshot.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lstm_server.core.store import AppliedStep, SessionRecord
from lstm_server.core.types import State

FORMAT = "lstm-serving-sessions/1"


def _array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, np.float32)
    return {"shape": list(a.shape), "float32": base64.b64encode(a.tobytes()).decode()}


def _from_array(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["float32"]), np.float32).reshape(d["shape"]).copy()


def _encode(r: SessionRecord) -> dict[str, Any]:
    last = r.last_step
    return {
        "session_id": r.session_id,
        "h": _array(r.state.h),
        "c": _array(r.state.c),
        "step_count": r.step_count,
        "model_version": r.model_version,
        "ttl_seconds": r.ttl_seconds,
        "expires_at": r.expires_at,
        "owner": r.owner,
        "revision": r.revision,
        "last_step": None
        if last is None
        else {
            "step_number": last.step_number,
            "input_digest": last.input_digest,
            "hidden_sequence": _array(last.hidden_sequence),
        },
    }


def _decode(d: dict[str, Any]) -> SessionRecord:
    last = d["last_step"]
    return SessionRecord(
        session_id=d["session_id"],
        state=State(_from_array(d["h"]), _from_array(d["c"])),
        step_count=d["step_count"],
        model_version=d["model_version"],
        ttl_seconds=d["ttl_seconds"],
        expires_at=d["expires_at"],
        owner=d["owner"],
        revision=d["revision"],
        last_step=None
        if last is None
        else AppliedStep(
            last["step_number"], last["input_digest"], _from_array(last["hidden_sequence"])
        ),
    )


def write_snapshot(path: Path, records: list[SessionRecord]) -> None:
    """Atomically replace ``path`` with these records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("w") as f:
        json.dump({"format": FORMAT, "sessions": [_encode(r) for r in records]}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def read_snapshot(path: Path) -> list[SessionRecord]:
    """The records in ``path``; raises ValueError for a file that is not a snapshot."""
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an lstm-serving session snapshot")
    return [_decode(d) for d in data["sessions"]]
