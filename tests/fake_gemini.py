"""A local fake of the Google Gemini API (``generateContent``, REST v1beta), on a real socket.

``FakeGemini`` is an HTTP/1.1 server (asyncio streams + h11, reusing the
generic pieces of ``tests.fake_openai``) on 127.0.0.1 that answers

- ``POST /v1beta/models/{model}:generateContent``: one ``GenerateContentResponse``
- ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``: server-sent
  events, ``data: {GenerateContentResponse}\\r\\n\\r\\n`` per chunk, the text split
  over chunks, the last chunk with ``finishReason`` and the full
  ``usageMetadata``, then the body ends (there is no ``[DONE]``). Without
  ``alt=sse`` the stream is one JSON array of those chunks, as Google sends it.

in Google's wire format, with Google's error bodies
(``{"error": {"code", "message", "status", "details"}}``). It is not a mock
object: clients talk to it over TCP, so timeouts, broken connections and
disconnects are real. It checks requests the way the real API does, so a
malformed body fails here too: unknown field names (lowerCamel or snake_case
accepted), missing ``contents``, roles other than ``user``/``model``, parts
without exactly one data field, ``parameters`` together with
``parametersJsonSchema``, ``allowedFunctionNames`` without mode ``ANY`` are 400
``INVALID_ARGUMENT``. Unknown paths get Google's HTML 404 page.

Usage::

    async with FakeGemini() as fake:
        ...  # POST to f"{fake.base_url}/v1beta/models/gemini-2.5-flash:generateContent"
        fake.last_request.body       # what the client sent (parsed JSON)
        fake.last_request.query      # {"alt": "sse"} for streams
        await fake.wait_for_disconnect()

Or from a shell: ``python -m tests.fake_gemini --port 8090`` (prints the base URL).

Behaviour is chosen per request by the model named in the URL path:

=========================  ==========================================================
model                      answer
=========================  ==========================================================
anything else              echo: the text of the last ``user`` content (for function
                           responses, ``name -> {json}`` per response), streamed one
                           word per chunk; ``finishReason`` STOP
``fake-<status>``          that HTTP status with Google's error body: 400
(``fake-429``, ...)        INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
                           404 NOT_FOUND, 429 RESOURCE_EXHAUSTED (with QuotaFailure,
                           Help and ``RetryInfo`` ``retryDelay: "17s"`` details, no
                           ``Retry-After`` header), 500 INTERNAL, 503 UNAVAILABLE,
                           504 DEADLINE_EXCEEDED
``fake-precondition``      400 FAILED_PRECONDITION (user location not supported)
``fake-tools``             two ``functionCall`` parts (to the request's first two
                           declared functions, else ``get_weather``), the first with
                           a ``thoughtSignature``; ``finishReason`` STOP as the real API
                           sends it; streamed as one call per chunk
``fake-thinking``          a ``thought: true`` summary part before the echo;
                           ``thoughtsTokenCount`` 5
``fake-safety``            a candidate stopped for SAFETY: no content, blocked
                           ``safetyRatings`` (streamed: one text chunk first)
``fake-blocked``           no candidates: ``promptFeedback.blockReason`` SAFETY (streamed:
                           that one chunk)
``fake-no-candidates``     200 with only ``usageMetadata`` and ``modelVersion``
``fake-slow``              waits ``x-fake-delay`` seconds (default 30) before the echo
                           (gives up when the client goes away)
``fake-cut``               stream: two text chunks, then the connection is closed
                           mid-body; unary: half the JSON, then closed
``fake-no-finish``         stream: every text chunk, then the body ends cleanly with no
                           ``finishReason``; unary: echo
``fake-stream-error``      stream: one text chunk, then ``data: {"error": {503
                           UNAVAILABLE}}`` and the end; unary: 503
``fake-malformed``         200 with invalid JSON (stream: one good chunk, then a
                           ``data:`` line that is not JSON)
``fake-stall``             stream: one text chunk, then nothing until the client leaves
``fake-endless``           stream: a ``"tick "`` chunk every ``x-fake-chunk-delay``
                           seconds (default 0.02) until the client goes away
``fake-ignore-sse``        streams answered as a JSON array even with ``alt=sse``
=========================  ==========================================================

Request headers tune the answer: ``x-fake-delay`` (``fake-slow``),
``x-fake-chunk-delay`` (seconds between stream chunks), ``x-fake-cached-tokens``
(``usageMetadata.cachedContentTokenCount``), ``x-fake-finish-reason`` (replaces
STOP), ``x-fake-retry-after`` (a ``Retry-After`` header on error statuses),
``x-fake-retry-delay`` (the ``RetryInfo`` delay on 429; ``none`` leaves the detail
out) and ``x-fake-call-ids`` (``1``: ``fake-tools`` calls carry ``functionCall.id``).

With ``FakeGemini(api_key="...")`` requests must carry that key in
``x-goog-api-key`` (or ``?key=``), as the real API checks it: no key is 403
PERMISSION_DENIED, a wrong key 400 INVALID_ARGUMENT with ErrorInfo reason
``API_KEY_INVALID``. By default no key is checked.

Token counts: a token is a whitespace-separated word. ``promptTokenCount``
counts the words of every text part (contents and ``systemInstruction``);
``candidatesTokenCount`` the words of the answer.

What it saw: ``requests`` (a ``GeminiRequest`` per request: path, query, model,
rpc, headers, parsed body, what was sent back, whether the client disconnected
before the answer was complete), ``disconnects``, ``disconnected``,
``wait_for_requests(count)``, ``wait_for_disconnect(count)``; ``errors`` lists
unexpected exceptions inside the server (it should stay empty).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11

try:
    from tests.fake_openai import (
        _MAX_BODY,
        _REASONS,
        RecordedRequest,
        _ClientGone,
        _CloseConnection,
        _Exchange,
        _peer_port,
        _watch_disconnect,
    )
except ImportError:  # run as a script: python tests/fake_gemini.py
    from fake_openai import (  # type: ignore[no-redef]
        _MAX_BODY,
        _REASONS,
        RecordedRequest,
        _ClientGone,
        _CloseConnection,
        _Exchange,
        _peer_port,
        _watch_disconnect,
    )

__all__ = ["FakeGemini", "GeminiRequest"]

_PATH = re.compile(
    r"^/v1beta/((?:models|tunedModels)/[^/:]+):(generateContent|streamGenerateContent)$"
)
_STATUS_MODEL = re.compile(r"^fake-(\d{3})$")
_WORD = re.compile(r"\S+\s*|\s+")
_DEFAULT_SLOW_SECONDS = 30.0
_ENDLESS_INTERVAL = 0.02
_THOUGHT_TOKENS = 5
_RETRY_DELAY = "17s"
_SIGNATURE = "CiQB0e2Kb7fakeThoughtSignature=="

_TOP_FIELDS = {
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
    "model",
}
_GENERATION_FIELDS = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
}
_CONTENT_FIELDS = {"role", "parts"}
_PART_DATA = {
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
}
_PART_FIELDS = _PART_DATA | {"thought", "thoughtSignature", "partMetadata", "videoMetadata"}
_TOOL_FIELDS = {
    "functionDeclarations",
    "googleSearchRetrieval",
    "codeExecution",
    "googleSearch",
    "urlContext",
    "computerUse",
    "fileSearch",
    "googleMaps",
}
_DECLARATION_FIELDS = {
    "name",
    "description",
    "behavior",
    "parameters",
    "parametersJsonSchema",
    "response",
    "responseJsonSchema",
}
_CALL_FIELDS = {"id", "name", "args"}
_RESPONSE_FIELDS = {"id", "name", "response", "parts", "willContinue", "scheduling"}
_CALLING_MODES = {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}

_HTML_404 = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 404 (Not Found)!!1</title>\n"
    "  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n"
    "  <p>The requested URL <code>{path}</code> was not found on this server.  "
    "<ins>That\u2019s all we know.</ins>\n"
)

_ids = itertools.count(1)


@dataclass
class GeminiRequest(RecordedRequest):
    """One request the fake received, and what became of it.

    ``path`` is the URL path without the query; ``chunks`` are the ``data:``
    payloads of a stream, parsed (``"<malformed>"`` for the broken one).
    """

    query: dict[str, str] = field(default_factory=dict)
    """The query parameters (a repeated one keeps its last value)."""

    @property
    def model(self) -> str:
        """The model named in the path ("" for other paths)."""
        match = _PATH.match(self.path)
        return unquote(match.group(1)).split("/", 1)[1] if match else ""

    @property
    def rpc(self) -> str:
        """``generateContent`` or ``streamGenerateContent`` ("" for other paths)."""
        match = _PATH.match(self.path)
        return match.group(2) if match else ""

    @property
    def stream(self) -> bool:
        """Whether the client called ``streamGenerateContent``."""
        return self.rpc == "streamGenerateContent"


class _GeminiExchange(_Exchange):
    """``tests.fake_openai``'s exchange with Google's headers and CRLF-framed events."""

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.record.status = status
        base = [
            ("vary", "Origin, X-Origin, Referer"),
            ("server", "scaffolding on HTTPServer2"),
            ("server-timing", "gfet4t7; dur=1"),
        ]
        await self._write(
            h11.Response(
                status_code=status,
                headers=[(k.encode(), v.encode()) for k, v in base + headers],
                reason=_REASONS.get(status, b""),
            )
        )

    async def start_sse(self) -> None:
        await self.start(
            200,
            [
                ("content-type", "text/event-stream"),
                ("content-disposition", "attachment"),
                ("transfer-encoding", "chunked"),
            ],
        )

    async def event(self, payload: Any) -> None:
        """One ``data:`` event, framed with CRLF as Google frames them."""
        self.record.chunks.append(payload)
        await self.body(f"data: {json.dumps(payload, separators=(',', ':'))}\r\n\r\n".encode())


class _BadRequest(Exception):
    """The request body breaks the API's rules: a 400 INVALID_ARGUMENT with this message."""


class FakeGemini:
    """A fake Gemini API server on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None):
        self.host = host
        self.api_key = api_key
        self.requests: list[GeminiRequest] = []
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
            raise RuntimeError("FakeGemini is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        """The API host root, ``http://127.0.0.1:PORT`` (the version is in each path)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._serve, self.host, self._port)

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

    async def __aenter__(self) -> FakeGemini:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ inspection

    @property
    def last_request(self) -> GeminiRequest:
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
                received = await _read_request(conn, reader)
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
        path, _, query = request.target.decode().partition("?")
        record = GeminiRequest(
            method=request.method.decode(),
            path=path,
            headers=dict(header_list),
            header_list=header_list,
            raw_body=raw_body,
            body=body,
            client_port=_peer_port(writer),
            query=dict(parse_qsl(query, keep_blank_values=True)),
        )
        self.requests.append(record)
        seen, self._request_seen = self._request_seen, asyncio.Event()
        seen.set()
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(conn, reader, gone))
        exchange = _GeminiExchange(conn, writer, record, gone)
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

    async def _route(self, ex: _GeminiExchange) -> None:
        record = ex.record
        assert isinstance(record, GeminiRequest)
        if not _PATH.match(record.path):
            data = _HTML_404.format(path=record.path).encode()
            await ex.start(
                404,
                [("content-type", "text/html; charset=UTF-8"), ("content-length", str(len(data)))],
            )
            await ex.body(data)
            await ex.end()
            return
        if record.method != "POST":
            await _send_error(ex, 405, "Method Not Allowed", "INVALID_ARGUMENT")
            return
        if self.api_key is not None:
            key = record.headers.get("x-goog-api-key") or record.query.get("key")
            if not key:
                await _send_error(
                    ex,
                    403,
                    "Method doesn't allow unregistered callers (callers without established "
                    "identity). Please use API Key or other form of API consumer identity to "
                    "call this API.",
                    "PERMISSION_DENIED",
                )
                return
            if key != self.api_key:
                await _send_error(
                    ex,
                    400,
                    "API key not valid. Please pass a valid API key.",
                    "INVALID_ARGUMENT",
                    details=[
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com",
                            "metadata": {"service": "generativelanguage.googleapis.com"},
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                            "locale": "en-US",
                            "message": "API key not valid. Please pass a valid API key.",
                        },
                    ],
                )
                return
        try:
            if not isinstance(record.body, dict):
                raise _BadRequest(
                    "Invalid JSON payload received. Unexpected token.\n"
                    + record.raw_body[:40].decode("utf-8", errors="replace")
                )
            _check_request(record.body)
        except _BadRequest as exc:
            message = str(exc)
            await _send_error(
                ex,
                400,
                message,
                "INVALID_ARGUMENT",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"description": message}],
                    }
                ],
            )
            return
        await _Behaviour(ex, record, record.body).run()


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


async def _send_error(
    ex: _Exchange,
    status: int,
    message: str,
    rpc_status: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    await ex.send_json(status, {"error": error}, headers)


# ---------------------------------------------------------------------- request checks


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _check_fields(value: Any, allowed: set[str], where: str) -> dict[str, Any]:
    """``value`` as an object whose keys are all known (camelCase or snake_case)."""
    if not isinstance(value, dict):
        raise _BadRequest(
            f"Invalid value at '{where}', expected an object: {json.dumps(value)[:60]}"
        )
    known = allowed | {_snake(name) for name in allowed}
    for key in value:
        if key not in known:
            at = f" at '{where}'" if where else ""
            raise _BadRequest(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
            )
    return value


def _get(value: dict[str, Any], name: str) -> Any:
    return value.get(name, value.get(_snake(name)))


def _check_request(body: dict[str, Any]) -> None:
    _check_fields(body, _TOP_FIELDS, "")
    contents = _get(body, "contents")
    if not isinstance(contents, list) or not contents:
        raise _BadRequest("* GenerateContentRequest.contents: contents is not specified\n")
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        _check_fields(content, _CONTENT_FIELDS, where)
        if content.get("role", "user") not in ("user", "model"):
            raise _BadRequest("Please use a valid role: user, model.")
        _check_parts(content.get("parts"), where)
    system = _get(body, "systemInstruction")
    if system is not None:
        _check_fields(system, _CONTENT_FIELDS, "system_instruction")
        _check_parts(system.get("parts"), "system_instruction")
    config = _get(body, "generationConfig")
    if config is not None:
        _check_fields(config, _GENERATION_FIELDS, "generation_config")
    tools = _get(body, "tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _BadRequest("Invalid value at 'tools', expected a list")
        for index, tool in enumerate(tools):
            _check_fields(tool, _TOOL_FIELDS, f"tools[{index}]")
            declarations = _get(tool, "functionDeclarations") or []
            for number, declaration in enumerate(declarations):
                where = f"tools[{index}].function_declarations[{number}]"
                _check_fields(declaration, _DECLARATION_FIELDS, where)
                if not isinstance(declaration.get("name"), str) or not declaration["name"]:
                    raise _BadRequest(f"* GenerateContentRequest.{where}.name: field is required\n")
                if _get(declaration, "parameters") is not None and (
                    _get(declaration, "parametersJsonSchema") is not None
                ):
                    raise _BadRequest(
                        f"* GenerateContentRequest.{where}: parameters and "
                        "parameters_json_schema are mutually exclusive\n"
                    )
    tool_config = _get(body, "toolConfig")
    if tool_config is not None:
        calling = _get(
            _check_fields(tool_config, {"functionCallingConfig"}, "tool_config"),
            "functionCallingConfig",
        )
        if calling is not None:
            _check_fields(
                calling, {"mode", "allowedFunctionNames"}, "tool_config.function_calling_config"
            )
            mode = calling.get("mode", "MODE_UNSPECIFIED")
            if mode not in _CALLING_MODES:
                raise _BadRequest(
                    "Invalid value at 'tool_config.function_calling_config.mode' "
                    f'(type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), "{mode}"'
                )
            if _get(calling, "allowedFunctionNames") and mode not in ("ANY", "VALIDATED"):
                raise _BadRequest(
                    "* GenerateContentRequest.tool_config.function_calling_config."
                    "allowed_function_names: allowed_function_names should only be set when "
                    "the Mode is ANY or VALIDATED.\n"
                )


def _check_parts(parts: Any, where: str) -> None:
    if not isinstance(parts, list) or not parts:
        raise _BadRequest(
            f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n"
        )
    for index, part in enumerate(parts):
        at = f"{where}.parts[{index}]"
        _check_fields(part, _PART_FIELDS, at)
        data = [key for key in part if key in _PART_DATA or _camel(key) in _PART_DATA]
        if len(data) != 1:
            raise _BadRequest(
                f"* GenerateContentRequest.{at}.data: required oneof field 'data' must have "
                "one initialized field\n"
            )
        call = _get(part, "functionCall")
        if call is not None:
            _check_fields(call, _CALL_FIELDS, f"{at}.function_call")
            if not isinstance(call.get("name"), str) or not call["name"]:
                raise _BadRequest(
                    f"* GenerateContentRequest.{at}.function_call.name: name is required\n"
                )
            if "args" in call and not isinstance(call["args"], dict):
                raise _BadRequest(f"Invalid value at '{at}.function_call.args', expected an object")
        response = _get(part, "functionResponse")
        if response is not None:
            _check_fields(response, _RESPONSE_FIELDS, f"{at}.function_response")
            if not isinstance(response.get("name"), str) or not response["name"]:
                raise _BadRequest(
                    f"* GenerateContentRequest.{at}.function_response.name: Name cannot be empty.\n"
                )
            if not isinstance(response.get("response"), dict):
                raise _BadRequest(
                    f"Invalid value at '{at}.function_response.response', expected an object"
                )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


# ---------------------------------------------------------------------- behaviours


class _Behaviour:
    """The answer to one well-formed request."""

    def __init__(self, ex: _GeminiExchange, record: GeminiRequest, body: dict[str, Any]) -> None:
        self.ex = ex
        self.body = body
        self.model = record.model
        self.stream = record.stream
        self.sse = record.query.get("alt") == "sse"
        self.response_id = f"fakeResp{next(_ids):06d}"
        self.model_version = f"{self.model}-001"

    async def run(self) -> None:
        handlers: dict[str, Callable[[], Awaitable[None]]] = {
            "fake-precondition": self._precondition,
            "fake-tools": self._tools,
            "fake-thinking": self._thinking,
            "fake-safety": self._safety,
            "fake-blocked": self._blocked,
            "fake-no-candidates": self._no_candidates,
            "fake-slow": self._slow,
            "fake-cut": self._cut,
            "fake-no-finish": self._no_finish,
            "fake-stream-error": self._stream_error,
            "fake-malformed": self._malformed,
            "fake-stall": self._stall,
            "fake-endless": self._endless,
            "fake-ignore-sse": self._ignore_sse,
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
        for content in reversed(_get(self.body, "contents")):
            if content.get("role", "user") != "user":
                continue
            texts: list[str] = []
            for part in content["parts"]:
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                response = _get(part, "functionResponse")
                if response is not None:
                    texts.append(
                        f"{response['name']} -> {json.dumps(response['response'], sort_keys=True)}"
                    )
            if texts:
                return " ".join(texts)
        return "Hello from FakeGemini."

    def _prompt_tokens(self) -> int:
        contents = list(_get(self.body, "contents"))
        system = _get(self.body, "systemInstruction")
        if system is not None:
            contents.append(system)
        return sum(
            len(part["text"].split())
            for content in contents
            for part in content["parts"]
            if isinstance(part.get("text"), str)
        )

    def _usage(self, answer_tokens: int | None, thoughts: int = 0) -> dict[str, Any]:
        """``usageMetadata``; ``answer_tokens`` None: a chunk before the last (prompt only)."""
        prompt = self._prompt_tokens()
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        total = prompt
        if answer_tokens is not None:
            usage["candidatesTokenCount"] = answer_tokens
            total += answer_tokens + thoughts
        usage["totalTokenCount"] = total
        try:
            cached = int(self.ex.header("x-fake-cached-tokens", "0"))
        except ValueError:
            cached = 0
        if cached:
            usage["cachedContentTokenCount"] = cached
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if cached:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
        if thoughts and answer_tokens is not None:
            usage["thoughtsTokenCount"] = thoughts
        return usage

    def _finish(self, default: str = "STOP") -> str:
        return self.ex.header("x-fake-finish-reason") or default

    def _response(
        self,
        parts: list[dict[str, Any]] | None,
        finish: str | None,
        usage: dict[str, Any],
        **candidate_extra: Any,
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {}
        if parts is not None:
            candidate["content"] = {"parts": parts, "role": "model"}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        candidate.update(candidate_extra)
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model_version,
            "responseId": self.response_id,
        }

    def _text_chunks(self, pieces: list[str], *, finish: bool = True) -> list[dict[str, Any]]:
        """Stream chunks for ``pieces``: one per piece, the last with finishReason and usage."""
        tokens = len("".join(pieces).split())
        pieces = pieces or [""]
        chunks = [self._response([{"text": p}], None, self._usage(None)) for p in pieces[:-1]]
        last_usage = self._usage(tokens) if finish else self._usage(None)
        chunks.append(
            self._response([{"text": pieces[-1]}], self._finish() if finish else None, last_usage)
        )
        return chunks

    async def _answer(self, unary: dict[str, Any], chunks: list[dict[str, Any]]) -> None:
        """The unary document, or the chunks (as SSE, or as a JSON array without alt=sse)."""
        ex = self.ex
        if not self.stream:
            await ex.send_json(200, unary)
        elif not self.sse:
            await ex.send_json(200, chunks)
        else:
            delay = ex.float_header("x-fake-chunk-delay", 0.0)
            await ex.start_sse()
            for index, chunk in enumerate(chunks):
                if index:
                    await ex.sleep(delay)
                await ex.event(chunk)
            await ex.end()

    # ------------------------------------------------------------------ behaviours

    async def _echo(self) -> None:
        text = self._echo_text()
        unary = self._response([{"text": text}], self._finish(), self._usage(len(text.split())))
        await self._answer(unary, self._text_chunks(_WORD.findall(text)))

    async def _error_status(self, status: int) -> None:
        ex = self.ex
        details: list[dict[str, Any]] = []
        if status == 429:
            rpc_status = "RESOURCE_EXHAUSTED"
            message = (
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, head to: "
                "https://ai.google.dev/gemini-api/docs/rate-limits.\n"
                "* Quota exceeded for metric: "
                "generativelanguage.googleapis.com/generate_content_free_tier_requests, "
                f"limit: 10, model: {self.model}\nPlease retry in 17.2s."
            )
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": self.model},
                            "quotaValue": "10",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
            ]
            delay = ex.header("x-fake-retry-delay", _RETRY_DELAY)
            if delay.lower() != "none":
                details.append(
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
                )
        elif status == 400:
            rpc_status, message = "INVALID_ARGUMENT", "Request contains an invalid argument."
        elif status == 401:
            rpc_status = "UNAUTHENTICATED"
            message = (
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential."
            )
        elif status == 403:
            rpc_status, message = "PERMISSION_DENIED", "The caller does not have permission"
        elif status == 404:
            rpc_status = "NOT_FOUND"
            message = (
                f"models/{self.model} is not found for API version v1beta, or is not supported "
                "for generateContent. Call ListModels to see the list of available models and "
                "their supported methods."
            )
        elif status == 500:
            rpc_status = "INTERNAL"
            message = (
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting"
            )
        elif status == 503:
            rpc_status, message = "UNAVAILABLE", "The model is overloaded. Please try again later."
        elif status == 504:
            rpc_status = "DEADLINE_EXCEEDED"
            message = "Deadline expired before operation could complete."
        elif status >= 500:
            rpc_status, message = "UNKNOWN", f"Fake upstream failure (HTTP {status})."
        else:
            rpc_status, message = "FAILED_PRECONDITION", f"Fake failure (HTTP {status})."
        headers: list[tuple[str, str]] = []
        retry_after = ex.header("x-fake-retry-after")
        if retry_after:
            headers.append(("retry-after", retry_after))
        await _send_error(ex, status, message, rpc_status, details=details, headers=headers)

    async def _precondition(self) -> None:
        await _send_error(
            self.ex, 400, "User location is not supported for the API use.", "FAILED_PRECONDITION"
        )

    def _calls(self) -> list[dict[str, Any]]:
        names = [
            declaration["name"]
            for tool in _get(self.body, "tools") or []
            for declaration in _get(tool, "functionDeclarations") or []
        ] or ["get_weather"]
        places = ["Paris, France", "Tokyo, Japan"]
        parts: list[dict[str, Any]] = []
        for index, place in enumerate(places):
            call: dict[str, Any] = {
                "name": names[index % len(names)],
                "args": {"location": place, "unit": "celsius"},
            }
            if self.ex.header("x-fake-call-ids") == "1":
                call = {"id": f"fc-{index + 1}", **call}
            part: dict[str, Any] = {"functionCall": call}
            if index == 0:
                part["thoughtSignature"] = _SIGNATURE
            parts.append(part)
        return parts

    async def _tools(self) -> None:
        parts = self._calls()
        tokens = sum(len(json.dumps(p["functionCall"]["args"]).split()) for p in parts)
        finish = self._finish()
        unary = self._response(parts, finish, self._usage(tokens))
        chunks = [
            self._response(parts[:1], None, self._usage(None)),
            self._response(parts[1:], finish, self._usage(tokens)),
        ]
        await self._answer(unary, chunks)

    async def _thinking(self) -> None:
        text = self._echo_text()
        thought = {"text": "**Considering the request**\nThe user wants an echo.", "thought": True}
        usage = self._usage(len(text.split()), thoughts=_THOUGHT_TOKENS)
        unary = self._response([thought, {"text": text}], self._finish(), usage)
        chunks = [self._response([thought], None, self._usage(None))]
        chunks += self._text_chunks(_WORD.findall(text))
        chunks[-1]["usageMetadata"] = usage
        await self._answer(unary, chunks)

    def _safety_ratings(self, blocked: bool) -> list[dict[str, Any]]:
        ratings: list[dict[str, Any]] = [
            {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"},
        ]
        if blocked:
            ratings[-1]["blocked"] = True
        return ratings

    async def _safety(self) -> None:
        ratings = self._safety_ratings(blocked=True)
        last = self._response(None, "SAFETY", self._usage(0), safetyRatings=ratings)
        first_piece = _WORD.findall(self._echo_text())[:1] or ["Well "]
        first = self._response([{"text": first_piece[0]}], None, self._usage(None))
        await self._answer(last, [first, last])

    async def _blocked(self) -> None:
        document = {
            "promptFeedback": {
                "blockReason": "SAFETY",
                "safetyRatings": self._safety_ratings(blocked=True),
            },
            "usageMetadata": self._usage(None),
            "modelVersion": self.model_version,
            "responseId": self.response_id,
        }
        await self._answer(document, [document])

    async def _no_candidates(self) -> None:
        document = {"usageMetadata": self._usage(None), "modelVersion": self.model_version}
        await self._answer(document, [document])

    async def _slow(self) -> None:
        await self.ex.sleep(self.ex.float_header("x-fake-delay", _DEFAULT_SLOW_SECONDS))
        await self._echo()

    async def _cut(self) -> None:
        ex = self.ex
        text = self._echo_text()
        if self.stream:
            await ex.start_sse()
            for chunk in self._text_chunks(_WORD.findall(text))[:2]:
                await ex.event(chunk)
            await ex.close_mid_body()
        unary = self._response([{"text": text}], "STOP", self._usage(len(text.split())))
        data = json.dumps(unary).encode()
        await ex.start(
            200, [("content-type", "application/json"), ("content-length", str(len(data)))]
        )
        await ex.body(data[: len(data) // 2])
        await ex.close_mid_body()

    async def _no_finish(self) -> None:
        text = self._echo_text()
        if not self.stream:
            await self._echo()
            return
        unary = self._response([{"text": text}], None, self._usage(None))
        await self._answer(unary, self._text_chunks(_WORD.findall(text), finish=False))

    async def _stream_error(self) -> None:
        if not self.stream:
            await self._error_status(503)
            return
        ex = self.ex
        await ex.start_sse()
        await ex.event(self._response([{"text": "partial "}], None, self._usage(None)))
        await ex.event(
            {
                "error": {
                    "code": 503,
                    "message": "The model is overloaded. Please try again later.",
                    "status": "UNAVAILABLE",
                }
            }
        )
        await ex.end()

    async def _malformed(self) -> None:
        ex = self.ex
        if self.stream:
            await ex.start_sse()
            await ex.event(self._response([{"text": "Hello "}], None, self._usage(None)))
            ex.record.chunks.append("<malformed>")
            await ex.body(b'data: {"candidates": [{"content": \r\n\r\n')
            await ex.end()
            return
        data = b'{"candidates": [{"content": {"parts": [{"text": "Hel'
        await ex.start(
            200, [("content-type", "application/json"), ("content-length", str(len(data)))]
        )
        await ex.body(data)
        await ex.end()

    async def _stall(self) -> None:
        ex = self.ex
        if not self.stream:
            await ex.sleep(_DEFAULT_SLOW_SECONDS)
            await self._echo()
            return
        await ex.start_sse()
        await ex.event(self._response([{"text": "Hello "}], None, self._usage(None)))
        await ex.sleep(_DEFAULT_SLOW_SECONDS)
        await ex.event(self._response([{"text": "world"}], "STOP", self._usage(2)))
        await ex.end()

    async def _endless(self) -> None:
        ex = self.ex
        if not self.stream:
            await ex.sleep(_DEFAULT_SLOW_SECONDS)
            await self._echo()
            return
        interval = ex.float_header("x-fake-chunk-delay", _ENDLESS_INTERVAL)
        await ex.start_sse()
        while True:
            await ex.event(self._response([{"text": "tick "}], None, self._usage(None)))
            await ex.sleep(interval)

    async def _ignore_sse(self) -> None:
        self.sse = False
        await self._echo()


async def _main_async(host: str, port: int, api_key: str | None) -> None:
    fake = FakeGemini(host=host, port=port, api_key=api_key)
    await fake.start()
    print(fake.base_url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()


def main(argv: list[str] | None = None) -> None:
    """Run the fake as a process: ``python -m tests.fake_gemini --port 8090``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main_async(args.host, args.port, args.api_key))


if __name__ == "__main__":
    main()
