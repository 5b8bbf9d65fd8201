"""The OpenAI Chat Completions adapter (and every OpenAI-compatible server).

``OpenAIProvider`` sends ``POST {base_url}/chat/completions`` and reads the
answer, either as one JSON document (``complete``) or as server-sent events
(``stream``). Pointing ``base_url`` elsewhere serves the servers that speak the
same wire format: vLLM, Ollama, the llama.cpp server, LM Studio.

It follows the rules of ``promptgate.providers.base``:

- ``build_payload`` is pure and is exactly the body that is sent;
  ``request.raw_body`` is deep-merged last.
- Every failure is a ``promptgate.errors.ProviderError``: HTTP statuses map to
  ``PROVIDER_RATE_LIMITED`` (429, with ``Retry-After``), ``PROVIDER_AUTH_FAILED``
  (401/403), ``PROVIDER_INVALID_REQUEST`` (400/404/422) or ``PROVIDER_ERROR``;
  timeouts to ``ProviderTimeout``; refused connections to
  ``PROVIDER_UNREACHABLE``; unreadable answers to ``ProviderBadResponse``; a
  stream that breaks off before ``data: [DONE]`` to ``StreamInterrupted``.
- ``asyncio.CancelledError`` is never caught: a cancelled call closes its HTTP
  response, so the upstream server sees the disconnect.

The ``UpstreamClient`` (``promptgate.providers.upstream``) is shared and
owned by the caller, who opens and closes it; ``OpenAIProvider.aclose`` leaves it alone.

Consumers that may stop reading ``stream()`` before its ``StreamDone`` should
close the generator (``contextlib.aclosing``) so the connection is released at
once rather than when the generator is garbage-collected.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
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
    SNIPPET_CHARS,
    HttpProvider,
    PreparedRequest,
    SSEParser,
    classify_status,
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

# parse_retry_after lives in promptgate.providers.http; it is re-exported here for
# the callers that import it from this module.
__all__ = ["OpenAIProvider", "parse_retry_after"]

_FINISH_REASONS: Final[dict[str, FinishReason]] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}

# Keys of ``parameters.extra`` that are not sent: "mock" belongs to the mock
# provider; the stream switches are this adapter's to set.
_EXTRA_DROPPED: Final = frozenset({"mock"})
_STREAM_KEYS: Final = frozenset({"stream", "stream_options"})

_DONE: Final = "[DONE]"


class OpenAIProvider(HttpProvider):
    """A ``Provider`` for the OpenAI Chat Completions API and compatible servers.

    ``client`` is shared and belongs to the caller, who closes it; ``aclose``
    does not. ``base_url`` is the API root (``https://api.openai.com/v1``,
    ``http://localhost:11434/v1``, ...). ``api_key`` is sent as
    ``Authorization: Bearer <key>`` when set; servers without keys take None.
    """

    def __init__(
        self,
        *,
        client: UpstreamClient,
        base_url: str,
        api_key: str | None,
        name: str = "openai",
    ) -> None:
        super().__init__(client=client, name=name)
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key or None

    # ------------------------------------------------------------------ payload

    def build_payload(self, request: ProviderRequest, *, stream: bool = False) -> dict[str, Any]:
        """The exact JSON body for ``request`` (``stream=True``: the streaming body).

        Typed fields win over ``parameters.extra`` (which never sends its
        ``mock`` key, nor ``stream``/``stream_options`` in a unary body);
        ``request.raw_body`` is deep-merged over everything, last.
        """
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [_message_payload(message) for message in request.messages],
        }
        body.update(_parameters_payload(request.parameters))
        response_format = _response_format_payload(request.response_format)
        if response_format is not None:
            body["response_format"] = response_format
        if request.tools:
            body["tools"] = [_tool_payload(tool) for tool in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice_payload(request.tool_choice)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}

        dropped = _EXTRA_DROPPED if stream else _EXTRA_DROPPED | _STREAM_KEYS
        return merge_overrides(body, request, dropped=dropped)

    # ------------------------------------------------------------------ unary

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send the request and return the whole answer."""
        http_request = self._http_request(request, self.build_payload(request), stream=False)
        response = await self._send(http_request, request, deadline_after(request.timeout))
        if not response.is_success:
            raise self._status_error(response.status_code, response.headers, response.content)
        return self._parse_completion(self._decode_json(response.content, response), request)

    # ------------------------------------------------------------------ stream

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Send the request and yield ``TextDelta``s, then exactly one ``StreamDone``.

        Raises ``StreamInterrupted`` if the body ends (or the connection
        breaks) before ``data: [DONE]``.
        """
        http_request = self._http_request(
            request, self.build_payload(request, stream=True), stream=True
        )
        deadline = deadline_after(request.timeout)
        response = await self._send(http_request, request, deadline, stream=True)

        result: ProviderResponse | None = None
        whole_text = ""  # set when a server answered a stream request with plain JSON
        try:
            if not response.is_success:
                body = await self._read_error_body(response, deadline)
                raise self._status_error(response.status_code, response.headers, body)
            if is_json(response):
                body = await self._read_body(response, request, self._url, deadline)
                result = self._parse_completion(self._decode_json(body, response), request)
                whole_text = result.text
            else:
                state = _StreamState(model=request.model)
                parser = SSEParser()
                chunks = response.aiter_bytes()
                try:
                    while result is None:
                        received = await self._next_bytes(chunks, request, deadline)
                        events = parser.feed(received) if received is not None else parser.flush()
                        for event, data in events:
                            if data == _DONE:
                                result = state.result()
                                break
                            chunk = self._decode_chunk(data, response)
                            if event == "error" and "error" not in chunk:
                                raise _stream_error(self.name, chunk)
                            text = state.apply(chunk)
                            if text:
                                yield TextDelta(text)
                        if received is None and result is None:
                            raise StreamInterrupted(
                                f"{self.name}: the stream ended before data: [DONE]"
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

    # ------------------------------------------------------------------ HTTP

    def _http_request(
        self, request: ProviderRequest, payload: dict[str, Any], *, stream: bool
    ) -> PreparedRequest:
        return self._build_request(
            request,
            self._url,
            payload,
            stream=stream,
            protected=PROTECTED_HEADERS,
            credentials={"authorization": f"Bearer {self._api_key}"} if self._api_key else {},
        )

    # ------------------------------------------------------------------ parsing

    def _decode_chunk(self, data: str, response: UpstreamResponse) -> dict[str, Any]:
        chunk = self._decode_event(data, response)
        error = chunk.get("error")
        if error is not None:
            raise _stream_error(self.name, error)
        return chunk

    def _parse_completion(self, data: Any, request: ProviderRequest) -> ProviderResponse:
        if not isinstance(data, dict):
            raise ProviderBadResponse(f"{self.name}: the response is not a JSON object", status=200)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            if data.get("error") is not None:
                raise _stream_error(self.name, data["error"])
            raise ProviderBadResponse(f"{self.name}: the response has no choices", status=200)
        choice: dict[str, Any] = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise ProviderBadResponse(f"{self.name}: choices[0] has no message", status=200)
        try:
            text = _content_text(message.get("content"))
            calls = _function_calls(message)
        except ValueError as exc:
            raise ProviderBadResponse(f"{self.name}: {exc}", status=200) from exc
        model = data.get("model")
        return ProviderResponse(
            model=model if isinstance(model, str) and model else request.model,
            text=text,
            function_calls=calls,
            finish_reason=_finish_reason(choice.get("finish_reason")),
            usage=_usage(data.get("usage")),
            raw=data,
        )

    # ------------------------------------------------------------------ errors

    def _status_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        detail = _error_detail(body)
        message = f"{self.name}: HTTP {status}" + (f": {detail}" if detail else "")
        code, retryable = classify_status(status)
        if status == 429 and _error_kind(body) == "insufficient_quota":
            # The account is out of credit: waiting does not help, another target may.
            code, retryable = "PROVIDER_QUOTA_EXHAUSTED", False
        return ProviderError(
            message,
            code=code,
            status=status,
            retry_after=parse_retry_after(headers),
            retryable=retryable,
        )


# ---------------------------------------------------------------------- payload helpers


def _message_payload(message: ChatMessage) -> dict[str, Any]:
    payload: dict[str, Any] = {"role": message.role.value}
    if message.function_calls and message.role is Role.ASSISTANT:
        payload["content"] = message.content or None
        payload["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments_json(call)},
            }
            for call in message.function_calls
        ]
    else:
        payload["content"] = message.content
    if message.tool_call_id:
        payload["tool_call_id"] = message.tool_call_id
    if message.name:
        payload["name"] = message.name
    return payload


def _arguments_json(call: FunctionCall) -> str:
    if call.arguments_json:
        return call.arguments_json
    return json.dumps(call.arguments if call.arguments is not None else {}, ensure_ascii=False)


def _parameters_payload(parameters: ModelParameters) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if parameters.temperature is not None:
        payload["temperature"] = parameters.temperature
    if parameters.max_tokens is not None:
        payload["max_tokens"] = parameters.max_tokens
    if parameters.top_p is not None:
        payload["top_p"] = parameters.top_p
    if parameters.stop:
        payload["stop"] = list(parameters.stop)
    if parameters.seed is not None:
        payload["seed"] = parameters.seed
    if parameters.presence_penalty is not None:
        payload["presence_penalty"] = parameters.presence_penalty
    if parameters.frequency_penalty is not None:
        payload["frequency_penalty"] = parameters.frequency_penalty
    return payload


def _response_format_payload(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type is ResponseFormatType.TEXT:
        return None
    if response_format.type is ResponseFormatType.JSON_OBJECT:
        return {"type": "json_object"}
    json_schema: dict[str, Any] = {"name": response_format.schema_name or "response"}
    if response_format.json_schema is not None:
        json_schema["schema"] = response_format.json_schema
    json_schema["strict"] = response_format.strict
    return {"type": "json_schema", "json_schema": json_schema}


def _tool_payload(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def _tool_choice_payload(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode is ToolChoiceMode.FUNCTION:
        return {"type": "function", "function": {"name": choice.function_name}}
    return choice.mode.value


# ---------------------------------------------------------------------- response helpers


def _content_text(content: Any) -> str:
    """A message's text: a string, null, or (some servers) a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    raise ValueError(f"message content is a {type(content).__name__}")


def _function_calls(message: Mapping[str, Any]) -> tuple[FunctionCall, ...]:
    calls: list[FunctionCall] = []
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise ValueError("message.tool_calls is not a list")
        for item in tool_calls:
            function = item.get("function") if isinstance(item, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError("a tool call has no function name")
            call_id = item.get("id")
            calls.append(
                _function_call(
                    call_id if isinstance(call_id, str) else "",
                    function["name"],
                    function.get("arguments"),
                )
            )
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
        calls.append(_function_call("", legacy["name"], legacy.get("arguments")))
    return tuple(calls)


def _function_call(call_id: str, name: str, arguments: Any) -> FunctionCall:
    if isinstance(arguments, str):
        arguments_json = arguments
    elif arguments is None:
        arguments_json = ""
    else:  # a server that sends the arguments as an object rather than a string
        arguments_json = json.dumps(arguments, ensure_ascii=False)
    return FunctionCall(
        id=call_id,
        name=name,
        arguments_json=arguments_json,
        arguments=parse_arguments(arguments_json),
    )


def _finish_reason(value: Any) -> FinishReason:
    if not isinstance(value, str):
        return FinishReason.UNSPECIFIED
    return _FINISH_REASONS.get(value, FinishReason.UNSPECIFIED)


def _usage(value: Any) -> Usage:
    if not isinstance(value, dict):
        return Usage()
    details = value.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=token_count(value.get("prompt_tokens")),
        output_tokens=token_count(value.get("completion_tokens")),
        cached_input_tokens=token_count(cached),
    )


# ---------------------------------------------------------------------- streaming helpers


@dataclass(slots=True)
class _CallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _StreamState:
    """What the chunks of a stream have said so far."""

    model: str
    text: list[str] = field(default_factory=list)
    calls: dict[int, _CallParts] = field(default_factory=dict)
    finish_reason: FinishReason = FinishReason.UNSPECIFIED
    usage: Usage = field(default_factory=Usage)
    last_chunk: dict[str, Any] = field(default_factory=dict)
    usage_chunk: dict[str, Any] | None = None

    def apply(self, chunk: dict[str, Any]) -> str:
        """Take in one chunk; return its text delta ("" if none)."""
        self.last_chunk = chunk
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self.model = model
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = _usage(usage)
            self.usage_chunk = chunk
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return ""
        text = ""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            reason = choice.get("finish_reason")
            if reason is not None:
                self.finish_reason = _finish_reason(reason)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            if isinstance(content, str) and content:
                text += content
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                for position, item in enumerate(tool_calls):
                    if isinstance(item, dict):
                        self._apply_call(item, position)
            legacy = delta.get("function_call")
            if isinstance(legacy, dict):
                self._apply_call({"index": 0, "function": legacy}, 0)
        if text:
            self.text.append(text)
        return text

    def _apply_call(self, item: dict[str, Any], position: int) -> None:
        index = item.get("index")
        call_id = item.get("id")
        if not isinstance(index, int) or isinstance(index, bool):
            # Servers that omit the index: a new id starts a new call.
            known = {parts.id for parts in self.calls.values()}
            if isinstance(call_id, str) and call_id and call_id not in known:
                index = len(self.calls)
            else:
                index = max(self.calls, default=position)
        parts = self.calls.setdefault(index, _CallParts())
        if isinstance(call_id, str) and call_id and not parts.id:
            parts.id = call_id
        function = item.get("function")
        if not isinstance(function, dict):
            return
        name = function.get("name")
        if isinstance(name, str) and name and not parts.name:
            parts.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            parts.arguments.append(arguments)
        elif isinstance(arguments, dict):
            parts.arguments.append(json.dumps(arguments, ensure_ascii=False))

    def result(self) -> ProviderResponse:
        """The whole answer, as ``complete`` would have returned it."""
        calls = tuple(
            _function_call(parts.id, parts.name, "".join(parts.arguments))
            for _, parts in sorted(self.calls.items())
        )
        return ProviderResponse(
            model=self.model,
            text="".join(self.text),
            function_calls=calls,
            finish_reason=self.finish_reason,
            usage=self.usage,
            raw=self.usage_chunk if self.usage_chunk is not None else self.last_chunk,
        )


# ---------------------------------------------------------------------- error helpers


def _stream_error(name: str, error: Any) -> ProviderError:
    """The error for an ``{"error": ...}`` object inside a 200 answer."""
    detail = _describe_error_object(error)
    status = 0
    code_value = error.get("code") if isinstance(error, dict) else None
    if isinstance(code_value, int) and not isinstance(code_value, bool):
        status = code_value if 400 <= code_value <= 599 else 0  # vLLM puts the status here
    if status:
        code, retryable = classify_status(status)
    else:
        kind = " ".join(
            str(error.get(key, "")) for key in ("type", "code") if isinstance(error, dict)
        )
        if "rate_limit" in kind:
            code, retryable = "PROVIDER_RATE_LIMITED", True
        else:
            code, retryable = "PROVIDER_ERROR", "server_error" in kind or "overloaded" in kind
    return ProviderError(
        f"{name}: the provider reported an error: {detail}",
        code=code,
        status=status,
        retryable=retryable,
    )


def _error_kind(body: bytes) -> str:
    """The ``error.code`` (or ``error.type``) of an OpenAI error body, if any."""
    try:
        data = jsontext.loads(body)
    except jsontext.JsonTextError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ""
    kind = error.get("code") or error.get("type")
    return kind if isinstance(kind, str) else ""


def _error_detail(body: bytes) -> str:
    """The provider's own words from an error body (OpenAI's shape or a fallback)."""
    if not body.strip():
        return ""
    try:
        data = jsontext.loads(body)
    except jsontext.JsonTextError:
        return snippet(body)
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if data.get(key) is not None:
                return _describe_error_object(data[key])
    return snippet(body)


def _describe_error_object(error: Any) -> str:
    if isinstance(error, str):
        return error[:SNIPPET_CHARS]
    if not isinstance(error, dict):
        return snippet(json.dumps(error, ensure_ascii=False, default=str))
    message = error.get("message")
    text = str(message) if message is not None else ""
    extras = [
        f"{key}={error[key]}"
        for key in ("type", "code", "param")
        if error.get(key) not in (None, "")
    ]
    if extras:
        text = f"{text} ({', '.join(extras)})" if text else ", ".join(extras)
    return text[: SNIPPET_CHARS * 2]
