"""Domain errors. They carry no transport codes: the transport maps them in one table.

Each carries a stable ``reason`` (UPPER_SNAKE_CASE, never reworded) and ``metadata`` (string
values: the session, the expected step number, the limit), which callers read instead of the
English message; the transport sends them as a ``google.rpc.ErrorInfo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one request field, named by its path (``sequences[0].timesteps[2]``)."""

    field: str
    description: str


class ServingError(Exception):
    """Base of every error the service reports to its callers on purpose."""

    reason: ClassVar[str] = "SERVING_ERROR"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason  # type: ignore[misc]
        self.metadata = {key: str(value) for key, value in metadata.items()}


class InvalidInput(ServingError):
    """The request is malformed; ``violations`` lists every problem found."""

    reason = "INVALID_INPUT"

    def __init__(self, violations: list[FieldViolation]) -> None:
        shown = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
        super().__init__(shown + more)
        self.violations = violations

    @classmethod
    def single(cls, field: str, description: str) -> InvalidInput:
        return cls([FieldViolation(field, description)])


class SessionNotFound(ServingError):
    """The session does not exist (never did, was closed, or expired)."""

    reason = "SESSION_NOT_FOUND"

    @classmethod
    def ended(cls, session_id: str, how: str | None) -> SessionNotFound:
        """``how`` the session ended ("expired", "closed"), or None if it never existed here."""
        if how is None:
            return cls(f"session {session_id} does not exist", session_id=session_id)
        return cls(
            f"session {session_id} was {how}",
            reason=f"SESSION_{how.upper()}",
            session_id=session_id,
        )


class ModelNotFound(ServingError):
    """The request names a model (or a version) that is not served here: MODEL_NOT_FOUND,
    MODEL_VERSION_NOT_FOUND, MODEL_NOT_NAMED (several models, no default), MODEL_NOT_LOADED (none
    of its versions could be loaded), MODEL_VERSION_UNLOADED (a session's version that is gone),
    MODEL_LOAD_FAILED (the version's files cannot be served)."""

    reason = "MODEL_NOT_FOUND"


class ModelLoadFailed(ServingError):
    """A model version cannot be loaded (a broken file, a refused layer); the message says why."""

    reason = "MODEL_LOAD_FAILED"


class ModelControlRefused(ServingError):
    """Loading or unloading models on request is off (the server follows its repository, or
    serves a fixed set)."""

    reason = "MODEL_CONTROL_DISABLED"


class StepConflict(ServingError):
    """The step number does not follow the session's step count (reason STEP_OUT_OF_ORDER), or
    repeats the last step with another input (STEP_INPUT_MISMATCH); ``expected_step_number`` in
    the metadata says which step comes next."""

    reason = "STEP_OUT_OF_ORDER"


class ConcurrentChange(ServingError):
    """Other writers kept changing the session; a retry of the same call may succeed."""

    reason = "CONCURRENT_CHANGE"


class ModelMismatch(ServingError):
    """The session was made with other weights than the ones served now."""

    reason = "MODEL_VERSION_MISMATCH"


class LimitExceeded(ServingError):
    """A server limit would be exceeded; ``limit`` (its flag's name) and ``value`` in the
    metadata say which."""

    reason = "LIMIT_EXCEEDED"


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the work could run."""

    reason = "DEADLINE_EXCEEDED"


class ModelNotReady(ServingError):
    """The model is not loaded and warmed yet (MODEL_LOADING), or the server is shutting down
    (SHUTTING_DOWN)."""

    reason = "MODEL_LOADING"


class StoreUnavailable(ServingError):
    """The session store cannot be reached."""

    reason = "STORE_UNAVAILABLE"


class Unauthenticated(ServingError):
    """The call carries no valid credentials."""

    reason = "UNAUTHENTICATED"


class ModelLoadError(Exception):
    """The model cannot be served; the message names the problem. Raised at start-up only."""


class StoreSetupError(Exception):
    """The session store cannot be opened (for example, an unreadable snapshot). Start-up only."""
