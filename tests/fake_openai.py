"""A local fake of the OpenAI Chat Completions API, on a real socket.

``FakeOpenAI`` is an HTTP/1.1 server (asyncio streams + h11) on 127.0.0.1 that
answers ``POST /v1/chat/completions`` in OpenAI's wire format: JSON
completions, server-sent-event streams (``chat.completion.chunk`` objects,
the ``include_usage`` chunk, ``data: [DONE]``) and OpenAI error bodies. It is
not a mock object: clients talk to it over TCP, so timeouts, broken
connections and disconnects are real.

Usage::

    async with FakeOpenAI() as fake:
        client = httpx.AsyncClient()
        ...  # POST to f"{fake.base_url}/chat/completions"
        fake.requests[-1].body       # what the client sent
        await fake.wait_for_disconnect()

Or from a shell (for benchmarks)::

    python tests/fake_openai.py --port 8089     # prints the base URL

Behaviour is chosen per request by the ``model`` name:

================================  =====================================================
model                             answer
================================  =====================================================
anything else                     echo: the last user message's text, streamed one
                                  word per chunk; finish_reason "stop"
``fake-<status>`` (``fake-429``,  that HTTP status with an OpenAI error body; 429 also
``fake-500``, ``fake-401``, ...)  sends ``Retry-After: 7`` and ``x-ratelimit-*`` headers
``fake-slow``                     waits ``x-fake-delay`` seconds (or the body's
                                  ``fake_delay``; default 30) before answering
                                  (gives up when the client goes away)
``fake-malformed``                200 with invalid JSON (stream: one good chunk, then a
                                  ``data:`` line that is not JSON)
``fake-no-choices``               200 JSON completion object without ``choices``
                                  (also for stream requests)
``fake-cut``                      stream: role chunk and two content chunks, then the
                                  connection is closed mid-body; unary: half the body
``fake-no-done``                  stream: the whole stream incl. usage, then the body
                                  ends cleanly without ``data: [DONE]``
``fake-stream-error``             stream: one content chunk, then
                                  ``data: {"error": {...server_error...}}``; unary: 500
``fake-stall``                    stream: role chunk and one content chunk, then
                                  nothing until the client goes away
``fake-endless``                  stream: a ``"tick "`` chunk every ``x-fake-chunk-delay``
                                  seconds (default 0.02) until the client goes away
``fake-tools``                    a ``tool_calls`` answer: two calls (to the request's
                                  first two tools, else ``get_weather``); streamed as
                                  tool-call deltas with the arguments split over chunks
``fake-bad-args``                 one tool call whose arguments are not valid JSON
``fake-quota``                    429 with ``insufficient_quota`` (the account is out of credit)
``fake-ignore-stream``            always a JSON completion, even for stream requests
================================  =====================================================

Request headers tune the answer: ``x-fake-delay`` (seconds, ``fake-slow``),
``x-fake-chunk-delay`` (seconds between stream chunks), ``x-fake-cached-tokens``
(``usage.prompt_tokens_details.cached_tokens``), ``x-fake-finish-reason``,
``x-fake-retry-after`` (the ``Retry-After`` value sent with an error status;
``none`` omits it) and ``x-fake-retry-after-ms``.

With ``FakeOpenAI(api_key="sk-...")`` requests must carry that bearer token
(401 ``invalid_api_key`` otherwise); by default no key is checked. With
``FakeOpenAI(ssl_context=...)`` (a server context, e.g. from ``trustme``) it
speaks HTTPS and ``base_url`` starts with ``https://``.

Usage counts: a token is a whitespace-separated word. ``prompt_tokens`` counts
the words of every message; ``completion_tokens`` the words of the answer.

What it saw: ``requests`` (a ``RecordedRequest`` per request, in arrival
order, with headers, parsed body, what was sent back and whether the client
disconnected before the answer was complete), ``disconnects`` (how many
answers the client abandoned), ``disconnected`` (an ``asyncio.Event`` set on
the first) and ``wait_for_disconnect(count)``; ``wait_for_requests(count)``
waits for requests to arrive. ``errors`` lists unexpected
exceptions inside the server (it should stay empty).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import h11

__all__ = ["FakeOpenAI", "RecordedRequest"]

_STATUS_MODEL = re.compile(r"^fake-(\d{3})$")
_WORD = re.compile(r"\S+\s*|\s+")
_DEFAULT_SLOW_SECONDS = 30.0
_ENDLESS_INTERVAL = 0.02
_ARGUMENT_PIECE = 7
_FINGERPRINT = "fp_fake0001"
_MAX_BODY = 64 * 1024 * 1024

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    422: b"Unprocessable Entity",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@dataclass
class RecordedRequest:
    """One request the fake received, and what became of it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case; a repeated header keeps its last value."""
    header_list: list[tuple[str, str]]
    """Every header as sent (names in lower case), repeats included."""
    raw_body: bytes
    body: Any
    """The body parsed as JSON; None if it was not JSON."""
    status: int = 0
    response_json: Any = None
    """The JSON document sent back (unary answers and error bodies)."""
    chunks: list[Any] = field(default_factory=list)
    """The ``data:`` payloads of a stream, parsed (``"[DONE]"`` as the string)."""
    client_port: int = 0
    """The client's TCP port: requests on one kept-alive connection share it."""
    completed: bool = False
    """The whole answer was written."""
    disconnected: bool = False
    """The client went away before the answer was complete."""

    @property
    def model(self) -> str:
        """The requested model ("" if the body had none)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("model"), str):
            return str(self.body["model"])
        return ""

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream."""
        return isinstance(self.body, dict) and self.body.get("stream") is True


class _ClientGone(Exception):
    """The client closed the connection while the answer was being written."""


class _CloseConnection(Exception):
    """The behaviour ends by closing the connection (deliberately, mid-body)."""


class _Exchange:
    """One request/response on a connection: writes bytes, notices disconnects."""

    def __init__(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        record: RecordedRequest,
        gone: asyncio.Event,
    ) -> None:
        self.conn = conn
        self.writer = writer
        self.record = record
        self.gone = gone
        self.request_id = f"req_fake{next(_ids):06d}"

    def header(self, name: str, default: str = "") -> str:
        return self.record.headers.get(name, default)

    def float_header(self, name: str, default: float) -> float:
        try:
            return float(self.header(name))
        except ValueError:
            return default

    async def _write(self, event: h11.Event) -> None:
        if self.gone.is_set():
            raise _ClientGone
        data = self.conn.send(event)
        if not data:
            return
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError as exc:
            self.gone.set()
            raise _ClientGone from exc

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.record.status = status
        base = [("x-request-id", self.request_id), ("openai-processing-ms", "1")]
        await self._write(
            h11.Response(
                status_code=status,
                headers=[(k.encode(), v.encode()) for k, v in base + headers],
                reason=_REASONS.get(status, b""),
            )
        )

    async def body(self, data: bytes) -> None:
        await self._write(h11.Data(data=data))

    async def end(self) -> None:
        await self._write(h11.EndOfMessage())
        self.record.completed = True

    async def send_json(
        self, status: int, document: Any, headers: list[tuple[str, str]] | None = None
    ) -> None:
        data = json.dumps(document, separators=(",", ":")).encode()
        self.record.response_json = document
        await self.start(
            status,
            [("content-type", "application/json"), ("content-length", str(len(data)))]
            + (headers or []),
        )
        await self.body(data)
        await self.end()

    async def start_sse(self) -> None:
        await self.start(
            200,
            [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("transfer-encoding", "chunked"),
                ("cache-control", "no-cache"),
            ],
        )

    async def event(self, payload: Any) -> None:
        """One ``data:`` event (``"[DONE]"`` is sent verbatim)."""
        self.record.chunks.append(payload)
        text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        await self.body(f"data: {text}\n\n".encode())

    async def sleep(self, seconds: float) -> None:
        """Wait, unless the client goes away first (then raise ``_ClientGone``)."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.gone.wait()
        if self.gone.is_set():
            raise _ClientGone

    async def close_mid_body(self) -> NoReturn:
        """Close the connection now, after the bytes written so far (FIN, not RST)."""
        await self.writer.drain()
        raise _CloseConnection


_ids = itertools.count(1)


class FakeOpenAI:
    """A fake OpenAI Chat Completions server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.host = host
        self.api_key = api_key
        self.ssl_context = ssl_context
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self._disconnect_seen = asyncio.Event()
        self._request_seen = asyncio.Event()
        self.errors: list[BaseException] = []
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The port it listens on (after ``start``)."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:PORT/v1`` (``https://`` with TLS)."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self._port, ssl=self.ssl_context
        )

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ inspection

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request."""
        if not self.requests:
            raise LookupError("no request received")
        return self.requests[-1]

    async def wait_for_requests(self, count: int = 1) -> None:
        """Wait until ``count`` requests have arrived (wrap it in a timeout)."""
        while len(self.requests) < count:
            await self._request_seen.wait()

    async def wait_for_disconnect(self, count: int = 1) -> None:
        """Wait until ``count`` answers have been abandoned (wrap it in a timeout)."""
        while self.disconnects < count:
            await self._disconnect_seen.wait()

    # ------------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        try:
            while True:
                received = await self._read_request(conn, reader)
                if received is None:
                    break
                if not await self._exchange(conn, reader, writer, *received):
                    break
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, _CloseConnection):
            pass
        except Exception as exc:  # a bug in the fake: keep it for the tests to see
            self.errors.append(exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(
        conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            else:  # ConnectionClosed, or PAUSED after the client closed
                return None

    async def _exchange(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        raw_body: bytes,
    ) -> bool:
        """Answer one request; False if the connection must be closed."""
        header_list = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        record = RecordedRequest(
            method=request.method.decode(),
            path=request.target.decode(),
            headers=dict(header_list),
            header_list=header_list,
            raw_body=raw_body,
            body=body,
            client_port=_peer_port(writer),
        )
        self.requests.append(record)
        seen, self._request_seen = self._request_seen, asyncio.Event()
        seen.set()
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(conn, reader, gone))
        exchange = _Exchange(conn, writer, record, gone)
        try:
            await self._route(exchange)
        except _ClientGone:
            record.disconnected = True
            self.disconnects += 1
            self.disconnected.set()
            seen, self._disconnect_seen = self._disconnect_seen, asyncio.Event()
            seen.set()
            return False
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])
        return not gone.is_set()

    # ------------------------------------------------------------------ routing

    async def _route(self, ex: _Exchange) -> None:
        record = ex.record
        path = record.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            await _send_error(
                ex, 404, f"Invalid URL ({record.method} {record.path})", "invalid_request_error"
            )
            return
        if record.method != "POST":
            await _send_error(
                ex, 405, f"Invalid method for URL ({record.method} {path})", "invalid_request_error"
            )
            return
        if self.api_key is not None:
            auth = record.headers.get("authorization", "")
            if not auth:
                await _send_error(
                    ex,
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                )
                return
            if auth != f"Bearer {self.api_key}":
                await _send_error(
                    ex,
                    401,
                    "Incorrect API key provided: sk-***. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
                return
        body = record.body
        if not isinstance(body, dict):
            await _send_error(
                ex,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.",
                "invalid_request_error",
            )
            return
        if not isinstance(body.get("model"), str) or not body["model"]:
            await _send_error(
                ex, 400, "you must provide a model parameter", "invalid_request_error"
            )
            return
        if not isinstance(body.get("messages"), list):
            await _send_error(
                ex,
                400,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                param="messages",
                code="missing_required_parameter",
            )
            return
        await _Behaviour(ex, body).run()


async def _watch_disconnect(
    conn: h11.Connection, reader: asyncio.StreamReader, gone: asyncio.Event
) -> None:
    """Set ``gone`` when the client closes its side while an answer is being written."""
    try:
        while data := await reader.read(65536):
            conn.receive_data(data)  # a pipelined next request: kept for the next cycle
    except (ConnectionError, OSError):
        pass
    gone.set()


async def _send_error(
    ex: _Exchange,
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    document = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    await ex.send_json(status, document, headers)


class _Behaviour:
    """The answer to one well-formed chat completion request."""

    def __init__(self, ex: _Exchange, body: dict[str, Any]) -> None:
        self.ex = ex
        self.body = body
        self.model: str = body["model"]
        self.stream = body.get("stream") is True
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.id = f"chatcmpl-fake{next(_ids):06d}"
        self.created = int(time.time())
        self.response_model = f"{self.model}-2024-08-06"

    async def run(self) -> None:
        handlers: dict[str, Callable[[], Awaitable[None]]] = {
            "fake-slow": self._slow,
            "fake-malformed": self._malformed,
            "fake-no-choices": self._no_choices,
            "fake-cut": self._cut,
            "fake-no-done": self._no_done,
            "fake-stream-error": self._stream_error,
            "fake-stall": self._stall,
            "fake-endless": self._endless,
            "fake-tools": self._tools,
            "fake-bad-args": self._bad_args,
            "fake-ignore-stream": self._ignore_stream,
            "fake-quota": self._quota,
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
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
        return "Hello from FakeOpenAI."

    def _usage(self, completion_text: str, completion_tokens: int | None = None) -> dict[str, Any]:
        prompt = sum(
            len(_text_of(m.get("content")).split())
            for m in self.body["messages"]
            if isinstance(m, dict)
        )
        completion = (
            completion_tokens if completion_tokens is not None else len(completion_text.split())
        )
        try:
            cached = int(self.ex.header("x-fake-cached-tokens", "0"))
        except ValueError:
            cached = 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _finish(self, default: str = "stop") -> str:
        return self.ex.header("x-fake-finish-reason") or default

    def _completion(
        self,
        text: str | None,
        tool_calls: list[dict[str, Any]] | None = None,
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        message["refusal"] = None
        arguments = "".join(c["function"]["arguments"] for c in tool_calls or [])
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.response_model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason or self._finish(),
                }
            ],
            "usage": self._usage(text or "", None if text else len(arguments.split()) or 1),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }

    def _chunk(
        self,
        delta: dict[str, Any] | None,
        finish_reason: str | None = None,
        *,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.response_model,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = usage
        return chunk

    async def _content_stream(
        self, pieces: list[str], *, done: bool = True, finish_reason: str | None = None
    ) -> None:
        ex = self.ex
        delay = ex.float_header("x-fake-chunk-delay", 0.0)
        await ex.start_sse()
        await ex.event(self._chunk({"role": "assistant", "content": "", "refusal": None}))
        for piece in pieces:
            await ex.sleep(delay)
            await ex.event(self._chunk({"content": piece}))
        await ex.sleep(delay)
        await ex.event(self._chunk({}, finish_reason or self._finish()))
        if self.include_usage:
            await ex.event(self._chunk(None, usage=self._usage("".join(pieces))))
        if done:
            await ex.event("[DONE]")
        await ex.end()

    # ------------------------------------------------------------------ behaviours

    async def _echo(self) -> None:
        text = self._echo_text()
        if self.stream:
            await self._content_stream(_WORD.findall(text))
        else:
            await self.ex.send_json(200, self._completion(text))

    async def _quota(self) -> None:
        await _send_error(
            self.ex,
            429,
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            code="insufficient_quota",
        )

    async def _error_status(self, status: int) -> None:
        ex = self.ex
        headers: list[tuple[str, str]] = []
        param = code = None
        if status == 429:
            message = (
                f"Rate limit reached for {self.model} in organization org-fake on requests per "
                "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 7s. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
            kind, code = "requests", "rate_limit_exceeded"
            headers += [
                ("retry-after", "7"),
                ("x-ratelimit-limit-requests", "3"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "7s"),
            ]
        elif status == 401:
            message = (
                "Incorrect API key provided: sk-***. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            kind, code = "invalid_request_error", "invalid_api_key"
        elif status == 404:
            message = f"The model `{self.model}` does not exist or you do not have access to it."
            kind, code = "invalid_request_error", "model_not_found"
        elif status == 500:
            message = "The server had an error while processing your request. Sorry about that!"
            kind = "server_error"
        elif status == 503:
            message = "The engine is currently overloaded, please try again later."
            kind = "server_error"
        elif status >= 500:
            message = f"Fake upstream failure (HTTP {status})."
            kind = "server_error"
        else:
            message = f"Fake invalid request (HTTP {status})."
            kind, param = "invalid_request_error", "messages"
        retry_after = ex.header("x-fake-retry-after")
        if retry_after:
            headers = [(k, v) for k, v in headers if k != "retry-after"]
            if retry_after.lower() != "none":
                headers.append(("retry-after", retry_after))
        retry_after_ms = ex.header("x-fake-retry-after-ms")
        if retry_after_ms:
            headers.append(("retry-after-ms", retry_after_ms))
        await _send_error(ex, status, message, kind, param=param, code=code, headers=headers)

    async def _slow(self) -> None:
        delay = self.body.get("fake_delay")  # a body key, for callers that cannot set headers
        if not isinstance(delay, int | float):
            delay = self.ex.float_header("x-fake-delay", _DEFAULT_SLOW_SECONDS)
        await self.ex.sleep(float(delay))
        await self._echo()

    async def _malformed(self) -> None:
        ex = self.ex
        if self.stream:
            await ex.start_sse()
            await ex.event(self._chunk({"role": "assistant", "content": "", "refusal": None}))
            ex.record.chunks.append("<malformed>")
            await ex.body(b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
            await ex.event("[DONE]")
            await ex.end()
            return
        data = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0,'
        await ex.start(
            200, [("content-type", "application/json"), ("content-length", str(len(data)))]
        )
        await ex.body(data)
        await ex.end()

    async def _no_choices(self) -> None:
        document = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.response_model,
        }
        await self.ex.send_json(200, document)

    async def _cut(self) -> None:
        ex = self.ex
        pieces = _WORD.findall(self._echo_text())
        if self.stream:
            await ex.start_sse()
            await ex.event(self._chunk({"role": "assistant", "content": "", "refusal": None}))
            for piece in pieces[:2]:
                await ex.event(self._chunk({"content": piece}))
            await ex.close_mid_body()
        data = json.dumps(self._completion(self._echo_text())).encode()
        await ex.start(
            200, [("content-type", "application/json"), ("content-length", str(len(data)))]
        )
        await ex.body(data[: len(data) // 2])
        await ex.close_mid_body()

    async def _no_done(self) -> None:
        if not self.stream:
            await self._echo()
            return
        await self._content_stream(_WORD.findall(self._echo_text()), done=False)

    async def _stream_error(self) -> None:
        if not self.stream:
            await self._error_status(500)
            return
        ex = self.ex
        await ex.start_sse()
        await ex.event(self._chunk({"role": "assistant", "content": "", "refusal": None}))
        await ex.event(self._chunk({"content": "partial "}))
        await ex.event(
            {
                "error": {
                    "message": "The server had an error while processing your request. "
                    "Sorry about that!",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        await ex.end()

    async def _stall(self) -> None:
        ex = self.ex
        if not self.stream:
            await ex.sleep(_DEFAULT_SLOW_SECONDS)
            await self._echo()
            return
        await ex.start_sse()
        await ex.event(self._chunk({"role": "assistant", "content": "", "refusal": None}))
        await ex.event(self._chunk({"content": "Hello "}))
        await ex.sleep(_DEFAULT_SLOW_SECONDS)
        await ex.event(self._chunk({"content": "world"}))
        await ex.event(self._chunk({}, "stop"))
        await ex.event("[DONE]")
        await ex.end()

    async def _endless(self) -> None:
        ex = self.ex
        if not self.stream:
            await ex.sleep(_DEFAULT_SLOW_SECONDS)
            await self._echo()
            return
        interval = ex.float_header("x-fake-chunk-delay", _ENDLESS_INTERVAL)
        await ex.start_sse()
        await ex.event(self._chunk({"role": "assistant", "content": "", "refusal": None}))
        while True:
            await ex.event(self._chunk({"content": "tick "}))
            await ex.sleep(interval)

    def _tool_calls(self, bad_arguments: bool = False) -> list[dict[str, Any]]:
        names = [
            t["function"]["name"]
            for t in self.body.get("tools") or []
            if isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
        ] or ["get_weather"]
        if bad_arguments:
            return [_tool_call("call_fake_1", names[0], '{"location": "Par')]
        return [
            _tool_call(
                "call_fake_1",
                names[0],
                json.dumps({"location": "Paris, France", "unit": "celsius"}),
            ),
            _tool_call(
                "call_fake_2",
                names[1 % len(names)],
                json.dumps({"location": "Tokyo, Japan", "unit": "celsius"}),
            ),
        ]

    async def _tools(self, bad_arguments: bool = False) -> None:
        calls = self._tool_calls(bad_arguments)
        if not self.stream:
            await self.ex.send_json(200, self._completion(None, calls, self._finish("tool_calls")))
            return
        ex = self.ex
        delay = ex.float_header("x-fake-chunk-delay", 0.0)
        await ex.start_sse()
        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            delta: dict[str, Any] = {"tool_calls": [head]}
            if index == 0:
                delta = {"role": "assistant", "content": None, **delta, "refusal": None}
            await ex.event(self._chunk(delta))
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), _ARGUMENT_PIECE):
                await ex.sleep(delay)
                piece = arguments[start : start + _ARGUMENT_PIECE]
                await ex.event(
                    self._chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                    )
                )
        await ex.event(self._chunk({}, self._finish("tool_calls")))
        if self.include_usage:
            arguments = "".join(c["function"]["arguments"] for c in calls)
            await ex.event(self._chunk(None, usage=self._usage("", len(arguments.split()))))
        await ex.event("[DONE]")
        await ex.end()

    async def _bad_args(self) -> None:
        await self._tools(bad_arguments=True)

    async def _ignore_stream(self) -> None:
        await self.ex.send_json(200, self._completion(self._echo_text()))


def _peer_port(writer: asyncio.StreamWriter) -> int:
    peer = writer.get_extra_info("peername")
    return int(peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else 0


def _tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


async def _main_async(host: str, port: int, api_key: str | None) -> None:
    fake = FakeOpenAI(host=host, port=port, api_key=api_key)
    await fake.start()
    print(fake.base_url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    """Run the fake as a process: ``python tests/fake_openai.py --port 8089``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main_async(args.host, args.port, args.api_key))


if __name__ == "__main__":
    main()
