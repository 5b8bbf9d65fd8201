"""Observability: logs and tracing (metrics are not here yet).

- ``logging``: log set-up, text or JSON lines, with the call's context, secrets
  redacted (``redaction``).
- ``context``: the per-call log context (request id, trace id, method,
  workspace, execution id), in contextvars.
- ``tracing``: OpenTelemetry from the ``OTEL_*`` environment, and the span
  helpers the rest of promptgate uses (no-ops while tracing is off).
- ``call_interceptor``: the gRPC interceptor that opens each call's log
  context and server span and writes its access line.

Only ``call_interceptor`` knows gRPC; the others are plain Python and the
OpenTelemetry API, usable from the domain.
"""
