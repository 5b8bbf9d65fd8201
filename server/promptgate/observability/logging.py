"""Log set-up: one line per record on stderr, text or JSON, secrets redacted.

``PROMPTGATE_LOG_FORMAT=text`` (the default) writes

    2026-01-02T03:04:05.678Z INFO promptgate.x: message request_id=... workspace=...

and ``PROMPTGATE_LOG_FORMAT=json`` one JSON object per line:

    {"time": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "promptgate.x",
     "message": "...", "request_id": "...", "trace_id": "...", "span_id": "...",
     "method": "/promptgate.v1.ExecutionService/ExecutePrompt", "workspace": "...",
     "execution_id": "exe_...", ...fields..., "exception": "Traceback ..."}

Context keys appear when known (see ``context.py``): request_id, method,
workspace and execution_id on the lines of a call; trace_id and span_id from
the current span when tracing is on, else trace_id from the caller's
``traceparent``. A record's ``fields`` (``extra={"fields": {...}}``) become
keys of its JSON object (the access line's code, duration and peer).

Every line, traceback included, passes through ``Redactor`` last.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from promptgate.observability import context, tracing
from promptgate.observability.redaction import Redactor

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "settings_secrets"]

FORMATS = ("text", "json")
ACCESS_LOGGER = "promptgate.access"
_CONTEXT_KEYS = ("request_id", "trace_id", "span_id", "method", "workspace", "execution_id")


def _context_of() -> dict[str, str]:
    """The context keys of the line being written (empty values left out)."""
    found: dict[str, str] = {}
    info = context.current()
    if info is not None:
        if info.request_id:
            found["request_id"] = info.request_id
        if info.trace_id:
            found["trace_id"] = info.trace_id
        if info.method:
            found["method"] = info.method
        if info.workspace:
            found["workspace"] = info.workspace
        if info.execution_id:
            found["execution_id"] = info.execution_id
    ids = tracing.current_ids()
    if ids is not None:
        found["trace_id"], found["span_id"] = ids
    return found


_last_second: tuple[int, str] = (-1, "")  # (whole second, its text): one strftime a second


def _timestamp(record: logging.LogRecord) -> str:
    global _last_second
    second = int(record.created)
    cached = _last_second  # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``<UTC time> LEVEL logger: message key=value...``, secrets redacted."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        found = _context_of()
        if record.name == ACCESS_LOGGER:
            found.pop("method", None)  # the access line starts with it
        if found:
            line += " " + " ".join(f"{key}={found[key]}" for key in _CONTEXT_KEYS if key in found)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return self._redactor.redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring), secrets redacted."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(_context_of())
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                document.setdefault(str(key), value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        # Newlines inside values are escaped by json.dumps: one object, one line.
        return self._redactor.redact(json.dumps(document, ensure_ascii=False, default=str))


def settings_secrets(settings: Any) -> list[str]:
    """The secrets a server holds by value: provider API keys and the webhook secret."""
    names = ("openai_api_key", "anthropic_api_key", "gemini_api_key", "webhook_secret")
    return [value for name in names if (value := getattr(settings, name, None))]


def configure_logging(
    level: str,
    *,
    fmt: str = "text",
    secrets: Iterable[str | None] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send all logs to ``stream`` (stderr) at ``level``, as ``fmt`` lines; return the handler.

    ``secrets``: values never to be written (see ``redaction.py``; API keys
    and the like are redacted by pattern whatever is given here).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic's INFO is set-up chatter; promptgate logs what migrates, from where to where.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return handler
