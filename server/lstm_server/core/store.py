"""The session record and the ``SessionStore`` contract that every store adapter implements.

Core owns this contract (as it owns ``Runtime``): ``lstm_server.sessions`` holds the adapters, which
import it, and nothing in core imports them.

A store keeps records by id and changes them only atomically: ``compare_and_set`` writes a record
only if the stored one still has the revision the writer read, so two writers (two tasks, or two
replicas sharing a store) can never both apply a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lstm_server.core.types import Array, State


@dataclass(frozen=True)
class AppliedStep:
    """A step applied, kept so that a retry of it gets the same reply."""

    step_number: int
    input_digest: str
    hidden_sequence: Array  # every timestep's result (T, timestep_width), as the reply had it
    write_id: str = ""  # unique per attempt: tells a writer whether the stored step is its own
    state: State | None = None  # the state after it; None for the last step (the record's)


@dataclass(frozen=True)
class SessionRecord:
    """Everything the server holds for one session."""

    session_id: str
    state: State
    step_count: int
    model_version: str  # the digest of the weights the session runs on
    ttl_seconds: int
    expires_at: float  # Unix time
    owner: str = ""
    revision: int = 0
    last_step: AppliedStep | None = None
    # Steps applied before ``last_step`` whose replies a stream with a window of steps in flight
    # may still ask for again (oldest first, each with the state after it).
    earlier_steps: tuple[AppliedStep, ...] = ()
    # The model and version (its number in the repository) the session is pinned to; "" and 0
    # in records made before models were named: the default model, by digest.
    model_name: str = ""
    version_number: int = 0

    def kept_steps(self) -> tuple[AppliedStep, ...]:
        """Every step whose reply a retry repeats, oldest first."""
        last = () if self.last_step is None else (self.last_step,)
        return self.earlier_steps + last


class SessionStore(Protocol):
    """Async, atomic storage of session records. Expired records behave as absent.

    Lifecycle: ``open()`` once before use (a store that persists itself restores here),
    ``close()`` once after the last use (and persists itself here, if it does).
    """

    async def open(self) -> None:
        """Make the store ready; raise ``StoreSetupError`` if it cannot be used."""
        ...

    async def create(
        self, record: SessionRecord, *, max_sessions: int, max_owner_sessions: int = 0
    ) -> None:
        """Add a new record; reap expired ones first if a cap is reached.

        Raises ``LimitExceeded`` when ``max_sessions`` live sessions exist, or
        ``max_owner_sessions`` of the record's owner (0: no cap), or when the store's memory
        budget, if it has one, would be exceeded.
        """
        ...

    async def get(self, session_id: str) -> SessionRecord:
        """The live record; raises ``SessionNotFound`` saying whether it expired or was closed."""
        ...

    async def compare_and_set(self, record: SessionRecord, *, expected_revision: int) -> bool:
        """Store ``record`` if the stored one is live and has ``expected_revision``; raises
        ``LimitExceeded``, storing nothing, if the store's memory budget would be exceeded."""
        ...

    async def delete(self, session_id: str) -> bool:
        """Close a session; False if there was no live one."""
        ...

    async def confirm(self, session_id: str) -> None:
        """Return once what the store holds of the session will survive the loss of the node
        holding it (for a reply repeated from a kept step, or a write whose confirmation was
        lost); raise ``StoreUnavailable`` when that cannot be said in time. A store without
        replicas returns at once."""
        ...

    async def reap_expired(self) -> list[str]:
        """Remove expired records now; return their ids."""
        ...

    async def count(self) -> int:
        """How many live sessions there are."""
        ...

    async def count_pinned(self, model_name: str, version_number: int) -> int:
        """How many live sessions are pinned to that model version (so that it stays loaded
        while they live)."""
        ...

    async def ping(self) -> bool:
        """Whether the store can be reached now (readiness)."""
        ...

    async def close(self) -> None:
        """Persist what must survive a restart, if the store does so, and release connections."""
        ...


def record_bytes(record: SessionRecord) -> int:
    """What a session holds in memory: its arrays and a fixed allowance for the rest."""
    held = record.state.h.nbytes + record.state.c.nbytes
    for step in record.kept_steps():
        held += step.hidden_sequence.nbytes
        if step.state is not None:
            held += step.state.h.nbytes + step.state.c.nbytes
    return held + 1024
