"""The SDK's one exception type."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

P = ParamSpec("P")
R = TypeVar("R")
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one request field, as the server named it."""

    field: str
    description: str


class LstmError(Exception):
    """A failed call: the gRPC status ``code``, the server's ``details``, its stable ``reason``
    (``SESSION_NOT_FOUND``, ``STEP_OUT_OF_ORDER``, ... ; "" when the status came from gRPC
    itself) with ``metadata`` (for example ``expected_step_number``), and, for INVALID_ARGUMENT,
    every field ``violations`` the server reported."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        violations: tuple[FieldViolation, ...] = (),
        reason: str = "",
        metadata: dict[str, str] | None = None,
        *,
        in_band: bool = False,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.violations = violations
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.in_band = in_band  # a step refused inside a stream that went on

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> LstmError:
        call: grpc.Call = error  # type: ignore[assignment]
        try:
            status = rpc_status.from_call(call)
        except ValueError:  # details that disagree with the status line
            status = None
        if status is None:
            return cls(call.code(), call.details() or "")
        return cls.from_status(status, call.code())

    @classmethod
    def from_status(
        cls,
        status: status_pb2.Status,
        code: grpc.StatusCode | None = None,
        *,
        in_band: bool = False,
    ) -> LstmError:
        """An error from a google.rpc.Status: a call's, or one the server reported ``in_band``,
        inside a stream that goes on."""
        violations: list[FieldViolation] = []
        reason, metadata = "", {}
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                ]
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
        if code is None:
            code = _STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(code, status.message, tuple(violations), reason, metadata, in_band=in_band)


def invalid_argument(error: Exception | str) -> LstmError:
    """An argument the SDK cannot send, as the server would refuse it: INVALID_ARGUMENT with
    the reason INVALID_INPUT."""
    return LstmError(grpc.StatusCode.INVALID_ARGUMENT, str(error), reason="INVALID_INPUT")


def arguments(build: Callable[P, R]) -> Callable[P, R]:
    """``build``, with what it cannot make of its arguments (a ``ValueError``, ``TypeError`` or
    ``OverflowError`` from numpy, protobuf or the SDK's own checks) raised as ``LstmError``."""

    @functools.wraps(build)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return build(*args, **kwargs)
        except (ValueError, TypeError, OverflowError) as error:
            raise invalid_argument(error) from error

    return checked
