"""The azure-openai provider through the whole server, against a local Azure OpenAI-wire server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.observability.logging import settings_secrets
from promptgate.observability.redaction import Redactor
from promptgate.providers.azure_openai import AzureOpenAIProvider, asks_stream_usage
from tests.conftest import Running, error_details, provider_http_client
from tests.fake_azure_openai import FakeAzureOpenAI, call

KEY = "azure-key-0123456789abcdef"
# Deployments on the fake resource: deployment id -> the model (behaviour) it runs.
ON_AZURE = {
    "prod-4o": "gpt-4o",
    "mini": "gpt-4o-mini",
    "tools": "fake-tools",
    "endless": "fake-endless",
    "throttled-once": "fake-429-once",
    "throttled": "fake-429",
    "down": "fake-503",
    "refuses": "fake-content-filter-prompt",
    "cuts": "fake-content-filter-completion",
}
# promptgate's model -> deployment map, as PROMPTGATE_AZURE_OPENAI_DEPLOYMENTS spells it.
DEPLOYMENTS = (
    "gpt-4o=prod-4o, gpt-4o-mini=mini, fake-tools=tools, fake-endless=endless, "
    "fake-429-once=throttled-once, fake-429=throttled, fake-503=down, "
    "fake-content-filter-prompt=refuses, fake-content-filter-completion=cuts, "
    "gpt-4-retired=retired"
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAzureOpenAI]:
    async with FakeAzureOpenAI(api_key=KEY, deployments=ON_AZURE) as server:
        yield server
    assert server.errors == []


@pytest.fixture
async def gw(start_server: Any, fake: FakeAzureOpenAI) -> Running:
    running: Running = await start_server(
        azure_openai_endpoint=fake.endpoint,
        azure_openai_api_key=KEY,
        azure_openai_deployments=DEPLOYMENTS,
    )
    return running


def ask(text: str, model: str = "gpt-4o-mini", **fields: Any) -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(
            provider="azure-openai", model=model, system_prompt="Be brief.", prompt=text
        ),
        **fields,
    )


def streamed_text(events: list[epb.ExecutePromptStreamResponse]) -> str:
    return "".join(e.streaming.delta for e in events if e.WhichOneof("event") == "streaming")


async def attempt_log(gw: Running, execution_id: str) -> list[tuple[str, str, int]]:
    got = await gw.executions.GetExecution(epb.GetExecutionRequest(execution_id=execution_id))
    return [(a.provider, a.error_code, a.provider_status) for a in got.execution.attempt_log]


# ---------------------------------------------------------------------- unary and stream


async def test_unary_call_goes_to_the_deployment_with_the_api_key(
    gw: Running, fake: FakeAzureOpenAI
) -> None:
    # No provider named: a mapped model is inferred to azure-openai.
    request = ask(
        "hello there world",
        raw_overrides=pb.RawOverrides(
            headers={"x-fake-cached-tokens": "2", "api-key": "stolen", "authorization": "Bearer x"}
        ),
        expand_raw=["prompt_filter_results", "id"],
    )
    request.inline_prompt.provider = ""
    response = await gw.executions.ExecutePrompt(request)

    assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
    assert response.outputs[0].string_value == "hello there world"
    assert (response.meta.provider, response.meta.model) == ("azure-openai", "gpt-4o-mini")
    assert response.meta.finish_reason == pb.FINISH_REASON_STOP
    sent = fake.last_request
    assert call(sent) == ("mini", "2024-10-21")
    assert sent.path == "/openai/deployments/mini/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
    assert sent.body["messages"][-1] == {"role": "user", "content": "hello there world"}
    usage = sent.response_json["usage"]
    assert (response.meta.usage.input_tokens, response.meta.usage.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert response.meta.usage.cached_input_tokens == 2
    expected = (usage["prompt_tokens"] - 2) * 0.15 + 2 * 0.075 + usage["completion_tokens"] * 0.6
    assert response.meta.cost.value == pytest.approx(expected / 1_000_000)
    raw = json_format.MessageToDict(response.raw)
    assert raw["id"] == sent.response_json["id"]
    assert raw["prompt_filter_results"][0]["content_filter_results"]["hate"]["severity"] == "safe"
    assert KEY not in str(response)


async def test_render_prompt_payload_is_exactly_what_is_sent(
    gw: Running, fake: FakeAzureOpenAI
) -> None:
    overrides = pb.RawOverrides()
    overrides.body.update({"user": "u-7", "logit_bias": {"50256": -100}})
    params = pb.ModelParameters(temperature=0.5, max_tokens=64)
    request = ask("render me", model="gpt-4o", parameters=params, raw_overrides=overrides)
    rendered = await gw.prompts.RenderPrompt(
        ppb.RenderPromptRequest(
            inline_prompt=request.inline_prompt, parameters=params, raw_overrides=overrides
        )
    )
    await gw.executions.ExecutePrompt(request)
    sent = fake.last_request
    assert call(sent)[0] == "prod-4o"
    payload = json_format.MessageToDict(rendered.provider_payload)
    assert json.dumps(payload, sort_keys=True) == json.dumps(
        json.loads(json.dumps(sent.body), parse_int=float), sort_keys=True
    )
    assert sent.body["model"] == "gpt-4o" and sent.body["user"] == "u-7"
    assert rendered.provider == "azure-openai"


async def test_stream_skips_the_prompt_filter_chunk(gw: Running, fake: FakeAzureOpenAI) -> None:
    events = [
        e
        async for e in gw.executions.ExecutePromptStream(
            ask("one two three four", expand_raw=["prompt_filter_results"])
        )
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "initiated" and kinds[-1] == "fulfilled"
    assert streamed_text(events) == "one two three four"
    final = events[-1].fulfilled
    assert final.outputs[0].string_value == "one two three four"
    sent = fake.last_request
    first = sent.chunks[0]
    assert first["choices"] == [] and first["model"] == "" and "prompt_filter_results" in first
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert final.meta.usage.output_tokens == 4
    raw = json_format.MessageToDict(final.raw)
    assert raw["prompt_filter_results"] == first["prompt_filter_results"]


async def test_older_api_versions_stream_without_stream_options(
    start_server: Any, fake: FakeAzureOpenAI
) -> None:
    gw: Running = await start_server(
        azure_openai_endpoint=fake.endpoint + "/",
        azure_openai_api_key=KEY,
        azure_openai_api_version="2024-06-01",
    )
    # No deployment map: the model's name is the deployment id, and only a
    # request naming azure-openai reaches it.
    events = [e async for e in gw.executions.ExecutePromptStream(ask("a b c", model="mini"))]
    assert events[-1].WhichOneof("event") == "fulfilled", events[-1]
    assert streamed_text(events) == "a b c"
    sent = fake.last_request
    assert call(sent) == ("mini", "2024-06-01") and "stream_options" not in sent.body
    unnamed = ask("x", model="mini")
    unnamed.inline_prompt.provider = ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.executions.ExecutePrompt(unnamed)
    assert error_details(caught.value)[0].reason == "INVALID_MODEL"


# ---------------------------------------------------------------------- tools and JSON


async def test_tool_calls_unary_and_streamed(gw: Running, fake: FakeAzureOpenAI) -> None:
    weather = pb.Tool(name="get_weather", description="Weather for a city")
    weather.parameters.update({"type": "object", "properties": {"city": {"type": "string"}}})
    clock = pb.Tool(name="get_time")
    request = ask(
        "Weather and time in Paris?",
        model="fake-tools",
        tools=[weather, clock],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
    )
    response = await gw.executions.ExecutePrompt(request)
    assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
    calls = [o.function_call for o in response.outputs if o.WhichOneof("value") == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments_json) == {"location": "Paris, France", "unit": "celsius"}
    assert response.meta.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    sent = fake.last_request.body
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tool_choice"] == "required" and call(fake.last_request)[0] == "tools"

    events = [e async for e in gw.executions.ExecutePromptStream(request)]
    final = events[-1].fulfilled
    streamed = [o.function_call for o in final.outputs if o.WhichOneof("value") == "function_call"]
    assert [(c.id, c.name, c.arguments_json) for c in streamed] == [
        (c.id, c.name, c.arguments_json) for c in calls
    ]


async def test_json_schema_output(gw: Running, fake: FakeAzureOpenAI) -> None:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}})
    fmt = pb.ResponseFormat(
        type=pb.ResponseFormat.TYPE_JSON_SCHEMA,
        schema_name="count",
        json_schema=schema,
        strict=True,
    )
    good = await gw.executions.ExecutePrompt(ask('{"n": 3}', response_format=fmt))
    assert good.state == pb.EXECUTION_STATE_FULFILLED, good.error
    assert json_format.MessageToDict(good.outputs[0].json_value) == {"n": 3}
    sent = fake.last_request.body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "count"
    assert sent["json_schema"]["strict"] is True and sent["json_schema"]["schema"]["required"] == [
        "n"
    ]
    bad = await gw.executions.ExecutePrompt(ask('{"n": "three"}', response_format=fmt))
    assert bad.error.code == "SCHEMA_VALIDATION_FAILED"


# ---------------------------------------------------------------------- retries and errors


@pytest.mark.parametrize(
    ("retry_after_ms", "retry_after", "at_least", "below"),
    [("400", "5", 0.4, 4.0), ("none", "1", 1.0, 10.0)],
    ids=["retry-after-ms", "Retry-After"],
)
async def test_429_is_retried_after_the_delay_azure_asks_for(
    gw: Running,
    fake: FakeAzureOpenAI,
    retry_after_ms: str,
    retry_after: str,
    at_least: float,
    below: float,
) -> None:
    routing = pb.Routing(
        targets=[pb.RouteTarget(provider="azure-openai", model="fake-429-once")],
        retry=pb.RetryPolicy(max_attempts=2, initial_backoff=duration_pb2.Duration(nanos=10**7)),
    )
    headers = {"x-fake-retry-after-ms": retry_after_ms, "x-fake-retry-after": retry_after}
    started = time.monotonic()
    response = await gw.executions.ExecutePrompt(
        ask("again please", routing=routing, raw_overrides=pb.RawOverrides(headers=headers))
    )
    took = time.monotonic() - started
    assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
    assert response.meta.attempts == 2 and at_least <= took < below
    assert [r.status for r in fake.requests] == [429, 200]
    assert await attempt_log(gw, response.execution_id) == [
        ("azure-openai", "PROVIDER_RATE_LIMITED", 429),
        ("azure-openai", "", 0),
    ]


@pytest.mark.parametrize(
    ("model", "code", "status"),
    [("fake-429", "PROVIDER_RATE_LIMITED", 429), ("fake-503", "PROVIDER_ERROR", 503)],
)
async def test_provider_failures_are_rejected(
    gw: Running, model: str, code: str, status: int
) -> None:
    response = await gw.executions.ExecutePrompt(ask("x", model=model))
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert (response.error.code, response.error.provider_status) == (code, status)
    if status == 429:  # retry-after-ms (7000) wins over Retry-After (7): both say 7 s
        assert response.error.retry_after.seconds == 7


async def test_a_wrong_key_is_an_auth_failure_that_never_shows_the_key(
    start_server: Any, fake: FakeAzureOpenAI
) -> None:
    wrong = "wrong-key-fedcba9876543210"
    gw: Running = await start_server(
        azure_openai_endpoint=fake.endpoint, azure_openai_api_key=wrong
    )
    response = await gw.executions.ExecutePrompt(ask("x", model="mini"))
    assert (response.error.code, response.error.provider_status) == ("PROVIDER_AUTH_FAILED", 401)
    assert "Access denied" in response.error.message
    assert fake.last_request.headers["api-key"] == wrong
    stored = await gw.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=response.execution_id)
    )
    assert wrong not in str(response) and wrong not in str(stored)


async def test_an_unknown_deployment_is_an_invalid_request_naming_it(gw: Running) -> None:
    response = await gw.executions.ExecutePrompt(ask("x", model="gpt-4-retired"))
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert (response.error.code, response.error.provider_status) == (
        "PROVIDER_INVALID_REQUEST",
        404,
    )
    assert "deployment 'retired' (model 'gpt-4-retired') does not exist" in response.error.message
    assert "api-version 2024-10-21" in response.error.message


async def test_a_model_outside_the_deployment_map_is_refused(gw: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.executions.ExecutePrompt(ask("x", model="gpt-4.1"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(caught.value)[0].reason == "INVALID_MODEL"


# ---------------------------------------------------------------------- content filter


async def test_a_prompt_refused_by_the_content_filter(gw: Running, fake: FakeAzureOpenAI) -> None:
    routing = pb.Routing(
        targets=[pb.RouteTarget(provider="azure-openai", model="fake-content-filter-prompt")],
        retry=pb.RetryPolicy(max_attempts=3),
    )
    response = await gw.executions.ExecutePrompt(ask("something bad", routing=routing))
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert (response.error.code, response.error.provider_status) == (
        "PROVIDER_CONTENT_BLOCKED",
        400,
    )
    assert "refused by Azure OpenAI's content filter (violence: medium)" in response.error.message
    assert len(fake.requests) == 1  # a refusal is not retried

    events = [e async for e in gw.executions.ExecutePromptStream(ask("x", routing=routing))]
    assert events[-1].rejected.error.code == "PROVIDER_CONTENT_BLOCKED"


async def test_a_completion_cut_by_the_content_filter(gw: Running, fake: FakeAzureOpenAI) -> None:
    request = ask("once upon a time in a dark place", model="fake-content-filter-completion")
    response = await gw.executions.ExecutePrompt(request)
    assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
    assert response.meta.finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert response.outputs[0].string_value == "once upon "
    choice = fake.last_request.response_json["choices"][0]
    assert choice["content_filter_results"]["violence"] == {"filtered": True, "severity": "medium"}

    events = [e async for e in gw.executions.ExecutePromptStream(request)]
    assert streamed_text(events) == "once upon "
    assert events[-1].fulfilled.meta.finish_reason == pb.FINISH_REASON_CONTENT_FILTER


# ---------------------------------------------------------------------- cancel, catalogue


async def test_cancelling_a_stream_disconnects_from_azure(
    gw: Running, fake: FakeAzureOpenAI
) -> None:
    stream = gw.executions.ExecutePromptStream(ask("tick", model="fake-endless"))
    await stream.read()  # initiated
    delta = await stream.read()
    assert delta.WhichOneof("event") == "streaming" and fake.disconnects == 0
    stream.cancel()
    await asyncio.wait_for(fake.wait_for_disconnect(), 5)
    assert fake.last_request.disconnected and call(fake.last_request)[0] == "endless"


async def test_models_are_listed_without_the_key(gw: Running, fake: FakeAzureOpenAI) -> None:
    listed = await apb_grpc.AdminServiceStub(gw.channel).ListModels(
        apb.ListModelsRequest(provider="azure-openai")
    )
    (provider,) = listed.providers
    assert (provider.name, provider.base_url, provider.accepts_any_model) == (
        "azure-openai",
        fake.endpoint,
        False,
    )
    models = {m.model: m for m in listed.models}
    assert set(models) == {entry.split("=")[0].strip() for entry in DEPLOYMENTS.split(",")}
    assert models["gpt-4o"].price.input_per_million == 2.5
    assert KEY not in str(listed)


# ---------------------------------------------------------------------- configuration


async def test_the_adapter_refuses_unusable_configuration() -> None:
    async with provider_http_client() as client:
        good = {"client": client, "endpoint": "https://r.openai.azure.com", "api_key": "k"}
        assert AzureOpenAIProvider(**good).deployment_for("gpt-4o") == "gpt-4o"
        for bad in (
            {"endpoint": "r.openai.azure.com"},
            {"endpoint": "https://r.openai.azure.com?x=1"},
            {"api_key": ""},
            {"api_version": ""},
            {"deployments": {"gpt-4o": ".."}},
        ):
            with pytest.raises(ValueError):
                AzureOpenAIProvider(**{**good, **bad})
    assert asks_stream_usage("2024-10-21") and asks_stream_usage("2025-01-01-preview")
    assert not asks_stream_usage("2024-06-01") and not asks_stream_usage("2024-08-01-preview")
    assert asks_stream_usage("latest")


def test_endpoint_and_key_go_together(settings_factory: Any) -> None:
    with pytest.raises(ValueError, match="set together"):
        settings_factory(azure_openai_endpoint="https://r.openai.azure.com")
    with pytest.raises(ValueError, match="MODEL=DEPLOYMENT"):
        settings_factory(
            azure_openai_endpoint="https://r.openai.azure.com",
            azure_openai_api_key="k",
            azure_openai_deployments="gpt-4o",
        )


def test_the_key_is_redacted_from_logs(settings_factory: Any) -> None:
    settings = settings_factory(
        azure_openai_endpoint="https://r.openai.azure.com", azure_openai_api_key=KEY
    )
    redactor = Redactor(settings_secrets(settings))
    assert KEY not in redactor.redact(f"azure-openai said: key {KEY} is not valid")
