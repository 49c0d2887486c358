"""The one table from domain errors to gRPC status codes, the rich status built from it, and the
policy that applies it to every RPC of the service. Every status the server sends, in-band
ones on streams included, is built here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc.aio import ServicerContext as Context
from grpc_status import rpc_status as grpc_rpc_status

from lstm_server.core import errors
from lstm_server.transport.handlers import (
    SERVING_PREFIXES,
    Policy,
    Streaming,
    Unary,
    client_streams,
    responses,
    rewrap,
)

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[errors.ServingError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SessionNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.StepConflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConcurrentChange: grpc.StatusCode.ABORTED,
    errors.ModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModelLoadFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModelControlRefused: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}

INTERNAL_MESSAGE = "internal error; the server log has the details"


def status_code(error: errors.ServingError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


ERROR_DOMAIN = "lstm-serving"


def _error_info(reason: str, metadata: dict[str, str]) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return detail


def rpc_status(error: BaseException) -> status_pb2.Status:
    """A google.rpc.Status for the error: an ErrorInfo with its stable reason and metadata, and
    for INVALID_ARGUMENT a BadRequest with one violation per problem.

    Anything but a ``ServingError`` is INTERNAL with a generic message: its detail is for the log.
    """
    if not isinstance(error, errors.ServingError):
        status = status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
        status.details.append(_error_info("INTERNAL", {}))
        return status
    code = status_code(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    status.details.append(_error_info(error.reason, error.metadata))
    if isinstance(error, errors.InvalidInput):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
        status.details.append(detail)
    return status


async def abort(context: Context, error: BaseException) -> NoReturn:
    """End the call with the error's status (with its details)."""
    await context.abort_with_status(grpc_rpc_status.to_status(rpc_status(error)))
    raise AssertionError("abort_with_status returned")  # it always raises


class Malformed:
    """A request whose bytes did not parse; the behaviour wrapper turns it into INVALID_ARGUMENT."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns ``Malformed`` instead of raising (gRPC would say INTERNAL)."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:
            return Malformed(error)

    return parse


def _checked(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise errors.InvalidInput.single("request", f"is not a valid message: {request.error}")
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request)


class ErrorMappingPolicy(Policy):
    """Turns domain errors into their status (with details) and anything else into INTERNAL,
    for every method of the service, so no servicer method maps errors itself. Request bytes that
    do not parse get INVALID_ARGUMENT, never INTERNAL."""

    def applies_to(self, method: str) -> bool:
        return method.startswith(SERVING_PREFIXES)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        check = _checked_stream if client_streams(handler) else _checked

        async def fail(context: Context, error: Exception) -> NoReturn:
            if not isinstance(error, errors.ServingError):
                log.error("unexpected error in %s", method, exc_info=error)
            await abort(context, error)

        def unary(behavior: Unary, _: str) -> Unary:
            async def mapped(request: Any, context: Context) -> Any:
                try:
                    return await behavior(check(request), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await fail(context, error)

            return mapped

        def streaming(behavior: Streaming, _: str) -> Streaming:
            async def mapped(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    async for response in responses(behavior, check(request), context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await fail(context, error)

            return mapped

        return rewrap(
            handler, unary, streaming, deserializer=_tolerant(handler.request_deserializer)
        )
