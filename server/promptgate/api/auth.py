"""The auth interceptor: API key, scope and rate limits on every promptgate call.

Health and reflection stay open. Every other call needs a key, sent as
``authorization: Bearer <key>`` or ``x-api-key: <key>``; the key's workspace
becomes the call's workspace. Each method needs a scope (see ``scopes_for``).
Every answered call carries ``x-ratelimit-limit``, ``x-ratelimit-remaining``
and ``x-ratelimit-reset`` (unix seconds) as initial metadata; executions
also hold one of the key's concurrent-execution slots and need token quota.
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from promptgate.auth.keys import KeyStore
from promptgate.auth.limits import Limiter, Window
from promptgate.auth.model import ApiKey, Scope
from promptgate.errors import PermissionDenied, ResourceExhausted, Unauthenticated

CURRENT_KEY: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar(
    "promptgate_api_key", default=None
)

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
EXECUTIONS = {
    "/promptgate.v1.ExecutionService/ExecutePrompt",
    "/promptgate.v1.ExecutionService/ExecutePromptStream",
}
TEMPLATE_WRITES = {
    "CreatePrompt",
    "ArchivePrompt",
    "UnarchivePrompt",
    "CreatePromptVersion",
    "SetReleaseTag",
}
KEY_MANAGEMENT = {"CreateApiKey", "ListApiKeys", "RevokeApiKey", "GetWebhookSecret"}


def scopes_for(method: str) -> tuple[Scope, ...]:
    """The scopes of which a key needs one to call ``method`` (empty: any key)."""
    service, _, name = method.rpartition("/")
    if service.endswith(".ExecutionService"):
        return (Scope.EXECUTE,)
    if service.endswith(".PromptService"):
        return (Scope.TEMPLATES,) if name in TEMPLATE_WRITES else (Scope.EXECUTE, Scope.TEMPLATES)
    if service.endswith(".AdminService"):
        if name in KEY_MANAGEMENT:
            return (Scope.ADMIN,)
        return (Scope.ANALYTICS,) if name == "GetUsage" else ()
    return (Scope.ADMIN,)


def _token(metadata: Any) -> str:
    values = {key.lower(): value for key, value in metadata or ()}
    explicit = values.get("x-api-key")
    if explicit:
        return str(explicit).strip()
    header = str(values.get("authorization", "")).strip()
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return ""


def rate_headers(window: Window) -> tuple[tuple[str, str], ...]:
    """The x-ratelimit-* metadata for ``window``."""
    return (
        ("x-ratelimit-limit", "unlimited" if window.limit is None else str(window.limit)),
        (
            "x-ratelimit-remaining",
            "unlimited" if window.remaining is None else str(window.remaining),
        ),
        ("x-ratelimit-reset", str(window.reset_at)),
    )


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _ServerInterceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]


class AuthInterceptor(_ServerInterceptor):
    """Authenticates, authorises and rate-limits calls (see the module docstring)."""

    def __init__(self, keys: KeyStore, limiter: Limiter) -> None:
        self._keys = keys
        self._limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        needed = scopes_for(method)
        execution = method in EXECUTIONS
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, needed, execution),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, needed, execution),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _admit(self, context: Context, needed: tuple[Scope, ...]) -> ApiKey:
        token = _token(context.invocation_metadata())
        if not token:
            raise Unauthenticated(
                "send an API key as 'authorization: Bearer <key>' or 'x-api-key: <key>'",
                reason="MISSING_AUTHORIZATION",
            )
        key = await self._keys.authenticate(token)
        if needed and not any(key.allows(scope) for scope in needed):
            names = " or ".join(s.value for s in needed)
            raise PermissionDenied(
                f"this API key lacks the {names} scope",
                reason="INSUFFICIENT_PERMISSIONS",
                metadata={"required_scope": names},
            )
        try:
            window = await self._limiter.hit(key)
        except ResourceExhausted as exc:
            await context.send_initial_metadata(
                rate_headers(
                    Window(key.limits.requests_per_minute, 0, int(exc.retry_after) + _now())
                )
            )
            raise
        await context.send_initial_metadata(rate_headers(window))
        return key

    def _unary(self, behavior: Any, needed: tuple[Scope, ...], execution: bool) -> Any:
        async def guarded(request: Any, context: Context) -> Any:
            key = await self._admit(context, needed)
            token = CURRENT_KEY.set(key)
            try:
                if not execution:
                    return await behavior(request, context)
                await self._limiter.begin(key)
                try:
                    return await behavior(request, context)
                finally:
                    await self._limiter.end(key)
            finally:
                CURRENT_KEY.reset(token)

        return guarded

    def _stream(self, behavior: Any, needed: tuple[Scope, ...], execution: bool) -> Any:
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(behavior, needed, execution)

        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            key = await self._admit(context, needed)
            token = CURRENT_KEY.set(key)
            try:
                if execution:
                    await self._limiter.begin(key)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    if execution:
                        await self._limiter.end(key)
            finally:
                CURRENT_KEY.reset(token)

        return guarded


def _now() -> int:
    return int(time.time())
