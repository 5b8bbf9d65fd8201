"""The domain's exception tree.

Every error the domain raises on purpose is a ``PromptgateError``. The transport
maps them to gRPC status in one place (``promptgate.api.errors``); nothing below
``api/`` knows about gRPC.

    PromptgateError
    ├── RequestError                 the request cannot run: a gRPC status error
    │   ├── InvalidArgument          INVALID_ARGUMENT   (INVALID_PROMPT, INVALID_INPUT, ...)
    │   ├── NotFound                 NOT_FOUND          (PROMPT_NOT_FOUND, ...)
    │   ├── AlreadyExists            ALREADY_EXISTS     (PROMPT_ALREADY_EXISTS)
    │   ├── FailedPrecondition       FAILED_PRECONDITION (PROMPT_ARCHIVED, BREAKING_CHANGE)
    │   ├── Aborted                  ABORTED            (EXECUTION_IN_PROGRESS)
    │   ├── Unauthenticated          UNAUTHENTICATED    (MISSING_AUTHORIZATION, INVALID_API_KEY)
    │   ├── PermissionDenied         PERMISSION_DENIED  (INSUFFICIENT_PERMISSIONS)
    │   ├── ResourceExhausted        RESOURCE_EXHAUSTED (RATE_LIMIT_EXCEEDED, ...)
    │   ├── Unavailable              UNAVAILABLE        (SHUTTING_DOWN, RECORDING_FAILED)
    │   │   └── StoreUnavailable     UNAVAILABLE        (STORE_UNAVAILABLE)
    │   └── Unimplemented            UNIMPLEMENTED      (NOT_IMPLEMENTED)
    └── ProviderError                the execution failed: a REJECTED response
        ├── ProviderTimeout          the provider did not answer in time
        ├── StreamInterrupted        the provider's stream broke off
        └── ProviderBadResponse      the provider answered something unreadable

``RequestError`` carries a stable ``reason`` (google.rpc.ErrorInfo.reason) and
optional field violations (google.rpc.BadRequest); a ``FailedPrecondition`` may
list the unmet conditions (google.rpc.PreconditionFailure); ``ResourceExhausted`` and an
``Unavailable`` with a ``retry_after`` also say when to retry (google.rpc.RetryInfo).
``StoreUnavailable`` is what a database outage becomes (``promptgate.store.faults``
classifies the driver's exceptions), never INTERNAL. ``ProviderError`` carries the
``code`` recorded on the rejected execution, the provider's HTTP status and its
Retry-After, and whether a retry could succeed.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptgate.backoff import sane_delay


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: a dotted path and what is wrong with it."""

    field: str
    description: str


class PromptgateError(Exception):
    """Base of every error promptgate raises on purpose."""


class RequestError(PromptgateError):
    """The request cannot run. Subclasses name the gRPC status it becomes."""

    status: str = "UNKNOWN"
    default_reason: str = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: list[FieldViolation] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.violations = violations or []
        self.metadata = metadata or {}


class InvalidArgument(RequestError):
    """The request is malformed or names something invalid."""

    status = "INVALID_ARGUMENT"
    default_reason = "INVALID_PARAMETERS"

    @classmethod
    def of(cls, violations: list[FieldViolation], *, reason: str) -> InvalidArgument:
        """An InvalidArgument listing every violation (its message names them all)."""
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(message, reason=reason, violations=violations)

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        """An InvalidArgument for a single bad field."""
        return cls(
            f"{field}: {description}",
            reason=reason,
            violations=[FieldViolation(field, description)],
        )


class NotFound(RequestError):
    """A named resource does not exist (or is not visible to the caller)."""

    status = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(RequestError):
    """A resource with the same unique key exists."""

    status = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One unmet condition (google.rpc.PreconditionFailure): a type, its subject and why."""

    type: str
    subject: str
    description: str


class FailedPrecondition(RequestError):
    """The resource is in a state that does not allow the request.

    ``preconditions`` lists each unmet condition (e.g. one per breaking change).
    """

    status = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        preconditions: list[PreconditionViolation] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.preconditions = preconditions or []


class Aborted(RequestError):
    """A concurrent request conflicts with this one; retrying later may succeed."""

    status = "ABORTED"
    default_reason = "ABORTED"


class Unauthenticated(RequestError):
    """The call carries no valid API key."""

    status = "UNAUTHENTICATED"
    default_reason = "INVALID_API_KEY"


class PermissionDenied(RequestError):
    """The key lacks the scope the call needs."""

    status = "PERMISSION_DENIED"
    default_reason = "INSUFFICIENT_PERMISSIONS"


class ResourceExhausted(RequestError):
    """A limit of the key's plan is reached; ``retry_after`` says when to retry."""

    status = "RESOURCE_EXHAUSTED"
    default_reason = "RATE_LIMIT_EXCEEDED"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        retry_after: float,
        quota_subject: str,
        quota_description: str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after
        self.quota_subject = quota_subject
        self.quota_description = quota_description


class Unavailable(RequestError):
    """The server cannot take the request now; retrying later may succeed.

    ``retry_after`` (seconds), when set, is sent to the caller as RetryInfo.
    """

    status = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = sane_delay(retry_after)


STORE_RETRY_AFTER_S = 1.0


class StoreUnavailable(Unavailable):
    """The database cannot serve the request now (unreachable, restarting, locked).

    A store outage is transient from the caller's point of view: it is told to
    retry after ``retry_after`` seconds, and calls succeed again by themselves
    once the database is back.
    """

    default_reason = "STORE_UNAVAILABLE"

    def __init__(
        self,
        message: str = "the database is unavailable; retry later",
        *,
        reason: str | None = None,
        retry_after: float = STORE_RETRY_AFTER_S,
    ) -> None:
        super().__init__(message, reason=reason, retry_after=retry_after)


class Unimplemented(RequestError):
    """The RPC is part of the contract but not served yet."""

    status = "UNIMPLEMENTED"
    default_reason = "NOT_IMPLEMENTED"


class ProviderError(PromptgateError):
    """A provider call failed; the execution is REJECTED with ``code``."""

    default_code = "PROVIDER_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int = 0,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        # Providers are outside promptgate: a delay of 1e300 or NaN must not reach
        # the arithmetic and encoders that use it. At most a day.
        self.retry_after = sane_delay(retry_after)
        self.retryable = retryable


class ProviderTimeout(ProviderError):
    """The provider did not answer within the time allowed."""

    default_code = "PROVIDER_TIMEOUT"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, retryable=True)


class StreamInterrupted(ProviderError):
    """The provider's stream ended before its last event."""

    default_code = "STREAM_INTERRUPTED"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class ProviderBadResponse(ProviderError):
    """The provider's answer could not be read (malformed JSON, missing fields)."""

    default_code = "PROVIDER_BAD_RESPONSE"

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message, status=status, retryable=False)
