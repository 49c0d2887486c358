"""Every status the gRPC door sends, in-band ones on streams included: the call's code from the
one error table (``status.py``), with a ``google.rpc.ErrorInfo`` carrying the error's stable
reason and metadata, and for INVALID_ARGUMENT a ``BadRequest`` with one violation per problem."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc.aio import ServicerContext as Context
from grpc_status import rpc_status as grpc_rpc_status

from lstm_server.core import errors
from lstm_server.transport.status import ERROR_DOMAIN, status_of

GRPC_CODES = {code.name: code for code in grpc.StatusCode}


def grpc_code(name: str) -> grpc.StatusCode:
    return GRPC_CODES.get(name, grpc.StatusCode.UNKNOWN)


def _packed(message: object) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def rpc_status(error: BaseException) -> status_pb2.Status:
    """A google.rpc.Status for the error (anything but a ``ServingError`` is INTERNAL with a
    generic message: its detail is for the log)."""
    status = status_of(error)
    message = status_pb2.Status(code=grpc_code(status.code).value[0], message=status.message)
    message.details.append(
        _packed(
            error_details_pb2.ErrorInfo(
                reason=status.reason, domain=ERROR_DOMAIN, metadata=status.metadata
            )
        )
    )
    if isinstance(error, errors.InvalidInput):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]
        message.details.append(_packed(error_details_pb2.BadRequest(field_violations=violations)))
    return message


async def abort(context: Context, error: BaseException) -> NoReturn:
    """End the call with the error's status (with its details)."""
    await context.abort_with_status(grpc_rpc_status.to_status(rpc_status(error)))
    raise AssertionError("abort_with_status returned")  # it always raises
