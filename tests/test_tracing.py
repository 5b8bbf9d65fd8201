"""Tracing: a server span per RPC continuing the caller's traceparent, child spans for
render, provider attempts (GenAI attributes) and the record write, the trace id on
the execution; nothing at all with tracing off.

Spans are collected with the SDK's InMemorySpanExporter on a provider handed to
the server (so no process-wide OpenTelemetry state is touched).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import chain_service_pb2_grpc as cpb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc, prompt_service_pb2_grpc
from promptgate.config import Settings
from promptgate.observability import tracing
from promptgate.server import PromptgateServer
from tests.conftest import Running, authed_channel
from tests.live import start_live_server
from tests.test_batches import wait_done

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced_server(
    settings_factory: Callable[..., Settings], exporter: InMemorySpanExporter
) -> AsyncIterator[Callable[..., Any]]:
    """Start servers that trace into ``exporter``; stopped (and tracing off) after the test."""
    started: list[Running] = []
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def start(**overrides: Any) -> Running:
        server = PromptgateServer(settings_factory(**overrides), tracer_provider=provider)
        port = await server.start()
        address = f"127.0.0.1:{port}"
        channel = authed_channel(address, server.dev_key or "")
        running = Running(
            server=server,
            address=address,
            channel=channel,
            executions=execution_service_pb2_grpc.ExecutionServiceStub(channel),
            prompts=prompt_service_pb2_grpc.PromptServiceStub(channel),
            key=server.dev_key or "",
        )
        started.append(running)
        return running

    yield start
    for running in started:
        await running.channel.close()
        await running.server.stop(grace=0)
    assert not tracing.enabled()


def _demo(question: str = "What is tracing?") -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value=question)]
    )


def _hex(value: int, digits: int = 32) -> str:
    return format(value, f"0{digits}x")


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = _named(spans, name)
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def _parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


async def _until(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Wait (generously) for ``condition``: spans are exported as they end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_server_span_continues_the_callers_trace_with_children(
    traced_server: Any, exporter: InMemorySpanExporter
) -> None:
    running: Running = await traced_server()
    response = await running.executions.ExecutePrompt(
        _demo(), metadata=(("traceparent", TRACEPARENT),)
    )
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    spans = list(exporter.get_finished_spans())

    server = _one(spans, "promptgate.v1.ExecutionService/ExecutePrompt")
    assert server.kind is SpanKind.SERVER
    assert _hex(server.context.trace_id) == TRACE_ID
    assert _hex(_parent_of(server), 16) == PARENT_SPAN_ID
    assert server.parent is not None and server.parent.is_remote
    attributes = dict(server.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "promptgate.v1.ExecutionService"
    assert attributes["rpc.method"] == "ExecutePrompt"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["promptgate.workspace"] == "default"
    assert server.status.status_code is StatusCode.UNSET

    execution = _one(spans, "promptgate.execution")
    assert _parent_of(execution) == server.context.span_id
    assert execution.attributes is not None
    assert execution.attributes["promptgate.execution.id"] == response.execution_id
    assert execution.attributes["promptgate.execution.state"] == "FULFILLED"
    for name in ("promptgate.render", "chat mock-1", "promptgate.record"):
        child = _one(spans, name)
        assert _parent_of(child) == execution.context.span_id, name
        assert child.context.trace_id == server.context.trace_id

    attempt = _one(spans, "chat mock-1")
    assert attempt.kind is SpanKind.CLIENT
    genai = dict(attempt.attributes or {})
    assert genai["gen_ai.operation.name"] == "chat"
    assert genai["gen_ai.system"] == "mock"
    assert genai["gen_ai.provider.name"] == "mock"
    assert genai["gen_ai.request.model"] == "mock-1"
    assert genai["gen_ai.response.model"] == response.meta.model
    assert genai["gen_ai.response.finish_reasons"] == ("stop",)
    usage = response.meta.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert genai["gen_ai.usage.input_tokens"] == usage.input_tokens
    assert genai["gen_ai.usage.output_tokens"] == usage.output_tokens
    assert genai["promptgate.attempt"] == 1
    # No prompt or response content in any span.
    for span in spans:
        for value in (span.attributes or {}).values():
            assert "tracing" not in str(value).lower(), (span.name, value)
            assert response.outputs[0].string_value not in str(value)

    # The record write: the wait for this execution's group commit, linked to it.
    record = _one(spans, "promptgate.record")
    commit = _one(spans, "promptgate.recorder.commit")
    assert commit.parent is None
    assert [link.context.span_id for link in commit.links] == [record.context.span_id]
    assert [link.context.span_id for link in record.links] == [commit.context.span_id]
    assert (record.attributes or {})["promptgate.recorder.group_size"] == 1


async def test_trace_id_is_stored_and_shown_by_get_execution(
    traced_server: Any, exporter: InMemorySpanExporter
) -> None:
    running: Running = await traced_server()
    continued = await running.executions.ExecutePrompt(
        _demo(), metadata=(("traceparent", TRACEPARENT),)
    )
    fresh = await running.executions.ExecutePrompt(_demo("no traceparent"))
    got = await running.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=continued.execution_id)
    )
    assert got.execution.trace_id == TRACE_ID
    other = await running.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=fresh.execution_id)
    )
    spans = _named(
        list(exporter.get_finished_spans()), "promptgate.v1.ExecutionService/ExecutePrompt"
    )
    started_here = [s for s in spans if s.parent is None]
    assert len(started_here) == 1  # the call without a traceparent starts a trace
    assert other.execution.trace_id == _hex(started_here[0].context.trace_id) != TRACE_ID


async def test_a_retried_and_fallen_back_call_has_an_attempt_span_per_call(
    traced_server: Any, exporter: InMemorySpanExporter
) -> None:
    running: Running = await traced_server()
    request = epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt="Say hi"),
        routing=pb.Routing(
            strategy=pb.Routing.STRATEGY_FALLBACK,
            targets=[
                pb.RouteTarget(provider="mock", model="mock-error-503"),
                pb.RouteTarget(
                    provider="mock", model="mock-1", parameters=pb.ModelParameters(temperature=0.5)
                ),
            ],
            retry=pb.RetryPolicy(max_attempts=2),
        ),
    )
    request.routing.retry.initial_backoff.FromMilliseconds(1)
    request.routing.retry.max_backoff.FromMilliseconds(1)
    response = await running.executions.ExecutePrompt(request)
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    assert response.meta.attempts == 3
    spans = list(exporter.get_finished_spans())
    execution = _one(spans, "promptgate.execution")
    failed = _named(spans, "chat mock-error-503")
    assert len(failed) == 2
    for number, span in enumerate(sorted(failed, key=lambda s: s.start_time or 0), start=1):
        attributes = dict(span.attributes or {})
        assert attributes["promptgate.attempt"] == number
        assert attributes["error.type"] == "PROVIDER_ERROR"
        assert attributes["http.response.status_code"] == 503
        assert span.status.status_code is StatusCode.ERROR
        assert _parent_of(span) == execution.context.span_id
    served = _one(spans, "chat mock-1")
    attributes = dict(served.attributes or {})
    assert attributes["promptgate.attempt"] == 3
    assert attributes["promptgate.target_index"] == 1
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert "error.type" not in attributes
    assert attributes["gen_ai.usage.output_tokens"] == response.meta.usage.output_tokens


async def test_a_rejected_execution_marks_its_span(
    traced_server: Any, exporter: InMemorySpanExporter
) -> None:
    running: Running = await traced_server()
    response = await running.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            inline_prompt=pb.InlinePrompt(model="mock-error-429", prompt="Say hi")
        )
    )
    assert response.state == pb.EXECUTION_STATE_REJECTED
    execution = _one(list(exporter.get_finished_spans()), "promptgate.execution")
    assert execution.status.status_code is StatusCode.ERROR
    assert (execution.attributes or {})["error.type"] == response.error.code


async def test_a_streaming_calls_span_ends_when_the_stream_does(
    traced_server: Any, exporter: InMemorySpanExporter
) -> None:
    running: Running = await traced_server()
    name = "promptgate.v1.ExecutionService/ExecutePromptStream"
    slow = struct_pb2.Struct()
    slow.update({"mock": {"chunks": 4, "chunk_interval_ms": 50}})
    request = epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt="Stream to me"),
        raw_overrides=pb.RawOverrides(body=slow),
    )
    call = running.executions.ExecutePromptStream(request)
    events = [await anext(aiter(call))]
    assert events[0].HasField("initiated")
    assert not _named(list(exporter.get_finished_spans()), name)  # still open
    async for event in call:
        events.append(event)
    assert events[-1].HasField("fulfilled")
    await _until(lambda: bool(_named(list(exporter.get_finished_spans()), name)))
    spans = list(exporter.get_finished_spans())
    server = _one(spans, name)
    execution = _one(spans, "promptgate.execution")
    attempt = _one(spans, "chat mock-1")
    assert _parent_of(execution) == server.context.span_id
    assert _parent_of(attempt) == execution.context.span_id
    assert _parent_of(_one(spans, "promptgate.record")) == execution.context.span_id
    assert (server.attributes or {})["rpc.grpc.status_code"] == 0
    assert (server.end_time or 0) >= (execution.end_time or 0) >= (attempt.end_time or 0)
    usage = events[-1].fulfilled.meta.usage
    assert usage.output_tokens > 0
    assert (attempt.attributes or {})["gen_ai.usage.output_tokens"] == usage.output_tokens

    # A stream the client cancels ends its span, CANCELLED.
    exporter.clear()
    slow.update({"mock": {"chunks": 1000, "chunk_interval_ms": 50}})
    request.raw_overrides.body.CopyFrom(slow)
    call = running.executions.ExecutePromptStream(request)
    async for event in call:
        if event.HasField("streaming"):
            break
    call.cancel()
    await _until(lambda: bool(_named(list(exporter.get_finished_spans()), name)))
    server = _one(list(exporter.get_finished_spans()), name)
    assert (server.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    await _until(lambda: bool(_named(list(exporter.get_finished_spans()), "chat mock-1")))
    attempt = _one(list(exporter.get_finished_spans()), "chat mock-1")
    assert (attempt.attributes or {})["error.type"] == "CANCELLED"


async def test_errors_set_the_status_code_and_server_errors_the_span_status(
    traced_server: Any, exporter: InMemorySpanExporter
) -> None:
    running: Running = await traced_server()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.executions.GetExecution(epb.GetExecutionRequest(execution_id="exe_nope"))
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    bare = grpc.aio.insecure_channel(running.address)
    try:
        stub = execution_service_pb2_grpc.ExecutionServiceStub(bare)
        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await stub.ExecutePrompt(_demo())
        assert unauthenticated.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        await bare.close()
    spans = list(exporter.get_finished_spans())
    got = _one(spans, "promptgate.v1.ExecutionService/GetExecution")
    assert (got.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert got.status.status_code is StatusCode.UNSET  # a client error, not the server's
    refused_call = _one(spans, "promptgate.v1.ExecutionService/ExecutePrompt")
    assert (refused_call.attributes or {})["rpc.grpc.status_code"] == (
        grpc.StatusCode.UNAUTHENTICATED.value[0]
    )
    assert not _named(spans, "promptgate.execution")


async def test_chain_steps_and_render_prompt_are_traced(
    traced_server: Any, exporter: InMemorySpanExporter
) -> None:
    running: Running = await traced_server()
    chains = cpb_grpc.ChainServiceStub(running.channel)
    prompt = pb.InlinePrompt(model="mock-1", prompt="Say {{ word }}")
    response = await chains.ExecuteChain(
        cpb.ExecuteChainRequest(
            inline_chain=cpb.InlineChain(
                steps=[
                    cpb.ChainStep(name="first", inline_prompt=prompt, output_variable="said"),
                    cpb.ChainStep(
                        name="second",
                        inline_prompt=pb.InlinePrompt(model="mock-1", prompt="Echo {{ said }}"),
                        output_variable="echoed",
                    ),
                ]
            ),
            inputs=[pb.PromptInput(name="word", string_value="hi")],
        ),
        metadata=(("traceparent", TRACEPARENT),),
    )
    assert response.chain_execution.state == pb.EXECUTION_STATE_FULFILLED
    spans = list(exporter.get_finished_spans())
    server = _one(spans, "promptgate.v1.ChainService/ExecuteChain")
    chain = _one(spans, "promptgate.chain")
    assert _parent_of(chain) == server.context.span_id
    steps = sorted(_named(spans, "promptgate.chain.step"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["promptgate.chain.step"] for s in steps] == ["first", "second"]
    executions = _named(spans, "promptgate.execution")
    assert len(executions) == 2
    for step in steps:
        assert _parent_of(step) == chain.context.span_id
        (child,) = [e for e in executions if _parent_of(e) == step.context.span_id]
        assert (child.attributes or {})["promptgate.chain.step"] == (step.attributes or {})[
            "promptgate.chain.step"
        ]
    assert all(_hex(s.context.trace_id) == TRACE_ID for s in spans if s.parent is not None)


async def test_batch_items_are_traces_of_their_own(
    traced_server: Any, exporter: InMemorySpanExporter
) -> None:
    running: Running = await traced_server()
    created = await running.executions.ExecuteBatch(
        epb.ExecuteBatchRequest(
            prompt="demo",
            items=[
                epb.BatchItem(
                    custom_id=name, inputs=[pb.PromptInput(name="question", string_value=name)]
                )
                for name in ("a", "b")
            ],
        )
    )
    batch = await wait_done(running, created.batch.id)
    assert batch.state == epb.BATCH_STATE_SUCCEEDED
    results = await running.executions.ListBatchResults(
        epb.ListBatchResultsRequest(batch_id=created.batch.id)
    )
    await _until(
        lambda: len(_named(list(exporter.get_finished_spans()), "promptgate.batch.item")) == 2
    )
    spans = list(exporter.get_finished_spans())
    items = {
        (s.attributes or {})["promptgate.batch.custom_id"]: s
        for s in _named(spans, "promptgate.batch.item")
    }
    assert set(items) == {"a", "b"}
    assert all(s.parent is None for s in items.values())
    assert items["a"].context.trace_id != items["b"].context.trace_id
    for result in results.results:
        item = items[result.custom_id]
        (execution,) = [
            s
            for s in _named(spans, "promptgate.execution")
            if s.parent is not None and s.parent.span_id == item.context.span_id
        ]
        assert (execution.attributes or {})["promptgate.execution.id"] == result.execution_id
        got = await running.executions.GetExecution(
            epb.GetExecutionRequest(execution_id=result.execution_id)
        )
        assert got.execution.trace_id == _hex(item.context.trace_id)


def _without_otel(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment with no OTEL_* variable (also applied to this process)."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


async def test_tracing_off_records_nothing_and_costs_no_sdk(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_otel(monkeypatch)
    running: Running = await start_server()
    assert not tracing.enabled()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert tracing.start("anything") is trace.INVALID_SPAN
    with tracing.span("anything") as span:
        assert span is trace.INVALID_SPAN
    # The caller's traceparent still names the trace the execution ran in.
    continued = await running.executions.ExecutePrompt(
        _demo(), metadata=(("traceparent", TRACEPARENT),)
    )
    fresh = await running.executions.ExecutePrompt(_demo())
    for response, expected in ((continued, TRACE_ID), (fresh, "")):
        got = await running.executions.GetExecution(
            epb.GetExecutionRequest(execution_id=response.execution_id)
        )
        assert got.execution.trace_id == expected


def test_without_otel_settings_the_sdk_is_never_imported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "from promptgate.observability import tracing\n"
        "import promptgate.server\n"
        "assert tracing.activate() is None and not tracing.enabled()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk'))\n"
        "assert not loaded, loaded\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=_without_otel(monkeypatch),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0 and result.stdout.strip() == "clean", result.stderr


def test_the_environment_decides_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    def exporters(provider: Any) -> list[Any]:
        processors = provider._active_span_processor._span_processors
        assert all(isinstance(p, BatchSpanProcessor) for p in processors)
        return [type(p._batch_processor._exporter) for p in processors]

    assert tracing.configure_from_env({}) is None
    assert tracing.configure_from_env({"OTEL_SERVICE_NAME": "x"}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert tracing.configure_from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert tracing.configure_from_env({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    _without_otel(monkeypatch)
    provider = tracing.configure_from_env(endpoint)
    assert provider is not None
    try:
        assert exporters(provider) == [OTLPSpanExporter]
        assert provider.resource.attributes["service.name"] == "promptgate"
    finally:
        provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    console = tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert console is not None
    try:
        assert exporters(console) == [ConsoleSpanExporter]
        assert console.resource.attributes["service.name"] == "gateway-eu"
    finally:
        console.shutdown()
    with pytest.raises(tracing.TracingError):
        tracing.configure_from_env({**endpoint, "OTEL_TRACES_EXPORTER": "jaeger"})
    with pytest.raises(tracing.TracingError):
        tracing.configure_from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: what a collector would get."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_a_served_process_exports_otlp_to_the_configured_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = _Collector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    env = _without_otel(monkeypatch)
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_SERVICE_NAME": "promptgate-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    live = await asyncio.to_thread(start_live_server, tmp_path, env)
    try:
        channel = authed_channel(live.address, live.key)
        stub = execution_service_pb2_grpc.ExecutionServiceStub(channel)
        response = await stub.ExecutePrompt(_demo(), metadata=(("traceparent", TRACEPARENT),))
        got = await stub.GetExecution(epb.GetExecutionRequest(execution_id=response.execution_id))
        assert got.execution.trace_id == TRACE_ID
        await channel.close()
    finally:
        await asyncio.to_thread(live.stop)  # SIGTERM: the server flushes its spans
        await receiver.stop(0)
    assert live.process.returncode == 0
    spans = {}
    for request in collector.requests:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "promptgate-test"
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    spans[span.name] = span
    server = spans["promptgate.v1.ExecutionService/ExecutePrompt"]
    assert server.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_SPAN_ID
    assert {"promptgate.execution", "promptgate.render", "chat mock-1", "promptgate.record"} <= set(
        spans
    )
