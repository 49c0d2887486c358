"""The one table from domain errors to status codes, for every door: gRPC sends the code (with
an ErrorInfo carrying the error's reason), HTTP sends the status this table gives for the code
(with the same reason in its body). Codes are named as gRPC names them; nothing here imports a
transport."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from lstm_server.core import errors

STATUS_CODES: dict[type[errors.ServingError], str] = {
    errors.InvalidInput: "INVALID_ARGUMENT",
    errors.SessionNotFound: "NOT_FOUND",
    errors.ModelNotFound: "NOT_FOUND",
    errors.StepConflict: "FAILED_PRECONDITION",
    errors.ConcurrentChange: "ABORTED",
    errors.ModelMismatch: "FAILED_PRECONDITION",
    errors.ModelLoadFailed: "FAILED_PRECONDITION",
    errors.ModelControlRefused: "FAILED_PRECONDITION",
    errors.LimitExceeded: "RESOURCE_EXHAUSTED",
    errors.DeadlineExceeded: "DEADLINE_EXCEEDED",
    errors.ModelNotReady: "UNAVAILABLE",
    errors.StoreUnavailable: "UNAVAILABLE",
    errors.Unauthenticated: "UNAUTHENTICATED",
}

# Codes as HTTP statuses (as gRPC-HTTP gateways map them); anything else is 500.
HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# HTTP statuses the HTTP framework answers by itself (no route, wrong method), as codes.
CODE_OF_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

INTERNAL_MESSAGE = "internal error; the server log has the details"
ERROR_DOMAIN = "lstm-serving"


def status_code(error: errors.ServingError) -> str:
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]  # type: ignore[index]
    return "INTERNAL"


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


@dataclass(frozen=True)
class Status:
    """How a call ended, the same for every door: its code, the English message, and the stable
    reason and metadata a program reads (an ErrorInfo over gRPC, fields of the body over HTTP)."""

    code: str
    message: str = ""
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


OK = Status("OK")


def status_of(error: BaseException | None) -> Status:
    """The status a call ends with when ``error`` ended it (None: OK). Anything but a
    ``ServingError`` is INTERNAL with a generic message: its detail is for the log."""
    if error is None:
        return OK
    if isinstance(error, errors.ServingError):
        return Status(status_code(error), error.message, error.reason, error.metadata)
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return Status("CANCELLED", "the call was cancelled")
    return Status("INTERNAL", INTERNAL_MESSAGE, "INTERNAL")
