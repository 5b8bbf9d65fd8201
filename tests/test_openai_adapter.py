"""The OpenAI adapter against a fake OpenAI server on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
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
from promptgate.providers.http import SSEParser
from promptgate.providers.openai import OpenAIProvider, parse_retry_after
from promptgate.providers.upstream import UpstreamClient, UpstreamError
from tests.conftest import provider_http_client
from tests.fake_openai import FakeOpenAI

KEY = "sk-test-123"
WEATHER = Tool(
    name="get_weather",
    description="Current weather for a place.",
    parameters={
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"],
    },
)
CLOCK = Tool(name="get_time", parameters={"type": "object", "properties": {}})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server
    assert server.errors == []


@pytest.fixture
async def http() -> AsyncIterator[UpstreamClient]:
    """The server's provider HTTP client."""
    async with provider_http_client() as client:
        yield client


@pytest.fixture
def provider(fake: FakeOpenAI, http: UpstreamClient) -> OpenAIProvider:
    return OpenAIProvider(client=http, base_url=fake.base_url, api_key=KEY)


def make_request(
    model: str = "gpt-4o-mini", text: str = "hello brave new world", **kwargs: Any
) -> ProviderRequest:
    messages = (ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, text))
    return ProviderRequest(model=model, messages=messages, **kwargs)


async def collect(provider: OpenAIProvider, request: ProviderRequest) -> list[StreamEvent]:
    return [event async for event in provider.stream(request)]


async def collect_until_error(
    provider: OpenAIProvider, request: ProviderRequest
) -> tuple[list[StreamEvent], ProviderError]:
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError) as caught:
        async for event in provider.stream(request):
            events.append(event)
    return events, caught.value


def deltas(events: list[StreamEvent]) -> list[str]:
    return [event.text for event in events if isinstance(event, TextDelta)]


def dones(events: list[StreamEvent]) -> list[StreamDone]:
    return [event for event in events if isinstance(event, StreamDone)]


def test_it_is_a_provider(http: UpstreamClient) -> None:
    provider: Provider = OpenAIProvider(client=http, base_url="http://x/v1", api_key=None)
    assert provider.name == "openai"
    named = OpenAIProvider(client=http, base_url="http://x/v1", api_key=None, name="ollama")
    assert named.name == "ollama"


# ---------------------------------------------------------------------- unary


async def test_complete_returns_the_answer_and_the_raw_response(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    request = make_request()
    response = await provider.complete(request)

    assert response.text == "hello brave new world"
    assert response.model == "gpt-4o-mini-2024-08-06"  # the model the server reports
    assert response.finish_reason is FinishReason.STOP
    assert response.function_calls == ()
    sent = fake.last_request
    assert response.raw == sent.response_json
    assert response.raw["system_fingerprint"] == "fp_fake0001"
    assert response.raw["choices"][0]["message"]["refusal"] is None
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == provider.build_payload(request)


async def test_usage_includes_cached_tokens(provider: OpenAIProvider) -> None:
    request = make_request(raw_headers={"x-fake-cached-tokens": "3"})
    response = await provider.complete(request)
    # "Be brief." + "hello brave new world" = 6 words in, 4 words out.
    assert response.usage == Usage(input_tokens=6, output_tokens=4, cached_input_tokens=3)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("tool_calls", FinishReason.TOOL_CALLS),
        ("function_call", FinishReason.TOOL_CALLS),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("something_new", FinishReason.UNSPECIFIED),
    ],
)
async def test_finish_reasons_are_mapped(
    provider: OpenAIProvider, wire: str, expected: FinishReason
) -> None:
    request = make_request(raw_headers={"x-fake-finish-reason": wire})
    assert (await provider.complete(request)).finish_reason is expected
    done = dones(await collect(provider, request))
    assert done[0].response.finish_reason is expected


async def test_complete_reads_tool_calls(provider: OpenAIProvider) -> None:
    request = make_request("fake-tools", tools=(WEATHER, CLOCK))
    response = await provider.complete(request)

    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert response.text == ""
    assert response.function_calls == (
        FunctionCall(
            id="call_fake_1",
            name="get_weather",
            arguments_json='{"location": "Paris, France", "unit": "celsius"}',
            arguments={"location": "Paris, France", "unit": "celsius"},
        ),
        FunctionCall(
            id="call_fake_2",
            name="get_time",
            arguments_json='{"location": "Tokyo, Japan", "unit": "celsius"}',
            arguments={"location": "Tokyo, Japan", "unit": "celsius"},
        ),
    )


async def test_arguments_that_are_not_json_give_none(provider: OpenAIProvider) -> None:
    response = await provider.complete(make_request("fake-bad-args", tools=(WEATHER,)))
    (call,) = response.function_calls
    assert call.name == "get_weather"
    assert call.arguments_json == '{"location": "Par'
    assert call.arguments is None

    events = await collect(provider, make_request("fake-bad-args", tools=(WEATHER,)))
    (streamed,) = dones(events)[0].response.function_calls
    assert streamed == call


# ---------------------------------------------------------------------- stream


async def test_stream_yields_deltas_then_exactly_one_done(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    request = make_request(raw_headers={"x-fake-cached-tokens": "2"})
    events = await collect(provider, request)

    assert deltas(events) == ["hello ", "brave ", "new ", "world"]  # no empty role delta
    assert len(dones(events)) == 1
    assert isinstance(events[-1], StreamDone)
    done = events[-1].response
    assert done.text == "hello brave new world"
    assert done.model == "gpt-4o-mini-2024-08-06"
    assert done.finish_reason is FinishReason.STOP
    assert done.usage == Usage(input_tokens=6, output_tokens=4, cached_input_tokens=2)

    sent = fake.last_request
    assert sent.body == provider.build_payload(request, stream=True)
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["accept"] == "text/event-stream"
    usage_chunk = sent.chunks[-2]
    assert sent.chunks[-1] == "[DONE]"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == 10
    assert done.raw == usage_chunk


async def test_stream_raw_is_the_last_chunk_when_no_usage_came(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    request = make_request(raw_body={"stream_options": {"include_usage": False}})
    events = await collect(provider, request)

    done = dones(events)[0].response
    assert done.usage == Usage()
    last_chunk = fake.last_request.chunks[-2]
    assert last_chunk["choices"][0]["finish_reason"] == "stop"
    assert done.raw == last_chunk


async def test_stream_reassembles_tool_call_arguments(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    request = make_request("fake-tools", tools=(WEATHER, CLOCK))
    events = await collect(provider, request)

    argument_pieces = [
        call["function"]["arguments"]
        for chunk in fake.last_request.chunks
        if isinstance(chunk, dict) and chunk["choices"]
        for call in chunk["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert len(argument_pieces) > 6  # the fake really split them
    assert deltas(events) == []
    (done,) = dones(events)
    assert done.response.finish_reason is FinishReason.TOOL_CALLS
    assert done.response.function_calls == (await provider.complete(request)).function_calls
    assert [call.arguments for call in done.response.function_calls] == [
        {"location": "Paris, France", "unit": "celsius"},
        {"location": "Tokyo, Japan", "unit": "celsius"},
    ]


async def test_stream_answered_with_plain_json_still_streams(provider: OpenAIProvider) -> None:
    events = await collect(provider, make_request("fake-ignore-stream"))
    assert deltas(events) == ["hello brave new world"]
    (done,) = dones(events)
    assert done.response.text == "hello brave new world"
    assert done.response.usage.output_tokens == 4


async def test_streams_reuse_the_connection(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    await collect(provider, make_request())
    await collect(provider, make_request())
    await provider.complete(make_request())
    first, second, third = fake.requests
    assert first.completed and second.completed
    assert first.client_port == second.client_port == third.client_port


@pytest.mark.parametrize(
    ("data", "events"),
    [
        (b'data: {"a": 1}\n\n', [("", '{"a": 1}')]),
        (b'data: {"a": 1}\r\n\r\ndata: [DONE]\r\n\r\n', [("", '{"a": 1}'), ("", "[DONE]")]),
        (b"data: x\r\rdata:y\r\r", [("", "x"), ("", "y")]),
        (b": keep-alive\n\nevent: error\ndata: a\ndata: b\n\n", [("error", "a\nb")]),
        ('data: {"t": "a\u2028b"}\n\n'.encode(), [("", '{"t": "a\u2028b"}')]),
    ],
)
def test_sse_parser(data: bytes, events: list[tuple[str, str]]) -> None:
    whole = SSEParser()
    assert whole.feed(data) + whole.flush() == events
    byte_by_byte = SSEParser()
    parsed = [event for i in range(len(data)) for event in byte_by_byte.feed(data[i : i + 1])]
    assert parsed + byte_by_byte.flush() == events


# ---------------------------------------------------------------------- payload


def test_build_payload_maps_every_field(http: UpstreamClient) -> None:
    provider = OpenAIProvider(client=http, base_url="http://fake/v1", api_key=None)
    request = ProviderRequest(
        model="gpt-4o",
        messages=(
            ChatMessage(Role.SYSTEM, "sys"),
            ChatMessage(Role.USER, "Weather in Paris?", name="alice"),
            ChatMessage(
                Role.ASSISTANT,
                function_calls=(
                    FunctionCall(id="call_1", name="get_weather", arguments_json='{"l":"P"}'),
                ),
            ),
            ChatMessage(Role.TOOL, '{"temp": 21}', tool_call_id="call_1"),
        ),
        parameters=ModelParameters(
            temperature=0.2,
            max_tokens=64,
            top_p=0.9,
            stop=("END",),
            seed=7,
            presence_penalty=0.1,
            frequency_penalty=0.3,
            extra={
                "mock": {"text": "for the mock provider"},
                "stream": True,
                "logit_bias": {"50256": -100},
                "user": "u-1",
            },
        ),
        response_format=ResponseFormat(
            type=ResponseFormatType.JSON_SCHEMA,
            schema_name="weather",
            json_schema={"type": "object", "properties": {"t": {"type": "number"}}},
            strict=True,
        ),
        tools=(WEATHER, CLOCK),
        tool_choice=ToolChoice(ToolChoiceMode.FUNCTION, "get_weather"),
        raw_body={"logit_bias": {"1": 5}, "user": "u-2", "metadata": {"k": "v"}},
    )

    assert provider.build_payload(request) == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "Weather in Paris?", "name": "alice"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"l":"P"}'},
                    }
                ],
            },
            {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.3,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "weather",
                "schema": {"type": "object", "properties": {"t": {"type": "number"}}},
                "strict": True,
            },
        },
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather for a place.",
                    "parameters": WEATHER.parameters,
                },
            },
            {"type": "function", "function": {"name": "get_time", "parameters": CLOCK.parameters}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "logit_bias": {"50256": -100, "1": 5},  # extra, then raw_body deep-merged
        "user": "u-2",
        "metadata": {"k": "v"},
    }


def test_build_payload_leaves_unset_parameters_out(http: UpstreamClient) -> None:
    provider = OpenAIProvider(client=http, base_url="http://fake/v1", api_key=None)
    payload = provider.build_payload(make_request())
    assert payload == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello brave new world"},
        ],
    }


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (ResponseFormat(), None),
        (ResponseFormat(type=ResponseFormatType.JSON_OBJECT), {"type": "json_object"}),
        (
            ResponseFormat(type=ResponseFormatType.JSON_SCHEMA, json_schema={"type": "object"}),
            {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": False},
            },
        ),
    ],
)
def test_response_formats(
    http: UpstreamClient, response_format: ResponseFormat, expected: dict[str, Any] | None
) -> None:
    provider = OpenAIProvider(client=http, base_url="http://fake/v1", api_key=None)
    payload = provider.build_payload(make_request(response_format=response_format))
    assert payload.get("response_format") == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice(ToolChoiceMode.AUTO), "auto"),
        (ToolChoice(ToolChoiceMode.NONE), "none"),
        (ToolChoice(ToolChoiceMode.REQUIRED), "required"),
        (
            ToolChoice(ToolChoiceMode.FUNCTION, "get_time"),
            {"type": "function", "function": {"name": "get_time"}},
        ),
    ],
)
def test_tool_choices(http: UpstreamClient, choice: ToolChoice, expected: object) -> None:
    provider = OpenAIProvider(client=http, base_url="http://fake/v1", api_key=None)
    payload = provider.build_payload(make_request(tools=(CLOCK,), tool_choice=choice))
    assert payload["tool_choice"] == expected
    assert payload["tools"] == [
        {"type": "function", "function": {"name": "get_time", "parameters": CLOCK.parameters}}
    ]


def test_stream_payload_asks_for_usage(http: UpstreamClient) -> None:
    provider = OpenAIProvider(client=http, base_url="http://fake/v1", api_key=None)
    request = make_request(
        parameters=ModelParameters(
            extra={"mock": {"chunks": 3}, "stream_options": {"include_obfuscation": False}}
        ),
        raw_body={"stream_options": {"include_usage": False}, "n": 1},
    )
    unary = provider.build_payload(request)
    assert "stream" not in unary and "mock" not in unary
    assert unary["stream_options"] == {"include_usage": False}  # only raw_body's
    streamed = provider.build_payload(request, stream=True)
    assert "mock" not in streamed
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_obfuscation": False, "include_usage": False}
    assert streamed["n"] == 1


async def test_a_body_that_is_not_json_is_refused_before_sending(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    request = make_request(parameters=ModelParameters(extra={"logit_bias": float("nan")}))
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request)
    assert caught.value.code == "PROVIDER_INVALID_REQUEST"
    assert fake.requests == []


# ---------------------------------------------------------------------- headers


async def test_authorization_is_sent_only_with_a_key(
    fake: FakeOpenAI, http: UpstreamClient
) -> None:
    with_key = OpenAIProvider(client=http, base_url=fake.base_url, api_key=KEY)
    await with_key.complete(make_request())
    assert fake.last_request.headers["authorization"] == f"Bearer {KEY}"

    for key in (None, ""):
        keyless = OpenAIProvider(client=http, base_url=fake.base_url + "/", api_key=key)
        await keyless.complete(make_request())
        assert "authorization" not in fake.last_request.headers
        assert fake.last_request.path == "/v1/chat/completions"


async def test_raw_headers_are_sent_but_cannot_replace_the_key(
    fake: FakeOpenAI, http: UpstreamClient
) -> None:
    provider = OpenAIProvider(client=http, base_url=fake.base_url, api_key=KEY)
    request = make_request(
        raw_headers={"AUTHORIZATION": "Bearer stolen", "X-Trace-Id": "t-1", "Content-Type": "x"}
    )
    await provider.complete(request)
    events = await collect(provider, request)
    assert dones(events)
    for sent in fake.requests:
        assert [v for k, v in sent.header_list if k == "authorization"] == [f"Bearer {KEY}"]
        assert sent.headers["x-trace-id"] == "t-1"
        assert sent.headers["content-type"] == "application/json"

    keyless = OpenAIProvider(client=http, base_url=fake.base_url, api_key=None)
    await keyless.complete(request)
    assert "authorization" not in fake.last_request.headers


async def test_a_wrong_key_is_an_auth_failure(http: UpstreamClient) -> None:
    async with FakeOpenAI(api_key="sk-right") as strict:
        provider = OpenAIProvider(client=http, base_url=strict.base_url, api_key="sk-wrong")
        with pytest.raises(ProviderError) as caught:
            await provider.complete(make_request())
        good = OpenAIProvider(client=http, base_url=strict.base_url, api_key="sk-right")
        assert (await good.complete(make_request())).text == "hello brave new world"
    assert caught.value.code == "PROVIDER_AUTH_FAILED"
    assert caught.value.status == 401
    assert not caught.value.retryable
    assert "Incorrect API key provided" in caught.value.message
    assert "invalid_api_key" in caught.value.message


# ---------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("streaming", [False, True])
async def test_429_is_rate_limited_with_retry_after_seconds(
    provider: OpenAIProvider, streaming: bool
) -> None:
    request = make_request("fake-429")
    with pytest.raises(ProviderError) as caught:
        if streaming:
            await collect(provider, request)
        else:
            await provider.complete(request)
    error = caught.value
    assert type(error) is ProviderError
    assert error.code == "PROVIDER_RATE_LIMITED"
    assert error.status == 429
    assert error.retry_after == 7.0
    assert error.retryable
    assert "Rate limit reached for fake-429" in error.message
    assert "rate_limit_exceeded" in error.message


async def test_429_insufficient_quota_is_not_retried(provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(make_request("fake-quota"))
    assert caught.value.code == "PROVIDER_QUOTA_EXHAUSTED"
    assert caught.value.status == 429
    assert not caught.value.retryable
    assert "exceeded your current quota" in caught.value.message


async def test_429_retry_after_as_an_http_date(provider: OpenAIProvider) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    with pytest.raises(ProviderError) as caught:
        await provider.complete(make_request("fake-429", raw_headers={"x-fake-retry-after": when}))
    assert caught.value.code == "PROVIDER_RATE_LIMITED"
    assert caught.value.retry_after is not None
    assert 28.0 <= caught.value.retry_after <= 30.0


async def test_retry_after_ms_wins(provider: OpenAIProvider) -> None:
    request = make_request("fake-429", raw_headers={"x-fake-retry-after-ms": "1500"})
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request)
    assert caught.value.retry_after == 1.5


async def test_429_without_retry_after(provider: OpenAIProvider) -> None:
    request = make_request("fake-429", raw_headers={"x-fake-retry-after": "none"})
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request)
    assert caught.value.code == "PROVIDER_RATE_LIMITED"
    assert caught.value.retry_after is None


def test_parse_retry_after() -> None:
    now = datetime(2015, 10, 21, 7, 27, 0, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": "120"}) == 120.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=now) == 60.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:20:00 GMT"}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "2", "retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("status", "code", "retryable", "words"),
    [
        (400, "PROVIDER_INVALID_REQUEST", False, "Fake invalid request"),
        (401, "PROVIDER_AUTH_FAILED", False, "Incorrect API key"),
        (403, "PROVIDER_AUTH_FAILED", False, "Fake invalid request"),
        (404, "PROVIDER_INVALID_REQUEST", False, "does not exist"),
        (408, "PROVIDER_ERROR", True, "Fake invalid request"),
        (409, "PROVIDER_ERROR", True, "Fake invalid request"),
        (418, "PROVIDER_ERROR", False, "Fake invalid request"),
        (422, "PROVIDER_INVALID_REQUEST", False, "Fake invalid request"),
        (500, "PROVIDER_ERROR", True, "The server had an error"),
        (502, "PROVIDER_ERROR", True, "Fake upstream failure"),
        (503, "PROVIDER_ERROR", True, "currently overloaded"),
    ],
)
async def test_http_statuses_are_mapped(
    provider: OpenAIProvider, status: int, code: str, retryable: bool, words: str
) -> None:
    for streaming in (False, True):
        request = make_request(f"fake-{status}")
        with pytest.raises(ProviderError) as caught:
            if streaming:
                await collect(provider, request)
            else:
                await provider.complete(request)
        error = caught.value
        assert type(error) is ProviderError
        assert (error.code, error.status, error.retryable) == (code, status, retryable)
        assert words in error.message
        assert f"HTTP {status}" in error.message


async def test_503_retry_after_is_kept(provider: OpenAIProvider) -> None:
    request = make_request("fake-503", raw_headers={"x-fake-retry-after": "3"})
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request)
    assert caught.value.retry_after == 3.0


# ---------------------------------------------------------------------- transport failures


async def test_timeout_is_provider_timeout(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        await provider.complete(make_request("fake-slow", timeout=0.2))
    assert time.monotonic() - started < 3.0  # well before the 30 s fake delay
    assert caught.value.code == "PROVIDER_TIMEOUT" and caught.value.retryable
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()  # the abandoned request's connection was closed


async def test_stream_timeout_before_the_first_byte(provider: OpenAIProvider) -> None:
    started = time.monotonic()
    events, error = await collect_until_error(provider, make_request("fake-slow", timeout=0.2))
    assert isinstance(error, ProviderTimeout)
    assert events == []
    assert time.monotonic() - started < 3.0  # well before the 30 s fake delay


async def test_stream_that_stalls_times_out_after_its_deltas(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    events, error = await collect_until_error(provider, make_request("fake-stall", timeout=0.3))
    assert isinstance(error, ProviderTimeout)
    assert deltas(events) == ["Hello "]
    assert dones(events) == []
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()


async def test_whole_call_deadline_covers_a_trickling_stream(provider: OpenAIProvider) -> None:
    # Each chunk arrives well within the timeout; the whole stream does not.
    request = make_request("fake-endless", timeout=0.3, raw_headers={"x-fake-chunk-delay": "0.05"})
    started = time.monotonic()
    events, error = await collect_until_error(provider, request)
    assert isinstance(error, ProviderTimeout)
    assert len(deltas(events)) >= 2
    assert time.monotonic() - started < 3.0  # well before the 30 s fake delay


async def test_malformed_json_is_a_bad_response(provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderBadResponse) as caught:
        await provider.complete(make_request("fake-malformed"))
    assert caught.value.code == "PROVIDER_BAD_RESPONSE"
    assert caught.value.status == 200
    assert not caught.value.retryable
    assert "chatcmpl-broken" in caught.value.message

    events, error = await collect_until_error(provider, make_request("fake-malformed"))
    assert isinstance(error, ProviderBadResponse)
    assert dones(events) == []


@pytest.mark.parametrize("streaming", [False, True])
async def test_missing_choices_is_a_bad_response(provider: OpenAIProvider, streaming: bool) -> None:
    request = make_request("fake-no-choices")
    with pytest.raises(ProviderBadResponse, match="no choices"):
        if streaming:
            await collect(provider, request)
        else:
            await provider.complete(request)


async def test_stream_cut_midway_is_interrupted_after_the_first_deltas(
    provider: OpenAIProvider,
) -> None:
    events, error = await collect_until_error(
        provider, make_request("fake-cut", text="one two three four")
    )
    assert type(error) is StreamInterrupted
    assert error.code == "STREAM_INTERRUPTED" and error.retryable
    assert deltas(events) == ["one ", "two "]
    assert dones(events) == []


async def test_stream_that_ends_without_done_is_interrupted(provider: OpenAIProvider) -> None:
    events, error = await collect_until_error(provider, make_request("fake-no-done"))
    assert type(error) is StreamInterrupted
    assert "[DONE]" in error.message
    assert deltas(events) == ["hello ", "brave ", "new ", "world"]
    assert dones(events) == []


async def test_unary_body_cut_midway_is_a_retryable_provider_error(
    provider: OpenAIProvider,
) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(make_request("fake-cut"))
    assert type(caught.value) is ProviderError
    assert caught.value.code == "PROVIDER_ERROR" and caught.value.retryable
    assert isinstance(caught.value.__cause__, UpstreamError)


async def test_error_event_mid_stream_is_a_provider_error(provider: OpenAIProvider) -> None:
    events, error = await collect_until_error(provider, make_request("fake-stream-error"))
    assert type(error) is ProviderError
    assert "The server had an error while processing your request" in error.message
    assert error.retryable  # a server_error
    assert deltas(events) == ["partial "]
    assert dones(events) == []


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused_is_unreachable(http: UpstreamClient, streaming: bool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider(client=http, base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    with pytest.raises(ProviderError) as caught:
        if streaming:
            await collect(provider, make_request())
        else:
            await provider.complete(make_request())
    assert caught.value.code == "PROVIDER_UNREACHABLE"
    assert caught.value.retryable
    assert f"127.0.0.1:{port}" in caught.value.message


# ---------------------------------------------------------------------- cancellation


async def test_cancelling_a_stream_consumer_disconnects_upstream(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    received: list[str] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for event in provider.stream(make_request("fake-endless")):
            if isinstance(event, TextDelta):
                received.append(event.text)
                if len(received) >= 2:
                    first.set()

    task = asyncio.create_task(consume())
    # Two deltas, not a fixed sleep: on a busy machine 50 ms may bring only one.
    async with asyncio.timeout(10):
        await first.wait()
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
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    async with contextlib.aclosing(provider.stream(make_request("fake-endless"))) as events:
        async for event in events:
            assert event == TextDelta("tick ")
            break
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()
    assert fake.last_request.disconnected


async def test_cancelling_a_unary_call_disconnects_upstream(
    provider: OpenAIProvider, fake: FakeOpenAI
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
    provider: OpenAIProvider, http: UpstreamClient
) -> None:
    await provider.aclose()
    assert not http.closed
    assert (await provider.complete(make_request())).text == "hello brave new world"
