"""The one place where domain errors become gRPC status.

A ``RequestError`` becomes its status code with google.rpc details:
ErrorInfo (reason = the error code, domain "promptgate", metadata), for
bad fields BadRequest field violations, and for unmet conditions (a
FailedPrecondition that lists them) PreconditionFailure violations. Anything unexpected becomes INTERNAL
with a reference id that is also logged with the traceback; callers never see
a stack trace or an exception's text. A database outage is the exception:
it becomes UNAVAILABLE (STORE_UNAVAILABLE) with RetryInfo. Messages and
details are bounded (``status_for``), whatever the request echoed into them.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from promptgate.api.edge import check_request
from promptgate.errors import (
    FailedPrecondition,
    InvalidArgument,
    ProviderError,
    RequestError,
    ResourceExhausted,
    Unavailable,
)
from promptgate.store.faults import describe, store_fault

log = logging.getLogger(__name__)

DOMAIN = "promptgate"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


# What one error may put into the response trailers. grpc refuses trailers
# over 8-16 KiB on the client side (it then reports RESOURCE_EXHAUSTED instead
# of the real status), and grpc-message is percent-encoded (up to 3 bytes per
# byte) next to the serialized google.rpc.Status (base64: 4/3): a 1,000-byte
# message and 1,536 bytes of details stay under 7 KiB in the worst case.
MAX_MESSAGE_BYTES = 1000
MAX_DETAIL_VALUE_BYTES = 256
MAX_DETAILS_BYTES = 1536
_ELLIPSIS = "…"


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, ending in an ellipsis if cut."""
    # "replace": a lone surrogate (e.g. from a provider's JSON) cannot be serialized.
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode()
    return data[: limit - len(_ELLIPSIS.encode())].decode("utf-8", "ignore") + _ELLIPSIS


def _pack(detail: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def _error_info(error: RequestError) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo(reason=bounded(error.reason, 63), domain=DOMAIN)
    size = info.ByteSize()
    for key, value in error.metadata.items():
        key, value = bounded(key, 63), bounded(value, MAX_DETAIL_VALUE_BYTES)
        size += len(key.encode()) + len(value.encode()) + 8
        if size > MAX_DETAILS_BYTES // 2:
            break  # the rest would crowd out the other details
        info.metadata[key] = value
    return info


def _bad_request(error: RequestError, budget: int) -> error_details_pb2.BadRequest:
    bad = error_details_pb2.BadRequest()
    for i, v in enumerate(error.violations):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=bounded(v.field, MAX_DETAIL_VALUE_BYTES),
            description=bounded(v.description, MAX_DETAIL_VALUE_BYTES),
        )
        if bad.ByteSize() + violation.ByteSize() + 64 > budget:
            bad.field_violations.add(
                field="…", description=f"{len(error.violations) - i} more violations not shown"
            )
            break
        bad.field_violations.append(violation)
    return bad


def _precondition_failure(
    error: FailedPrecondition, budget: int
) -> error_details_pb2.PreconditionFailure:
    failure = error_details_pb2.PreconditionFailure()
    for i, v in enumerate(error.preconditions):
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=bounded(v.type, MAX_DETAIL_VALUE_BYTES),
            subject=bounded(v.subject, MAX_DETAIL_VALUE_BYTES),
            description=bounded(v.description, MAX_DETAIL_VALUE_BYTES),
        )
        if failure.ByteSize() + violation.ByteSize() + 64 > budget:
            failure.violations.add(
                type="…", description=f"{len(error.preconditions) - i} more violations not shown"
            )
            break
        failure.violations.append(violation)
    return failure


def status_for(error: RequestError) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    """The status code, message and google.rpc.Status for ``error``.

    Everything that may echo caller input is bounded (the message, each
    ErrorInfo metadata value, each field violation, the details in all), so a
    huge id in a request cannot turn its NOT_FOUND into a trailer that the
    client refuses.
    """
    code = grpc.StatusCode[error.status]
    message = bounded(error.message, MAX_MESSAGE_BYTES)
    details: list[Any] = [_error_info(error)]
    retry_after: float | None = None
    if isinstance(error, ResourceExhausted):
        retry_after = error.retry_after
    elif isinstance(error, Unavailable):
        retry_after = error.retry_after
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(max(retry_after, 0.0) * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if isinstance(error, ResourceExhausted):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=bounded(error.quota_subject, MAX_DETAIL_VALUE_BYTES),
                        description=bounded(error.quota_description, MAX_DETAIL_VALUE_BYTES),
                    )
                ]
            )
        )
    if error.violations:
        used = sum(d.ByteSize() for d in details)
        details.append(_bad_request(error, MAX_DETAILS_BYTES - used))
    if isinstance(error, FailedPrecondition) and error.preconditions:
        used = sum(d.ByteSize() for d in details)
        details.append(_precondition_failure(error, MAX_DETAILS_BYTES - used))
    status = status_pb2.Status(
        code=code.value[0], message=message, details=[_pack(d) for d in details]
    )
    return code, message, status


def _internal_status(reference: str) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    message = f"internal error (reference {reference})"
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL_ERROR", domain=DOMAIN, metadata={"reference": reference}
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    return (
        grpc.StatusCode.INTERNAL,
        message,
        status_pb2.Status(code=code_pb2.INTERNAL, message=message, details=[packed]),
    )


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    """Abort the call with the status for ``exc`` (raises AbortError).

    A database outage (see ``promptgate.store.faults``) is UNAVAILABLE
    (STORE_UNAVAILABLE) with a retry delay, logged as one warning line: during
    an outage every call fails alike, and a traceback each would drown the log.
    """
    if not isinstance(exc, RequestError):
        fault = store_fault(exc)
        if fault is not None:
            log.warning("store unavailable: %s", describe(exc))
            exc = fault
    if isinstance(exc, RequestError):
        code, message, status = status_for(exc)
    else:
        reference = uuid.uuid4().hex[:12]
        if isinstance(exc, ProviderError):
            log.error("provider error escaped the executor (reference %s): %s", reference, exc)
        else:
            log.error("unexpected error (reference %s)", reference, exc_info=exc)
        code, message, status = _internal_status(reference)
    await context.abort(
        code, message, trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),)
    )


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _ServerInterceptor = grpc.aio.ServerInterceptor

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


class ErrorInterceptor(_ServerInterceptor):
    """Maps exceptions raised by servicers to gRPC status (see module docstring).

    While the server drains (``draining()`` is true), new calls to promptgate's
    services fail at once with UNAVAILABLE (SHUTTING_DOWN); health and
    reflection keep answering.
    """

    def __init__(self, draining: Callable[[], bool] = lambda: False) -> None:
        self._draining = draining

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if self._draining() and handler_call_details.method.startswith("/promptgate."):
            return _refuse(handler)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary),  # type: ignore[arg-type]
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler


class _Undecodable:
    """A request body that is not the method's message (see ``_tolerant``)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that hands undecodable bodies to the guard instead of failing.

    grpc answers a failing deserializer with UNKNOWN and the exception's text;
    the guard answers INVALID_ARGUMENT (INVALID_REQUEST) instead.
    """
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(type(exc).__name__)

    return deserialize


def _admit(request: Any) -> None:
    """Refuse an undecodable body, or strings the edge does not accept (``api.edge``)."""
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            "the request body is not a valid protobuf message for this method",
            reason="INVALID_REQUEST",
        )
    check_request(request)


def _refuse(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with(
            context, Unavailable("the server is shutting down", reason="SHUTTING_DOWN")
        )

    factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.unary_unary_rpc_method_handler
    )
    return factory(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _guard_unary(behavior: UnaryBehavior) -> UnaryBehavior:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            _admit(request)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)

    return guarded


def _guard_stream(behavior: StreamBehavior) -> StreamBehavior:
    if not inspect.isasyncgenfunction(behavior):
        # A handler that sends with context.write() (e.g. health Watch).
        return _guard_unary(behavior)  # type: ignore[arg-type,return-value]

    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            _admit(request)
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)

    return guarded
