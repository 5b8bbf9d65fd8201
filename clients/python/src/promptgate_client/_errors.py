"""Typed errors: one class per gRPC status, with the server's google.rpc details."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class PromptgateError(Exception):
    """Base of every error this client raises."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field (google.rpc.BadRequest): a dotted path and why."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One unmet condition (google.rpc.PreconditionFailure), e.g. a breaking change:
    ``type`` VARIABLE_REMOVED, ``subject`` the variable, and why."""

    type: str
    subject: str
    description: str


class StatusError(PromptgateError):
    """The call failed with a gRPC status.

    ``reason``, ``domain`` and ``metadata`` come from the google.rpc.ErrorInfo
    the server sends in ``grpc-status-details-bin`` (e.g. reason
    ``PROMPT_NOT_FOUND``); ``violations`` from google.rpc.BadRequest;
    ``preconditions`` from google.rpc.PreconditionFailure; ``retry_delay``
    (seconds) from google.rpc.RetryInfo.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        preconditions: list[PreconditionViolation] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.domain = domain
        self.metadata = metadata or {}
        self.violations = violations or []
        self.preconditions = preconditions or []
        self.retry_delay = retry_delay

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"


class CancelledError(StatusError):
    code = grpc.StatusCode.CANCELLED


class InvalidArgumentError(StatusError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(StatusError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(StatusError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(StatusError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(StatusError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(StatusError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(StatusError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(StatusError):
    code = grpc.StatusCode.ABORTED


class UnimplementedError(StatusError):
    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(StatusError):
    code = grpc.StatusCode.INTERNAL


class UnavailableError(StatusError):
    code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(StatusError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[StatusError]] = {
    cls.code: cls
    for cls in (
        CancelledError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        UnauthenticatedError,
    )
}


class ExecutionRejectedError(PromptgateError):
    """A streamed execution ended REJECTED (raised by the text-stream helpers).

    The call itself succeeded; the execution failed, and is recorded, with
    ``error_code`` (e.g. ``PROVIDER_ERROR``, ``EXECUTION_TIMEOUT``).
    """

    def __init__(self, execution_id: str, error_code: str, message: str) -> None:
        super().__init__(f"execution {execution_id} rejected: {error_code}: {message}")
        self.execution_id = execution_id
        self.error_code = error_code
        self.error_message = message


def from_rpc_error(error: grpc.RpcError) -> StatusError:
    """The typed error for a failed call (sync or grpc.aio)."""
    code = error.code()
    message = error.details() or ""
    # Sync calls give (key, value) namedtuples, grpc.aio a Metadata of tuples.
    trailers = cast(Iterable[tuple[str, Any]], error.trailing_metadata() or ())
    cls = _BY_CODE.get(code, StatusError)
    result = cls(message, code=code)
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            _add_details(result, value)
    return result


def _add_details(error: StatusError, raw: bytes) -> None:
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            error.reason, error.domain = info.reason, info.domain
            error.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            error.violations = [
                FieldViolation(v.field, v.description) for v in bad.field_violations
            ]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            error.preconditions = [
                PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations
            ]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            error.retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
