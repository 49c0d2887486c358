"""The SDK's one exception type."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def retry_delays(retries: int) -> Iterator[float]:
    """Backoff before each retry of a session step: 50 ms, doubling."""
    return (0.05 * 2**n for n in range(retries))


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one request field, as the server named it."""

    field: str
    description: str


class LstmError(Exception):
    """A failed call: the gRPC status ``code``, the server's ``details`` and, for
    INVALID_ARGUMENT, every field ``violations`` the server reported."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.violations = violations

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> LstmError:
        call: grpc.Call = error  # type: ignore[assignment]
        return cls(call.code(), call.details() or "", _violations(call))

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> LstmError:
        """An error the server reported in-band, inside a stream that goes on."""
        return cls(_STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message)


def _violations(call: grpc.Call) -> tuple[FieldViolation, ...]:
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details that disagree with the status line
        return ()
    if status is None:
        return ()
    found: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    return tuple(found)
