"""The Gemini adapter against a fake Gemini API server on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

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
from promptgate.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderTimeout,
    StreamInterrupted,
)
from promptgate.providers.base import (
    Provider,
    ProviderRequest,
    StreamDone,
    StreamEvent,
    TextDelta,
)
from promptgate.providers.gemini import GeminiProvider, parse_retry_delay
from promptgate.providers.upstream import UpstreamClient, UpstreamError
from tests.conftest import provider_http_client
from tests.fake_gemini import _SIGNATURE as SIGNATURE
from tests.fake_gemini import FakeGemini

KEY = "AIza-test-123"
MODEL = "gemini-2.5-flash"
WEATHER = Tool(
    name="get_weather",
    description="Current weather for a place.",
    parameters={
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
)
CLOCK = Tool(name="get_time", parameters={"type": "object", "properties": {}})
PARIS = {"location": "Paris, France", "unit": "celsius"}
TOKYO = {"location": "Tokyo, Japan", "unit": "celsius"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini(api_key=KEY) as server:
        yield server
    assert server.errors == []


@pytest.fixture
async def http() -> AsyncIterator[UpstreamClient]:
    """The server's provider HTTP client."""
    async with provider_http_client() as client:
        yield client


@pytest.fixture
def provider(fake: FakeGemini, http: UpstreamClient) -> GeminiProvider:
    return GeminiProvider(client=http, base_url=fake.base_url, api_key=KEY)


def offline(http: UpstreamClient) -> GeminiProvider:
    return GeminiProvider(client=http, base_url="http://fake", api_key=None)


def make_request(
    model: str = MODEL, text: str = "hello brave new world", **kwargs: Any
) -> ProviderRequest:
    messages = (ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, text))
    return ProviderRequest(model=model, messages=messages, **kwargs)


def tool_history() -> tuple[ChatMessage, ...]:
    """A conversation after the model called two functions and both answered."""
    return (
        ChatMessage(Role.SYSTEM, "You are a weather bot."),
        ChatMessage(Role.USER, "Weather in Paris, and the time?"),
        ChatMessage(
            Role.ASSISTANT,
            "Let me check.",
            function_calls=(
                FunctionCall(id="call_0", name="get_weather", arguments_json=json.dumps(PARIS)),
                FunctionCall(id="call_1", name="get_time", arguments_json="{}", arguments={}),
            ),
        ),
        ChatMessage(Role.TOOL, '{"temp": 21, "sky": "clear"}', tool_call_id="call_0"),
        ChatMessage(Role.TOOL, "14:05", tool_call_id="call_1"),
        # Not a call id the history knows: the message's own name is used.
        ChatMessage(Role.TOOL, "[1, 2]", tool_call_id="call_x", name="get_news"),
    )


async def collect(provider: GeminiProvider, request: ProviderRequest) -> list[StreamEvent]:
    return [event async for event in provider.stream(request)]


async def collect_until_error(
    provider: GeminiProvider, request: ProviderRequest
) -> tuple[list[StreamEvent], ProviderError]:
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError) as caught:
        async for event in provider.stream(request):
            events.append(event)
    return events, caught.value


async def fail(
    provider: GeminiProvider, request: ProviderRequest, streaming: bool
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        if streaming:
            await collect(provider, request)
        else:
            await provider.complete(request)
    return caught.value


def deltas(events: list[StreamEvent]) -> list[str]:
    return [event.text for event in events if isinstance(event, TextDelta)]


def dones(events: list[StreamEvent]) -> list[StreamDone]:
    return [event for event in events if isinstance(event, StreamDone)]


def test_it_is_a_provider(http: UpstreamClient) -> None:
    provider: Provider = GeminiProvider(client=http, base_url="http://x", api_key=None)
    assert provider.name == "gemini"
    named = GeminiProvider(client=http, base_url="http://x", api_key=None, name="vertex-ish")
    assert named.name == "vertex-ish"


# ---------------------------------------------------------------------- unary


async def test_complete_returns_the_answer_and_the_raw_response(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    request = make_request()
    response = await provider.complete(request)

    assert response.text == "hello brave new world"
    assert response.model == "gemini-2.5-flash-001"  # modelVersion, not the requested name
    assert response.finish_reason is FinishReason.STOP
    assert response.function_calls == ()
    # "Be brief." + "hello brave new world" = 6 words in, 4 words out.
    assert response.usage == Usage(input_tokens=6, output_tokens=4)
    sent = fake.last_request
    assert response.raw == sent.response_json
    assert response.raw["responseId"].startswith("fakeResp")
    assert (sent.method, sent.path, sent.query) == (
        "POST",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        {},
    )
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"
    assert "authorization" not in sent.headers
    assert sent.body == provider.build_payload(request)
    assert "model" not in sent.body and "stream" not in sent.body


async def test_the_model_goes_in_the_path(fake: FakeGemini, http: UpstreamClient) -> None:
    provider = GeminiProvider(client=http, base_url=fake.base_url + "/", api_key=KEY)
    await provider.complete(make_request("models/gemini-2.0-flash"))
    assert fake.last_request.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert fake.last_request.model == "gemini-2.0-flash"
    assert provider.url("tunedModels/my-tune", stream=True) == (
        f"{fake.base_url}/v1beta/tunedModels/my-tune:streamGenerateContent?alt=sse"
    )


async def test_usage_counts_cached_and_thought_tokens(provider: GeminiProvider) -> None:
    request = make_request(raw_headers={"x-fake-cached-tokens": "3"})
    response = await provider.complete(request)
    assert response.usage == Usage(input_tokens=6, output_tokens=4, cached_input_tokens=3)
    assert response.raw["usageMetadata"]["cachedContentTokenCount"] == 3

    thinking = await provider.complete(make_request("fake-thinking"))
    assert thinking.raw["candidates"][0]["content"]["parts"][0]["thought"] is True
    assert thinking.text == "hello brave new world"  # the thought summary is not the answer
    assert thinking.usage == Usage(input_tokens=6, output_tokens=4 + 5)


# ---------------------------------------------------------------------- stream


async def test_stream_yields_deltas_then_exactly_one_done(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    request = make_request(raw_headers={"x-fake-cached-tokens": "2"})
    events = await collect(provider, request)

    assert deltas(events) == ["hello ", "brave ", "new ", "world"]
    assert len(dones(events)) == 1
    assert isinstance(events[-1], StreamDone)
    done = events[-1].response
    assert done.text == "hello brave new world"
    assert done.model == "gemini-2.5-flash-001"
    assert done.finish_reason is FinishReason.STOP
    assert done.usage == Usage(input_tokens=6, output_tokens=4, cached_input_tokens=2)

    sent = fake.last_request
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"}
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.body == provider.build_payload(request, stream=True)
    assert provider.build_payload(request, stream=True) == provider.build_payload(request)
    assert len(sent.chunks) == 4  # the text really was split across chunks
    assert all("finishReason" not in chunk["candidates"][0] for chunk in sent.chunks[:-1])
    assert done.raw == sent.chunks[-1]  # the last chunk: finishReason and the full usage
    assert done.raw["usageMetadata"]["totalTokenCount"] == 10


async def test_stream_skips_thought_parts(provider: GeminiProvider, fake: FakeGemini) -> None:
    events = await collect(provider, make_request("fake-thinking"))
    assert fake.last_request.chunks[0]["candidates"][0]["content"]["parts"][0]["thought"]
    assert deltas(events) == ["hello ", "brave ", "new ", "world"]
    assert dones(events)[0].response.usage.output_tokens == 9


async def test_stream_answered_with_a_json_array_still_streams(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    events = await collect(provider, make_request("fake-ignore-sse"))
    assert isinstance(fake.last_request.response_json, list)  # what Google sends without alt=sse
    assert deltas(events) == ["hello ", "brave ", "new ", "world"]
    (done,) = dones(events)
    assert done.response.text == "hello brave new world"
    assert done.response.usage.output_tokens == 4


async def test_streams_reuse_the_connection(provider: GeminiProvider, fake: FakeGemini) -> None:
    await collect(provider, make_request())
    await collect(provider, make_request())
    await provider.complete(make_request())
    first, second, third = fake.requests
    assert first.completed and second.completed
    assert first.client_port == second.client_port == third.client_port


# ---------------------------------------------------------------------- payload


def test_system_messages_become_the_system_instruction(http: UpstreamClient) -> None:
    request = ProviderRequest(
        model=MODEL,
        messages=(
            ChatMessage(Role.SYSTEM, "Be brief."),
            ChatMessage(Role.USER, "Hi"),
            ChatMessage(Role.SYSTEM, "Answer in French."),
        ),
    )
    assert offline(http).build_payload(request) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nAnswer in French."}]},
    }
    no_system = ProviderRequest(model=MODEL, messages=(ChatMessage(Role.USER, "Hi"),))
    assert "systemInstruction" not in offline(http).build_payload(no_system)


async def test_the_system_instruction_reaches_the_server(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    await provider.complete(make_request())
    assert fake.last_request.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in fake.last_request.body["contents"]] == ["user"]


def test_generation_config_maps_every_parameter(http: UpstreamClient) -> None:
    request = make_request(
        parameters=ModelParameters(
            temperature=0.2,
            max_tokens=64,
            top_p=0.9,
            stop=("END", "STOP"),
            seed=7,
            presence_penalty=0.1,
            frequency_penalty=0.3,
        )
    )
    assert offline(http).build_payload(request)["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 64,
        "stopSequences": ["END", "STOP"],
        "seed": 7,
        "presencePenalty": 0.1,
        "frequencyPenalty": 0.3,
    }
    assert offline(http).build_payload(make_request()) == {
        "contents": [{"role": "user", "parts": [{"text": "hello brave new world"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
    }


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (ResponseFormat(), None),
        (
            ResponseFormat(type=ResponseFormatType.JSON_OBJECT),
            {"responseMimeType": "application/json"},
        ),
        (
            ResponseFormat(
                type=ResponseFormatType.JSON_SCHEMA,
                schema_name="weather",
                json_schema={
                    "type": "object",
                    "properties": {"t": {"type": "number"}},
                    "additionalProperties": False,
                },
                strict=True,
            ),
            {
                "responseMimeType": "application/json",
                "responseJsonSchema": {
                    "type": "object",
                    "properties": {"t": {"type": "number"}},
                    "additionalProperties": False,
                },
            },
        ),
    ],
)
async def test_response_formats(
    provider: GeminiProvider,
    fake: FakeGemini,
    response_format: ResponseFormat,
    expected: dict[str, Any] | None,
) -> None:
    request = make_request(response_format=response_format)
    assert provider.build_payload(request).get("generationConfig") == expected
    await provider.complete(request)  # the fake accepts the field names
    assert fake.last_request.status == 200
    assert fake.last_request.body.get("generationConfig") == expected


def test_tool_history_maps_to_function_calls_and_responses(http: UpstreamClient) -> None:
    request = ProviderRequest(model=MODEL, messages=tool_history())
    assert offline(http).build_payload(request)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris, and the time?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": PARIS}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",  # consecutive tool messages answer in one turn
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",  # found through tool_call_id call_0
                        "response": {"temp": 21, "sky": "clear"},
                    }
                },
                {"functionResponse": {"name": "get_time", "response": {"result": "14:05"}}},
                {"functionResponse": {"name": "get_news", "response": {"result": "[1, 2]"}}},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice(ToolChoiceMode.AUTO), {"mode": "AUTO"}),
        (ToolChoice(ToolChoiceMode.NONE), {"mode": "NONE"}),
        (ToolChoice(ToolChoiceMode.REQUIRED), {"mode": "ANY"}),
        (
            ToolChoice(ToolChoiceMode.FUNCTION, "get_time"),
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
    ],
)
async def test_tools_and_tool_choices(
    provider: GeminiProvider,
    fake: FakeGemini,
    choice: ToolChoice,
    expected: dict[str, Any],
) -> None:
    request = make_request(tools=(WEATHER, CLOCK), tool_choice=choice)
    payload = provider.build_payload(request)
    assert payload["toolConfig"] == {"functionCallingConfig": expected}
    assert payload["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather for a place.",
                    "parametersJsonSchema": WEATHER.parameters,
                },
                {"name": "get_time", "parametersJsonSchema": CLOCK.parameters},
            ]
        }
    ]
    await provider.complete(request)
    assert fake.last_request.status == 200  # the fake's checks accept it


async def test_tool_round_trip(provider: GeminiProvider, fake: FakeGemini) -> None:
    # The model asks for two calls...
    first = await provider.complete(make_request("fake-tools", tools=(WEATHER, CLOCK)))
    assert first.finish_reason is FinishReason.TOOL_CALLS  # the wire says STOP
    assert first.raw["candidates"][0]["finishReason"] == "STOP"
    assert first.text == ""
    assert first.function_calls == (
        FunctionCall(
            id="call_0",
            name="get_weather",
            arguments_json=json.dumps(PARIS),
            arguments=PARIS,
            signature=SIGNATURE,
        ),
        FunctionCall(
            id="call_1", name="get_time", arguments_json=json.dumps(TOKYO), arguments=TOKYO
        ),
    )

    # ...and the answers go back as functionResponse parts the server accepts,
    # with the first call's thought signature returned unchanged.
    history = (
        ChatMessage(Role.USER, "Weather in Paris and Tokyo?"),
        ChatMessage(Role.ASSISTANT, function_calls=first.function_calls),
        ChatMessage(Role.TOOL, '{"temp": 21}', tool_call_id="call_0"),
        ChatMessage(Role.TOOL, "14:05", tool_call_id="call_1"),
    )
    second = await provider.complete(
        ProviderRequest(model=MODEL, messages=history, tools=(WEATHER, CLOCK))
    )
    contents = fake.last_request.body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_weather", "args": PARIS}, "thoughtSignature": SIGNATURE},
            {"functionCall": {"name": "get_time", "args": TOKYO}},
        ],
    }
    assert second.text == 'get_weather -> {"temp": 21} get_time -> {"result": "14:05"}'
    assert second.finish_reason is FinishReason.STOP


async def test_function_call_ids_from_the_wire_are_kept(provider: GeminiProvider) -> None:
    request = make_request("fake-tools", tools=(WEATHER,), raw_headers={"x-fake-call-ids": "1"})
    response = await provider.complete(request)
    assert [call.id for call in response.function_calls] == ["fc-1", "fc-2"]
    events = await collect(provider, request)
    assert dones(events)[0].response.function_calls == response.function_calls


async def test_stream_reads_function_calls(provider: GeminiProvider, fake: FakeGemini) -> None:
    request = make_request("fake-tools", tools=(WEATHER, CLOCK))
    events = await collect(provider, request)

    assert len(fake.last_request.chunks) == 2  # one call per chunk
    assert deltas(events) == []
    (done,) = dones(events)
    assert done.response.finish_reason is FinishReason.TOOL_CALLS
    assert done.response.function_calls == (await provider.complete(request)).function_calls
    assert [call.arguments for call in done.response.function_calls] == [PARIS, TOKYO]


def test_extra_and_raw_body_are_merged(http: UpstreamClient) -> None:
    request = make_request(
        parameters=ModelParameters(
            temperature=0.2,
            extra={
                "mock": {"text": "for the mock provider"},
                "generationConfig": {"topK": 40, "temperature": 1.5},
                "cachedContent": "cachedContents/abc",
            },
        ),
        raw_body={
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}, "topK": 20},
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "systemInstruction": {"parts": [{"text": "Overridden."}]},
        },
    )
    payload = offline(http).build_payload(request)
    assert "mock" not in payload
    assert payload["generationConfig"] == {
        "temperature": 0.2,  # the typed field wins over extra
        "topK": 20,  # raw_body wins over everything
        "thinkingConfig": {"thinkingBudget": 0},
    }
    assert payload["cachedContent"] == "cachedContents/abc"
    assert payload["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    assert payload["systemInstruction"] == {"parts": [{"text": "Overridden."}]}


async def test_raw_body_reaches_the_server(provider: GeminiProvider, fake: FakeGemini) -> None:
    request = make_request(raw_body={"generationConfig": {"topK": 3}})
    await provider.complete(request)
    assert fake.last_request.body["generationConfig"] == {"topK": 3}

    # A field Gemini does not know is refused as the real API refuses it.
    bad = make_request(raw_body={"stream": True})
    error = await fail(provider, bad, streaming=False)
    assert error.code == "PROVIDER_INVALID_REQUEST"
    assert 'Unknown name "stream"' in error.message


async def test_a_body_that_is_not_json_is_refused_before_sending(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    request = make_request(parameters=ModelParameters(extra={"cachedContent": float("nan")}))
    error = await fail(provider, request, streaming=False)
    assert error.code == "PROVIDER_INVALID_REQUEST"
    assert fake.requests == []


# ---------------------------------------------------------------------- finish reasons


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", FinishReason.ERROR),
        ("OTHER", FinishReason.UNSPECIFIED),
    ],
)
async def test_finish_reasons_are_mapped(
    provider: GeminiProvider, wire: str, expected: FinishReason
) -> None:
    request = make_request(raw_headers={"x-fake-finish-reason": wire})
    assert (await provider.complete(request)).finish_reason is expected
    done = dones(await collect(provider, request))
    assert done[0].response.finish_reason is expected


async def test_a_safety_stop_is_a_content_filter(provider: GeminiProvider) -> None:
    response = await provider.complete(make_request("fake-safety"))
    assert response.finish_reason is FinishReason.CONTENT_FILTER
    assert response.text == ""
    assert response.raw["candidates"][0]["safetyRatings"][-1]["blocked"] is True

    events = await collect(provider, make_request("fake-safety"))
    assert deltas(events) == ["hello "]
    assert dones(events)[0].response.finish_reason is FinishReason.CONTENT_FILTER


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_blocked_prompt_is_content_blocked(
    provider: GeminiProvider, streaming: bool
) -> None:
    error = await fail(provider, make_request("fake-blocked"), streaming)
    assert type(error) is ProviderError
    assert error.code == "PROVIDER_CONTENT_BLOCKED"
    assert not error.retryable
    assert "blockReason=SAFETY" in error.message


# ---------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("streaming", [False, True])
async def test_429_takes_retry_after_from_retry_info(
    provider: GeminiProvider, fake: FakeGemini, streaming: bool
) -> None:
    error = await fail(provider, make_request("fake-429"), streaming)
    assert "retry-after" not in {k for k, _ in fake.last_request.header_list}
    assert type(error) is ProviderError
    assert error.code == "PROVIDER_RATE_LIMITED"
    assert (error.status, error.retry_after, error.retryable) == (429, 17.0, True)
    assert "RESOURCE_EXHAUSTED" in error.message
    assert "You exceeded your current quota" in error.message


async def test_a_retry_after_header_wins_over_retry_info(provider: GeminiProvider) -> None:
    request = make_request("fake-429", raw_headers={"x-fake-retry-after": "5"})
    error = await fail(provider, request, streaming=False)
    assert error.retry_after == 5.0

    fractional = make_request("fake-429", raw_headers={"x-fake-retry-delay": "1.500s"})
    assert (await fail(provider, fractional, streaming=False)).retry_after == 1.5

    neither = make_request("fake-429", raw_headers={"x-fake-retry-delay": "none"})
    error = await fail(provider, neither, streaming=True)
    assert error.code == "PROVIDER_RATE_LIMITED" and error.retry_after is None


def test_parse_retry_delay() -> None:
    assert parse_retry_delay("17s") == 17.0
    assert parse_retry_delay("0.5s") == 0.5
    assert parse_retry_delay("1.000340s") == pytest.approx(1.00034)
    assert parse_retry_delay({"seconds": "3", "nanos": 500_000_000}) == 3.5
    assert parse_retry_delay("17") is None
    assert parse_retry_delay("-1s") is None
    assert parse_retry_delay("soon") is None
    assert parse_retry_delay(None) is None


@pytest.mark.parametrize(
    ("model", "status", "code", "retryable", "words"),
    [
        ("fake-400", 400, "PROVIDER_INVALID_REQUEST", False, "INVALID_ARGUMENT: Request contains"),
        (
            "fake-precondition",
            400,
            "PROVIDER_INVALID_REQUEST",
            False,
            "FAILED_PRECONDITION: User location is not supported",
        ),
        ("fake-401", 401, "PROVIDER_AUTH_FAILED", False, "UNAUTHENTICATED"),
        ("fake-403", 403, "PROVIDER_AUTH_FAILED", False, "PERMISSION_DENIED: The caller"),
        ("fake-404", 404, "PROVIDER_INVALID_REQUEST", False, "NOT_FOUND: models/fake-404 is not"),
        ("fake-500", 500, "PROVIDER_ERROR", True, "INTERNAL: An internal error"),
        ("fake-503", 503, "PROVIDER_ERROR", True, "UNAVAILABLE: The model is overloaded"),
        ("fake-504", 504, "PROVIDER_ERROR", True, "DEADLINE_EXCEEDED"),
    ],
)
async def test_http_statuses_are_mapped(
    provider: GeminiProvider, model: str, status: int, code: str, retryable: bool, words: str
) -> None:
    for streaming in (False, True):
        error = await fail(provider, make_request(model), streaming)
        assert type(error) is ProviderError
        assert (error.code, error.status, error.retryable) == (code, status, retryable)
        assert f"HTTP {status}" in error.message
        assert words in error.message
        assert error.retry_after is None


async def test_503_retry_after_is_kept(provider: GeminiProvider) -> None:
    request = make_request("fake-503", raw_headers={"x-fake-retry-after": "3"})
    assert (await fail(provider, request, streaming=False)).retry_after == 3.0


async def test_a_non_google_error_page_is_still_mapped(
    fake: FakeGemini, http: UpstreamClient
) -> None:
    provider = GeminiProvider(client=http, base_url=fake.base_url + "/wrong", api_key=KEY)
    error = await fail(provider, make_request(), streaming=False)
    assert fake.last_request.status == 404
    assert (error.code, error.status) == ("PROVIDER_INVALID_REQUEST", 404)
    assert "Error 404 (Not Found)" in error.message


async def test_a_wrong_or_missing_key_is_an_auth_failure(
    fake: FakeGemini, http: UpstreamClient
) -> None:
    wrong = GeminiProvider(client=http, base_url=fake.base_url, api_key="AIza-wrong")
    error = await fail(wrong, make_request(), streaming=False)
    # Google answers a bad key with 400 INVALID_ARGUMENT and ErrorInfo reason API_KEY_INVALID.
    assert (error.code, error.status, error.retryable) == ("PROVIDER_AUTH_FAILED", 400, False)
    assert "API key not valid" in error.message
    assert "API_KEY_INVALID" in error.message

    keyless = GeminiProvider(client=http, base_url=fake.base_url, api_key=None)
    error = await fail(keyless, make_request(), streaming=True)
    assert "x-goog-api-key" not in fake.last_request.headers
    assert (error.code, error.status) == ("PROVIDER_AUTH_FAILED", 403)
    assert "PERMISSION_DENIED" in error.message


async def test_raw_headers_are_sent_but_cannot_replace_the_key(
    provider: GeminiProvider, fake: FakeGemini, http: UpstreamClient
) -> None:
    request = make_request(
        raw_headers={
            "X-Goog-Api-Key": "AIza-stolen",
            "Authorization": "Bearer stolen",
            "Content-Type": "text/plain",
            "X-Trace-Id": "t-1",
        }
    )
    await provider.complete(request)
    await collect(provider, request)
    for sent in fake.requests:
        assert sent.status == 200
        assert [v for k, v in sent.header_list if k == "x-goog-api-key"] == [KEY]
        assert "authorization" not in sent.headers
        assert sent.headers["content-type"] == "application/json"
        assert sent.headers["x-trace-id"] == "t-1"

    # Nor can they add one to a provider configured without a key.
    keyless = GeminiProvider(client=http, base_url=fake.base_url, api_key=None)
    error = await fail(keyless, request, streaming=False)
    assert "x-goog-api-key" not in fake.last_request.headers
    assert fake.last_request.headers["x-trace-id"] == "t-1"
    assert (error.code, error.status) == ("PROVIDER_AUTH_FAILED", 403)


# ---------------------------------------------------------------------- broken answers


async def test_stream_cut_midway_is_interrupted_after_the_first_deltas(
    provider: GeminiProvider,
) -> None:
    events, error = await collect_until_error(
        provider, make_request("fake-cut", text="one two three four")
    )
    assert type(error) is StreamInterrupted
    assert error.code == "STREAM_INTERRUPTED" and error.retryable
    assert deltas(events) == ["one ", "two "]
    assert dones(events) == []


async def test_stream_that_ends_without_a_finish_reason_is_interrupted(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    events, error = await collect_until_error(provider, make_request("fake-no-finish"))
    assert fake.last_request.completed  # the body ended cleanly
    assert type(error) is StreamInterrupted
    assert "finishReason" in error.message
    assert deltas(events) == ["hello ", "brave ", "new ", "world"]
    assert dones(events) == []


async def test_unary_body_cut_midway_is_a_retryable_provider_error(
    provider: GeminiProvider,
) -> None:
    error = await fail(provider, make_request("fake-cut"), streaming=False)
    assert type(error) is ProviderError
    assert error.code == "PROVIDER_ERROR" and error.retryable
    assert isinstance(error.__cause__, UpstreamError)


async def test_error_chunk_mid_stream_is_a_provider_error(provider: GeminiProvider) -> None:
    events, error = await collect_until_error(provider, make_request("fake-stream-error"))
    assert type(error) is ProviderError
    assert (error.code, error.status, error.retryable) == ("PROVIDER_ERROR", 503, True)
    assert "UNAVAILABLE: The model is overloaded" in error.message
    assert deltas(events) == ["partial "]
    assert dones(events) == []


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_json_is_a_bad_response(provider: GeminiProvider, streaming: bool) -> None:
    error = await fail(provider, make_request("fake-malformed"), streaming)
    assert isinstance(error, ProviderBadResponse)
    assert (error.code, error.status, error.retryable) == ("PROVIDER_BAD_RESPONSE", 200, False)


@pytest.mark.parametrize("streaming", [False, True])
async def test_no_candidates_is_a_bad_response_or_an_interruption(
    provider: GeminiProvider, streaming: bool
) -> None:
    error = await fail(provider, make_request("fake-no-candidates"), streaming)
    if streaming:  # a stream whose only chunk had no finishReason
        assert type(error) is StreamInterrupted
    else:
        assert isinstance(error, ProviderBadResponse)
        assert "no candidates" in error.message


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused_is_unreachable(http: UpstreamClient, streaming: bool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = GeminiProvider(client=http, base_url=f"http://127.0.0.1:{port}", api_key=KEY)
    error = await fail(provider, make_request(), streaming)
    assert error.code == "PROVIDER_UNREACHABLE"
    assert error.retryable
    assert f"127.0.0.1:{port}" in error.message


# ---------------------------------------------------------------------- timeouts and cancellation


async def test_timeout_is_provider_timeout(provider: GeminiProvider, fake: FakeGemini) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        await provider.complete(make_request("fake-slow", timeout=0.2))
    assert time.monotonic() - started < 3.0  # well before the 30 s fake delay
    assert caught.value.code == "PROVIDER_TIMEOUT" and caught.value.retryable
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()  # the abandoned request's connection was closed


async def test_stream_that_stalls_times_out_after_its_deltas(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    started = time.monotonic()
    events, error = await collect_until_error(provider, make_request("fake-stall", timeout=0.3))
    assert isinstance(error, ProviderTimeout)
    assert time.monotonic() - started < 3.0  # well before the 30 s fake delay
    assert deltas(events) == ["Hello "]
    assert dones(events) == []
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()


async def test_cancelling_a_stream_consumer_disconnects_upstream(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    received: list[str] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for event in provider.stream(make_request("fake-endless")):
            if isinstance(event, TextDelta):
                received.append(event.text)
                first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        await first.wait()
    await asyncio.sleep(0.05)
    assert fake.disconnects == 0  # still streaming
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()
    sent = fake.last_request
    assert sent.disconnected and not sent.completed
    assert len(received) >= 2


async def test_closing_a_stream_early_disconnects_upstream(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    async with contextlib.aclosing(provider.stream(make_request("fake-endless"))) as events:
        async for event in events:
            assert event == TextDelta("tick ")
            break
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()
    assert fake.last_request.disconnected


async def test_cancelling_a_unary_call_disconnects_upstream(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    task = asyncio.create_task(provider.complete(make_request("fake-slow")))
    async with asyncio.timeout(2):
        await fake.wait_for_requests()
    await asyncio.sleep(0.05)  # the server is now sleeping before its answer
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()
    assert fake.last_request.disconnected


# ---------------------------------------------------------------------- lifecycle


async def test_aclose_leaves_the_shared_client_open(
    provider: GeminiProvider, http: UpstreamClient
) -> None:
    await provider.aclose()
    assert not http.closed
    assert (await provider.complete(make_request())).text == "hello brave new world"
