"""HTTP and wire helpers shared by the provider adapters.

The OpenAI, Anthropic and Gemini adapters speak different JSON dialects over
the same transport: JSON request bodies, JSON or server-sent-event answers,
``Retry-After`` headers and HTTP error statuses. What they do alike lives here:

- ``SSEParser``: incremental server-sent-events parsing.
- ``drain`` and ``deadline_after``: reading a finished stream to its end, and
  whole-call deadlines on the running loop's clock.
- ``is_json``: whether an answer is a JSON document rather than a stream.
- ``parse_retry_after`` and ``classify_status``: what an HTTP error status and
  its headers mean for retrying.
- ``PROTECTED_HEADERS``: headers a request's ``raw_headers`` may never set.
- ``merge_overrides``: a request body's ``parameters.extra`` and ``raw_body``
  merged in.
- ``token_count``, ``parse_arguments`` and ``snippet``: small readers and
  formatters for answers and error messages.
- ``HttpProvider``: the base class of the adapters, on the shared
  ``promptgate.providers.upstream.UpstreamClient``: building a request
  (protected headers), sending it once and reading its body under one
  deadline, decoding JSON (bounded by ``promptgate.jsontext``: too deep, huge
  numbers or NaN are unreadable), and mapping ``UpstreamError`` to
  ``ProviderTimeout``, ``ProviderBadResponse``, ``StreamInterrupted`` or
  ``ProviderError``. URLs, headers, payloads, answers and error bodies stay in
  each adapter.

Nothing here catches ``asyncio.CancelledError``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final

from promptgate import jsontext
from promptgate.backoff import parse_seconds, retry_after_delay, sane_delay
from promptgate.chat import deep_merge
from promptgate.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderTimeout,
    StreamInterrupted,
)
from promptgate.providers.base import ProviderRequest
from promptgate.providers.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamErrorKind,
    UpstreamResponse,
)

__all__ = [
    "PROTECTED_HEADERS",
    "SNIPPET_CHARS",
    "HttpProvider",
    "PreparedRequest",
    "SSEParser",
    "classify_status",
    "deadline_after",
    "drain",
    "is_json",
    "merge_overrides",
    "parse_arguments",
    "parse_retry_after",
    "snippet",
    "token_count",
]

PROTECTED_HEADERS: Final = frozenset(
    {"authorization", "content-type", "content-length", "transfer-encoding", "host", "connection"}
)
"""Headers a request's raw_headers may not set: credentials and HTTP framing."""

SNIPPET_CHARS: Final = 500
"""How much of an error body ``snippet`` keeps."""

# How long to keep reading after a stream's last event so the connection can be reused.
_DRAIN_SECONDS: Final = 0.5


# ---------------------------------------------------------------------- answers


def token_count(value: Any) -> int:
    """A token count from a usage object as a non-negative int (0 if it is not a number)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value):
        return max(int(value), 0)
    return 0


def is_json(response: UpstreamResponse) -> bool:
    """Whether ``response`` is ``application/json`` (a stream request answered as one)."""
    content_type = str(response.headers.get("content-type", ""))
    return content_type.partition(";")[0].strip().lower() == "application/json"


def parse_arguments(arguments_json: str) -> dict[str, Any] | None:
    """A function call's arguments as an object; None if they are not a JSON object."""
    try:
        value = jsontext.loads(arguments_json)
    except jsontext.JsonTextError:
        return None
    return value if isinstance(value, dict) else None


def merge_overrides(
    body: dict[str, Any], request: ProviderRequest, *, dropped: frozenset[str]
) -> dict[str, Any]:
    """``body`` with the request's ``parameters.extra`` under it and ``raw_body`` over it.

    Keys of ``extra`` in ``dropped`` are not sent; the typed fields already in
    ``body`` win over ``extra`` (nested objects merge, ``body``'s values
    winning); ``raw_body`` is deep-merged last, over everything.
    """
    for key, value in request.parameters.extra.items():
        if key in dropped:
            continue
        if key not in body:
            body[key] = value
        elif isinstance(value, dict) and isinstance(body[key], dict):
            body[key] = deep_merge(value, body[key])
    return deep_merge(body, request.raw_body)


# ---------------------------------------------------------------------- streaming


class SSEParser:
    """Incremental server-sent-events parser yielding ``(event, data)`` pairs.

    Splits lines on CRLF, LF or CR only (JSON may hold U+2028 and friends),
    joins multi-line data with LF and skips comments and events without data.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Take in bytes; return every event they complete."""
        self._buffer += chunk
        events: list[tuple[str, str]] = []
        while (cut := _line_end(self._buffer)) is not None:
            end, after = cut
            line = self._buffer[:end]
            self._buffer = self._buffer[after:]
            self._line(line.decode("utf-8", errors="replace"), events)
        return events

    def flush(self) -> list[tuple[str, str]]:
        """The body ended: a last event without its blank line still counts."""
        events: list[tuple[str, str]] = []
        if self._buffer:
            line, self._buffer = self._buffer.rstrip(b"\r"), b""
            self._line(line.decode("utf-8", errors="replace"), events)
        self._line("", events)
        return events

    def _line(self, line: str, events: list[tuple[str, str]]) -> None:
        if not line:
            if self._data:
                events.append((self._event, "\n".join(self._data)))
            self._event, self._data = "", []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first line of ``buffer`` ends and the next begins, if complete."""
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return None if lf == -1 else (lf, lf + 1)
    if cr + 1 == len(buffer):
        return None  # a CR at the end may be the first half of CRLF
    return (cr, cr + 2) if buffer[cr + 1 : cr + 2] == b"\n" else (cr, cr + 1)


async def drain(chunks: AsyncIterator[bytes], deadline: float | None) -> None:
    """Read what follows a stream's last event (normally nothing) so the connection can be reused.

    Gives up after half a second or at ``deadline`` (a loop time), whichever
    comes first; read and transport errors are ignored, as the answer is
    already complete.
    """
    loop = asyncio.get_running_loop()
    until = loop.time() + _DRAIN_SECONDS
    if deadline is not None:
        until = min(until, deadline)
    try:
        async with asyncio.timeout_at(until):
            async for _ in chunks:
                pass
    except (TimeoutError, UpstreamError):
        pass  # the answer is complete; the connection is just not reused


def deadline_after(timeout: float | None) -> float | None:
    """The running loop's time ``timeout`` seconds from now (None: no deadline).

    For ``asyncio.timeout_at``, so one deadline bounds every step of a call.
    """
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


# ---------------------------------------------------------------------- errors


def classify_status(status: int) -> tuple[str, bool]:
    """The error code for an HTTP status, and whether a retry could help."""
    if status == 429:
        return "PROVIDER_RATE_LIMITED", True
    if status >= 500 or status in (408, 409):
        return "PROVIDER_ERROR", True
    if status in (401, 403):
        return "PROVIDER_AUTH_FAILED", False
    if status in (400, 404, 422):
        return "PROVIDER_INVALID_REQUEST", False
    return "PROVIDER_ERROR", False


def snippet(body: bytes | str) -> str:
    """``body`` for an error message: whitespace collapsed, cut at ``SNIPPET_CHARS``."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if len(text) > SNIPPET_CHARS:
        return text[:SNIPPET_CHARS] + "..."
    return text


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait before retrying, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be delta-seconds (``7``) or an HTTP-date
    (``Wed, 21 Oct 2015 07:28:00 GMT``, counted from ``now``); a date in the
    past gives 0. At most ``backoff.MAX_DELAY_S`` (a day). Returns None when
    neither header holds a usable value.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    millis = parse_seconds(lowered.get("retry-after-ms"))
    if millis is not None:
        return sane_delay(millis / 1000.0)
    clock = now.timestamp() if now is not None else time.time()
    return retry_after_delay(lowered.get("retry-after"), now=clock)


# ---------------------------------------------------------------------- transport


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A provider request ready to send: ``POST body`` to ``url`` with ``headers``."""

    url: str
    body: bytes
    headers: dict[str, str]
    """Names in lower case."""


class HttpProvider:
    """The transport shared by the HTTP adapters; each adapter subclasses it.

    ``client`` is shared and belongs to the caller, who closes it; ``aclose``
    does not. Every failure is a ``ProviderError`` whose message starts with
    ``name``; ``asyncio.CancelledError`` is never caught.
    """

    # What encoding a request body may raise that is reported as an invalid request.
    _BODY_ERRORS: ClassVar[tuple[type[Exception], ...]] = (TypeError, ValueError)

    def __init__(self, *, client: UpstreamClient, name: str) -> None:
        self.name = name
        self._client = client

    async def aclose(self) -> None:
        """Nothing to release: the shared HTTP client belongs to the caller."""

    # ------------------------------------------------------------------ requests

    def _build_request(
        self,
        request: ProviderRequest,
        url: str,
        payload: dict[str, Any],
        *,
        stream: bool,
        protected: frozenset[str],
        credentials: Mapping[str, str],
        defaults: Mapping[str, str] | None = None,
    ) -> PreparedRequest:
        """A ``POST url`` of ``payload`` as JSON.

        Headers, later ones winning (names compared without case): ``accept``,
        ``defaults``, the request's ``raw_headers`` (except the ``protected``
        names), ``content-type``, then ``credentials``.
        """
        try:
            content = json.dumps(
                payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
        except self._BODY_ERRORS as exc:
            raise ProviderError(
                f"{self.name}: the request body is not JSON: {exc}",
                code="PROVIDER_INVALID_REQUEST",
            ) from exc
        headers = {"accept": "text/event-stream" if stream else "application/json"}
        if defaults:
            for key, value in defaults.items():
                headers[key.lower()] = value
        for key, value in request.raw_headers.items():
            lowered = key.lower()
            if lowered not in protected:
                headers[lowered] = value
        headers["content-type"] = "application/json"
        for key, value in credentials.items():
            headers[key.lower()] = value
        return PreparedRequest(url, content, headers)

    async def _send(
        self,
        prepared: PreparedRequest,
        request: ProviderRequest,
        deadline: float | None,
        *,
        stream: bool = False,
    ) -> UpstreamResponse:
        """Send ``prepared`` once; wait for its answer's head (and body unless
        ``stream``) until ``deadline``."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self._client.send(
                    prepared.url, prepared.body, prepared.headers, stream=stream
                )
        except TimeoutError as exc:
            raise self._timeout_error(request) from exc
        except UpstreamError as exc:
            raise self._transport_error(exc, prepared.url) from exc

    # ------------------------------------------------------------------ bodies

    async def _next_bytes(
        self, chunks: AsyncIterator[bytes], request: ProviderRequest, deadline: float | None
    ) -> bytes | None:
        """The next piece of a streamed body; None at its end."""
        try:
            async with asyncio.timeout_at(deadline):
                return await anext(chunks, None)
        except TimeoutError as exc:
            raise self._timeout_error(request) from exc
        except UpstreamError as exc:
            if exc.kind is UpstreamErrorKind.BAD_RESPONSE:
                raise ProviderBadResponse(
                    f"{self.name}: cannot decode the stream: {exc.message}", status=200
                ) from exc
            raise StreamInterrupted(f"{self.name}: the stream broke off: {exc.message}") from exc

    async def _read_body(
        self,
        response: UpstreamResponse,
        request: ProviderRequest,
        url: str,
        deadline: float | None,
    ) -> bytes:
        """A streamed response's whole body, read by ``deadline``."""
        try:
            async with asyncio.timeout_at(deadline):
                return await response.aread()
        except TimeoutError as exc:
            raise self._timeout_error(request) from exc
        except UpstreamError as exc:
            raise self._transport_error(exc, url) from exc

    @staticmethod
    async def _read_error_body(response: UpstreamResponse, deadline: float | None) -> bytes:
        """An error response's body, or b"" if it cannot be read in time."""
        try:
            async with asyncio.timeout_at(deadline):
                return await response.aread()
        except (TimeoutError, UpstreamError):
            return b""

    def _decode_json(self, content: bytes, response: UpstreamResponse) -> Any:
        """A JSON body, or ``ProviderBadResponse``."""
        try:
            return jsontext.loads(content)
        except jsontext.JsonTextError as exc:
            raise ProviderBadResponse(
                f"{self.name}: the response is not JSON: {exc}; body: {snippet(content)!r}",
                status=response.status_code,
            ) from exc

    def _decode_event(self, data: str, response: UpstreamResponse) -> dict[str, Any]:
        """A server-sent event's data as a JSON object, or ``ProviderBadResponse``."""
        try:
            event = jsontext.loads(data)
        except jsontext.JsonTextError as exc:
            raise ProviderBadResponse(
                f"{self.name}: a stream event is not JSON: {snippet(data)!r}",
                status=response.status_code,
            ) from exc
        if not isinstance(event, dict):
            raise ProviderBadResponse(
                f"{self.name}: a stream event is not a JSON object: {snippet(data)!r}",
                status=response.status_code,
            )
        return event

    # ------------------------------------------------------------------ errors

    def _timeout_error(self, request: ProviderRequest) -> ProviderTimeout:
        limit = "the time allowed" if request.timeout is None else f"{request.timeout:g}s"
        return ProviderTimeout(f"{self.name}: no answer within {limit}")

    def _transport_error(self, exc: UpstreamError, url: str) -> ProviderError:
        """The ``ProviderError`` for a failed exchange with ``url``."""
        what = exc.message
        kind = exc.kind
        if kind is UpstreamErrorKind.TIMEOUT:
            return ProviderTimeout(f"{self.name}: timed out connecting to {url}: {what}")
        if kind is UpstreamErrorKind.UNREACHABLE:
            return ProviderError(
                f"{self.name}: cannot connect to {url}: {what}",
                code="PROVIDER_UNREACHABLE",
                retryable=True,
            )
        if kind is UpstreamErrorKind.TLS:
            # Certificates and TLS versions do not change between two attempts.
            return ProviderError(
                f"{self.name}: TLS with {url} failed: {what}", code="PROVIDER_UNREACHABLE"
            )
        if kind is UpstreamErrorKind.INVALID_REQUEST:
            return ProviderError(
                f"{self.name}: invalid request to {url}: {what}",
                code="PROVIDER_INVALID_REQUEST",
            )
        if kind is UpstreamErrorKind.BAD_RESPONSE:
            return ProviderBadResponse(f"{self.name}: {what}")
        return ProviderError(f"{self.name}: the connection failed: {what}", retryable=True)
