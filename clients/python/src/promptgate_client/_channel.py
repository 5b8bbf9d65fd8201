"""Channel options (retry service config) and the interceptors that add the API key
and the default deadline to every call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from grpc import aio

SERVICES = (
    "promptgate.v1.ExecutionService",
    "promptgate.v1.PromptService",
    "promptgate.v1.AdminService",
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC retries (in the channel) of calls that fail with UNAVAILABLE.

    UNAVAILABLE means the call did not run (no connection, or a server
    draining for shutdown), so retrying it is safe for every method.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0

    def service_config(self) -> str:
        """The JSON service config for the ``grpc.service_config`` channel option."""
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{"service": service} for service in SERVICES],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff}s",
                            "maxBackoff": f"{self.max_backoff}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        )


def channel_options(
    retry: RetryPolicy | None, options: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """Channel options: the retry service config, then the caller's own options."""
    result: list[tuple[str, Any]] = []
    if retry is not None:
        result += [("grpc.enable_retries", 1), ("grpc.service_config", retry.service_config())]
    else:
        result.append(("grpc.enable_retries", 0))
    return result + list(options)


def _metadata(existing: Any, api_key: str | None) -> list[tuple[str, str | bytes]]:
    metadata = [(str(k), v) for k, v in (existing or ())]
    if api_key and not any(k == "authorization" for k, _ in metadata):
        metadata.append(("authorization", f"Bearer {api_key}"))
    return metadata


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _CallDetails(_Details, grpc.ClientCallDetails):
    pass


class DefaultsInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <key>`` and the default timeout (sync channels)."""

    def __init__(self, api_key: str | None, timeout: float | None) -> None:
        self._api_key = api_key
        self._timeout = timeout

    def _details(self, details: Any) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout if details.timeout is not None else self._timeout,
            _metadata(details.metadata, self._api_key),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _AsyncDefaults:
    def __init__(self, api_key: str | None, timeout: float | None) -> None:
        self._api_key = api_key
        self._timeout = timeout

    def _details(self, details: Any) -> Any:
        return details._replace(
            timeout=details.timeout if details.timeout is not None else self._timeout,
            metadata=aio.Metadata(*_metadata(details.metadata, self._api_key)),
        )


class AsyncUnaryDefaults(_AsyncDefaults, aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds the API key and the default timeout to unary grpc.aio calls."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class AsyncStreamDefaults(_AsyncDefaults, aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Adds the API key and the default timeout to server-streaming grpc.aio calls."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)
