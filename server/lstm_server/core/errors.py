"""Domain errors. They carry no transport codes: the transport maps them in one table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one request field, named by its path (``sequences[0].timesteps[2]``)."""

    field: str
    description: str


class ServingError(Exception):
    """Base of every error the service reports to its callers on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """The request is malformed; ``violations`` lists every problem found."""

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


class StepConflict(ServingError):
    """The step number does not follow the session's step count."""


class ConcurrentChange(ServingError):
    """Other writers kept changing the session; a retry of the same call may succeed."""


class ModelMismatch(ServingError):
    """The session was made with other weights than the ones served now."""


class LimitExceeded(ServingError):
    """A server limit (sessions, queue) would be exceeded."""


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the work could run."""


class ModelNotReady(ServingError):
    """The model is not loaded and warmed yet, or is shutting down."""


class StoreUnavailable(ServingError):
    """The session store cannot be reached."""


class Unauthenticated(ServingError):
    """The call carries no valid credentials."""


class ModelLoadError(Exception):
    """The model cannot be served; the message names the problem. Raised at start-up only."""


class StoreSetupError(Exception):
    """The session store cannot be opened (for example, an unreadable snapshot). Start-up only."""
