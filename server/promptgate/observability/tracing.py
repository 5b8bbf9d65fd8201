"""Tracing: OpenTelemetry from the standard ``OTEL_*`` environment, and span helpers.

Tracing is on when the environment names an exporter:

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``):
  spans go to that OTLP/gRPC endpoint (``OTEL_EXPORTER_OTLP_HEADERS``,
  ``..._TIMEOUT``, ``..._COMPRESSION``, ``..._CERTIFICATE``, ``..._INSECURE``
  are read by the exporter itself);
- ``OTEL_TRACES_EXPORTER=console``: spans are printed (for development).

``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off;
``OTEL_SERVICE_NAME`` (default ``promptgate``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` / ``..._ARG``, ``OTEL_BSP_*`` and ``OTEL_PROPAGATORS``
are honoured by the SDK. A process already run under OpenTelemetry's own
set-up (``opentelemetry-instrument``) keeps its global provider.

With tracing off nothing of the SDK is imported or installed, and the helpers
below cost one global read: ``span()`` is a shared null context that yields
the API's no-op span, ``start()`` returns it, ``use()`` does nothing.

Span helpers, for code anywhere (domain included; they use the API only):

- ``span(name, parent=...)``: a child span, current inside the ``with``
  block, ended at its exit; an exception escaping it marks it failed.
- ``start(name, parent=...)``: a span that is *not* made current, for spans
  that live across the ``yield`` of an async generator (attaching a context
  there would leak into, or fail in, whatever resumes the generator); end it
  with ``finish``.
- ``use(span)``: make ``span`` current inside a ``with`` block holding no
  ``yield``.
- ``fail(span, error_type)``: mark a span failed with a low-cardinality
  ``error.type`` (an error code), never with an exception's text, which may
  hold prompt or response content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import Attributes

from promptgate.errors import ProviderError, RequestError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

__all__ = [
    "INVALID_SPAN",
    "Span",
    "SpanKind",
    "TracingError",
    "activate",
    "configure_from_env",
    "current_ids",
    "deactivate",
    "enabled",
    "fail",
    "finish",
    "install",
    "span",
    "start",
    "trace_id_of",
    "uninstall",
    "use",
]

log = logging.getLogger(__name__)

INSTRUMENTATION = "promptgate"
DEFAULT_SERVICE_NAME = "promptgate"

_tracer: Tracer | None = None


class TracingError(Exception):
    """The OTEL_* environment asks for something this server cannot do."""


# ---------------------------------------------------------------- set-up


def configure_from_env(environ: Mapping[str, str] | None = None) -> SdkTracerProvider | None:
    """An SDK tracer provider exporting as the ``OTEL_*`` environment says; None when off.

    Not installed anywhere: see ``install``.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    exporters: list[Any] = []
    for name in names:
        if name in ("", "none"):
            continue
        if name == "otlp":
            if endpoint:
                exporters.append(_otlp_exporter(env))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported (otlp, console or none)"
            )
    if not exporters:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    ) or "grpc"
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )
        except ImportError:
            raise TracingError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs the "
                "opentelemetry-exporter-otlp-proto-http package; promptgate ships the "
                "grpc exporter (the default protocol)"
            ) from None
        return HttpExporter()
    raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported")


def global_sdk_provider() -> Any | None:
    """The process's global tracer provider if something already set a real one."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def activate(provider: Any | None = None) -> Any | None:
    """Turn tracing on for a server starting now, if it should be; return what
    ``deactivate`` must shut down.

    ``provider`` (tests) wins; else a provider OpenTelemetry's own set-up made
    global; else one from the environment (``configure_from_env``), made
    global too so that other instrumentation in the process joins the traces.
    """
    if provider is not None:
        install(provider)
        return None
    existing = global_sdk_provider()
    if existing is not None:
        install(existing)
        return None
    configured = configure_from_env()
    if configured is None:
        return None
    trace.set_tracer_provider(configured)
    install(configured)
    log.info("tracing on: %s", _describe(configured))
    return configured


async def deactivate(owned: Any | None) -> None:
    """Stop tracing; flush and shut down ``owned`` (from ``activate``) off the event loop."""
    uninstall()
    if owned is not None:
        await asyncio.to_thread(owned.shutdown)


def _describe(provider: Any) -> str:
    name = provider.resource.attributes.get("service.name", "")
    return f"service.name={name}"


def install(provider: Any) -> None:
    """Trace with ``provider`` (a ``TracerProvider``) from now on, in this process."""
    global _tracer
    from promptgate import __version__

    _tracer = provider.get_tracer(INSTRUMENTATION, __version__)


def uninstall() -> None:
    """Stop tracing: the helpers go back to costing nothing."""
    global _tracer
    _tracer = None


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _tracer is not None


# ---------------------------------------------------------------- helpers


class _Off:
    """The context manager ``span`` and ``use`` return while tracing is off."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None


_OFF = _Off()


def _parent_context(parent: Span | None) -> otel_context.Context | None:
    return trace.set_span_in_context(parent) if parent is not None else None


def start(
    name: str,
    *,
    parent: Span | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes = None,
    links: Sequence[Link] = (),
    context: otel_context.Context | None = None,
) -> Span:
    """A started span, child of ``parent`` (or of ``context``, else the current span),
    not made current. The no-op span while tracing is off."""
    tracer = _tracer
    if tracer is None:
        return INVALID_SPAN
    if parent is not None:
        context = _parent_context(parent)
    return tracer.start_span(name, context=context, kind=kind, attributes=attributes, links=links)


def span(
    name: str,
    *,
    parent: Span | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes = None,
) -> contextlib.AbstractContextManager[Span]:
    """A span current inside the ``with`` block and ended at its exit (see module docstring)."""
    if _tracer is None:
        return _OFF
    return _current_span(start(name, parent=parent, kind=kind, attributes=attributes))


@contextlib.contextmanager
def _current_span(started: Span) -> Iterator[Span]:
    token = otel_context.attach(trace.set_span_in_context(started))
    try:
        yield started
    except BaseException as exc:
        fail(started, error_type_of(exc))
        raise
    finally:
        otel_context.detach(token)
        started.end()


def use(active: Span) -> contextlib.AbstractContextManager[Any]:
    """``active`` made the current span inside the ``with`` block (which must not yield)."""
    if _tracer is None or not active.is_recording():
        return _OFF
    return trace.use_span(active, end_on_exit=False, record_exception=False)


def fail(failed: Span, error_type: str) -> None:
    """Mark ``failed`` as failed with ``error.type`` = ``error_type``."""
    if failed.is_recording():
        failed.set_attribute("error.type", error_type)
        failed.set_status(Status(StatusCode.ERROR, error_type))


def finish(ended: Span, exc: BaseException | None = None) -> None:
    """End ``ended``, failed if ``exc`` is given."""
    if exc is not None:
        fail(ended, error_type_of(exc))
    ended.end()


def error_type_of(exc: BaseException) -> str:
    """A low-cardinality name for an exception: promptgate's error code or reason,
    CANCELLED, else the exception's type."""
    if isinstance(exc, ProviderError):
        return exc.code
    if isinstance(exc, RequestError):
        return exc.reason
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return "CANCELLED"
    return type(exc).__qualname__


def trace_id_of(active: Span) -> str:
    """``active``'s trace id as 32 hex digits; "" for the no-op span."""
    span_context = active.get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, as hex; None when tracing is off or none is."""
    if _tracer is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")
