"""Prometheus metrics: real gRPC calls, then real HTTP scrapes of /metrics.

Each test scrapes before and after what it does and checks exact deltas, so
tests do not depend on what ran before them on the same server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from promptgate import cli
from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import chain_service_pb2_grpc as cpb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc as epb_grpc
from promptgate.config import Settings
from tests.conftest import Running, authed_channel
from tests.fake_openai import FakeOpenAI
from tests.test_auth import away_from_minute_end, new_key

EXECUTION_SERVICE = "promptgate.v1.ExecutionService"
Labels = frozenset[tuple[str, str]]


class Scrape:
    """One scrape of /metrics: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 when absent)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample named ``name``."""
        return [dict(labels) for (n, labels) in self.samples if n == name]


async def scrape(port: int) -> Scrape:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def eventually(port: int, check: Callable[[Scrape], bool], limit_s: float = 15) -> Scrape:
    """Scrape until ``check`` holds (server-side ends of cancelled calls land a bit later)."""
    deadline = time.monotonic() + limit_s
    while True:
        current = await scrape(port)
        if check(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics did not reach the expected state:\n{current.text}")
        await asyncio.sleep(0.05)


def grpc_labels(
    method: str, kind: str = "unary", service: str = EXECUTION_SERVICE
) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": service, "grpc_method": method}


def demo(**mock: Any) -> epb.ExecutePromptRequest:
    request = epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value="metrics?")]
    )
    if mock:
        request.parameters.extra.update({"mock": mock})
    return request


def inline(model: str = "mock-1", text: str = "hello", **fields: Any) -> epb.ExecutePromptRequest:
    mock = fields.pop("mock", None)
    request = epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model=model, prompt=text), **fields
    )
    if mock:
        request.parameters.extra.update({"mock": mock})
    return request


class Deltas:
    """Differences between two scrapes."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return self.after.value(name, **labels) - self.before.value(name, **labels)


# gRPC server metrics


async def test_unary_calls_are_counted_by_method_and_code(pg: Running) -> None:
    port = pg.server.metrics_port
    before = await scrape(port)
    for _ in range(2):
        await pg.executions.ExecutePrompt(demo())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.GetExecution(epb.GetExecutionRequest(execution_id="exe_missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    async with grpc.aio.insecure_channel(pg.address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await epb_grpc.ExecutionServiceStub(anonymous).ExecutePrompt(demo())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    delta = Deltas(before, await scrape(port))
    execute = grpc_labels("ExecutePrompt")
    assert delta("grpc_server_started_total", **execute) == 3
    assert delta("grpc_server_msg_received_total", **execute) == 3
    assert delta("grpc_server_handled_total", **execute, grpc_code="OK") == 2
    assert delta("grpc_server_handled_total", **execute, grpc_code="Unauthenticated") == 1
    assert delta("grpc_server_msg_sent_total", **execute) == 2
    assert delta("grpc_server_handling_seconds_count", **execute) == 3
    get = grpc_labels("GetExecution")
    assert delta("grpc_server_handled_total", **get, grpc_code="NotFound") == 1
    assert delta("grpc_server_handled_total", **get, grpc_code="OK") == 0
    assert delta("grpc_server_msg_sent_total", **get) == 0


async def test_server_stream_counts_its_messages_and_codes(pg: Running) -> None:
    port = pg.server.metrics_port
    before = await scrape(port)
    events = [e async for e in pg.executions.ExecutePromptStream(demo(chunks=5))]
    assert events[-1].WhichOneof("event") == "fulfilled"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in pg.executions.ExecutePromptStream(
            epb.ExecutePromptRequest(prompt="no-such-prompt")
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    delta = Deltas(before, await scrape(port))
    stream = grpc_labels("ExecutePromptStream", "server_stream")
    assert delta("grpc_server_started_total", **stream) == 2
    assert delta("grpc_server_msg_received_total", **stream) == 2
    assert delta("grpc_server_msg_sent_total", **stream) == len(events)
    assert delta("grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert delta("grpc_server_handled_total", **stream, grpc_code="NotFound") == 1


async def test_calls_the_client_cancels_are_counted_canceled(pg: Running) -> None:
    port = pg.server.metrics_port
    before = await scrape(port)
    stream_labels = grpc_labels("ExecutePromptStream", "server_stream")
    call = pg.executions.ExecutePromptStream(demo(chunks=50, chunk_interval_ms=100))
    received = 0
    async for _ in call:
        received += 1
        if received == 2:
            break
    call.cancel()
    unary_labels = grpc_labels("ExecutePrompt")
    hang = pg.executions.ExecutePrompt(inline("mock-hang"))
    # Cancel only once the server runs the call (else it may never see it).
    await eventually(
        port,
        lambda s: Deltas(before, s)("grpc_server_started_total", **unary_labels) == 1,
    )
    await asyncio.sleep(0.2)  # the execution reaches the provider call
    hang.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hang

    def ended(s: Scrape) -> bool:
        delta = Deltas(before, s)
        return (
            delta("grpc_server_handled_total", **stream_labels, grpc_code="Canceled") == 1
            and delta("grpc_server_handled_total", **unary_labels, grpc_code="Canceled") == 1
        )

    delta = Deltas(before, await eventually(port, ended))
    assert delta("grpc_server_handled_total", **stream_labels, grpc_code="OK") == 0
    assert delta("grpc_server_msg_sent_total", **stream_labels) >= 2
    assert delta("grpc_server_handled_total", **unary_labels, grpc_code="OK") == 0
    assert delta("grpc_server_msg_sent_total", **unary_labels) == 0
    # Both executions end REJECTED (CANCELLED); the hanging provider call counts too.
    rejected = {"state": "REJECTED", "error_code": "CANCELLED"}
    assert delta("promptgate_executions_total", **rejected) == 2
    hung = {"provider": "mock", "model": "other", "outcome": "CANCELLED"}
    assert delta("promptgate_provider_requests_total", **hung) == 1


async def test_calls_refused_while_draining_are_counted_unavailable(pg: Running) -> None:
    port = pg.server.metrics_port
    [e async for e in pg.executions.ExecutePromptStream(demo())]  # its series are bound
    before = await scrape(port)
    pg.server.draining = True  # what stop() sets: new calls are refused
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in pg.executions.ExecutePromptStream(demo()):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pg.executions.ExecutePrompt(demo())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        pg.server.draining = False
    delta = Deltas(before, await scrape(port))
    stream = grpc_labels("ExecutePromptStream", "server_stream")
    assert delta("grpc_server_handled_total", **stream, grpc_code="Unavailable") == 1
    unary = grpc_labels("ExecutePrompt")
    assert delta("grpc_server_handled_total", **unary, grpc_code="Unavailable") == 1


async def test_a_passed_deadline_and_context_writes_are_counted(pg: Running) -> None:
    """Health Watch sends with context.write; its deadline ends it server-side."""
    port = pg.server.metrics_port
    before = await scrape(port)
    watch = health_pb2_grpc.HealthStub(pg.channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=1.0
    )
    statuses = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for reply in watch:
            statuses.append(reply.status)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert statuses == [health_pb2.HealthCheckResponse.SERVING]
    labels = grpc_labels("Watch", "server_stream", "grpc.health.v1.Health")
    after = await eventually(
        port,
        lambda s: (
            Deltas(before, s)("grpc_server_handled_total", **labels, grpc_code="DeadlineExceeded")
            == 1
        ),
    )
    delta = Deltas(before, after)
    assert delta("grpc_server_msg_sent_total", **labels) == 1
    assert delta("grpc_server_started_total", **labels) == 1


# Providers, tokens, cost, cache


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        yield server


async def test_provider_tokens_and_cost_of_a_priced_model(
    start_server: Any, fake: FakeOpenAI
) -> None:
    gw: Running = await start_server(openai_base_url=fake.base_url, openai_api_key="sk-test")
    port = gw.server.metrics_port
    model = {"provider": "openai", "model": "gpt-4o-mini"}
    before = await scrape(port)
    overrides = pb.RawOverrides(headers={"x-fake-cached-tokens": "2"})
    answer = await gw.executions.ExecutePrompt(
        inline("gpt-4o-mini", "one two three four five", raw_overrides=overrides)
    )
    assert answer.state == pb.EXECUTION_STATE_FULFILLED, answer.error
    usage = fake.last_request.response_json["usage"]
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    assert prompt > 2 and completion > 0
    cost = ((prompt - 2) * 0.15 + 2 * 0.075 + completion * 0.60) / 1_000_000
    assert answer.meta.cost.value == pytest.approx(cost)
    middle = await scrape(port)
    delta = Deltas(before, middle)
    assert delta("promptgate_tokens_total", **model, kind="input") == prompt
    assert delta("promptgate_tokens_total", **model, kind="output") == completion
    assert delta("promptgate_tokens_total", **model, kind="cached_input") == 2
    assert delta("promptgate_cost_usd_total", **model) == pytest.approx(cost)
    assert delta("promptgate_provider_requests_total", **model, outcome="OK") == 1
    assert delta("promptgate_provider_request_seconds_count", **model) == 1
    assert delta("promptgate_time_to_first_token_seconds_count", **model) == 0

    failed = await gw.executions.ExecutePrompt(inline("fake-500"))
    assert failed.error.code == "PROVIDER_ERROR"
    events = [e async for e in gw.executions.ExecutePromptStream(inline("gpt-4o-mini", "a b c"))]
    streamed = events[-1].fulfilled.meta
    assert streamed.usage.output_tokens > 0
    delta = Deltas(middle, await scrape(port))
    assert delta("promptgate_provider_requests_total", **model, outcome="OK") == 1
    assert delta("promptgate_time_to_first_token_seconds_count", **model) == 1
    assert delta("promptgate_tokens_total", **model, kind="input") == streamed.usage.input_tokens
    assert delta("promptgate_tokens_total", **model, kind="output") == streamed.usage.output_tokens
    assert delta("promptgate_cost_usd_total", **model) == pytest.approx(streamed.cost.value)
    # An unknown model (any caller-chosen string) is "other"; its failure has its code.
    unknown = {"provider": "openai", "model": "other"}
    assert delta("promptgate_provider_requests_total", **unknown, outcome="PROVIDER_ERROR") == 1
    assert delta("promptgate_executions_total", state="REJECTED", error_code="PROVIDER_ERROR") == 1
    assert delta("promptgate_executions_total", state="FULFILLED", error_code="") == 1


async def test_mock_executions_count_their_tokens(pg: Running) -> None:
    port = pg.server.metrics_port
    before = await scrape(port)
    for _ in range(3):
        answer = await pg.executions.ExecutePrompt(demo(input_tokens=12, output_tokens=7))
        assert answer.meta.usage.input_tokens == 12 and answer.meta.usage.output_tokens == 7
    delta = Deltas(before, await scrape(port))
    model = {"provider": "mock", "model": "mock-1"}
    assert delta("promptgate_tokens_total", **model, kind="input") == 36
    assert delta("promptgate_tokens_total", **model, kind="output") == 21
    assert delta("promptgate_provider_requests_total", **model, outcome="OK") == 3
    assert delta("promptgate_cost_usd_total", **model) == 0  # the mock is free


async def test_cache_hits_misses_and_refreshes(pg: Running) -> None:
    port = pg.server.metrics_port
    before = await scrape(port)
    enabled = pb.CachePolicy(mode=pb.CachePolicy.MODE_ENABLED)
    first = await pg.executions.ExecutePrompt(inline(text="cache me", cache=enabled))
    second = await pg.executions.ExecutePrompt(inline(text="cache me", cache=enabled))
    assert (first.meta.cache_status, second.meta.cache_status) == (
        pb.CACHE_STATUS_MISS,
        pb.CACHE_STATUS_HIT,
    )
    refresh = pb.CachePolicy(mode=pb.CachePolicy.MODE_REFRESH)
    await pg.executions.ExecutePrompt(inline(text="cache me", cache=refresh))
    await pg.executions.ExecutePrompt(inline(text="cache me"))  # cache off: not a lookup
    delta = Deltas(before, await scrape(port))
    assert delta("promptgate_cache_requests_total", result="miss") == 1
    assert delta("promptgate_cache_requests_total", result="hit") == 1
    assert delta("promptgate_cache_requests_total", result="refresh") == 1
    # The hit called no provider.
    mock = {"provider": "mock", "model": "mock-1", "outcome": "OK"}
    assert delta("promptgate_provider_requests_total", **mock) == 3


# Limits, recorder, batches, chains


async def test_rate_limit_rejections_by_reason(pg: Running) -> None:
    port = pg.server.metrics_port
    per_minute = await new_key(pg, ["prompt.execute"], requests_per_minute=1)
    one_at_a_time = await new_key(pg, ["prompt.execute"], concurrent_executions=1)
    await away_from_minute_end()
    before = await scrape(port)
    async with authed_channel(pg.address, per_minute) as channel:
        stub = epb_grpc.ExecutionServiceStub(channel)
        await stub.ExecutePrompt(demo())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExecutePrompt(demo())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with authed_channel(pg.address, one_at_a_time) as channel:
        stub = epb_grpc.ExecutionServiceStub(channel)
        slow = stub.ExecutePromptStream(demo(chunks=40, chunk_interval_ms=50))
        await anext(aiter(slow))  # running: it holds the key's one slot
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExecutePrompt(demo())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        slow.cancel()
    delta = Deltas(before, await scrape(port))
    reasons = "promptgate_ratelimit_rejections_total"
    assert delta(reasons, reason="RATE_LIMIT_EXCEEDED") == 1
    assert delta(reasons, reason="CONCURRENT_LIMIT_EXCEEDED") == 1
    assert delta(reasons, reason="QUOTA_EXCEEDED") == 0
    execute = grpc_labels("ExecutePrompt")
    assert delta("grpc_server_handled_total", **execute, grpc_code="ResourceExhausted") == 2


async def test_recorder_metrics(pg: Running) -> None:
    port = pg.server.metrics_port
    before = await scrape(port)
    assert ("promptgate_recorder_queue_depth", frozenset()) in before.samples
    assert ("promptgate_recorder_retrying", frozenset()) in before.samples
    await asyncio.gather(*(pg.executions.ExecutePrompt(demo()) for _ in range(5)))
    after = await scrape(port)
    delta = Deltas(before, after)
    assert delta("promptgate_recorder_records_total", result="written") == 5
    assert delta("promptgate_recorder_records_total", result="lost") == 0
    assert 1 <= delta("promptgate_recorder_commit_seconds_count") <= 5
    assert delta("promptgate_recorder_commit_seconds_sum") > 0
    assert after.value("promptgate_recorder_queue_depth") == 0  # every answer waited for its commit
    assert after.value("promptgate_recorder_retrying") == 0


async def test_recorder_queue_depth_shows_a_stalled_writer(pg: Running) -> None:
    port = pg.server.metrics_port
    calls: list[asyncio.Future[Any]] = []
    async with pg.server.sessions.write_turn():  # the writer waits for its turn
        # The first group is taken and stalls; every call after it waits in the queue.
        for _ in range(40):
            calls.append(asyncio.ensure_future(pg.executions.ExecutePrompt(demo())))
            await asyncio.sleep(0.1)
            if (await scrape(port)).value("promptgate_recorder_queue_depth") >= 1:
                break
        else:
            raise AssertionError("the queue depth never showed the waiting records")
        assert not any(call.done() for call in calls)  # unanswered until committed
    await asyncio.gather(*calls)
    await eventually(port, lambda s: s.value("promptgate_recorder_queue_depth") == 0)


async def test_batch_items_and_batches(pg: Running) -> None:
    port = pg.server.metrics_port
    before = await scrape(port)
    items = [
        epb.BatchItem(
            custom_id=f"item-{i}",
            inputs=[pb.PromptInput(name="question", string_value=f"question {i}")],
        )
        for i in range(3)
    ]
    items[2].parameters.extra.update({"mock": {"error_status": 400}})
    created = await pg.executions.ExecuteBatch(epb.ExecuteBatchRequest(prompt="demo", items=items))

    def done(s: Scrape) -> bool:
        return Deltas(before, s)("promptgate_batches_total", state="SUCCEEDED") == 1

    after = await eventually(port, done, limit_s=60)
    batch = await pg.executions.GetBatch(epb.GetBatchRequest(batch_id=created.batch.id))
    assert batch.batch.state == epb.BATCH_STATE_SUCCEEDED
    delta = Deltas(before, after)
    assert delta("promptgate_batch_items_total", state="FULFILLED") == 2
    assert delta("promptgate_batch_items_total", state="REJECTED") == 1
    assert delta("promptgate_batch_items_total", state="CANCELLED") == 0
    await eventually(port, lambda s: s.value("promptgate_batch_items_running") == 0)


async def test_chain_executions(pg: Running) -> None:
    port = pg.server.metrics_port
    before = await scrape(port)
    steps = [
        cpb.ChainStep(
            name="first",
            inline_prompt=pb.InlinePrompt(model="mock-1", prompt="Say {{ word }}"),
            output_variable="said",
        ),
        cpb.ChainStep(
            name="second",
            inline_prompt=pb.InlinePrompt(model="mock-1", prompt="Repeat {{ said }}"),
            output_variable="repeated",
        ),
    ]
    chains = cpb_grpc.ChainServiceStub(pg.channel)
    response = await chains.ExecuteChain(
        cpb.ExecuteChainRequest(
            inline_chain=cpb.InlineChain(steps=steps),
            inputs=[pb.PromptInput(name="word", string_value="otter")],
        )
    )
    assert response.chain_execution.state == pb.EXECUTION_STATE_FULFILLED
    failing = list(steps)
    failing[1] = cpb.ChainStep(
        name="second",
        inline_prompt=pb.InlinePrompt(model="mock-error-503", prompt="Repeat {{ said }}"),
        output_variable="repeated",
    )
    response = await chains.ExecuteChain(
        cpb.ExecuteChainRequest(
            inline_chain=cpb.InlineChain(steps=failing),
            inputs=[pb.PromptInput(name="word", string_value="otter")],
        )
    )
    assert response.chain_execution.state == pb.EXECUTION_STATE_REJECTED
    delta = Deltas(before, await scrape(port))
    chain = "promptgate_chain_executions_total"
    assert delta(chain, state="FULFILLED", error_code="") == 1
    assert delta(chain, state="REJECTED", error_code="PROVIDER_ERROR") == 1
    assert delta("promptgate_chain_execution_seconds_count") == 2
    # Each step is an execution too.
    assert delta("promptgate_executions_total", state="FULFILLED", error_code="") == 3
    assert delta("promptgate_executions_total", state="REJECTED", error_code="PROVIDER_ERROR") == 1


# Cardinality, settings


async def test_caller_chosen_model_names_do_not_grow_the_series(start_server: Any) -> None:
    running: Running = await start_server(record_executions=False)
    port = running.server.metrics_port
    await running.executions.ExecutePrompt(inline("mock-caller-first"))  # the "other" series
    before = await scrape(port)
    gate = asyncio.Semaphore(32)

    async def run(index: int) -> None:
        async with gate:
            answer = await running.executions.ExecutePrompt(inline(f"mock-caller-{index}"))
            assert answer.state == pb.EXECUTION_STATE_FULFILLED

    await asyncio.gather(*(run(i) for i in range(1000)))
    after = await scrape(port)
    delta = Deltas(before, after)
    other = {"provider": "mock", "model": "other"}
    assert delta("promptgate_provider_requests_total", **other, outcome="OK") == 1000
    assert delta("promptgate_tokens_total", **other, kind="input") > 0
    models = {
        labels["model"]
        for (name, labels_set) in after.samples
        for labels in [dict(labels_set)]
        if name.startswith("promptgate_") and "model" in labels
    }
    assert models <= {"mock-1", "other"}, models
    # The same series as after the first unknown model: none per model.
    assert sorted(after.samples) == sorted(before.samples)
    assert "mock-caller" not in after.text


async def test_metrics_are_off_unless_asked_for(start_server: Any) -> None:
    off: Running = await start_server(dev=False)
    assert off.server.metrics is None and off.server.http_server is None
    reply = await health_pb2_grpc.HealthStub(off.channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert Settings(dev=False).metrics_listen_port is None
    assert Settings(dev=True).metrics_listen_port == 0
    assert Settings(dev=False, metrics_port=9464).metrics_listen_port == 9464
    assert Settings(dev=False, metrics_port="").metrics_listen_port is None  # empty variable
    with pytest.raises(ValidationError):
        Settings(port=9464, metrics_port=9464)
    on: Running = await start_server(dev=False, metrics_port=0)
    assert on.server.metrics_port > 0
    assert (await scrape(on.server.metrics_port)).series("grpc_server_started_total") == []


def test_the_cli_flag_sets_the_metrics_port() -> None:
    args = cli._parser().parse_args(["serve", "--metrics-port", "9464"])
    assert args.metrics_port == 9464
