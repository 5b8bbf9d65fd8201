"""The Anthropic Messages API adapter.

``AnthropicProvider`` sends ``POST {base_url}/v1/messages`` (``base_url`` is the
API root without ``/v1``, e.g. ``https://api.anthropic.com``) with the headers
``x-api-key`` (when a key is set), ``anthropic-version`` and
``content-type: application/json``, and reads the answer either as one JSON
message (``complete``) or as server-sent events (``stream``).

It follows the rules of ``promptgate.providers.base`` and uses the transport
shared by the adapters in ``promptgate.providers.http`` (the ``HttpProvider``
base class, SSE parsing, Retry-After parsing, draining).

Request body (``build_payload``):

- ``max_tokens`` is always sent (the API requires it): ``parameters.max_tokens``
  or the provider's ``default_max_tokens``.
- SYSTEM messages become the top-level ``system`` string (joined with a blank
  line; omitted when there are none). USER messages become ``{"role": "user",
  "content": text}``. An ASSISTANT message with function calls becomes content
  blocks (a ``text`` block if it has text, then one ``tool_use`` block per call
  with ``input`` the arguments object); without calls its content is the text.
  TOOL messages become ``tool_result`` blocks (``tool_use_id``, ``content``) in
  a user message; consecutive tool results share one user message.
- ``stop`` becomes ``stop_sequences``; ``temperature`` and ``top_p`` are sent as
  they are. ``seed``, ``presence_penalty`` and ``frequency_penalty`` have no
  Anthropic equivalent and are left out.
- Tools become ``{"name", "description", "input_schema"}`` (``{"type":
  "object"}`` when a tool has no parameters). Tool choice: auto ``{"type":
  "auto"}``, required ``{"type": "any"}``, a function ``{"type": "tool",
  "name": ...}``, none ``{"type": "none"}``.
- Response formats are emulated: the classic Messages API has no native JSON
  mode, so ``json_object`` and ``json_schema`` append an instruction to the
  system text asking for a single JSON value and nothing else (for
  ``json_schema``: matching the schema, whose JSON is appended). The answer is
  not validated here and ``strict`` cannot be enforced. (Anthropic's
  structured-outputs beta can be used instead through ``raw_body`` and
  ``raw_headers``.)
- ``parameters.extra`` is merged under the typed fields (its ``mock`` key is
  never sent, nor ``stream`` in a unary body); ``request.raw_body`` is
  deep-merged last. ``stream: true`` is set for ``stream``.
- ``raw_headers`` are sent (they may set ``anthropic-version`` or
  ``anthropic-beta``) but cannot replace ``x-api-key``, ``authorization`` or
  the HTTP framing headers.

Answers:

- A message ``{"id", "type": "message", "role", "content": [blocks], "model",
  "stop_reason", "stop_sequence", "usage"}``: the text is the concatenated
  ``text`` blocks; each ``tool_use`` block is a ``FunctionCall`` (``id``,
  ``name``, ``input`` as JSON); other blocks (thinking, server tools) stay in
  ``raw`` only.
- ``stop_reason``: ``end_turn`` and ``stop_sequence`` are STOP; ``pause_turn``
  (a server-tool loop paused; the turn can be continued) is STOP as well;
  ``max_tokens`` and ``model_context_window_exceeded`` are LENGTH;
  ``tool_use`` is TOOL_CALLS; ``refusal`` is CONTENT_FILTER; anything else
  UNSPECIFIED.
- Usage: ``input_tokens`` is the whole prompt (``input_tokens`` +
  ``cache_read_input_tokens`` + ``cache_creation_input_tokens``),
  ``cached_input_tokens`` is ``cache_read_input_tokens``.
- Streams: ``message_start`` (the message, input usage), ``content_block_start``
  (``text`` or ``tool_use`` with id and name), ``content_block_delta``
  (``text_delta`` yields a ``TextDelta``; ``input_json_delta`` pieces are
  joined per block index; ``thinking_delta``, ``signature_delta`` and
  ``citations_delta`` are kept for ``raw``), ``content_block_stop``,
  ``message_delta`` (``stop_reason``, cumulative ``usage``), ``message_stop``
  (exactly one ``StreamDone``); ``ping`` and unknown events are ignored. The
  stream's ``raw`` is the message assembled from all of them, shaped like a
  unary answer. A stream request answered with a JSON message is read as one.

Failures (every one a ``promptgate.errors.ProviderError``):

- Error bodies ``{"type": "error", "error": {"type", "message"}, "request_id"}``:
  429 is ``PROVIDER_RATE_LIMITED`` (retryable, with ``retry-after``); 529
  (overloaded), other 5xx, 408 and 409 are retryable ``PROVIDER_ERROR``;
  401/403 ``PROVIDER_AUTH_FAILED``; 400/404/413/422
  ``PROVIDER_INVALID_REQUEST``; any other status a non-retryable
  ``PROVIDER_ERROR``. The message names the error type, the provider's message
  and the request id.
- An ``error`` event in a stream (or an error object in a 200 body) is mapped by
  its type: ``overloaded_error`` is a retryable ``PROVIDER_ERROR`` with status
  529, ``api_error`` (500) and ``timeout_error`` (504) are retryable,
  ``rate_limit_error`` is ``PROVIDER_RATE_LIMITED``, the rest are not
  retryable.
- Timeouts are ``ProviderTimeout``; refused connections ``PROVIDER_UNREACHABLE``;
  unreadable answers ``ProviderBadResponse``; a stream whose body ends (or
  whose connection breaks) before ``message_stop`` is ``StreamInterrupted``.
- ``asyncio.CancelledError`` is never caught: a cancelled call closes its HTTP
  response, so the upstream server sees the disconnect.

The ``UpstreamClient`` is shared and owned by the caller;
``AnthropicProvider.aclose`` leaves it alone. Consumers that may stop reading
``stream()`` early should close the generator (``contextlib.aclosing``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from promptgate import jsontext
from promptgate.chat import (
    ChatMessage,
    FinishReason,
    FunctionCall,
    ModelParameters,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Tool,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)
from promptgate.errors import ProviderBadResponse, ProviderError, StreamInterrupted
from promptgate.providers.base import (
    ProviderRequest,
    ProviderResponse,
    StreamDone,
    StreamEvent,
    TextDelta,
)
from promptgate.providers.http import (
    PROTECTED_HEADERS,
    HttpProvider,
    PreparedRequest,
    SSEParser,
    deadline_after,
    drain,
    is_json,
    merge_overrides,
    parse_arguments,
    parse_retry_after,
    snippet,
    token_count,
)
from promptgate.providers.upstream import UpstreamClient, UpstreamResponse

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION: Final = "2023-06-01"

_STOP_REASONS: Final[dict[str, FinishReason]] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}

# The HTTP status each documented error type comes with (for errors inside a stream).
_ERROR_TYPE_STATUS: Final[dict[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_API_KEY_HEADER: Final = "x-api-key"
# Headers a request's raw_headers may not set: the shared ones (credentials and
# HTTP framing) and Anthropic's API key.
_ANTHROPIC_PROTECTED_HEADERS: Final = PROTECTED_HEADERS | {_API_KEY_HEADER}

# Keys of ``parameters.extra`` that are not sent: "mock" belongs to the mock
# provider; "stream" is this adapter's to set.
_EXTRA_DROPPED: Final = frozenset({"mock"})
_STREAM_KEYS: Final = frozenset({"stream"})

_JSON_ONLY: Final = (
    "Respond with a single JSON object and nothing else: no prose before or after it, "
    "no Markdown code fences."
)


class AnthropicProvider(HttpProvider):
    """A ``Provider`` for the Anthropic Messages API.

    ``client`` is shared and belongs to the caller, who closes it; ``aclose``
    does not. ``base_url`` is the API root without ``/v1``
    (``https://api.anthropic.com``). ``api_key`` is sent as ``x-api-key`` when
    set. ``version`` is the ``anthropic-version`` header; ``default_max_tokens``
    is sent when a request sets no ``max_tokens``.
    """

    def __init__(
        self,
        *,
        client: UpstreamClient,
        base_url: str,
        api_key: str | None,
        name: str = "anthropic",
        version: str = ANTHROPIC_VERSION,
        default_max_tokens: int = 1024,
    ) -> None:
        super().__init__(client=client, name=name)
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._api_key = api_key or None
        self._version = version
        self._default_max_tokens = default_max_tokens

    # ------------------------------------------------------------------ payload

    def build_payload(self, request: ProviderRequest, *, stream: bool = False) -> dict[str, Any]:
        """The exact JSON body for ``request`` (``stream=True``: the streaming body).

        Typed fields win over ``parameters.extra`` (which never sends its
        ``mock`` key, nor ``stream`` in a unary body); ``request.raw_body`` is
        deep-merged over everything, last.
        """
        parameters = request.parameters
        system, messages = _messages_payload(request.messages)
        instruction = _response_format_instruction(request.response_format)
        if instruction:
            system = f"{system}\n\n{instruction}" if system else instruction
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": (
                parameters.max_tokens
                if parameters.max_tokens is not None
                else self._default_max_tokens
            ),
        }
        if system:
            body["system"] = system
        body["messages"] = messages
        body.update(_parameters_payload(parameters))
        if request.tools:
            body["tools"] = [_tool_payload(tool) for tool in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice_payload(request.tool_choice)
        if stream:
            body["stream"] = True

        dropped = _EXTRA_DROPPED if stream else _EXTRA_DROPPED | _STREAM_KEYS
        return merge_overrides(body, request, dropped=dropped)

    # ------------------------------------------------------------------ unary

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send the request and return the whole answer."""
        http_request = self._http_request(request, self.build_payload(request), stream=False)
        response = await self._send(http_request, request, deadline_after(request.timeout))
        if not response.is_success:
            raise self._status_error(response.status_code, response.headers, response.content)
        return self._parse_message(self._decode_json(response.content, response), request)

    # ------------------------------------------------------------------ stream

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Send the request and yield ``TextDelta``s, then exactly one ``StreamDone``.

        Raises ``StreamInterrupted`` if the body ends (or the connection
        breaks) before ``message_stop``, and a ``ProviderError`` for an
        ``error`` event.
        """
        http_request = self._http_request(
            request, self.build_payload(request, stream=True), stream=True
        )
        deadline = deadline_after(request.timeout)
        response = await self._send(http_request, request, deadline, stream=True)

        result: ProviderResponse | None = None
        whole_text = ""  # set when the server answered a stream request with a JSON message
        try:
            if not response.is_success:
                body = await self._read_error_body(response, deadline)
                raise self._status_error(response.status_code, response.headers, body)
            if is_json(response):
                body = await self._read_body(response, request, self._url, deadline)
                result = self._parse_message(self._decode_json(body, response), request)
                whole_text = result.text
            else:
                state = _StreamState()
                parser = SSEParser()
                chunks = response.aiter_bytes()
                try:
                    while result is None:
                        received = await self._next_bytes(chunks, request, deadline)
                        events = parser.feed(received) if received is not None else parser.flush()
                        for name, data in events:
                            event = self._decode_event(data, response)
                            kind = event.get("type")
                            if not isinstance(kind, str) or not kind:
                                kind = name
                            if kind == "error":
                                raise _error_from_object(self.name, event.get("error"))
                            if kind == "message_stop":
                                result = self._parse_message(state.message(), request)
                                break
                            text = self._apply(state, kind, event, response)
                            if text:
                                yield TextDelta(text)
                        if received is None and result is None:
                            raise StreamInterrupted(
                                f"{self.name}: the stream ended before message_stop"
                            )
                    await drain(chunks, deadline)
                finally:
                    await chunks.aclose()
        finally:
            response.close()

        if result is None:  # unreachable: both paths above end with a result or raise
            raise StreamInterrupted(f"{self.name}: the stream ended without an answer")
        if whole_text:
            yield TextDelta(whole_text)
        yield StreamDone(result)

    def _apply(
        self, state: _StreamState, kind: str, event: dict[str, Any], response: UpstreamResponse
    ) -> str:
        try:
            return state.apply(kind, event)
        except ValueError as exc:
            raise ProviderBadResponse(
                f"{self.name}: a {kind} event is malformed: {exc}", status=response.status_code
            ) from exc

    # ------------------------------------------------------------------ HTTP

    def _http_request(
        self, request: ProviderRequest, payload: dict[str, Any], *, stream: bool
    ) -> PreparedRequest:
        return self._build_request(
            request,
            self._url,
            payload,
            stream=stream,
            protected=_ANTHROPIC_PROTECTED_HEADERS,
            credentials={_API_KEY_HEADER: self._api_key} if self._api_key else {},
            defaults={"anthropic-version": self._version},
        )

    # ------------------------------------------------------------------ parsing

    def _parse_message(self, data: Any, request: ProviderRequest) -> ProviderResponse:
        if not isinstance(data, dict):
            raise ProviderBadResponse(f"{self.name}: the response is not a JSON object", status=200)
        if data.get("type") == "error" or ("content" not in data and "error" in data):
            raise _error_from_object(self.name, data.get("error"))
        content = data.get("content")
        if not isinstance(content, list):
            raise ProviderBadResponse(
                f"{self.name}: the response has no content list: {snippet(json.dumps(data))!r}",
                status=200,
            )
        try:
            text, calls = _read_content(content)
        except ValueError as exc:
            raise ProviderBadResponse(f"{self.name}: {exc}", status=200) from exc
        model = data.get("model")
        return ProviderResponse(
            model=model if isinstance(model, str) and model else request.model,
            text=text,
            function_calls=calls,
            finish_reason=_finish_reason(data.get("stop_reason")),
            usage=_usage(data.get("usage")),
            raw=data,
        )

    # ------------------------------------------------------------------ errors

    def _status_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        detail = _error_detail(body, headers.get("request-id"))
        message = f"{self.name}: HTTP {status}" + (f": {detail}" if detail else "")
        code, retryable = _classify_status(status)
        return ProviderError(
            message,
            code=code,
            status=status,
            retry_after=parse_retry_after(headers),
            retryable=retryable,
        )


# ---------------------------------------------------------------------- payload helpers


def _messages_payload(messages: Iterable[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """The ``system`` text and the ``messages`` list."""
    system: list[str] = []
    payload: list[dict[str, Any]] = []
    tool_results: list[dict[str, Any]] | None = None  # the open tool-result message's blocks
    for message in messages:
        if message.role is Role.SYSTEM:
            if message.content:
                system.append(message.content)
            continue
        if message.role is Role.TOOL:
            block = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            if tool_results is None:
                tool_results = [block]
                payload.append({"role": "user", "content": tool_results})
            else:
                tool_results.append(block)
            continue
        tool_results = None
        if message.role is Role.ASSISTANT and message.function_calls:
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": _call_input(call)}
                for call in message.function_calls
            )
            payload.append({"role": "assistant", "content": blocks})
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        payload.append({"role": role, "content": message.content})
    return "\n\n".join(system), payload


def _call_input(call: FunctionCall) -> dict[str, Any]:
    """A function call's arguments as the object ``tool_use.input`` needs ({} if not JSON)."""
    if call.arguments is not None:
        return call.arguments
    return parse_arguments(call.arguments_json) or {}


def _parameters_payload(parameters: ModelParameters) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if parameters.temperature is not None:
        payload["temperature"] = parameters.temperature
    if parameters.top_p is not None:
        payload["top_p"] = parameters.top_p
    if parameters.stop:
        payload["stop_sequences"] = list(parameters.stop)
    return payload


def _response_format_instruction(response_format: ResponseFormat | None) -> str:
    """The system instruction that emulates a JSON response format ("" for text)."""
    if response_format is None or response_format.type is ResponseFormatType.TEXT:
        return ""
    schema = response_format.json_schema
    if response_format.type is ResponseFormatType.JSON_OBJECT or schema is None:
        return _JSON_ONLY
    named = f' named "{response_format.schema_name}"' if response_format.schema_name else ""
    return f"{_JSON_ONLY} The object must be valid against this JSON Schema{named}:\n" + json.dumps(
        schema, ensure_ascii=False, default=str
    )


def _tool_payload(tool: Tool) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": tool.name}
    if tool.description:
        payload["description"] = tool.description
    payload["input_schema"] = tool.parameters if tool.parameters is not None else {"type": "object"}
    return payload


def _tool_choice_payload(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode is ToolChoiceMode.FUNCTION:
        return {"type": "tool", "name": choice.function_name}
    if choice.mode is ToolChoiceMode.REQUIRED:
        return {"type": "any"}
    if choice.mode is ToolChoiceMode.NONE:
        return {"type": "none"}
    return {"type": "auto"}


# ---------------------------------------------------------------------- response helpers


def _read_content(content: list[Any]) -> tuple[str, tuple[FunctionCall, ...]]:
    """The text and function calls of a message's content blocks."""
    texts: list[str] = []
    calls: list[FunctionCall] = []
    for block in content:
        if not isinstance(block, dict):
            raise ValueError("a content block is not a JSON object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise ValueError("a text block has no text")
            texts.append(text)
        elif kind == "tool_use":
            name = block.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError("a tool_use block has no name")
            call_id = block.get("id")
            calls.append(_function_call(call_id if isinstance(call_id, str) else "", name, block))
    return "".join(texts), tuple(calls)


def _function_call(call_id: str, name: str, block: Mapping[str, Any]) -> FunctionCall:
    value = block.get("input")
    if isinstance(value, dict):
        return FunctionCall(
            id=call_id,
            name=name,
            arguments_json=json.dumps(value, ensure_ascii=False),
            arguments=value,
        )
    # Not an object: a streamed input whose JSON did not parse is kept as its text.
    arguments_json = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return FunctionCall(id=call_id, name=name, arguments_json=arguments_json, arguments=None)


def _finish_reason(value: Any) -> FinishReason:
    if not isinstance(value, str):
        return FinishReason.UNSPECIFIED
    return _STOP_REASONS.get(value, FinishReason.UNSPECIFIED)


def _usage(value: Any) -> Usage:
    if not isinstance(value, dict):
        return Usage()
    cache_read = token_count(value.get("cache_read_input_tokens"))
    cache_creation = token_count(value.get("cache_creation_input_tokens"))
    return Usage(
        input_tokens=token_count(value.get("input_tokens")) + cache_read + cache_creation,
        output_tokens=token_count(value.get("output_tokens")),
        cached_input_tokens=cache_read,
    )


# ---------------------------------------------------------------------- streaming helpers


@dataclass(slots=True)
class _Block:
    """A content block as its events build it up."""

    data: dict[str, Any]
    json_parts: list[str] = field(default_factory=list)

    def finished(self) -> dict[str, Any]:
        """The block as a unary answer would hold it (tool input parsed)."""
        if self.data.get("type") != "tool_use":
            return self.data
        joined = "".join(self.json_parts)
        if not joined.strip():
            return self.data  # no input_json_delta: the input from content_block_start
        parsed = parse_arguments(joined)
        return {**self.data, "input": parsed if parsed is not None else joined}


@dataclass(slots=True)
class _StreamState:
    """What the events of a stream have said so far."""

    start: dict[str, Any] = field(default_factory=dict)
    blocks: dict[int, _Block] = field(default_factory=dict)
    delta: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)

    def apply(self, kind: str, event: dict[str, Any]) -> str:
        """Take in one event; return its text delta ("" if none). ValueError if malformed."""
        if kind == "message_start":
            message = event.get("message")
            if not isinstance(message, dict):
                raise ValueError("no message object")
            self.start = message
            usage = message.get("usage")
            if isinstance(usage, dict):
                self.usage.update(usage)
        elif kind == "content_block_start":
            block = event.get("content_block")
            if not isinstance(block, dict):
                raise ValueError("no content_block object")
            self.blocks[_index(event)] = _Block(dict(block))
            text = block.get("text") if block.get("type") == "text" else None
            return text if isinstance(text, str) else ""
        elif kind == "content_block_delta":
            return self._apply_delta(event)
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict):
                self.delta.update(delta)
            usage = event.get("usage")
            if isinstance(usage, dict):  # cumulative counts
                self.usage.update({k: v for k, v in usage.items() if v is not None})
        # content_block_stop, ping and event types added later need nothing.
        return ""

    def _apply_delta(self, event: dict[str, Any]) -> str:
        index = _index(event)
        block = self.blocks.get(index)
        if block is None:
            raise ValueError(f"content block {index} was never started")
        delta = event.get("delta")
        if not isinstance(delta, dict):
            raise ValueError("no delta object")
        kind = delta.get("type")
        data = block.data
        if kind == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str):
                raise ValueError("a text_delta has no text")
            data["text"] = str(data.get("text") or "") + text
            return text
        if kind == "input_json_delta":
            partial = delta.get("partial_json")
            if isinstance(partial, str):
                block.json_parts.append(partial)
        elif kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            data["thinking"] = str(data.get("thinking") or "") + delta["thinking"]
        elif kind == "signature_delta" and isinstance(delta.get("signature"), str):
            data["signature"] = delta["signature"]
        elif kind == "citations_delta" and "citation" in delta:
            data["citations"] = [*(data.get("citations") or []), delta["citation"]]
        return ""

    def message(self) -> dict[str, Any]:
        """The whole message, shaped like a unary answer."""
        message = dict(self.start)
        message.setdefault("type", "message")
        message.setdefault("role", "assistant")
        message["content"] = [block.finished() for _, block in sorted(self.blocks.items())]
        message.update(self.delta)
        message["usage"] = dict(self.usage)
        return message


def _index(event: Mapping[str, Any]) -> int:
    index = event.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError("no block index")
    return index


# ---------------------------------------------------------------------- error helpers


def _classify_status(status: int) -> tuple[str, bool]:
    """The error code for an HTTP status, and whether a retry could help."""
    if status == 429:
        return "PROVIDER_RATE_LIMITED", True
    if status >= 500 or status in (408, 409):  # 529 is Anthropic's "overloaded"
        return "PROVIDER_ERROR", True
    if status in (401, 403):
        return "PROVIDER_AUTH_FAILED", False
    if status in (400, 404, 413, 422):
        return "PROVIDER_INVALID_REQUEST", False
    return "PROVIDER_ERROR", False


def _error_from_object(name: str, error: Any) -> ProviderError:
    """The error for an ``error`` event in a stream, or an error object in a 200 body."""
    kind = error.get("type") if isinstance(error, dict) else None
    status = _ERROR_TYPE_STATUS.get(kind, 0) if isinstance(kind, str) else 0
    code, retryable = _classify_status(status) if status else ("PROVIDER_ERROR", False)
    return ProviderError(
        f"{name}: the provider reported an error: {_describe_error(error)}",
        code=code,
        status=status,
        retryable=retryable,
    )


def _error_detail(body: bytes, request_id: str | None) -> str:
    """The provider's own words from an error body (Anthropic's shape or a fallback)."""
    detail = ""
    if body.strip():
        try:
            data = jsontext.loads(body)
        except jsontext.JsonTextError:
            data = None
        if isinstance(data, dict) and data.get("error") is not None:
            detail = _describe_error(data["error"])
            body_id = data.get("request_id")
            if isinstance(body_id, str) and body_id:
                request_id = body_id
        else:
            detail = snippet(body)
    if request_id:
        detail = f"{detail} (request_id {request_id})" if detail else f"request_id {request_id}"
    return detail


def _describe_error(error: Any) -> str:
    """``type: message`` from an ``{"type", "message"}`` error object."""
    if isinstance(error, str):
        return snippet(error)
    if not isinstance(error, dict):
        return snippet(json.dumps(error, ensure_ascii=False, default=str))
    kind = error.get("type")
    message = error.get("message")
    parts = [str(part) for part in (kind, message) if part not in (None, "")]
    return snippet(": ".join(parts)) if parts else snippet(json.dumps(error, default=str))
