"""The auth interceptor: API key, scope and rate limits on every promptgate call.

Health and reflection stay open. Every other call needs a key, sent as
``authorization: Bearer <key>`` or ``x-api-key: <key>``; the key's workspace
becomes the call's workspace. Neither header takes precedence (see
``credential``): an empty or whitespace-only header counts as absent, an
``authorization`` header that is not ``Bearer <key>`` is refused
(INVALID_AUTHORIZATION), and two headers naming different keys are refused
(CONFLICTING_CREDENTIALS), so a bad header never masks a good one nor the
other way round. Each method needs a scope (see ``scopes_for``).
Every answered call carries ``x-ratelimit-limit``, ``x-ratelimit-remaining``
and ``x-ratelimit-reset`` (unix seconds) as initial metadata; executions
also hold one of the key's concurrent-execution slots and need token quota.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from promptgate.audit import set_actor
from promptgate.auth.keys import KeyStore
from promptgate.auth.limits import Lease, Limiter, Window
from promptgate.auth.model import ApiKey, Scope
from promptgate.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from promptgate.observability import context as log_context
from promptgate.observability.metrics import Metrics

CURRENT_KEY: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar(
    "promptgate_api_key", default=None
)

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
EXECUTIONS = {
    "/promptgate.v1.ExecutionService/ExecutePrompt",
    "/promptgate.v1.ExecutionService/ExecutePromptStream",
    "/promptgate.v1.ChainService/ExecuteChain",
    "/promptgate.v1.ChainService/ExecuteChainStream",
}
# Methods of PromptService and ChainService whose names start with these
# change something (template.manage); the others read (prompt.execute or
# template.manage), except Execute* (prompt.execute). Naming a new method by
# its verb is therefore enough to give it the right scope.
WRITE_VERBS = ("Create", "Archive", "Unarchive", "Set", "Update", "Delete")
# AdminService methods any valid key may call; every other one needs
# admin.manage (GetUsage: analytics.read), so a new method is closed by default.
ANY_KEY = {"WhoAmI", "ListModels"}


def scopes_for(method: str) -> tuple[Scope, ...]:
    """The scopes of which a key needs one to call ``method`` (empty: any key)."""
    service, _, name = method.rpartition("/")
    if service.endswith(".ExecutionService"):
        return (Scope.EXECUTE,)
    if service.endswith((".PromptService", ".ChainService")):
        if name.startswith("Execute"):
            return (Scope.EXECUTE,)
        if name.startswith(WRITE_VERBS):
            return (Scope.TEMPLATES,)
        return (Scope.EXECUTE, Scope.TEMPLATES)
    if service.endswith(".AdminService"):
        if name in ANY_KEY:
            return ()
        return (Scope.ANALYTICS,) if name == "GetUsage" else (Scope.ADMIN,)
    return (Scope.ADMIN,)


def credential(metadata: Any) -> str:
    """The API key a call's metadata carries; "" when it carries none.

    Every ``x-api-key`` and ``authorization`` header counts, none wins: empty
    or whitespace-only values (and ``Bearer`` with nothing after it) are
    absent; an ``authorization`` value that is not ``Bearer <key>`` raises
    UNAUTHENTICATED (INVALID_AUTHORIZATION); headers naming different keys
    raise UNAUTHENTICATED (CONFLICTING_CREDENTIALS). The same key in both is
    fine. Error messages never echo what was sent.
    """
    keys: set[str] = set()
    for name, value in metadata or ():
        name = name.lower()
        if name not in ("x-api-key", "authorization") or not isinstance(value, str):
            continue
        value = value.strip()
        if not value:
            continue
        if name == "authorization":
            scheme, _, value = value.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthenticated(
                    "the authorization header must read 'Bearer <key>' "
                    "(or send the key as 'x-api-key: <key>')",
                    reason="INVALID_AUTHORIZATION",
                )
            value = value.strip()
            if not value:
                continue
        keys.add(value)
    if len(keys) > 1:
        raise Unauthenticated(
            "the call carries different API keys (in authorization and x-api-key, "
            "or repeated headers); send one key",
            reason="CONFLICTING_CREDENTIALS",
        )
    return keys.pop() if keys else ""


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

    def __init__(self, keys: KeyStore, limiter: Limiter, metrics: Metrics | None = None) -> None:
        self._keys = keys
        self._limiter = limiter
        self._metrics = metrics

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
        token = credential(context.invocation_metadata())
        if not token:
            raise Unauthenticated(
                "send an API key as 'authorization: Bearer <key>' or 'x-api-key: <key>'",
                reason="MISSING_AUTHORIZATION",
            )
        key = await self._keys.authenticate(token)
        log_context.bind(workspace=key.workspace_id)  # on the call's log lines from now on
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
            self._rejected(exc)
            await context.send_initial_metadata(
                rate_headers(
                    Window(key.limits.requests_per_minute, 0, int(exc.retry_after) + _now())
                )
            )
            raise
        await context.send_initial_metadata(rate_headers(window))
        return key

    async def _begin(self, key: ApiKey) -> Lease:
        """Take one of the key's execution slots (counting a refusal)."""
        try:
            return await self._limiter.begin(key)
        except ResourceExhausted as exc:
            self._rejected(exc)
            raise

    def _rejected(self, exc: ResourceExhausted) -> None:
        if self._metrics is not None:
            self._metrics.ratelimit_rejected(exc.reason)

    def _unary(self, behavior: Any, needed: tuple[Scope, ...], execution: bool) -> Any:
        async def guarded(request: Any, context: Context) -> Any:
            key = await self._admit(context, needed)
            # gRPC runs each call in a task of its own: the value dies with it.
            CURRENT_KEY.set(key)
            set_actor(key.id)  # the audit log's "who"
            if not execution:
                return await behavior(request, context)
            lease = await self._begin(key)
            try:
                return await behavior(request, context)
            finally:
                await self._limiter.end(lease)

        return guarded

    def _stream(self, behavior: Any, needed: tuple[Scope, ...], execution: bool) -> Any:
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(behavior, needed, execution)

        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            key = await self._admit(context, needed)
            # Set, never reset: the call's task holds the value and dies with it,
            # while a generator's finally may run in another context (the loop's
            # finalizer closes a stream whose client went away), where
            # ContextVar.reset raises.
            CURRENT_KEY.set(key)
            set_actor(key.id)  # the audit log's "who"
            lease: Lease | None = await self._begin(key) if execution else None
            try:
                # Closed here, not whenever the garbage collector gets to it.
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            finally:
                if lease is not None:
                    await self._limiter.end(lease)

        return guarded


def _now() -> int:
    return int(time.time())
