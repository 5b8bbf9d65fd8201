"""ExecutionService through the openai adapter, against a local OpenAI-wire server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf import duration_pb2, json_format

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running
from tests.fake_openai import FakeOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        yield server


@pytest.fixture
async def gw(start_server: Any, fake: FakeOpenAI) -> Running:
    running: Running = await start_server(openai_base_url=fake.base_url, openai_api_key="sk-test")
    return running


def ask(text: str, model: str = "gpt-4o-mini", **fields: Any) -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model=model, system_prompt="Be brief.", prompt=text), **fields
    )


async def test_unary_execution_through_openai(gw: Running, fake: FakeOpenAI) -> None:
    response = await gw.executions.ExecutePrompt(
        ask("hello there world", expand_raw=["system_fingerprint", "id"])
    )
    assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
    assert response.outputs[0].string_value == "hello there world"
    assert response.meta.provider == "openai" and response.meta.model == "gpt-4o-mini"
    assert response.meta.finish_reason == pb.FINISH_REASON_STOP
    sent = fake.last_request
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there world"},
    ]
    usage = sent.response_json["usage"]
    assert response.meta.usage.input_tokens == usage["prompt_tokens"]
    assert response.meta.usage.output_tokens == usage["completion_tokens"]
    expected = (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1_000_000
    assert response.meta.cost.priced and response.meta.cost.value == pytest.approx(expected)
    raw = json_format.MessageToDict(response.raw)
    assert raw["id"] == sent.response_json["id"] and "system_fingerprint" in raw


async def test_render_prompt_payload_is_exactly_what_is_sent(gw: Running, fake: FakeOpenAI) -> None:
    overrides = pb.RawOverrides()
    overrides.body.update({"user": "u-7", "logprobs": False})
    params = pb.ModelParameters(temperature=0.5, max_tokens=64, stop=["END"])
    request = ask("render me", parameters=params, raw_overrides=overrides)
    rendered = await gw.prompts.RenderPrompt(
        ppb.RenderPromptRequest(
            inline_prompt=request.inline_prompt, parameters=params, raw_overrides=overrides
        )
    )
    await gw.executions.ExecutePrompt(request)
    payload = json_format.MessageToDict(rendered.provider_payload)
    sent = fake.last_request.body
    assert _numbers_as_float(payload) == _numbers_as_float(sent)
    assert sent["user"] == "u-7" and sent["stop"] == ["END"]


def _numbers_as_float(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numbers_as_float(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_float(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


async def test_stream_through_openai(gw: Running, fake: FakeOpenAI) -> None:
    events = [e async for e in gw.executions.ExecutePromptStream(ask("one two three four"))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "initiated" and kinds[-1] == "fulfilled"
    text = "".join(e.streaming.delta for e in events if e.WhichOneof("event") == "streaming")
    assert text == "one two three four" == events[-1].fulfilled.outputs[0].string_value
    sent = fake.last_request
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert events[-1].fulfilled.meta.usage.output_tokens == 4


@pytest.mark.parametrize(
    ("model", "code", "status"),
    [
        ("fake-429", "PROVIDER_RATE_LIMITED", 429),
        ("fake-500", "PROVIDER_ERROR", 500),
        ("fake-400", "PROVIDER_INVALID_REQUEST", 400),
        ("fake-malformed", "PROVIDER_BAD_RESPONSE", 200),
    ],
)
async def test_provider_failures_are_rejected_and_recorded(
    gw: Running, model: str, code: str, status: int
) -> None:
    response = await gw.executions.ExecutePrompt(ask("x", model=model))
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert response.error.code == code
    if status != 200:
        assert response.error.provider_status == status
    if status == 429:
        assert response.error.retry_after.seconds == 7
    stored = await gw.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=response.execution_id)
    )
    assert stored.execution.error.code == code


async def test_provider_timeout_within_request_timeout(gw: Running, fake: FakeOpenAI) -> None:
    headers = pb.RawOverrides(headers={"x-fake-delay": "5"})
    response = await gw.executions.ExecutePrompt(
        ask(
            "x",
            model="fake-slow",
            raw_overrides=headers,
            timeout=duration_pb2.Duration(nanos=300_000_000),
        )
    )
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert response.error.code == "EXECUTION_TIMEOUT"
    await asyncio.wait_for(fake.wait_for_disconnect(), 5)


async def test_stream_cut_mid_way_is_rejected(gw: Running) -> None:
    events = [
        e async for e in gw.executions.ExecutePromptStream(ask("a b c d e f", model="fake-cut"))
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "initiated" and kinds[-1] == "rejected" and "streaming" in kinds
    assert events[-1].rejected.error.code == "STREAM_INTERRUPTED"


async def test_client_cancel_reaches_the_upstream(gw: Running, fake: FakeOpenAI) -> None:
    call = gw.executions.ExecutePromptStream(ask("tick", model="fake-endless"))
    first = await call.read()
    delta = await call.read()
    assert delta.WhichOneof("event") == "streaming"
    assert fake.disconnects == 0
    call.cancel()
    await asyncio.wait_for(fake.wait_for_disconnect(), 5)
    assert fake.last_request.disconnected
    for _ in range(100):
        try:
            stored = await gw.executions.GetExecution(
                epb.GetExecutionRequest(execution_id=first.execution_id)
            )
            break
        except Exception:
            await asyncio.sleep(0.05)
    assert stored.execution.error.code == "CANCELLED"
    assert stored.execution.outputs[0].string_value.startswith("tick")


async def test_deadline_cancels_the_upstream_unary_call(gw: Running, fake: FakeOpenAI) -> None:
    headers = pb.RawOverrides(headers={"x-fake-delay": "30"})
    try:
        response = await gw.executions.ExecutePrompt(
            ask("x", model="fake-slow", raw_overrides=headers), timeout=0.5
        )
        assert response.error.code == "EXECUTION_TIMEOUT"
    except Exception as err:  # the answer may lose the race with the deadline
        assert "DEADLINE_EXCEEDED" in str(err)
    await asyncio.wait_for(fake.wait_for_disconnect(), 5)


async def test_external_id_does_not_call_the_provider_again(gw: Running, fake: FakeOpenAI) -> None:
    first = await gw.executions.ExecutePrompt(ask("only once", external_id="job-1"))
    second = await gw.executions.ExecutePrompt(ask("only once", external_id="job-1"))
    events = [
        e async for e in gw.executions.ExecutePromptStream(ask("only once", external_id="job-1"))
    ]
    assert len(fake.requests) == 1
    assert second.replayed and second.execution_id == first.execution_id
    assert events[-1].fulfilled.outputs[0].string_value == "only once"


async def test_tool_calls_round_trip(gw: Running, fake: FakeOpenAI) -> None:
    weather = pb.Tool(name="get_weather", description="Weather for a city")
    weather.parameters.update(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    )
    time_tool = pb.Tool(name="get_time", description="Time in a city")
    first = await gw.executions.ExecutePrompt(
        ask(
            "Weather and time in Paris?",
            model="fake-tools",
            tools=[weather, time_tool],
            tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
        )
    )
    assert first.state == pb.EXECUTION_STATE_FULFILLED, first.error
    calls = [o.function_call for o in first.outputs if o.WhichOneof("value") == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert all(
        c.id and json.loads(c.arguments_json) == json_format.MessageToDict(c.arguments)
        for c in calls
    )
    assert first.meta.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    sent = fake.last_request.body
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tool_choice"] == "required"

    # The tool results go back as chat history on the next call.
    history = pb.ChatHistory(
        messages=[
            pb.ChatMessage(role=pb.MESSAGE_ROLE_USER, content="Weather and time in Paris?"),
            pb.ChatMessage(role=pb.MESSAGE_ROLE_ASSISTANT, function_calls=calls),
            pb.ChatMessage(
                role=pb.MESSAGE_ROLE_TOOL, tool_call_id=calls[0].id, content='{"temp": 21}'
            ),
            pb.ChatMessage(role=pb.MESSAGE_ROLE_TOOL, tool_call_id=calls[1].id, content="14:00"),
        ]
    )
    second = await gw.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            inline_prompt=pb.InlinePrompt(
                model="gpt-4o-mini",
                messages=[pb.PromptTemplateMessage(chat_history_input="history")],
                tools=[weather, time_tool],
                input_variables=[pb.InputVariable(name="history", type=pb.INPUT_TYPE_CHAT_HISTORY)],
            ),
            inputs=[pb.PromptInput(name="history", chat_history=history)],
        )
    )
    assert second.state == pb.EXECUTION_STATE_FULFILLED
    messages = fake.last_request.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == [c.id for c in calls]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert (messages[2]["tool_call_id"], messages[2]["content"]) == (calls[0].id, '{"temp": 21}')


async def test_streamed_tool_calls(gw: Running) -> None:
    weather = pb.Tool(name="get_weather")
    events = [
        e
        async for e in gw.executions.ExecutePromptStream(
            ask("Weather?", model="fake-tools", tools=[weather])
        )
    ]
    final = events[-1].fulfilled
    calls = [o.function_call for o in final.outputs if o.WhichOneof("value") == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments_json) == json_format.MessageToDict(calls[0].arguments)
