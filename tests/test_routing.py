"""Routing, retries, fallbacks, cooldown, the response cache and ListModels, over real gRPC."""

from __future__ import annotations

import asyncio
import collections
import random
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.chat import ChatMessage, Role
from promptgate.errors import ProviderError
from promptgate.execution.cache import cache_key
from promptgate.execution.router import (
    Candidate,
    CooldownSettings,
    RoutePolicy,
    Router,
    RouteRun,
    TargetHealth,
)
from promptgate.prompts.model import Strategy
from promptgate.providers.base import ProviderRequest
from promptgate.providers.mock import MockProvider
from tests.conftest import Running, error_details

FAST_RETRY = pb.RetryPolicy(max_attempts=2, initial_backoff=duration_pb2.Duration(nanos=1_000_000))


def target(model: str, weight: float = 0, **mock: Any) -> pb.RouteTarget:
    result = pb.RouteTarget(model=model, weight=weight)
    if mock:
        result.parameters.extra.update({"mock": mock})
    return result


def ask(text: str, routing: pb.Routing | None = None, **fields: Any) -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt=text), routing=routing, **fields
    )


async def attempt_log(running: Running, execution_id: str) -> list[pb.ExecutionAttempt]:
    got = await running.executions.GetExecution(epb.GetExecutionRequest(execution_id=execution_id))
    return list(got.execution.attempt_log)


async def test_fallback_after_500s_and_every_attempt_recorded(pg: Running) -> None:
    routing = pb.Routing(
        targets=[target("mock-error-500"), target("mock-backup")], retry=FAST_RETRY
    )
    response = await pg.executions.ExecutePrompt(ask("hello", routing))
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    assert response.meta.model == "mock-backup" and response.meta.target_index == 1
    assert response.meta.attempts == 3
    log = await attempt_log(pg, response.execution_id)
    assert [(a.number, a.model, a.error_code, a.provider_status) for a in log] == [
        (1, "mock-error-500", "PROVIDER_ERROR", 500),
        (2, "mock-error-500", "PROVIDER_ERROR", 500),
        (3, "mock-backup", "", 0),
    ]


async def test_non_retryable_errors_fall_back_without_retrying(pg: Running) -> None:
    routing = pb.Routing(targets=[target("mock-error-400"), target("mock-1")], retry=FAST_RETRY)
    response = await pg.executions.ExecutePrompt(ask("x", routing))
    assert response.meta.attempts == 2 and response.meta.target_index == 1


async def test_all_targets_failing_is_rejected_with_the_last_error(pg: Running) -> None:
    routing = pb.Routing(
        targets=[target("mock-error-500"), target("mock-error-503")], retry=FAST_RETRY
    )
    response = await pg.executions.ExecutePrompt(ask("x", routing))
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert response.error.provider_status == 503
    assert response.meta.attempts == 4


async def test_single_strategy_does_not_fall_back(pg: Running) -> None:
    routing = pb.Routing(
        strategy=pb.Routing.STRATEGY_SINGLE,
        targets=[target("mock-error-500"), target("mock-1")],
        retry=pb.RetryPolicy(max_attempts=1),
    )
    response = await pg.executions.ExecutePrompt(ask("x", routing))
    assert response.state == pb.EXECUTION_STATE_REJECTED and response.meta.attempts == 1


async def test_stream_falls_back_only_before_the_first_delta(pg: Running) -> None:
    before = pb.Routing(targets=[target("mock-error-503"), target("mock-1")], retry=FAST_RETRY)
    events = [e async for e in pg.executions.ExecutePromptStream(ask("a b c", before))]
    assert events[-1].WhichOneof("event") == "fulfilled"
    assert events[-1].fulfilled.meta.target_index == 1
    after = pb.Routing(
        targets=[target("mock-1", chunks=4, cut_after=2), target("mock-backup")], retry=FAST_RETRY
    )
    events = [e async for e in pg.executions.ExecutePromptStream(ask("a b c d e f", after))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["initiated", "streaming", "streaming", "rejected"]
    assert events[-1].rejected.error.code == "STREAM_INTERRUPTED"
    log = await attempt_log(pg, events[0].execution_id)
    assert [a.model for a in log] == ["mock-1"], "no retry or fallback after a delta was sent"


async def test_retry_after_is_honoured(pg: Running) -> None:
    routing = pb.Routing(
        targets=[target("mock-1", error_status=429, retry_after_s=0.3), target("mock-backup")],
        retry=FAST_RETRY,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await pg.executions.ExecutePrompt(ask("x", routing))
    assert loop.time() - started >= 0.3
    assert response.meta.target_index == 1 and response.meta.attempts == 3


async def test_a_retry_after_beyond_the_deadline_moves_on_at_once(pg: Running) -> None:
    routing = pb.Routing(
        targets=[target("mock-1", error_status=429, retry_after_s=30), target("mock-backup")],
        retry=FAST_RETRY,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await pg.executions.ExecutePrompt(
        ask("x", routing, timeout=duration_pb2.Duration(seconds=5))
    )
    assert loop.time() - started < 2
    assert response.meta.target_index == 1 and response.meta.attempts == 2


async def test_attempt_timeout_falls_back(pg: Running) -> None:
    routing = pb.Routing(
        targets=[target("mock-hang"), target("mock-1")],
        retry=pb.RetryPolicy(max_attempts=1),
        attempt_timeout=duration_pb2.Duration(nanos=200_000_000),
    )
    response = await pg.executions.ExecutePrompt(ask("x", routing))
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    log = await attempt_log(pg, response.execution_id)
    assert log[0].error_code == "PROVIDER_TIMEOUT" and log[1].error_code == ""


async def test_a_failing_target_cools_down(start_server: Any) -> None:
    running: Running = await start_server(cooldown_failures=2, cooldown_s=60, retry_max_attempts=1)
    routing = pb.Routing(targets=[target("mock-error-502"), target("mock-1")])
    for _ in range(2):
        response = await running.executions.ExecutePrompt(ask("x", routing))
        assert response.meta.attempts == 2
    cooled = await running.executions.ExecutePrompt(ask("x", routing))
    assert cooled.meta.attempts == 1 and cooled.meta.target_index == 1


async def test_weighted_split_within_tolerance(pg: Running) -> None:
    routing = pb.Routing(
        strategy=pb.Routing.STRATEGY_WEIGHTED,
        targets=[target("mock-a", weight=3), target("mock-b", weight=1)],
    )
    responses = await asyncio.gather(
        *(pg.executions.ExecutePrompt(ask(f"q{i}", routing)) for i in range(400))
    )
    counts = collections.Counter(r.meta.model for r in responses)
    assert counts["mock-a"] + counts["mock-b"] == 400
    assert 0.68 <= counts["mock-a"] / 400 <= 0.82, counts


async def test_version_routing_and_bad_routing(pg: Running) -> None:
    await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="routed"))
    version = ppb.PromptVersion(
        model="mock-1",
        messages=[pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template="hi")],
        routing=pb.Routing(targets=[target("mock-error-500"), target("mock-2")], retry=FAST_RETRY),
    )
    created = await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(
            prompt="routed", version=version, release_tags=["production"]
        )
    )
    assert [t.model for t in created.version.routing.targets] == ["mock-error-500", "mock-2"]
    response = await pg.executions.ExecutePrompt(epb.ExecutePromptRequest(prompt="routed"))
    assert response.meta.model == "mock-2" and response.meta.target_index == 1
    bad = ppb.PromptVersion(
        model="mock-1",
        messages=[pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template="hi")],
        routing=pb.Routing(
            targets=[target("no-such-model"), pb.RouteTarget(model="mock-1", weight=-1)],
            retry=pb.RetryPolicy(max_attempts=99),
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="routed", version=bad)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = error_details(caught.value)
    assert violations is not None
    assert {v.field for v in violations.field_violations} >= {
        "version.routing.targets[0].model",
        "version.routing.targets[1].weight",
        "version.routing.retry.max_attempts",
    }


async def test_router_honours_long_retry_after_without_sleeping() -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    router = Router(TargetHealth(CooldownSettings()), sleep=sleep, rng=random.Random(1))
    request = ProviderRequest(model="mock-1", messages=(ChatMessage(Role.USER, "hi"),))
    failing = Candidate(
        0,
        "mock",
        MockProvider(),
        ProviderRequest(
            model="mock-1",
            messages=request.messages,
            raw_body={"mock": {"error_status": 429, "retry_after_s": 7}},
        ),
    )
    run = RouteRun()
    loop = asyncio.get_running_loop()
    policy = RoutePolicy(
        strategy=Strategy.SINGLE, max_attempts=3, initial_backoff_s=0.5, max_backoff_s=2
    )
    with pytest.raises(ProviderError) as caught:
        await router.complete([failing], policy, loop.time() + 60, run)
    assert caught.value.code == "PROVIDER_RATE_LIMITED"
    assert slept == [7, 7], "Retry-After (7 s) beats the backoff (at most 2 s)"
    assert len(run.attempts) == 3
    # Exponential backoff with jitter, capped, when there is no Retry-After.
    slept.clear()
    plain = Candidate(
        0,
        "mock",
        MockProvider(),
        ProviderRequest(
            model="mock-1", messages=request.messages, raw_body={"mock": {"error_status": 503}}
        ),
    )
    policy = RoutePolicy(
        strategy=Strategy.SINGLE, max_attempts=5, initial_backoff_s=1, max_backoff_s=3
    )
    with pytest.raises(ProviderError):
        await router.complete([plain], policy, loop.time() + 60, RouteRun())
    assert len(slept) == 4
    assert all(0 <= d <= c for d, c in zip(slept, [1, 2, 3, 3], strict=True))


# The response cache


def cached(
    text: str, mode: int = pb.CachePolicy.MODE_ENABLED, ttl: float | None = None
) -> epb.ExecutePromptRequest:
    policy = pb.CachePolicy(mode=mode)  # type: ignore[arg-type]
    if ttl is not None:
        policy.ttl.FromNanoseconds(int(ttl * 1e9))
    return ask(text, cache=policy)


async def test_memory_cache_hit_miss_refresh_and_ttl(pg: Running) -> None:
    first = await pg.executions.ExecutePrompt(cached("same question"))
    assert first.meta.cache_status == pb.CACHE_STATUS_MISS and not first.meta.cache_hit
    second = await pg.executions.ExecutePrompt(cached("same question"))
    assert second.meta.cache_status == pb.CACHE_STATUS_HIT and second.meta.cache_hit
    assert second.execution_id != first.execution_id
    assert second.outputs[0].string_value == first.outputs[0].string_value
    assert second.meta.attempts == 0
    assert second.meta.usage.input_tokens == 0 and second.meta.usage.output_tokens == 0
    assert second.meta.cost.value == 0
    other = await pg.executions.ExecutePrompt(cached("another question"))
    assert other.meta.cache_status == pb.CACHE_STATUS_MISS
    refresh = await pg.executions.ExecutePrompt(
        cached("same question", pb.CachePolicy.MODE_REFRESH)
    )
    assert refresh.meta.cache_status == pb.CACHE_STATUS_REFRESH and refresh.meta.attempts == 1
    off = await pg.executions.ExecutePrompt(ask("same question"))
    assert off.meta.cache_status == pb.CACHE_STATUS_UNSPECIFIED and off.meta.attempts == 1
    stream = [e async for e in pg.executions.ExecutePromptStream(cached("same question"))]
    assert stream[-1].fulfilled.meta.cache_status == pb.CACHE_STATUS_HIT
    text = "".join(e.streaming.delta for e in stream if e.WhichOneof("event") == "streaming")
    assert text == first.outputs[0].string_value
    short = await pg.executions.ExecutePrompt(cached("short lived", ttl=0.2))
    assert short.meta.cache_status == pb.CACHE_STATUS_MISS
    await asyncio.sleep(0.3)
    expired = await pg.executions.ExecutePrompt(cached("short lived", ttl=0.2))
    assert expired.meta.cache_status == pb.CACHE_STATUS_MISS
    listed = await pg.executions.ListExecutions(epb.ListExecutionsRequest(page_size=100))
    hits = [e for e in listed.executions if e.meta.cache_status == pb.CACHE_STATUS_HIT]
    assert len(hits) == 2, "cache hits are recorded as executions"


async def test_rejected_answers_are_not_cached(pg: Running) -> None:
    request = ask(
        "x", cache=pb.CachePolicy(mode=pb.CachePolicy.MODE_ENABLED), model="mock-error-500"
    )
    for _ in range(2):
        response = await pg.executions.ExecutePrompt(request)
        assert response.state == pb.EXECUTION_STATE_REJECTED
        assert response.meta.cache_status == pb.CACHE_STATUS_MISS


async def test_redis_cache_is_shared_by_replicas(start_server: Any) -> None:
    first: Running = await start_server(cache_backend="redis")
    second: Running = await start_server(cache_backend="redis")
    question = f"shared {uuid.uuid4().hex}"
    miss = await first.executions.ExecutePrompt(cached(question))
    assert miss.meta.cache_status == pb.CACHE_STATUS_MISS
    hit = await second.executions.ExecutePrompt(cached(question))
    assert hit.meta.cache_status == pb.CACHE_STATUS_HIT
    assert hit.outputs[0].string_value == miss.outputs[0].string_value


def test_cache_keys_separate_workspaces_and_payloads() -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert cache_key("a", "mock", payload) == cache_key("a", "mock", dict(payload))
    assert cache_key("a", "mock", payload) != cache_key("b", "mock", payload)
    assert cache_key("a", "mock", payload) != cache_key(
        "a", "mock", {**payload, "temperature": 0.1}
    )


async def test_list_models(start_server: Any) -> None:
    running: Running = await start_server(
        openai_api_key="sk-x", openai_models=["gpt-4o-mini", "my-tune"]
    )
    admin = apb_grpc.AdminServiceStub(running.channel)
    listed = await admin.ListModels(apb.ListModelsRequest())
    providers = {p.name: p for p in listed.providers}
    assert set(providers) == {"mock", "openai"}
    assert not providers["openai"].accepts_any_model and providers["openai"].capabilities.tools
    models = {(m.provider, m.model): m for m in listed.models}
    assert models[("openai", "gpt-4o-mini")].price.input_per_million == pytest.approx(0.15)
    assert models[("openai", "gpt-4o-mini")].price.priced
    assert not models[("openai", "my-tune")].price.priced
    assert (
        models[("mock", "mock-1")].price.priced
        and models[("mock", "mock-1")].price.input_per_million == 0
    )
    only = await admin.ListModels(apb.ListModelsRequest(provider="mock"))
    assert [p.name for p in only.providers] == ["mock"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ListModels(apb.ListModelsRequest(provider="nope"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
