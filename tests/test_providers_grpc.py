"""Anthropic and Gemini through the whole server, and routing across providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from tests.conftest import Running
from tests.fake_anthropic import FakeAnthropic
from tests.fake_gemini import FakeGemini


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeAnthropic, FakeGemini]]:
    async with FakeAnthropic(api_key="sk-ant") as anthropic, FakeGemini(api_key="g-key") as gemini:
        yield anthropic, gemini


@pytest.fixture
async def gw(start_server: Any, fakes: tuple[FakeAnthropic, FakeGemini]) -> Running:
    anthropic, gemini = fakes
    running: Running = await start_server(
        anthropic_base_url=anthropic.base_url,
        anthropic_api_key="sk-ant",
        gemini_base_url=gemini.base_url,
        gemini_api_key="g-key",
    )
    return running


def ask(model: str, text: str = "hello from promptgate", **fields: Any) -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model=model, system_prompt="Be brief.", prompt=text), **fields
    )


@pytest.mark.parametrize(
    ("model", "provider"),
    [("claude-3-5-haiku-latest", "anthropic"), ("gemini-2.0-flash", "gemini")],
)
async def test_unary_and_stream_through_each_provider(
    gw: Running, model: str, provider: str
) -> None:
    response = await gw.executions.ExecutePrompt(ask(model))
    assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
    assert response.meta.provider == provider
    assert response.outputs[0].string_value == "hello from promptgate"
    assert response.meta.usage.input_tokens > 0 and response.meta.cost.priced
    events = [e async for e in gw.executions.ExecutePromptStream(ask(model))]
    text = "".join(e.streaming.delta for e in events if e.WhichOneof("event") == "streaming")
    assert text == "hello from promptgate" == events[-1].fulfilled.outputs[0].string_value


async def test_fallback_from_an_overloaded_anthropic_to_gemini(
    gw: Running, fakes: tuple[FakeAnthropic, FakeGemini]
) -> None:
    anthropic, gemini = fakes
    routing = pb.Routing(
        targets=[
            pb.RouteTarget(provider="anthropic", model="fake-529"),
            pb.RouteTarget(provider="gemini", model="gemini-2.0-flash"),
        ],
        retry=pb.RetryPolicy(max_attempts=1),
    )
    response = await gw.executions.ExecutePrompt(ask("mock-1", routing=routing))
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    assert (response.meta.provider, response.meta.target_index, response.meta.attempts) == (
        "gemini",
        1,
        2,
    )
    got = await gw.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=response.execution_id)
    )
    log = got.execution.attempt_log
    assert [(a.provider, a.provider_status) for a in log] == [("anthropic", 529), ("gemini", 0)]
    assert len(anthropic.requests) == 1 and len(gemini.requests) == 1


async def test_providers_are_listed(gw: Running) -> None:
    listed = await apb_grpc.AdminServiceStub(gw.channel).ListModels(apb.ListModelsRequest())
    assert {p.name for p in listed.providers} == {"mock", "anthropic", "gemini"}
    models = {(m.provider, m.model) for m in listed.models}
    assert ("anthropic", "claude-3-5-haiku-latest") in models
    assert ("gemini", "gemini-2.0-flash") in models
