"""The Python client (clients/python, ``promptgate_client``) against a live server."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import promptgate_client as pc
from promptgate_client.v1 import common_pb2, execution_service_pb2, execution_service_pb2_grpc
from tests.live import LiveServer

DEMO_HI_REPLY = "Mock reply to: Answer in one sentence: hi"


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[pc.Client]:
    with pc.Client(live_server.address, api_key=live_server.key, timeout=10) as client:
        yield client


def slow_inline(latency_ms: int) -> common_pb2.InlinePrompt:
    """An inline prompt on the mock provider that answers after ``latency_ms``."""
    return common_pb2.InlinePrompt(
        model="mock-1",
        prompt="slow {{ n }}",
        parameters=pc.model_parameters({"extra": {"mock": {"latency_ms": latency_ms}}}),
    )


def test_execute_the_demo_prompt(client: pc.Client) -> None:
    response = client.execute("demo", inputs={"question": "hi"})
    assert response.state == common_pb2.EXECUTION_STATE_FULFILLED
    assert response.execution_id.startswith("exe_")
    assert pc.output_text(response.outputs) == DEMO_HI_REPLY
    assert (response.meta.provider, response.meta.model) == ("mock", "mock-1")
    stored = client.get_execution(response.execution_id)
    assert stored.state == common_pb2.EXECUTION_STATE_FULFILLED
    assert pc.output_text(stored.outputs) == DEMO_HI_REPLY


def test_typed_inputs_from_plain_values(client: pc.Client) -> None:
    inline = common_pb2.InlinePrompt(
        model="mock-1",
        prompt="{{ s }}|{{ n }}|{{ b }}|{{ j.k[1] }}",
        input_variables=[
            common_pb2.InputVariable(name="s", type=common_pb2.INPUT_TYPE_STRING),
            common_pb2.InputVariable(name="n", type=common_pb2.INPUT_TYPE_NUMBER),
            common_pb2.InputVariable(name="b", type=common_pb2.INPUT_TYPE_BOOLEAN),
            common_pb2.InputVariable(name="j", type=common_pb2.INPUT_TYPE_JSON),
        ],
    )
    inputs: dict[str, Any] = {"s": "text", "n": 2.5, "b": True, "j": {"k": [1, "two"]}}
    converted = {i.name: i.WhichOneof("value") for i in pc.prompt_inputs(inputs)}
    assert converted == {
        "s": "string_value",
        "n": "number_value",
        "b": "bool_value",
        "j": "json_value",
    }
    response = client.execute(inline, inputs=inputs)
    assert response.state == common_pb2.EXECUTION_STATE_FULFILLED, response.error
    assert pc.output_text(response.outputs) == "Mock reply to: text|2.5|true|two"


def test_chat_history_input(client: pc.Client) -> None:
    inline = common_pb2.InlinePrompt(
        model="mock-1",
        messages=[common_pb2.PromptTemplateMessage(chat_history_input="history")],
        input_variables=[
            common_pb2.InputVariable(name="history", type=common_pb2.INPUT_TYPE_CHAT_HISTORY)
        ],
    )
    history = [pc.chat_message("system", "be brief"), pc.chat_message("user", "hello there")]
    assert pc.prompt_input("history", history).WhichOneof("value") == "chat_history"
    response = client.execute(inline, inputs={"history": history})
    assert response.state == common_pb2.EXECUTION_STATE_FULFILLED, response.error
    assert pc.output_text(response.outputs) == "Mock reply to: hello there"
    as_dicts = pc.chat_history([{"role": "user", "content": "from dicts"}])
    response = client.execute(inline, inputs={"history": as_dicts})
    assert pc.output_text(response.outputs) == "Mock reply to: from dicts"


def test_stream_text_deltas_then_fulfilled(client: pc.Client) -> None:
    params = {"extra": {"mock": {"chunks": 4}}}
    deltas = list(client.stream_text("demo", inputs={"question": "hi"}, parameters=params))
    assert len(deltas) == 4
    assert "".join(deltas) == DEMO_HI_REPLY
    events = list(client.stream("demo", inputs={"question": "hi"}, parameters=params))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["initiated", "streaming", "streaming", "streaming", "streaming", "fulfilled"]
    assert pc.output_text(events[-1].fulfilled.outputs) == DEMO_HI_REPLY


def test_stream_text_raises_when_the_execution_is_rejected(client: pc.Client) -> None:
    params = {"extra": {"mock": {"error_status": 400, "error_message": "bad request upstream"}}}
    with pytest.raises(pc.ExecutionRejectedError) as caught:
        for _ in client.stream_text("demo", inputs={"question": "hi"}, parameters=params):
            pass
    assert caught.value.error_code == "PROVIDER_ERROR"
    assert caught.value.execution_id.startswith("exe_")
    assert client.get_execution(caught.value.execution_id).state == (
        common_pb2.EXECUTION_STATE_REJECTED
    )


def test_submit_actuals(client: pc.Client) -> None:
    external_id = f"ticket-{uuid.uuid4().hex[:8]}"
    response = client.execute("demo", inputs={"question": "hi"}, external_id=external_id)
    stored = client.submit_actuals(
        [
            pc.actual(execution_id=response.execution_id, quality=0.9),
            pc.actual(
                external_id=external_id, desired_output="Better.", metadata={"reviewer": "ada"}
            ),
        ]
    )
    assert [a.id.startswith("act_") for a in stored] == [True, True]
    assert {a.execution_id for a in stored} == {response.execution_id}
    execution = client.get_execution(response.execution_id)
    assert [a.quality for a in execution.actuals][:1] == [pytest.approx(0.9)]
    assert execution.actuals[-1].desired_output == "Better."
    assert execution.actuals[-1].metadata["reviewer"] == "ada"


def test_unknown_prompt_is_not_found_with_its_reason(client: pc.Client) -> None:
    with pytest.raises(pc.NotFoundError) as caught:
        client.execute("no-such-prompt", inputs={"question": "hi"})
    error = caught.value
    assert isinstance(error, pc.StatusError)
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert (error.reason, error.domain) == ("PROMPT_NOT_FOUND", "promptgate")
    assert "no-such-prompt" in error.message
    assert "PROMPT_NOT_FOUND" in str(error)


def test_missing_input_is_invalid_argument_with_field_violations(client: pc.Client) -> None:
    with pytest.raises(pc.InvalidArgumentError) as caught:
        client.execute("demo", inputs={"audience": "cats"})
    assert caught.value.reason
    assert caught.value.violations, "a BadRequest detail names the bad field"
    assert any("question" in v.field + v.description for v in caught.value.violations)


def test_missing_and_wrong_api_key_are_unauthenticated(live_server: LiveServer) -> None:
    with pc.Client(live_server.address, timeout=5) as anonymous:
        with pytest.raises(pc.UnauthenticatedError) as caught:
            anonymous.execute("demo", inputs={"question": "hi"})
    assert caught.value.reason == "MISSING_AUTHORIZATION"
    with pc.Client(live_server.address, api_key="pgk_wrong", timeout=5) as wrong:
        with pytest.raises(pc.UnauthenticatedError) as caught:
            wrong.execute("demo", inputs={"question": "hi"})
    assert caught.value.reason == "INVALID_API_KEY"


def assert_deadline_honoured(
    call: Any, deadline_s: float, latency_s: float
) -> execution_service_pb2.ExecutePromptResponse | None:
    """The call ends at its deadline: DEADLINE_EXCEEDED, or promptgate's REJECTED
    EXECUTION_TIMEOUT answer sent just before the deadline (whichever wins the race)."""
    started = time.monotonic()
    response = None
    try:
        response = call()
    except pc.DeadlineExceededError as err:
        assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert response.state == common_pb2.EXECUTION_STATE_REJECTED
        assert response.error.code == "EXECUTION_TIMEOUT"
        assert "call deadline" in response.error.message
    elapsed = time.monotonic() - started
    assert deadline_s * 0.5 < elapsed < min(deadline_s + 1.0, latency_s), elapsed
    return response


def test_per_call_and_default_deadlines(client: pc.Client, live_server: LiveServer) -> None:
    inline = slow_inline(5000)
    assert_deadline_honoured(lambda: client.execute(inline, inputs={"n": 1}, timeout=0.6), 0.6, 5.0)
    with pc.Client(live_server.address, api_key=live_server.key, timeout=0.6) as short:
        assert_deadline_honoured(lambda: short.execute(inline, inputs={"n": 2}), 0.6, 5.0)
        # A per-call timeout overrides the client's default.
        response = short.execute(slow_inline(900), inputs={"n": 3}, timeout=10)
        assert response.state == common_pb2.EXECUTION_STATE_FULFILLED


async def test_async_client_execute_stream_errors_and_batch(live_server: LiveServer) -> None:
    async with pc.AsyncClient(live_server.address, api_key=live_server.key, timeout=20) as client:
        response = await client.execute("demo", inputs={"question": "hi"})
        assert pc.output_text(response.outputs) == DEMO_HI_REPLY
        deltas = [
            d
            async for d in client.stream_text(
                "demo", inputs={"question": "hi"}, parameters={"extra": {"mock": {"chunks": 3}}}
            )
        ]
        assert len(deltas) == 3 and "".join(deltas) == DEMO_HI_REPLY
        with pytest.raises(pc.NotFoundError) as caught:
            await client.execute("no-such-prompt")
        assert caught.value.reason == "PROMPT_NOT_FOUND"
        started = time.monotonic()
        try:
            slow = await client.execute(slow_inline(5000), inputs={"n": 4}, timeout=0.6)
            assert slow.error.code == "EXECUTION_TIMEOUT"
        except pc.DeadlineExceededError:
            pass
        assert time.monotonic() - started < 2.0

        batch = await client.execute_batch(
            "demo",
            [pc.batch_item(f"q{i}", {"question": f"item {i}"}) for i in range(3)],
            display_name="client test",
        )
        assert batch.id.startswith("bat_")
        done = await client.wait_batch(batch.id)
        assert done.state == execution_service_pb2.BATCH_STATE_SUCCEEDED
        assert done.counts.succeeded == 3
        results = [r async for r in client.batch_results(batch.id, page_size=2)]
        assert [r.custom_id for r in results] == ["q0", "q1", "q2"]
        assert [pc.output_text(r.outputs) for r in results] == [
            f"Mock reply to: Answer in one sentence: item {i}" for i in range(3)
        ]
        actuals = await client.submit_actuals(
            [pc.actual(execution_id=results[0].execution_id, quality=1.0)]
        )
        assert actuals[0].execution_id == results[0].execution_id


def _chain_steps() -> list[Any]:
    """Two inline steps: the second answers what the first shouted."""
    return [
        pc.chain_step(
            "shout",
            common_pb2.InlinePrompt(model="mock-1", prompt="Shout {{ word }}"),
            "shouted",
            parameters={"extra": {"mock": {"chunks": 2}}},
        ),
        pc.chain_step(
            "answer",
            common_pb2.InlinePrompt(model="mock-1", prompt="Answer: {{ shouted }}"),
            "answer",
            parameters={"extra": {"mock": {"chunks": 1}}},
        ),
    ]


def test_execute_and_stream_a_chain(client: pc.Client) -> None:
    steps = _chain_steps()
    response = client.execute_chain(steps, inputs={"word": "hey"}, metadata={"run": "client"})
    execution = response.chain_execution
    assert execution.state == common_pb2.EXECUTION_STATE_FULFILLED, execution.error
    assert [s.name for s in execution.steps] == ["shout", "answer"]
    assert pc.output_text(execution.outputs) == "Mock reply to: Answer: Mock reply to: Shout hey"
    stored = client.get_chain_execution(execution.id)
    assert [s.execution_id for s in stored.steps] == [s.execution_id for s in execution.steps]
    assert client.get_execution(stored.steps[0].execution_id).chain_step == "shout"
    kinds = [e.WhichOneof("event") for e in client.stream_chain(steps, inputs={"word": "hey"})]
    assert kinds == [
        "step_started",
        "step_delta",
        "step_delta",
        "step_finished",
        "step_started",
        "step_delta",
        "step_finished",
        "chain_fulfilled",
    ]
    with pytest.raises(pc.InvalidArgumentError) as caught:
        client.execute_chain(steps)  # "word" is missing
    assert caught.value.reason == "INVALID_CHAIN"


async def test_async_client_executes_and_streams_a_chain(live_server: LiveServer) -> None:
    async with pc.AsyncClient(live_server.address, api_key=live_server.key, timeout=20) as client:
        steps = _chain_steps()[:1]
        response = await client.execute_chain(steps, inputs={"word": "ho"})
        assert pc.output_text(response.chain_execution.outputs) == "Mock reply to: Shout ho"
        events = [e async for e in client.stream_chain(steps, inputs={"word": "ho"})]
        assert events[-1].WhichOneof("event") == "chain_fulfilled"
        stored = await client.get_chain_execution(events[-1].chain_execution_id)
        assert stored.streamed and stored.state == common_pb2.EXECUTION_STATE_FULFILLED


def test_sync_batch(client: pc.Client) -> None:
    batch = client.execute_batch(
        "demo", [pc.batch_item("only", {"question": "batch"})], max_concurrency=2
    )
    done = client.wait_batch(batch.id)
    assert done.state == execution_service_pb2.BATCH_STATE_SUCCEEDED
    (result,) = client.batch_results(batch.id)
    assert result.state == execution_service_pb2.BATCH_ITEM_STATE_FULFILLED
    assert pc.output_text(result.outputs) == "Mock reply to: Answer in one sentence: batch"


class _FlakyExecutions(execution_service_pb2_grpc.ExecutionServiceServicer):
    """Answers UNAVAILABLE ``failures`` times, then a fixed response."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.lock = threading.Lock()

    def ExecutePrompt(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.calls += 1
            calls = self.calls
        if calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"flaky {calls}")
        return execution_service_pb2.ExecutePromptResponse(execution_id=f"exe_after_{calls}")


@pytest.fixture
def flaky() -> Iterator[tuple[str, _FlakyExecutions]]:
    servicer = _FlakyExecutions(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0)


def test_unavailable_is_retried_by_the_service_config(
    flaky: tuple[str, _FlakyExecutions],
) -> None:
    address, servicer = flaky
    retry = pc.RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)
    with pc.Client(address, api_key="k", timeout=5, retry=retry) as client:
        response = client.execute("demo")
    assert response.execution_id == "exe_after_3"
    assert servicer.calls == 3


def test_without_retries_unavailable_is_raised(flaky: tuple[str, _FlakyExecutions]) -> None:
    address, servicer = flaky
    with pc.Client(address, api_key="k", timeout=5, retry=None) as client:
        with pytest.raises(pc.UnavailableError) as caught:
            client.execute("demo")
    assert caught.value.message == "flaky 1"
    assert servicer.calls == 1


async def test_async_client_retries_unavailable_too(
    flaky: tuple[str, _FlakyExecutions],
) -> None:
    address, servicer = flaky
    retry = pc.RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)
    async with pc.AsyncClient(address, api_key="k", timeout=5, retry=retry) as client:
        response = await asyncio.wait_for(client.execute("demo"), 10)
    assert response.execution_id == "exe_after_3"
    assert servicer.calls == 3
