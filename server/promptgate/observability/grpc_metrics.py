"""gRPC server metrics with go-grpc-prometheus's names, from a grpc.aio interceptor.

``grpc_server_started_total``, ``grpc_server_handled_total`` (with
``grpc_code``), ``grpc_server_handling_seconds``,
``grpc_server_msg_received_total`` and ``grpc_server_msg_sent_total``, each
labelled ``grpc_type`` (unary, server_stream, client_stream, bidi_stream),
``grpc_service`` and ``grpc_method``. ``grpc_code`` is spelled as grpc-go
spells codes (``OK``, ``Canceled``, ``InvalidArgument``, ``DeadlineExceeded``,
...), so dashboards and alerts written for Go servers work unchanged.

Put the interceptor first: it then sees the status every other interceptor
produced. A call's code is the code it ended with: OK when the handler
returns, the code of ``context.abort`` (or ``context.set_code``), Unknown for
an exception nothing mapped, and for a handler cancelled under it Canceled
(the client went away) or DeadlineExceeded (its deadline passed).
``py-grpc-prometheus`` exists but serves only the synchronous server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from promptgate.observability.metrics import Metrics

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _ServerInterceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]

# grpc-go's String() of each code.
GO_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
OK = "OK"
UNKNOWN = "Unknown"
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class _MethodSeries:
    """The bound children of one method; ``handled`` children made on first use per code."""

    __slots__ = (
        "_handled",
        "_labels",
        "_metrics",
        "received",
        "seconds",
        "sent",
        "started",
    )

    def __init__(self, metrics: Metrics, grpc_type: str, method: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        labels = (grpc_type, service, name)
        self._metrics = metrics
        self._labels = labels
        self._handled: dict[str, Any] = {}
        self.started = metrics.grpc_started.labels(*labels)
        self.received = metrics.grpc_msg_received.labels(*labels)
        self.sent = metrics.grpc_msg_sent.labels(*labels)
        self.seconds = metrics.grpc_handling_seconds.labels(*labels)

    def handled(self, code: str, started: float) -> None:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = self._metrics.grpc_handled.labels(*self._labels, code)
        counter.inc()
        self.seconds.observe(time.perf_counter() - started)


def _code(context: Context, default: str) -> str:
    """The code the handler set (abort, set_code), else ``default``."""
    code = context.code()
    if code is None:
        return default
    if not isinstance(code, grpc.StatusCode):  # some paths keep the number
        code = _BY_VALUE.get(int(code), grpc.StatusCode.UNKNOWN)
    return GO_NAMES.get(code, UNKNOWN)


def _cancelled(context: Context) -> str:
    """Why a handler was cancelled: its deadline passed, or the client went away."""
    remaining = context.time_remaining()
    return "DeadlineExceeded" if remaining is not None and remaining <= 0 else "Canceled"


class MetricsInterceptor(_ServerInterceptor):
    """Counts every call of every registered method (see the module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._methods: dict[str, _MethodSeries] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # an unknown method: grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        series = self._methods.get(method)
        if series is None:
            series = self._methods[method] = self._bind(method, handler)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, series),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            # Checked per call: the same method may be served by a generator now and
            # by a coroutine later (a call refused while the server drains).
            behavior = handler.unary_stream
            asyncgen = inspect.isasyncgenfunction(behavior)
            return grpc.unary_stream_rpc_method_handler(
                _streaming(behavior, series) if asyncgen else _writing(behavior, series),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _reading(_unary(handler.stream_unary, series, received=False), series),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            behavior = handler.stream_stream
            wrapped = (
                _streaming(behavior, series, received=False)
                if inspect.isasyncgenfunction(behavior)
                else _writing(behavior, series, received=False)
            )
            return grpc.stream_stream_rpc_method_handler(
                _reading(wrapped, series),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _bind(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> _MethodSeries:
        if handler.unary_unary is not None:
            kind = "unary"
        elif handler.unary_stream is not None:
            kind = "server_stream"
        elif handler.stream_unary is not None:
            kind = "client_stream"
        else:
            kind = "bidi_stream"
        return _MethodSeries(self._metrics, kind, method)


def _unary(
    behavior: Any, series: _MethodSeries, *, received: bool = True, responds: bool = True
) -> Any:
    """A handler that returns its response (unary or client-streaming).

    ``responds=False``: a streaming handler that writes its messages itself.
    """

    async def observed(request: Any, context: Context) -> Any:
        series.started.inc()
        if received:
            series.received.inc()
        started = time.perf_counter()
        code = OK
        try:
            response = await behavior(request, context)
        except grpc.aio.AbortError:
            code = _code(context, UNKNOWN)
            raise
        except asyncio.CancelledError:
            code = _cancelled(context)
            raise
        except BaseException:
            code = _code(context, UNKNOWN)
            raise
        else:
            code = _code(context, OK)
            if responds and code == OK:
                series.sent.inc()
            return response
        finally:
            series.handled(code, started)

    return observed


def _streaming(behavior: Any, series: _MethodSeries, *, received: bool = True) -> Any:
    """A handler that yields its responses (server-streaming or bidi)."""

    async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
        series.started.inc()
        if received:
            series.received.inc()
        started = time.perf_counter()
        code = OK
        try:
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
                    series.sent.inc()  # resumed: grpc wrote it
        except grpc.aio.AbortError:
            code = _code(context, UNKNOWN)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = _cancelled(context)
            raise
        except BaseException:
            code = _code(context, UNKNOWN)
            raise
        else:
            code = _code(context, OK)
        finally:
            series.handled(code, started)

    return observed


class _CountingContext:
    """A servicer context whose ``write`` calls are counted as messages sent."""

    def __init__(self, context: Context, sent: Any) -> None:
        self._context = context
        self._sent = sent

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._sent.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _writing(behavior: Any, series: _MethodSeries, *, received: bool = True) -> Any:
    """A streaming handler that sends with ``context.write`` (e.g. health Watch)."""
    unary = _unary(behavior, series, received=received, responds=False)

    async def observed(request: Any, context: Context) -> Any:
        return await unary(request, _CountingContext(context, series.sent))

    return observed


def _reading(behavior: Any, series: _MethodSeries) -> Any:
    """Count the messages of a client stream as the handler reads them."""
    if inspect.isasyncgenfunction(behavior):

        async def observed_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            responses = behavior(_counted(requests, series.received), context)
            async with contextlib.aclosing(responses):
                async for response in responses:
                    yield response

        return observed_stream

    async def observed(requests: Any, context: Context) -> Any:
        return await behavior(_counted(requests, series.received), context)

    return observed


async def _counted(requests: Any, received: Any) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield request
