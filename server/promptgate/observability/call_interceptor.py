"""The call interceptor: log context, server span and access line of every RPC.

Outermost of the server's interceptors, so it sees every call as the client
does (auth failures and errors mapped to status included). For each call:

- a log context (``observability.context.CallInfo``): the request id (the caller's
  ``x-request-id`` if it is a sane token, else a new one), the method, and
  the trace id; the auth interceptor adds the workspace, the executor the
  execution id;
- with tracing on, a SERVER span named ``<package>.<Service>/<Method>``
  continuing the caller's ``traceparent`` (``OTEL_PROPAGATORS``; W3C trace
  context by default), with ``rpc.system``, ``rpc.service``, ``rpc.method``,
  ``rpc.grpc.status_code``, the peer, the workspace and the request id; a
  streaming call's span ends when its stream does. Error status (and
  ``error.type``, the code's name) for the codes the OpenTelemetry gRPC
  conventions count as server errors: UNKNOWN, DEADLINE_EXCEEDED,
  UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS;
- unless turned off, one access line at the end (logger
  ``promptgate.access``): method, gRPC code, duration in ms, workspace, peer.

With tracing off, the caller's ``traceparent`` still gives the log lines
(and the executions recorded) their trace id, at the cost of one regex.
Health checks get none of this: load balancers call them every few seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from promptgate.observability import context as log_context
from promptgate.observability import tracing
from promptgate.observability.logging import ACCESS_LOGGER

__all__ = ["CallInterceptor"]

access_log = logging.getLogger(ACCESS_LOGGER)

QUIET_PREFIXES = ("/grpc.health.v1.Health/",)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _ServerInterceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]


class CallInterceptor(_ServerInterceptor):
    """Log context, server span and access line per call (see the module docstring)."""

    def __init__(self, *, access_log: bool = True) -> None:
        self._access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(QUIET_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, behavior: Any, method: str) -> Any:
        async def observed(request: Any, context: Context) -> Any:
            call = _Call(method, context)
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                self._end(call, context, exc)
                raise
            self._end(call, context, None)
            return response

        return observed

    def _stream(self, behavior: Any, method: str) -> Any:
        if not inspect.isasyncgenfunction(behavior):
            # A handler that sends with context.write() (e.g. health Watch).
            return self._unary(behavior, method)

        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(method, context)
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                self._end(call, context, exc)
                raise
            self._end(call, context, None)

        return observed

    def _end(self, call: _Call, context: Context, exc: BaseException | None) -> None:
        code = _code_of(context, exc)
        duration_ms = (time.perf_counter() - call.started) * 1000
        info = call.info
        active = call.span
        if active.is_recording():
            active.set_attribute("rpc.grpc.status_code", code.value[0])
            if info.workspace:
                active.set_attribute("promptgate.workspace", info.workspace)
            if code in _SERVER_ERRORS:
                tracing.fail(active, code.name)
            active.end()
        if self._access_log and access_log.isEnabledFor(logging.INFO):
            peer = context.peer()
            access_log.info(
                "%s %s %.1fms peer=%s",
                call.method,
                code.name,
                duration_ms,
                peer,
                extra={
                    "fields": {
                        "grpc_code": code.name,
                        "duration_ms": round(duration_ms, 3),
                        "peer": peer,
                    }
                },
            )


class _Call:
    """One call's start: its log context and, with tracing on, its server span."""

    __slots__ = ("info", "method", "span", "started")

    def __init__(self, method: str, context: Context) -> None:
        self.started = time.perf_counter()
        self.method = method
        request_id = traceparent = ""
        metadata = context.invocation_metadata() or ()
        for key, value in metadata:
            if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID.match(value):
                request_id = value
            elif key == "traceparent" and isinstance(value, str):
                traceparent = value
        self.info = info = log_context.begin(
            log_context.CallInfo(request_id=request_id or secrets.token_hex(8), method=method)
        )
        self.span: trace.Span = trace.INVALID_SPAN
        if tracing.enabled():
            self.span = _server_span(method, context, metadata, info.request_id)
            info.trace_id = tracing.trace_id_of(self.span)
        elif traceparent:
            found = _TRACEPARENT.match(traceparent)
            if found and found.group(1) != "0" * 32:
                info.trace_id = found.group(1)


def _server_span(method: str, context: Context, metadata: Any, request_id: str) -> trace.Span:
    carrier = {key: value for key, value in metadata if isinstance(value, str)}
    parent = propagate.extract(carrier)
    service, _, name = method.lstrip("/").rpartition("/")
    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": name,
        "promptgate.request_id": request_id,
    }
    address, port = _peer(context.peer())
    if address:
        attributes["network.peer.address"] = address
    if port:
        attributes["network.peer.port"] = port
    started = tracing.start(
        method.lstrip("/"), kind=trace.SpanKind.SERVER, attributes=attributes, context=parent
    )
    # Current for the rest of the call, never detached: the call's task (and so
    # this context) ends with the call. A streaming call's generator may be
    # closed from another context, where a detach would fail.
    otel_context.attach(trace.set_span_in_context(started, parent))
    return started


def _peer(peer: str | None) -> tuple[str, int]:
    """``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5`` -> (address, port); ("", 0) otherwise."""
    if not peer or not peer.startswith(("ipv4:", "ipv6:")):
        return "", 0
    host, _, port = peer[5:].rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


def _code_of(context: Context, exc: BaseException | None) -> grpc.StatusCode:
    """The status the call ended with, as its client sees it."""
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        if code is None:
            return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
        if isinstance(code, grpc.StatusCode):
            return code
        return _CODES_BY_VALUE.get(int(code), grpc.StatusCode.UNKNOWN)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
