"""The Anthropic adapter against a fake Anthropic Messages API on a real socket."""

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
from promptgate.providers.anthropic import AnthropicProvider
from promptgate.providers.base import (
    Provider,
    ProviderRequest,
    StreamDone,
    StreamEvent,
    TextDelta,
)
from promptgate.providers.upstream import UpstreamClient, UpstreamError
from tests.conftest import provider_http_client
from tests.fake_anthropic import FakeAnthropic

KEY = "sk-ant-test-123"
WEATHER = Tool(
    name="get_weather",
    description="Current weather for a place.",
    parameters={
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["location"],
    },
)
CLOCK = Tool(name="get_time")
PARIS = {"location": "Paris, France", "unit": "celsius"}
TOKYO = {"location": "Tokyo, Japan", "unit": "celsius"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server
    assert server.errors == []


@pytest.fixture
async def http() -> AsyncIterator[UpstreamClient]:
    """The server's provider HTTP client."""
    async with provider_http_client() as client:
        yield client


@pytest.fixture
def provider(fake: FakeAnthropic, http: UpstreamClient) -> AnthropicProvider:
    return AnthropicProvider(client=http, base_url=fake.base_url, api_key=KEY)


def offline(http: UpstreamClient, **kwargs: Any) -> AnthropicProvider:
    return AnthropicProvider(client=http, base_url="http://fake", api_key=None, **kwargs)


def make_request(
    model: str = "claude-test", text: str = "hello brave new world", **kwargs: Any
) -> ProviderRequest:
    messages = (ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, text))
    return ProviderRequest(model=model, messages=messages, **kwargs)


async def collect(provider: AnthropicProvider, request: ProviderRequest) -> list[StreamEvent]:
    return [event async for event in provider.stream(request)]


async def collect_until_error(
    provider: AnthropicProvider, request: ProviderRequest
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
    provider: Provider = offline(http)
    assert provider.name == "anthropic"
    assert offline(http, name="claude-eu").name == "claude-eu"


# ---------------------------------------------------------------------- unary


async def test_complete_returns_the_answer_and_the_raw_message(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    request = make_request()
    response = await provider.complete(request)

    assert response.text == "hello brave new world"
    assert response.model == "claude-test-20250219"  # the model the server reports
    assert response.finish_reason is FinishReason.STOP
    assert response.function_calls == ()
    sent = fake.last_request
    assert response.raw == sent.response_json
    assert response.raw["type"] == "message" and response.raw["stop_reason"] == "end_turn"
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert sent.body == provider.build_payload(request)
    assert sent.body["max_tokens"] == 1024  # required by the API: the default


@pytest.mark.parametrize("streaming", [False, True])
async def test_usage_counts_cached_tokens_as_input(
    provider: AnthropicProvider, streaming: bool
) -> None:
    request = make_request(
        raw_headers={"x-fake-cache-read-tokens": "30", "x-fake-cache-creation-tokens": "5"}
    )
    if streaming:
        response = dones(await collect(provider, request))[0].response
    else:
        response = await provider.complete(request)
    # "Be brief." + "hello brave new world" = 6 uncached words, plus 30 read + 5 written.
    assert response.usage == Usage(input_tokens=41, output_tokens=4, cached_input_tokens=30)
    assert response.raw["usage"]["input_tokens"] == 6


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("pause_turn", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("model_context_window_exceeded", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("something_new", FinishReason.UNSPECIFIED),
    ],
)
async def test_stop_reasons_are_mapped(
    provider: AnthropicProvider, wire: str, expected: FinishReason
) -> None:
    request = make_request(
        raw_headers={"x-fake-stop-reason": wire}, parameters=ModelParameters(stop=("END",))
    )
    unary = await provider.complete(request)
    assert unary.finish_reason is expected
    streamed = dones(await collect(provider, request))[0].response
    assert streamed.finish_reason is expected
    assert streamed.raw["stop_reason"] == unary.raw["stop_reason"] == wire
    expected_sequence = "END" if wire == "stop_sequence" else None
    assert streamed.raw["stop_sequence"] == unary.raw["stop_sequence"] == expected_sequence


# ---------------------------------------------------------------------- stream


async def test_stream_yields_deltas_then_exactly_one_done(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    request = make_request()
    events = await collect(provider, request)

    assert deltas(events) == ["hello ", "brave ", "new ", "world"]
    assert len(dones(events)) == 1
    assert isinstance(events[-1], StreamDone)
    done = events[-1].response
    assert done.text == "hello brave new world"
    assert done.model == "claude-test-20250219"
    assert done.finish_reason is FinishReason.STOP
    assert done.usage == Usage(input_tokens=6, output_tokens=4)

    sent = fake.last_request
    assert sent.body == provider.build_payload(request, stream=True)
    assert sent.body["stream"] is True
    assert sent.headers["accept"] == "text/event-stream"
    names = [name for name, _ in sent.chunks]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert sent.completed
    # raw: the message assembled from the events, shaped like the unary answer.
    start = sent.chunks[0][1]["message"]
    assert done.raw["id"] == start["id"]
    assert done.raw["usage"]["output_tokens"] == 4  # message_delta's count, not message_start's 1
    unary = await provider.complete(request)
    assert done.raw == {**unary.raw, "id": start["id"]}


async def test_stream_answered_with_a_json_message_still_streams(
    provider: AnthropicProvider,
) -> None:
    events = await collect(provider, make_request("fake-ignore-stream"))
    assert deltas(events) == ["hello brave new world"]
    (done,) = dones(events)
    assert done.response.text == "hello brave new world"
    assert done.response.usage.output_tokens == 4


async def test_streams_reuse_the_connection(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await collect(provider, make_request())
    await collect(provider, make_request())
    await provider.complete(make_request())
    first, second, third = fake.requests
    assert first.completed and second.completed
    assert first.client_port == second.client_port == third.client_port


# ---------------------------------------------------------------------- payload


def test_system_messages_become_the_top_level_system(http: UpstreamClient) -> None:
    request = ProviderRequest(
        model="claude-test",
        messages=(
            ChatMessage(Role.SYSTEM, "You are terse."),
            ChatMessage(Role.USER, "Hi"),
            ChatMessage(Role.SYSTEM, "Answer in French."),
            ChatMessage(Role.ASSISTANT, "Salut"),
            ChatMessage(Role.USER, "Again", name="alice"),
        ),
    )
    payload = offline(http).build_payload(request)
    assert payload == {
        "model": "claude-test",
        "max_tokens": 1024,
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Salut"},
            {"role": "user", "content": "Again"},
        ],
    }
    no_system = ProviderRequest(model="m", messages=(ChatMessage(Role.USER, "Hi"),))
    assert "system" not in offline(http).build_payload(no_system)


async def test_system_prompt_reaches_the_api_outside_messages(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await provider.complete(make_request())
    body = fake.last_request.body
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_build_payload_maps_every_field(http: UpstreamClient) -> None:
    request = ProviderRequest(
        model="claude-sonnet-4-5",
        messages=(
            ChatMessage(Role.SYSTEM, "sys"),
            ChatMessage(Role.USER, "Weather in Paris and the time?"),
            ChatMessage(
                Role.ASSISTANT,
                "Checking.",
                function_calls=(
                    FunctionCall(id="toolu_1", name="get_weather", arguments_json='{"l":"P"}'),
                    FunctionCall(id="toolu_2", name="get_time", arguments_json="", arguments={}),
                ),
            ),
            ChatMessage(Role.TOOL, '{"temp": 21}', tool_call_id="toolu_1"),
            ChatMessage(Role.TOOL, "12:00", tool_call_id="toolu_2"),
            ChatMessage(Role.USER, "Thanks"),
        ),
        parameters=ModelParameters(
            temperature=0.2,
            max_tokens=64,
            top_p=0.9,
            stop=("END", "STOP"),
            seed=7,
            presence_penalty=0.1,
            frequency_penalty=0.3,
            extra={
                "mock": {"text": "for the mock provider"},
                "stream": True,
                "top_k": 5,
                "metadata": {"user_id": "u-1", "k": "extra"},
                "temperature": 1.0,
            },
        ),
        tools=(WEATHER, CLOCK),
        tool_choice=ToolChoice(ToolChoiceMode.FUNCTION, "get_weather"),
        raw_body={
            "metadata": {"k": "raw"},
            "top_k": 7,
            "tool_choice": {"disable_parallel_tool_use": True},
        },
    )

    assert offline(http).build_payload(request) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": "sys",
        "messages": [
            {"role": "user", "content": "Weather in Paris and the time?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"l": "P"},
                    },
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp": 21}'},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "12:00"},
                ],
            },
            {"role": "user", "content": "Thanks"},
        ],
        "temperature": 0.2,  # the typed field wins over extra
        "top_p": 0.9,
        "stop_sequences": ["END", "STOP"],
        # no seed, presence_penalty or frequency_penalty: Anthropic has none
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather for a place.",
                "input_schema": WEATHER.parameters,
            },
            {"name": "get_time", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "top_k": 7,  # extra, then raw_body over it
        "metadata": {"user_id": "u-1", "k": "raw"},  # deep-merged
    }


def test_assistant_calls_without_text_have_no_empty_text_block(http: UpstreamClient) -> None:
    request = ProviderRequest(
        model="m",
        messages=(
            ChatMessage(
                Role.ASSISTANT,
                function_calls=(
                    FunctionCall(id="t1", name="f", arguments_json="not json"),
                    FunctionCall(id="t2", name="g", arguments_json='{"x": [1]}'),
                ),
            ),
            ChatMessage(Role.TOOL, "r1", tool_call_id="t1"),
            ChatMessage(Role.USER, "and?"),
            ChatMessage(Role.TOOL, "late", tool_call_id="t2"),
        ),
    )
    messages = offline(http).build_payload(request)["messages"]
    assert messages[0] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
            {"type": "tool_use", "id": "t2", "name": "g", "input": {"x": [1]}},
        ],
    }
    # Tool results merge only while consecutive.
    assert [len(m["content"]) if isinstance(m["content"], list) else 0 for m in messages[1:]] == [
        1,
        0,
        1,
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice(ToolChoiceMode.AUTO), {"type": "auto"}),
        (ToolChoice(ToolChoiceMode.REQUIRED), {"type": "any"}),
        (ToolChoice(ToolChoiceMode.NONE), {"type": "none"}),
        (ToolChoice(ToolChoiceMode.FUNCTION, "get_time"), {"type": "tool", "name": "get_time"}),
    ],
)
def test_tool_choices(http: UpstreamClient, choice: ToolChoice, expected: object) -> None:
    payload = offline(http).build_payload(make_request(tools=(CLOCK,), tool_choice=choice))
    assert payload["tool_choice"] == expected


def test_json_schema_is_emulated_with_a_system_instruction(http: UpstreamClient) -> None:
    schema = {"type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"]}
    response_format = ResponseFormat(
        type=ResponseFormatType.JSON_SCHEMA, schema_name="weather", json_schema=schema, strict=True
    )
    payload = offline(http).build_payload(make_request(response_format=response_format))

    system = payload["system"]
    assert system.startswith("Be brief.\n\n")  # the prompt's own system text comes first
    assert "JSON" in system and '"weather"' in system
    assert system.endswith(json.dumps(schema))
    assert json.loads(system.rsplit("\n", 1)[1]) == schema
    assert "response_format" not in payload and "output_format" not in payload

    alone = ProviderRequest(
        model="m", messages=(ChatMessage(Role.USER, "hi"),), response_format=response_format
    )
    assert offline(http).build_payload(alone)["system"] == system.removeprefix("Be brief.\n\n")

    json_object = offline(http).build_payload(
        make_request(response_format=ResponseFormat(type=ResponseFormatType.JSON_OBJECT))
    )
    assert json_object["system"].startswith("Be brief.\n\nRespond with a single JSON object")
    no_schema = offline(http).build_payload(
        make_request(response_format=ResponseFormat(type=ResponseFormatType.JSON_SCHEMA))
    )
    assert no_schema["system"] == json_object["system"]
    text = offline(http).build_payload(make_request(response_format=ResponseFormat()))
    assert text["system"] == "Be brief."


def test_max_tokens_default_and_stream_keys(http: UpstreamClient) -> None:
    provider = offline(http, default_max_tokens=333)
    request = make_request(parameters=ModelParameters(extra={"stream": True, "mock": {}}))
    unary = provider.build_payload(request)
    assert unary["max_tokens"] == 333
    assert "stream" not in unary and "mock" not in unary
    streamed = provider.build_payload(request, stream=True)
    assert streamed["stream"] is True and "mock" not in streamed
    explicit = provider.build_payload(make_request(parameters=ModelParameters(max_tokens=5)))
    assert explicit["max_tokens"] == 5


async def test_raw_body_is_deep_merged_into_what_is_sent(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    request = make_request(
        parameters=ModelParameters(extra={"metadata": {"user_id": "u-1", "tag": "extra"}}),
        raw_body={"metadata": {"tag": "raw"}, "max_tokens": 99, "top_k": 3},
    )
    await provider.complete(request)
    await collect(provider, request)
    unary, streamed = fake.requests
    assert unary.body["metadata"] == {"user_id": "u-1", "tag": "raw"}
    assert unary.body["max_tokens"] == 99 and unary.body["top_k"] == 3
    assert streamed.body == {**unary.body, "stream": True}


async def test_a_body_that_is_not_json_is_refused_before_sending(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    request = make_request(parameters=ModelParameters(extra={"top_k": float("nan")}))
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request)
    assert caught.value.code == "PROVIDER_INVALID_REQUEST"
    assert fake.requests == []


# ---------------------------------------------------------------------- headers


async def test_raw_headers_are_sent_but_cannot_replace_the_key(
    provider: AnthropicProvider, fake: FakeAnthropic, http: UpstreamClient
) -> None:
    request = make_request(
        raw_headers={
            "X-API-KEY": "sk-ant-stolen",
            "Authorization": "Bearer stolen",
            "Content-Type": "text/plain",
            "anthropic-beta": "prompt-caching-2024-07-31",
            "X-Trace-Id": "t-1",
        }
    )
    await provider.complete(request)
    assert dones(await collect(provider, request))
    for sent in fake.requests:
        assert [v for k, v in sent.header_list if k == "x-api-key"] == [KEY]
        assert "authorization" not in sent.headers
        assert sent.headers["content-type"] == "application/json"
        assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
        assert sent.headers["x-trace-id"] == "t-1"

    keyless = AnthropicProvider(client=http, base_url=fake.base_url, api_key=None)
    with pytest.raises(ProviderError) as caught:
        await keyless.complete(request)  # the raw x-api-key is dropped, so the fake refuses
    assert caught.value.status == 401
    assert "x-api-key" not in fake.last_request.headers


async def test_the_version_header_is_configurable(http: UpstreamClient) -> None:
    async with FakeAnthropic(version="2023-01-01") as old:
        provider = AnthropicProvider(
            client=http, base_url=old.base_url + "/", api_key=None, version="2023-01-01"
        )
        assert (await provider.complete(make_request())).text == "hello brave new world"
        default = AnthropicProvider(client=http, base_url=old.base_url, api_key=None)
        with pytest.raises(ProviderError) as caught:
            await default.complete(make_request())
        # raw_headers may pick the version per request.
        request = make_request(raw_headers={"anthropic-version": "2023-01-01"})
        assert (await default.complete(request)).text == "hello brave new world"
        assert old.last_request.path == "/v1/messages"
    assert old.errors == []
    assert caught.value.code == "PROVIDER_INVALID_REQUEST" and caught.value.status == 400
    assert "anthropic-version" in caught.value.message


async def test_a_wrong_key_is_an_auth_failure(fake: FakeAnthropic, http: UpstreamClient) -> None:
    wrong = AnthropicProvider(client=http, base_url=fake.base_url, api_key="sk-ant-wrong")
    for streaming in (False, True):
        with pytest.raises(ProviderError) as caught:
            if streaming:
                await collect(wrong, make_request())
            else:
                await wrong.complete(make_request())
        error = caught.value
        assert (error.code, error.status, error.retryable) == ("PROVIDER_AUTH_FAILED", 401, False)
        assert "authentication_error: invalid x-api-key" in error.message
        assert "request_id req_fake" in error.message


# ---------------------------------------------------------------------- tools


async def test_tool_round_trip(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    first = ProviderRequest(
        model="fake-tools",
        messages=(ChatMessage(Role.USER, "Weather in Paris and Tokyo?"),),
        tools=(WEATHER, CLOCK),
        tool_choice=ToolChoice(ToolChoiceMode.REQUIRED),
    )
    response = await provider.complete(first)
    assert fake.last_request.body["tools"][1] == {
        "name": "get_time",
        "input_schema": {"type": "object"},
    }
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert response.text == "I'll look that up."
    assert response.function_calls == (
        FunctionCall("toolu_fake_1", "get_weather", json.dumps(PARIS), PARIS),
        FunctionCall("toolu_fake_2", "get_time", json.dumps(TOKYO), TOKYO),
    )

    # Send the calls back with their results, as the caller would.
    second = ProviderRequest(
        model="claude-test",
        messages=(
            *first.messages,
            ChatMessage(Role.ASSISTANT, response.text, function_calls=response.function_calls),
            ChatMessage(Role.TOOL, "21C and sunny", tool_call_id="toolu_fake_1"),
            ChatMessage(Role.TOOL, "18C and rainy", tool_call_id="toolu_fake_2"),
        ),
        tools=(WEATHER, CLOCK),
    )
    answer = await provider.complete(second)
    sent = fake.last_request.body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "I'll look that up."},
            {"type": "tool_use", "id": "toolu_fake_1", "name": "get_weather", "input": PARIS},
            {"type": "tool_use", "id": "toolu_fake_2", "name": "get_time", "input": TOKYO},
        ],
    }
    assert sent[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_fake_1", "content": "21C and sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_fake_2", "content": "18C and rainy"},
        ],
    }
    assert len(sent) == 3
    assert answer.text == "21C and sunny 18C and rainy"  # the fake echoes the tool results


async def test_stream_reassembles_tool_use_input(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    request = make_request("fake-tools", tools=(WEATHER, CLOCK))
    events = await collect(provider, request)

    pieces = [
        data["delta"]["partial_json"]
        for name, data in fake.last_request.chunks
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    ]
    assert len(pieces) > 10 and "" in pieces  # really split, with the empty first piece
    assert deltas(events) == ["I'll ", "look ", "that ", "up."]
    (done,) = dones(events)
    assert done.response.finish_reason is FinishReason.TOOL_CALLS
    assert [call.arguments for call in done.response.function_calls] == [PARIS, TOKYO]
    unary = await provider.complete(request)
    assert done.response.function_calls == unary.function_calls
    assert done.response.raw["content"] == unary.raw["content"]
    assert done.response.usage == unary.usage


# ---------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("streaming", [False, True])
async def test_429_is_rate_limited_with_retry_after(
    provider: AnthropicProvider, streaming: bool
) -> None:
    request = make_request("fake-429")
    with pytest.raises(ProviderError) as caught:
        if streaming:
            await collect(provider, request)
        else:
            await provider.complete(request)
    error = caught.value
    assert type(error) is ProviderError
    assert (error.code, error.status, error.retryable) == ("PROVIDER_RATE_LIMITED", 429, True)
    assert error.retry_after == 7.0
    assert "rate_limit_error: This request would exceed the rate limit" in error.message


async def test_429_retry_after_variants(provider: AnthropicProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(make_request("fake-429", raw_headers={"x-fake-retry-after": "2.5"}))
    assert caught.value.retry_after == 2.5
    with pytest.raises(ProviderError) as caught:
        await provider.complete(
            make_request("fake-429", raw_headers={"x-fake-retry-after": "none"})
        )
    assert caught.value.code == "PROVIDER_RATE_LIMITED"
    assert caught.value.retry_after is None


@pytest.mark.parametrize("streaming", [False, True])
async def test_529_overloaded_is_retryable(provider: AnthropicProvider, streaming: bool) -> None:
    request = make_request("fake-529", raw_headers={"x-fake-retry-after": "3"})
    with pytest.raises(ProviderError) as caught:
        if streaming:
            await collect(provider, request)
        else:
            await provider.complete(request)
    error = caught.value
    assert type(error) is ProviderError
    assert (error.code, error.status, error.retryable) == ("PROVIDER_ERROR", 529, True)
    assert error.retry_after == 3.0
    assert "HTTP 529: overloaded_error: Overloaded" in error.message


@pytest.mark.parametrize(
    ("status", "code", "retryable", "words"),
    [
        (400, "PROVIDER_INVALID_REQUEST", False, "invalid_request_error: messages"),
        (401, "PROVIDER_AUTH_FAILED", False, "authentication_error"),
        (403, "PROVIDER_AUTH_FAILED", False, "permission_error"),
        (404, "PROVIDER_INVALID_REQUEST", False, "not_found_error: model: fake-404"),
        (413, "PROVIDER_INVALID_REQUEST", False, "request_too_large"),
        (418, "PROVIDER_ERROR", False, "invalid_request_error: Fake invalid request"),
        (500, "PROVIDER_ERROR", True, "api_error: Internal server error"),
        (503, "PROVIDER_ERROR", True, "api_error: Fake upstream failure"),
    ],
)
async def test_http_statuses_are_mapped(
    provider: AnthropicProvider, status: int, code: str, retryable: bool, words: str
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
        assert f"anthropic: HTTP {status}: {words}" in error.message
        assert "request_id req_fake" in error.message


# ---------------------------------------------------------------------- stream failures


@pytest.mark.parametrize(
    ("kind", "code", "status", "retryable"),
    [
        ("overloaded_error", "PROVIDER_ERROR", 529, True),
        ("api_error", "PROVIDER_ERROR", 500, True),
        ("rate_limit_error", "PROVIDER_RATE_LIMITED", 429, True),
        ("invalid_request_error", "PROVIDER_INVALID_REQUEST", 400, False),
        ("brand_new_error", "PROVIDER_ERROR", 0, False),
    ],
)
async def test_error_event_mid_stream_is_a_provider_error(
    provider: AnthropicProvider, kind: str, code: str, status: int, retryable: bool
) -> None:
    request = make_request("fake-stream-error", raw_headers={"x-fake-error-type": kind})
    events, error = await collect_until_error(provider, request)
    assert type(error) is ProviderError
    assert (error.code, error.status, error.retryable) == (code, status, retryable)
    assert kind in error.message
    assert deltas(events) == ["partial "]
    assert dones(events) == []


async def test_overloaded_error_event_names_the_provider_message(
    provider: AnthropicProvider,
) -> None:
    _, error = await collect_until_error(provider, make_request("fake-stream-error"))
    assert (
        error.message == "anthropic: the provider reported an error: overloaded_error: Overloaded"
    )


async def test_stream_cut_midway_is_interrupted_after_the_first_deltas(
    provider: AnthropicProvider,
) -> None:
    events, error = await collect_until_error(
        provider, make_request("fake-cut", text="one two three four")
    )
    assert type(error) is StreamInterrupted
    assert error.code == "STREAM_INTERRUPTED" and error.retryable
    assert deltas(events) == ["one ", "two "]
    assert dones(events) == []


async def test_stream_that_ends_without_message_stop_is_interrupted(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    events, error = await collect_until_error(provider, make_request("fake-no-stop"))
    assert type(error) is StreamInterrupted
    assert "message_stop" in error.message
    assert fake.last_request.chunks[-1][0] == "message_delta"  # everything else did arrive
    assert deltas(events) == ["hello ", "brave ", "new ", "world"]
    assert dones(events) == []


async def test_unary_body_cut_midway_is_a_retryable_provider_error(
    provider: AnthropicProvider,
) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.complete(make_request("fake-cut"))
    assert type(caught.value) is ProviderError
    assert caught.value.code == "PROVIDER_ERROR" and caught.value.retryable
    assert isinstance(caught.value.__cause__, UpstreamError)


async def test_malformed_json_is_a_bad_response(provider: AnthropicProvider) -> None:
    with pytest.raises(ProviderBadResponse) as caught:
        await provider.complete(make_request("fake-malformed"))
    assert caught.value.code == "PROVIDER_BAD_RESPONSE" and not caught.value.retryable
    assert "msg_broken" in caught.value.message

    events, error = await collect_until_error(provider, make_request("fake-malformed"))
    assert isinstance(error, ProviderBadResponse)
    assert events == []


# ---------------------------------------------------------------------- transport failures


async def test_timeout_is_provider_timeout(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        await provider.complete(make_request("fake-slow", timeout=0.2))
    assert time.monotonic() - started < 3.0  # well before the 30 s fake delay
    assert caught.value.code == "PROVIDER_TIMEOUT" and caught.value.retryable
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()  # the abandoned request's connection was closed


async def test_stream_timeout_covers_a_trickling_stream(provider: AnthropicProvider) -> None:
    request = make_request("fake-endless", timeout=0.3, raw_headers={"x-fake-chunk-delay": "0.05"})
    started = time.monotonic()
    events, error = await collect_until_error(provider, request)
    assert isinstance(error, ProviderTimeout)
    assert len(deltas(events)) >= 2
    assert time.monotonic() - started < 3.0  # well before the 30 s fake delay


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused_is_unreachable(http: UpstreamClient, streaming: bool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = AnthropicProvider(client=http, base_url=f"http://127.0.0.1:{port}", api_key=KEY)
    with pytest.raises(ProviderError) as caught:
        if streaming:
            await collect(provider, make_request())
        else:
            await provider.complete(make_request())
    assert caught.value.code == "PROVIDER_UNREACHABLE"
    assert caught.value.retryable
    assert f"127.0.0.1:{port}/v1/messages" in caught.value.message


# ---------------------------------------------------------------------- cancellation


async def test_cancelling_a_stream_consumer_disconnects_upstream(
    provider: AnthropicProvider, fake: FakeAnthropic
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
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    async with contextlib.aclosing(provider.stream(make_request("fake-endless"))) as events:
        async for event in events:
            assert event == TextDelta("tick ")
            break
    async with asyncio.timeout(2):
        await fake.wait_for_disconnect()
    assert fake.last_request.disconnected


async def test_cancelling_a_unary_call_disconnects_upstream(
    provider: AnthropicProvider, fake: FakeAnthropic
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
    provider: AnthropicProvider, http: UpstreamClient
) -> None:
    await provider.aclose()
    assert not http.closed
    assert (await provider.complete(make_request())).text == "hello brave new world"
