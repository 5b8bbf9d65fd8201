"""A local fake of the Anthropic Messages API, on a real socket.

``FakeAnthropic`` is an HTTP/1.1 server (asyncio streams + h11) on 127.0.0.1
that answers ``POST /v1/messages`` in Anthropic's wire format: JSON message
objects, server-sent-event streams (``event: <name>`` + ``data: <json>``
pairs: ``message_start``, ``content_block_start``, ``ping``,
``content_block_delta``..., ``content_block_stop``, ``message_delta``,
``message_stop``) and Anthropic error bodies (``{"type": "error", "error":
{"type", "message"}, "request_id"}``). It reuses ``tests.fake_openai``'s
server (connection handling, request recording, disconnect detection) and only
replaces the routing and the answers, so clients talk to it over TCP:
timeouts, broken connections and disconnects are real.

Usage::

    async with FakeAnthropic(api_key="sk-ant-test") as fake:
        provider = AnthropicProvider(client=..., base_url=fake.base_url, api_key="sk-ant-test")
        fake.last_request.body           # what the client sent
        fake.last_request.chunks         # the (event, data) pairs of a streamed answer
        await fake.wait_for_disconnect()

Or from the repository root: ``python -m tests.fake_anthropic --port 8090``.

Behaviour is chosen per request by the ``model`` name:

================================  =====================================================
model                             answer
================================  =====================================================
anything else                     echo: the last user message's text (its text blocks
                                  and tool results), streamed one word per delta;
                                  stop_reason ``end_turn``
``fake-<status>`` (``fake-429``,  that HTTP status with an Anthropic error body of the
``fake-529``, ``fake-401``, ...)  documented type (400 invalid_request_error, 401
                                  authentication_error, 403 permission_error, 404
                                  not_found_error, 413 request_too_large, 429
                                  rate_limit_error, 500 api_error, 529
                                  overloaded_error); 429 also sends ``retry-after: 7``
                                  and ``anthropic-ratelimit-*`` headers
``fake-slow``                     waits ``x-fake-delay`` seconds (default 30) before
                                  answering (gives up when the client goes away)
``fake-tools``                    a text block, then two ``tool_use`` blocks (the
                                  request's first two tools, else ``get_weather``);
                                  stop_reason ``tool_use``; streamed with the input
                                  split into ``input_json_delta`` pieces
``fake-cut``                      stream: message_start, a text block start and two
                                  deltas, then the connection is closed mid-body;
                                  unary: half the body, then closed
``fake-no-stop``                  stream: every event except ``message_stop``, then the
                                  body ends cleanly
``fake-stream-error``             stream: one ``"partial "`` delta, then ``event: error``
                                  with an ``overloaded_error`` (or the type in
                                  ``x-fake-error-type``); unary: 529
``fake-endless``                  stream: a ``"tick "`` delta every
                                  ``x-fake-chunk-delay`` seconds (default 0.02) until the
                                  client goes away
``fake-malformed``                unary: 200 with invalid JSON; stream: message_start,
                                  then a ``data:`` line that is not JSON
``fake-ignore-stream``            always a JSON message, even for stream requests
================================  =====================================================

Request headers tune the answer: ``x-fake-delay`` (seconds, ``fake-slow``),
``x-fake-chunk-delay`` (seconds between stream events), ``x-fake-stop-reason``
(``stop_sequence`` also fills ``stop_sequence`` from the request's
``stop_sequences``), ``x-fake-cache-read-tokens`` and
``x-fake-cache-creation-tokens`` (usage), ``x-fake-error-type``
(``fake-stream-error``) and ``x-fake-retry-after`` (the ``retry-after`` sent
with an error status; ``none`` omits it).

Checks, as the real API makes them: with ``FakeAnthropic(api_key=...)``
requests must carry that ``x-api-key`` (401 ``authentication_error``
otherwise); ``anthropic-version`` must be ``version`` (default
``2023-06-01``; 400 ``invalid_request_error`` otherwise; ``version=None``
skips the check); the body must be a JSON object with ``model``,
``max_tokens`` (an integer >= 1) and a ``messages`` list without ``system``
roles (400 otherwise).

Usage counts: a token is a whitespace-separated word. ``input_tokens`` counts
the words of ``system`` and of every message (text, tool results, tool inputs);
``output_tokens`` the words of the answer (tool inputs included). The cache
headers add their counts as separate ``cache_*_input_tokens``.

What it saw: as ``FakeOpenAI`` (``requests``, ``last_request``,
``disconnects``, ``wait_for_requests``, ``wait_for_disconnect``, ``errors``);
a streamed answer's ``RecordedRequest.chunks`` holds ``(event name, data)``
pairs, ``response_json`` the JSON document of a unary answer or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import h11

from tests.fake_openai import FakeOpenAI, RecordedRequest, _Exchange

__all__ = ["FakeAnthropic", "RecordedRequest"]

_STATUS_MODEL = re.compile(r"^fake-(\d{3})$")
_WORD = re.compile(r"\S+\s*|\s+")
_DEFAULT_SLOW_SECONDS = 30.0
_ENDLESS_INTERVAL = 0.02
_JSON_PIECE = 7
_VERSION = "2023-06-01"

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    529: b"Site Overloaded",
}

# The documented error type and a realistic message for each status.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "messages: text content blocks must be non-empty"),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    ),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

_ids = itertools.count(1)


class _AnthropicExchange(_Exchange):
    """``_Exchange`` with Anthropic's response headers and named SSE events."""

    def __init__(self, ex: _Exchange) -> None:
        super().__init__(ex.conn, ex.writer, ex.record, ex.gone)
        self.request_id = f"req_fake{next(_ids):012d}"

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.record.status = status
        base = [("request-id", self.request_id), ("anthropic-organization-id", "org-fake")]
        await self._write(
            h11.Response(
                status_code=status,
                headers=[(k.encode(), v.encode()) for k, v in base + headers],
                reason=_REASONS.get(status, b""),
            )
        )

    async def sse(self, name: str, data: dict[str, Any]) -> None:
        """One ``event: <name>`` / ``data: <json>`` server-sent event."""
        self.record.chunks.append((name, data))
        text = json.dumps(data, separators=(",", ":"))
        await self.body(f"event: {name}\ndata: {text}\n\n".encode())

    async def error(
        self,
        status: int,
        kind: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        document = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": self.request_id,
        }
        await self.send_json(status, document, headers)


class FakeAnthropic(FakeOpenAI):
    """A fake Anthropic Messages API server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        version: str | None = _VERSION,
    ) -> None:
        super().__init__(host=host, port=port, api_key=api_key)
        self.version = version

    @property
    def base_url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:PORT`` (clients append ``/v1/messages``)."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def _route(self, exchange: _Exchange) -> None:
        ex = _AnthropicExchange(exchange)
        record = ex.record
        path = record.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/messages":
            await ex.error(404, "not_found_error", "Not Found")
            return
        if record.method != "POST":
            await ex.error(405, "invalid_request_error", f"Method {record.method} not allowed")
            return
        if self.api_key is not None:
            key = record.headers.get("x-api-key")
            if not key:
                await ex.error(401, "authentication_error", "x-api-key header is required")
                return
            if key != self.api_key:
                await ex.error(401, "authentication_error", "invalid x-api-key")
                return
        if self.version is not None:
            version = record.headers.get("anthropic-version")
            if not version:
                await ex.error(
                    400, "invalid_request_error", "anthropic-version: header is required"
                )
                return
            if version != self.version:
                await ex.error(
                    400, "invalid_request_error", f"anthropic-version: unknown version {version!r}"
                )
                return
        problem = _body_problem(record.body)
        if problem:
            await ex.error(400, "invalid_request_error", problem)
            return
        await _Behaviour(ex, record.body).run()


def _body_problem(body: Any) -> str:
    """Why the API would refuse this body with a 400 ("" if it would not)."""
    if not isinstance(body, dict):
        return "The request body is not valid JSON."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required (an integer >= 1)"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages: Field required"
    for position, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return (
                f"messages.{position}.role: Input should be 'user' or 'assistant' "
                "(use the top-level system parameter for system prompts)"
            )
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    return ""


class _Behaviour:
    """The answer to one well-formed Messages request."""

    def __init__(self, ex: _AnthropicExchange, body: dict[str, Any]) -> None:
        self.ex = ex
        self.body = body
        self.model: str = body["model"]
        self.stream = body.get("stream") is True
        self.id = f"msg_fake{next(_ids):012d}"
        self.response_model = f"{self.model}-20250219"

    async def run(self) -> None:
        handlers: dict[str, Callable[[], Awaitable[None]]] = {
            "fake-slow": self._slow,
            "fake-tools": self._tools,
            "fake-cut": self._cut,
            "fake-no-stop": self._no_stop,
            "fake-stream-error": self._stream_error,
            "fake-endless": self._endless,
            "fake-malformed": self._malformed,
            "fake-ignore-stream": self._ignore_stream,
        }
        status = _STATUS_MODEL.match(self.model)
        if status:
            await self._error_status(int(status.group(1)))
        elif self.model in handlers:
            await handlers[self.model]()
        else:
            await self._echo()

    # ------------------------------------------------------------------ content

    def _echo_text(self) -> str:
        for message in reversed(self.body["messages"]):
            if message.get("role") == "user":
                text = _text_of(message.get("content"))
                if text:
                    return text
        return "Hello from FakeAnthropic."

    def _int_header(self, name: str) -> int:
        try:
            return max(int(self.ex.header(name, "0")), 0)
        except ValueError:
            return 0

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        words = len(_text_of(self.body.get("system")).split()) + sum(
            len(_text_of(m.get("content")).split()) for m in self.body["messages"]
        )
        creation = self._int_header("x-fake-cache-creation-tokens")
        return {
            "input_tokens": words,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": self._int_header("x-fake-cache-read-tokens"),
            "cache_creation": {
                "ephemeral_5m_input_tokens": creation,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _stop(self, default: str = "end_turn") -> tuple[str, str | None]:
        """The stop_reason, and the stop_sequence that goes with it."""
        reason = self.ex.header("x-fake-stop-reason") or default
        if reason != "stop_sequence":
            return reason, None
        sequences = self.body.get("stop_sequences") or ["\n\nHuman:"]
        return reason, str(sequences[0])

    def _message(
        self,
        content: list[dict[str, Any]],
        stop: tuple[str, str | None] | None,
        usage: dict[str, Any],
    ) -> dict[str, Any]:
        reason, sequence = stop if stop is not None else (None, None)
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.response_model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage,
        }

    async def _sse(self, name: str, data: dict[str, Any]) -> None:
        await self.ex.sleep(self.ex.float_header("x-fake-chunk-delay", 0.0))
        await self.ex.sse(name, data)

    async def _stream_message(
        self,
        blocks: list[dict[str, Any]],
        stop: tuple[str, str | None],
        output_tokens: int,
        *,
        message_stop: bool = True,
    ) -> None:
        """A whole stream for a message with these (finished) content blocks."""
        ex = self.ex
        await ex.start_sse()
        start = self._message([], None, self._usage(1))
        await self._sse("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                head: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": piece} for piece in _WORD.findall(block["text"])
                ]
            else:
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                arguments = json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                    {"type": "input_json_delta", "partial_json": arguments[i : i + _JSON_PIECE]}
                    for i in range(0, len(arguments), _JSON_PIECE)
                ]
            await self._sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": head},
            )
            if index == 0:
                await self._sse("ping", {"type": "ping"})
            for delta in deltas:
                await self._sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            await self._sse("content_block_stop", {"type": "content_block_stop", "index": index})
        reason, sequence = stop
        await self._sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": {"output_tokens": output_tokens},
            },
        )
        if message_stop:
            await self._sse("message_stop", {"type": "message_stop"})
        await ex.end()

    async def _answer(
        self,
        blocks: list[dict[str, Any]],
        stop: tuple[str, str | None],
        *,
        message_stop: bool = True,
    ) -> None:
        output = sum(
            len((b["text"] if b["type"] == "text" else json.dumps(b["input"])).split())
            for b in blocks
        )
        if self.stream:
            await self._stream_message(blocks, stop, output, message_stop=message_stop)
        else:
            await self.ex.send_json(200, self._message(blocks, stop, self._usage(output)))

    # ------------------------------------------------------------------ behaviours

    async def _echo(self) -> None:
        await self._answer([{"type": "text", "text": self._echo_text()}], self._stop())

    async def _error_status(self, status: int) -> None:
        ex = self.ex
        if status in _ERRORS:
            kind, message = _ERRORS[status]
        elif status >= 500:
            kind, message = "api_error", f"Fake upstream failure (HTTP {status})."
        else:
            kind, message = "invalid_request_error", f"Fake invalid request (HTTP {status})."
        headers: list[tuple[str, str]] = []
        if status == 429:
            reset = (datetime.now(UTC) + timedelta(seconds=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
            headers += [
                ("retry-after", "7"),
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", reset),
                ("anthropic-ratelimit-tokens-limit", "50000"),
                ("anthropic-ratelimit-tokens-remaining", "48000"),
                ("anthropic-ratelimit-tokens-reset", reset),
                ("anthropic-ratelimit-input-tokens-limit", "40000"),
                ("anthropic-ratelimit-input-tokens-remaining", "39000"),
                ("anthropic-ratelimit-input-tokens-reset", reset),
                ("anthropic-ratelimit-output-tokens-limit", "10000"),
                ("anthropic-ratelimit-output-tokens-remaining", "9000"),
                ("anthropic-ratelimit-output-tokens-reset", reset),
            ]
        retry_after = ex.header("x-fake-retry-after")
        if retry_after:
            headers = [(k, v) for k, v in headers if k != "retry-after"]
            if retry_after.lower() != "none":
                headers.append(("retry-after", retry_after))
        await ex.error(status, kind, message.format(model=self.model), headers)

    async def _slow(self) -> None:
        await self.ex.sleep(self.ex.float_header("x-fake-delay", _DEFAULT_SLOW_SECONDS))
        await self._echo()

    def _tool_names(self) -> list[str]:
        return [
            t["name"]
            for t in self.body.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        ] or ["get_weather"]

    async def _tools(self) -> None:
        names = self._tool_names()
        blocks: list[dict[str, Any]] = [
            {"type": "text", "text": "I'll look that up."},
            {
                "type": "tool_use",
                "id": "toolu_fake_1",
                "name": names[0],
                "input": {"location": "Paris, France", "unit": "celsius"},
            },
            {
                "type": "tool_use",
                "id": "toolu_fake_2",
                "name": names[1 % len(names)],
                "input": {"location": "Tokyo, Japan", "unit": "celsius"},
            },
        ]
        await self._answer(blocks, self._stop("tool_use"))

    async def _cut(self) -> None:
        ex = self.ex
        if self.stream:
            await ex.start_sse()
            start = self._message([], None, self._usage(1))
            await ex.sse("message_start", {"type": "message_start", "message": start})
            await ex.sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for piece in _WORD.findall(self._echo_text())[:2]:
                delta = {"type": "text_delta", "text": piece}
                await ex.sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            await ex.close_mid_body()
        text = self._echo_text()
        data = json.dumps(
            self._message([{"type": "text", "text": text}], self._stop(), self._usage(1))
        ).encode()
        await ex.start(
            200, [("content-type", "application/json"), ("content-length", str(len(data)))]
        )
        await ex.body(data[: len(data) // 2])
        await ex.close_mid_body()

    async def _no_stop(self) -> None:
        await self._answer(
            [{"type": "text", "text": self._echo_text()}], self._stop(), message_stop=False
        )

    async def _stream_error(self) -> None:
        if not self.stream:
            await self._error_status(529)
            return
        ex = self.ex
        kind = ex.header("x-fake-error-type") or "overloaded_error"
        message = {"overloaded_error": "Overloaded", "api_error": "Internal server error"}.get(
            kind, f"Fake {kind}"
        )
        await ex.start_sse()
        start = self._message([], None, self._usage(1))
        await ex.sse("message_start", {"type": "message_start", "message": start})
        await ex.sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await ex.sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "partial "},
            },
        )
        await ex.sse("error", {"type": "error", "error": {"type": kind, "message": message}})
        await ex.end()

    async def _endless(self) -> None:
        ex = self.ex
        if not self.stream:
            await ex.sleep(_DEFAULT_SLOW_SECONDS)
            await self._echo()
            return
        interval = ex.float_header("x-fake-chunk-delay", _ENDLESS_INTERVAL)
        await ex.start_sse()
        start = self._message([], None, self._usage(1))
        await ex.sse("message_start", {"type": "message_start", "message": start})
        await ex.sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        while True:
            delta = {"type": "text_delta", "text": "tick "}
            await ex.sse(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
            await ex.sleep(interval)

    async def _malformed(self) -> None:
        ex = self.ex
        if self.stream:
            await ex.start_sse()
            start = self._message([], None, self._usage(1))
            await ex.sse("message_start", {"type": "message_start", "message": start})
            ex.record.chunks.append(("content_block_start", "<malformed>"))
            await ex.body(
                b'event: content_block_start\ndata: {"type": "content_block_start", [\n\n'
            )
            await ex.sse("message_stop", {"type": "message_stop"})
            await ex.end()
            return
        data = b'{"id": "msg_broken", "type": "message", "content": [{"type": "text",'
        await ex.start(
            200, [("content-type", "application/json"), ("content-length", str(len(data)))]
        )
        await ex.body(data)
        await ex.end()

    async def _ignore_stream(self) -> None:
        text = self._echo_text()
        usage = self._usage(len(text.split()))
        await self.ex.send_json(
            200, self._message([{"type": "text", "text": text}], self._stop(), usage)
        )


def _text_of(content: Any) -> str:
    """The words of a ``system`` value or a message's content (string or blocks)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content")))
        elif block.get("type") == "tool_use":
            parts.append(json.dumps(block.get("input")))
    return " ".join(part for part in parts if part)


async def _main_async(host: str, port: int, api_key: str | None) -> None:
    fake = FakeAnthropic(host=host, port=port, api_key=api_key)
    await fake.start()
    print(fake.base_url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    """Run the fake as a process: ``python -m tests.fake_anthropic --port 8090``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main_async(args.host, args.port, args.api_key))


if __name__ == "__main__":
    main()
