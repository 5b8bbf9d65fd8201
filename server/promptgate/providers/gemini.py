"""The Google Gemini API adapter (``generateContent``, REST ``v1beta``).

``GeminiProvider`` speaks the Gemini API's own wire format (not its
OpenAI-compatible endpoint). The model and the streaming switch travel in the
URL, never in the body:

- ``complete``: ``POST {base_url}/v1beta/models/{model}:generateContent``
- ``stream``: ``POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse``

``{model}`` is the request's model (``gemini-2.5-flash``); a model already
naming its collection (``models/...``, ``tunedModels/...``) is used as is. The
key goes in the ``x-goog-api-key`` header, which ``raw_headers`` cannot replace.

Wire cases handled:

- Request body (``build_payload``, identical for both calls): ``contents``
  (user text; assistant text and ``functionCall`` parts as role ``model``;
  consecutive TOOL messages as one role-``user`` content of
  ``functionResponse`` parts, named after the assistant call with the same
  ``tool_call_id`` or else the message's ``name``, the content sent as its
  JSON object or as ``{"result": text}``); ``systemInstruction`` (the system
  messages, joined by blank lines); ``generationConfig`` (``temperature``,
  ``topP``, ``maxOutputTokens``, ``stopSequences``, ``seed``,
  ``presencePenalty``, ``frequencyPenalty``; ``responseMimeType``
  ``application/json`` for JSON formats and ``responseJsonSchema`` for a JSON
  schema; Gemini has no schema name or strict flag, so those are not sent);
  ``tools`` as one ``functionDeclarations`` list whose schemas go in
  ``parametersJsonSchema`` (which takes JSON Schema as written, where
  ``parameters`` takes Google's OpenAPI-subset ``Schema`` and rejects parts of
  JSON Schema such as ``additionalProperties`` or ``$ref``); ``toolConfig``
  (``AUTO``, ``NONE``, ``ANY``; a named function is ``ANY`` with
  ``allowedFunctionNames``); ``parameters.extra`` merged at the top level
  (typed fields win; its ``mock`` key is never sent); ``request.raw_body``
  deep-merged last. Call ids are not sent back: the API pairs calls and
  responses by name and order.
- Answers: the first candidate's text parts, joined (``thought`` parts
  skipped); ``functionCall`` parts as ``FunctionCall`` (id from the part, else
  ``call_<n>``); ``finishReason`` STOP, MAX_TOKENS, SAFETY, RECITATION,
  LANGUAGE, BLOCKLIST, PROHIBITED_CONTENT, SPII, the IMAGE_* filters,
  MALFORMED_FUNCTION_CALL and the other tool-call failures, and TOOL_CALLS for
  an answer that calls functions; ``usageMetadata`` (``promptTokenCount``,
  ``candidatesTokenCount`` plus ``thoughtsTokenCount``,
  ``cachedContentTokenCount``); ``modelVersion``; a prompt blocked by
  ``promptFeedback.blockReason`` is ``PROVIDER_CONTENT_BLOCKED``.
- Streams: ``data: {GenerateContentResponse}`` events (CRLF or LF framed).
  There is no ``[DONE]``: a body that ends after a chunk with a
  ``finishReason`` is complete; one that ends without, or breaks off, is
  ``StreamInterrupted``. A chunk holding an ``error`` object raises its
  ``ProviderError``. A server that answers the stream request with JSON (one
  response, or the JSON array ``streamGenerateContent`` returns without
  ``alt=sse``) is read the same way.
- Errors: Google's ``{"error": {"code", "message", "status", "details"}}``
  bodies. 429 is ``PROVIDER_RATE_LIMITED``, 5xx (and 408/409) retryable
  ``PROVIDER_ERROR``, 400/404 ``PROVIDER_INVALID_REQUEST``, 401/403 and a 400
  whose ``ErrorInfo`` reason is ``API_KEY_INVALID`` ``PROVIDER_AUTH_FAILED``.
  ``retry_after`` comes from ``Retry-After`` and, without it, from a
  ``google.rpc.RetryInfo`` detail's ``retryDelay`` (``"17s"``). Messages carry
  the provider's status name and message. Timeouts are ``ProviderTimeout``,
  refused connections ``PROVIDER_UNREACHABLE``, unreadable answers
  ``ProviderBadResponse``.

It follows the rules of ``promptgate.providers.base`` the way
``promptgate.providers.openai`` does, with the same transport helpers
(``promptgate.providers.http``):
``asyncio.CancelledError`` is never caught, and a cancelled or abandoned call
closes its HTTP response so the upstream sees the disconnect. The
``UpstreamClient`` is shared and owned by the caller; ``aclose`` leaves it
alone.

Thought signatures: a ``functionCall`` part's ``thoughtSignature`` is kept in
``FunctionCall.signature`` and sent back on that call's part in assistant
history, as Gemini 3 models require in tool loops.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import quote

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
    classify_status,
    deadline_after,
    is_json,
    merge_overrides,
    parse_retry_after,
    snippet,
    token_count,
)
from promptgate.providers.upstream import UpstreamClient

__all__ = ["GeminiProvider", "parse_retry_delay"]

_API_VERSION: Final = "v1beta"

_FINISH_REASONS: Final[dict[str, FinishReason]] = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "LANGUAGE": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "IMAGE_RECITATION": FinishReason.CONTENT_FILTER,
    "MALFORMED_FUNCTION_CALL": FinishReason.ERROR,
    "UNEXPECTED_TOOL_CALL": FinishReason.ERROR,
    "TOO_MANY_TOOL_CALLS": FinishReason.ERROR,
    "MISSING_THOUGHT_SIGNATURE": FinishReason.ERROR,
}
_NO_FINISH: Final = "FINISH_REASON_UNSPECIFIED"

_API_KEY_HEADER: Final = "x-goog-api-key"
# Headers a request's raw_headers may not set: the shared ones (credentials and
# HTTP framing) and Google's API key.
_GEMINI_PROTECTED_HEADERS: Final = PROTECTED_HEADERS | {_API_KEY_HEADER}

# Keys of ``parameters.extra`` that are not sent: "mock" belongs to the mock provider.
_EXTRA_DROPPED: Final = frozenset({"mock"})

_RETRY_INFO: Final = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO: Final = "type.googleapis.com/google.rpc.ErrorInfo"
# ErrorInfo reasons that mean the key itself is bad (Google answers them with 400).
_KEY_REASONS: Final = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
# Error code and retryability for a google.rpc status name (errors without an HTTP code).
_RPC_STATUSES: Final[dict[str, tuple[str, bool]]] = {
    "RESOURCE_EXHAUSTED": ("PROVIDER_RATE_LIMITED", True),
    "UNAVAILABLE": ("PROVIDER_ERROR", True),
    "INTERNAL": ("PROVIDER_ERROR", True),
    "DEADLINE_EXCEEDED": ("PROVIDER_ERROR", True),
    "ABORTED": ("PROVIDER_ERROR", True),
    "UNKNOWN": ("PROVIDER_ERROR", True),
    "INVALID_ARGUMENT": ("PROVIDER_INVALID_REQUEST", False),
    "FAILED_PRECONDITION": ("PROVIDER_INVALID_REQUEST", False),
    "OUT_OF_RANGE": ("PROVIDER_INVALID_REQUEST", False),
    "NOT_FOUND": ("PROVIDER_INVALID_REQUEST", False),
    "UNAUTHENTICATED": ("PROVIDER_AUTH_FAILED", False),
    "PERMISSION_DENIED": ("PROVIDER_AUTH_FAILED", False),
}
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
_ERROR_MESSAGE_CHARS: Final = 1000


class GeminiProvider(HttpProvider):
    """A ``Provider`` for the Google Gemini API (``generativelanguage.googleapis.com``).

    ``client`` is shared and belongs to the caller, who closes it; ``aclose``
    does not. ``base_url`` is the API host root, without the version
    (``https://generativelanguage.googleapis.com``). ``api_key`` is sent as
    ``x-goog-api-key`` when set.
    """

    # A body nested too deeply to encode is an invalid request too.
    _BODY_ERRORS: ClassVar[tuple[type[Exception], ...]] = (TypeError, ValueError, RecursionError)

    def __init__(
        self,
        *,
        client: UpstreamClient,
        base_url: str,
        api_key: str | None,
        name: str = "gemini",
    ) -> None:
        super().__init__(client=client, name=name)
        self._root = base_url.rstrip("/")
        self._api_key = api_key or None

    # ------------------------------------------------------------------ payload

    def build_payload(self, request: ProviderRequest, *, stream: bool = False) -> dict[str, Any]:
        """The exact JSON body for ``request``.

        The body is the same for both calls (``stream`` is accepted for the
        providers' common signature): the URL carries the model and whether
        to stream. Typed fields win over ``parameters.extra`` (which never
        sends its ``mock`` key); ``request.raw_body`` is deep-merged over
        everything, last.
        """
        del stream
        body: dict[str, Any] = {"contents": _contents(request.messages)}
        system = "\n\n".join(
            message.content
            for message in request.messages
            if message.role is Role.SYSTEM and message.content
        )
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config = _generation_config(request.parameters, request.response_format)
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [
                {"functionDeclarations": [_function_declaration(tool) for tool in request.tools]}
            ]
        if request.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice)}

        return merge_overrides(body, request, dropped=_EXTRA_DROPPED)

    def url(self, model: str, *, stream: bool = False) -> str:
        """The endpoint a request for ``model`` is sent to."""
        resource = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{self._root}/{_API_VERSION}/{quote(resource, safe='/')}:{method}"

    # ------------------------------------------------------------------ unary

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send the request and return the whole answer."""
        url = self.url(request.model)
        http_request = self._http_request(request, url, self.build_payload(request), stream=False)
        response = await self._send(http_request, request, deadline_after(request.timeout))
        if not response.is_success:
            raise self._status_error(response.status_code, response.headers, response.content)
        data = self._decode_json(response.content, response)
        if not isinstance(data, dict):
            raise ProviderBadResponse(f"{self.name}: the response is not a JSON object", status=200)
        answer = _Answer(self.name, request.model)
        answer.apply(data)
        if not answer.saw_candidate:
            raise ProviderBadResponse(f"{self.name}: the response has no candidates", status=200)
        return answer.result()

    # ------------------------------------------------------------------ stream

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Send the request and yield ``TextDelta``s, then exactly one ``StreamDone``.

        Raises ``StreamInterrupted`` if the body ends before a chunk with a
        ``finishReason`` (or the connection breaks).
        """
        url = self.url(request.model, stream=True)
        http_request = self._http_request(
            request, url, self.build_payload(request, stream=True), stream=True
        )
        deadline = deadline_after(request.timeout)
        response = await self._send(http_request, request, deadline, stream=True)

        answer = _Answer(self.name, request.model)
        try:
            if not response.is_success:
                body = await self._read_error_body(response, deadline)
                raise self._status_error(response.status_code, response.headers, body)
            if is_json(response):
                body = await self._read_body(response, request, url, deadline)
                data = self._decode_json(body, response)
                for chunk in data if isinstance(data, list) else [data]:
                    if not isinstance(chunk, dict):
                        raise ProviderBadResponse(
                            f"{self.name}: a streamed response is not a JSON object", status=200
                        )
                    text = answer.apply(chunk)
                    if text:
                        yield TextDelta(text)
            else:
                parser = SSEParser()
                chunks = response.aiter_bytes()
                try:
                    while True:
                        received = await self._next_bytes(chunks, request, deadline)
                        events = parser.feed(received) if received is not None else parser.flush()
                        for _event, data in events:
                            text = answer.apply(self._decode_event(data, response))
                            if text:
                                yield TextDelta(text)
                        if received is None:
                            break
                finally:
                    await chunks.aclose()
        finally:
            response.close()

        if answer.finish is None:
            raise StreamInterrupted(f"{self.name}: the stream ended before a finishReason")
        yield StreamDone(answer.result())

    # ------------------------------------------------------------------ HTTP

    def _http_request(
        self, request: ProviderRequest, url: str, payload: dict[str, Any], *, stream: bool
    ) -> PreparedRequest:
        return self._build_request(
            request,
            url,
            payload,
            stream=stream,
            protected=_GEMINI_PROTECTED_HEADERS,
            credentials={_API_KEY_HEADER: self._api_key} if self._api_key else {},
        )

    # ------------------------------------------------------------------ errors

    def _status_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        error = _error_from_body(body)
        retry_after = parse_retry_after(headers)
        if error is None:  # not Google's shape: a proxy's page, an empty body
            detail = snippet(body)
            code, retryable = classify_status(status)
        else:
            detail = error.describe()
            code, retryable = _classify(status, error)
            if retry_after is None:
                retry_after = error.retry_delay
        return ProviderError(
            f"{self.name}: HTTP {status}" + (f": {detail}" if detail else ""),
            code=code,
            status=status,
            retry_after=retry_after,
            retryable=retryable,
        )


# ---------------------------------------------------------------------- payload helpers


def _contents(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    """The ``contents`` list: every message but the system ones, in order."""
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, from assistant calls
    responses: list[dict[str, Any]] | None = None  # the open run of function responses
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        if message.role is Role.TOOL:
            name = call_names.get(message.tool_call_id, "") if message.tool_call_id else ""
            part = {
                "functionResponse": {
                    "name": name or message.name,
                    "response": _function_response(message.content),
                }
            }
            if responses is None:
                responses = []
                contents.append({"role": "user", "parts": responses})
            responses.append(part)
            continue
        responses = None
        if message.role is Role.ASSISTANT:
            parts: list[dict[str, Any]] = []
            if message.content:
                parts.append({"text": message.content})
            for call in message.function_calls:
                if call.id:
                    call_names[call.id] = call.name
                call_part: dict[str, Any] = {
                    "functionCall": {"name": call.name, "args": _call_args(call)}
                }
                if call.signature:
                    call_part["thoughtSignature"] = call.signature
                parts.append(call_part)
            contents.append({"role": "model", "parts": parts or [{"text": ""}]})
        else:
            contents.append({"role": "user", "parts": [{"text": message.content}]})
    return contents


def _call_args(call: FunctionCall) -> dict[str, Any]:
    if call.arguments is not None:
        return call.arguments
    parsed = _json_object(call.arguments_json)
    return parsed if parsed is not None else {}


def _function_response(content: str) -> dict[str, Any]:
    parsed = _json_object(content)
    return parsed if parsed is not None else {"result": content}


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = jsontext.loads(text)
    except jsontext.JsonTextError:
        return None
    return value if isinstance(value, dict) else None


def _generation_config(
    parameters: ModelParameters, response_format: ResponseFormat | None
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if parameters.temperature is not None:
        config["temperature"] = parameters.temperature
    if parameters.top_p is not None:
        config["topP"] = parameters.top_p
    if parameters.max_tokens is not None:
        config["maxOutputTokens"] = parameters.max_tokens
    if parameters.stop:
        config["stopSequences"] = list(parameters.stop)
    if parameters.seed is not None:
        config["seed"] = parameters.seed
    if parameters.presence_penalty is not None:
        config["presencePenalty"] = parameters.presence_penalty
    if parameters.frequency_penalty is not None:
        config["frequencyPenalty"] = parameters.frequency_penalty
    if response_format is not None and response_format.type is not ResponseFormatType.TEXT:
        config["responseMimeType"] = "application/json"
        if (
            response_format.type is ResponseFormatType.JSON_SCHEMA
            and response_format.json_schema is not None
        ):
            config["responseJsonSchema"] = response_format.json_schema
    return config


def _function_declaration(tool: Tool) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    if tool.parameters is not None:
        declaration["parametersJsonSchema"] = tool.parameters
    return declaration


def _calling_config(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode is ToolChoiceMode.FUNCTION:
        return {"mode": "ANY", "allowedFunctionNames": [choice.function_name]}
    if choice.mode is ToolChoiceMode.REQUIRED:
        return {"mode": "ANY"}
    if choice.mode is ToolChoiceMode.NONE:
        return {"mode": "NONE"}
    return {"mode": "AUTO"}


# ---------------------------------------------------------------------- response helpers


@dataclass(slots=True)
class _Answer:
    """What a response (or the chunks of a stream so far) said."""

    name: str
    model: str
    text: list[str] = field(default_factory=list)
    calls: list[FunctionCall] = field(default_factory=list)
    finish: str | None = None
    """The wire finishReason, once one arrived."""
    usage: Usage = field(default_factory=Usage)
    saw_candidate: bool = False
    last: dict[str, Any] = field(default_factory=dict)

    def apply(self, chunk: dict[str, Any]) -> str:
        """Take in one ``GenerateContentResponse``; return its text ("" if none)."""
        self.last = chunk
        error = chunk.get("error")
        if error is not None:
            raise _error_object(self.name, error)
        model = chunk.get("modelVersion")
        if isinstance(model, str) and model:
            self.model = model
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self.usage = _usage(usage)
        candidates = chunk.get("candidates")
        if candidates is None or candidates == []:
            blocked = _block_reason(chunk.get("promptFeedback"))
            if blocked:
                raise ProviderError(
                    f"{self.name}: the prompt was blocked: {blocked}",
                    code="PROVIDER_CONTENT_BLOCKED",
                    status=200,
                )
            return ""
        candidate = _first_candidate(candidates)
        if candidate is None:
            raise ProviderBadResponse(f"{self.name}: candidates[0] is not an object", status=200)
        self.saw_candidate = True
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason and reason != _NO_FINISH:
            self.finish = reason
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if parts is None:
            return ""
        if not isinstance(parts, list):
            raise ProviderBadResponse(f"{self.name}: content.parts is not a list", status=200)
        text = ""
        for part in parts:
            if not isinstance(part, dict):
                raise ProviderBadResponse(f"{self.name}: a part is not an object", status=200)
            call = part.get("functionCall")
            if call is not None:
                signature = part.get("thoughtSignature")
                self.calls.append(
                    self._function_call(call, signature if isinstance(signature, str) else "")
                )
            elif part.get("thought") is not True:
                value = part.get("text")
                if isinstance(value, str):
                    text += value
        if text:
            self.text.append(text)
        return text

    def _function_call(self, call: Any, signature: str = "") -> FunctionCall:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ProviderBadResponse(f"{self.name}: a functionCall has no name", status=200)
        call_id = call.get("id")
        args = call.get("args")
        if args is None:
            args = {}
        return FunctionCall(
            id=call_id if isinstance(call_id, str) and call_id else f"call_{len(self.calls)}",
            name=call["name"],
            arguments_json=json.dumps(args, ensure_ascii=False),
            arguments=args if isinstance(args, dict) else None,
            signature=signature,
        )

    def result(self) -> ProviderResponse:
        """The whole answer."""
        finish = _FINISH_REASONS.get(self.finish or "", FinishReason.UNSPECIFIED)
        if self.calls and finish in (FinishReason.STOP, FinishReason.UNSPECIFIED):
            finish = FinishReason.TOOL_CALLS
        return ProviderResponse(
            model=self.model,
            text="".join(self.text),
            function_calls=tuple(self.calls),
            finish_reason=finish,
            usage=self.usage,
            raw=self.last,
        )


def _first_candidate(candidates: Any) -> dict[str, Any] | None:
    """The candidate with index 0 (the first one when none gives an index)."""
    if not isinstance(candidates, list):
        return None
    for candidate in candidates:
        if isinstance(candidate, dict) and candidate.get("index", 0) == 0:
            return candidate
    return None


def _block_reason(feedback: Any) -> str:
    """Why the prompt was blocked ("" if it was not)."""
    if not isinstance(feedback, dict):
        return ""
    reason = feedback.get("blockReason")
    if not isinstance(reason, str) or not reason or reason == "BLOCK_REASON_UNSPECIFIED":
        return ""
    message = feedback.get("blockReasonMessage")
    if isinstance(message, str) and message:
        return f"blockReason={reason} ({message})"
    return f"blockReason={reason}"


def _usage(value: Mapping[str, Any]) -> Usage:
    return Usage(
        input_tokens=token_count(value.get("promptTokenCount")),
        output_tokens=token_count(value.get("candidatesTokenCount"))
        + token_count(value.get("thoughtsTokenCount")),
        cached_input_tokens=token_count(value.get("cachedContentTokenCount")),
    )


# ---------------------------------------------------------------------- error helpers


@dataclass(frozen=True, slots=True)
class _GoogleError:
    """The useful parts of a ``google.rpc.Status`` error object."""

    code: int
    status: str
    message: str
    reason: str
    retry_delay: float | None

    def describe(self) -> str:
        text = f"{self.status}: {self.message}" if self.status else self.message
        if self.reason:
            text = f"{text} (reason={self.reason})"
        return text[:_ERROR_MESSAGE_CHARS]


def _google_error(error: Any) -> _GoogleError:
    if not isinstance(error, dict):
        text = error if isinstance(error, str) else json.dumps(error, default=str)
        return _GoogleError(0, "", snippet(text), "", None)
    code = error.get("code")
    status = error.get("status")
    message = error.get("message")
    reason = ""
    retry_delay: float | None = None
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        kind = detail.get("@type")
        if kind == _RETRY_INFO and retry_delay is None:
            retry_delay = parse_retry_delay(detail.get("retryDelay"))
        elif kind == _ERROR_INFO and not reason and isinstance(detail.get("reason"), str):
            reason = detail["reason"]
    return _GoogleError(
        code=code if isinstance(code, int) and not isinstance(code, bool) else 0,
        status=status if isinstance(status, str) else "",
        message=str(message) if message is not None else "",
        reason=reason,
        retry_delay=retry_delay,
    )


def _error_from_body(body: bytes) -> _GoogleError | None:
    """The error object of an error body (also inside a JSON array); None if there is none."""
    if not body.strip():
        return None
    try:
        data = jsontext.loads(body)
    except jsontext.JsonTextError:
        return None
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict) and data.get("error") is not None:
        return _google_error(data["error"])
    return None


def _classify(status: int, error: _GoogleError) -> tuple[str, bool]:
    """The error code and retryability for an HTTP status and Google's error object."""
    if error.reason in _KEY_REASONS:
        return "PROVIDER_AUTH_FAILED", False
    if status:
        return classify_status(status)
    return _RPC_STATUSES.get(error.status, ("PROVIDER_ERROR", False))


def _error_object(name: str, error: Any) -> ProviderError:
    """The error for an ``{"error": ...}`` object inside a 200 answer or stream."""
    parsed = _google_error(error)
    status = parsed.code if 400 <= parsed.code <= 599 else 0
    code, retryable = _classify(status, parsed)
    return ProviderError(
        f"{name}: the provider reported an error: {parsed.describe()}",
        code=code,
        status=status,
        retry_after=parsed.retry_delay,
        retryable=retryable,
    )


def parse_retry_delay(value: Any) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo.retryDelay``: ``"17s"``, ``"0.5s"``.

    Also takes the ``{"seconds": ..., "nanos": ...}`` object form. Returns
    None for anything else.
    """
    if isinstance(value, str):
        match = _DURATION.match(value)
        return float(match.group(1)) if match else None
    if isinstance(value, dict):
        try:
            seconds = float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None
