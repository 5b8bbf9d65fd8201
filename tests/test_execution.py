"""ExecutePrompt / ExecutePromptStream through real gRPC on the mock provider."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running, error_details


def demo(question: str = "What is promptgate?", **fields: Any) -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        prompt="demo",
        inputs=[pb.PromptInput(name="question", string_value=question)],
        **fields,
    )


def inline(
    prompt: str, model: str = "mock-1", mock: dict[str, Any] | None = None, **fields: Any
) -> epb.ExecutePromptRequest:
    params = pb.ModelParameters()
    if mock is not None:
        params.extra.update({"mock": mock})
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model=model, prompt=prompt, parameters=params), **fields
    )


async def collect(stream: Any) -> list[epb.ExecutePromptStreamResponse]:
    return [event async for event in stream]


async def test_execute_demo_prompt_returns_outputs_meta_and_is_recorded(pg: Running) -> None:
    response = await pg.executions.ExecutePrompt(demo("Why is the sky blue?"))
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    assert response.execution_id.startswith("exe_")
    assert (
        response.outputs[0].string_value
        == "Mock reply to: Answer in one sentence: Why is the sky blue?"
    )
    meta = response.meta
    assert (meta.provider, meta.model, meta.prompt_version, meta.release_tag) == (
        "mock",
        "mock-1",
        1,
        "production",
    )
    assert meta.finish_reason == pb.FINISH_REASON_STOP
    assert meta.usage.output_tokens == len(response.outputs[0].string_value.split())
    assert meta.usage.input_tokens > 0 and meta.usage.input_chars > 0
    assert meta.cost.priced and meta.cost.value == 0 and meta.cost.unit == "USD"
    assert meta.parameters.temperature == pytest.approx(0.2)
    stored = await pg.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=response.execution_id)
    )
    execution = stored.execution
    assert execution.state == pb.EXECUTION_STATE_FULFILLED
    assert execution.prompt_name == "demo"
    assert execution.outputs[0].string_value == response.outputs[0].string_value
    assert [i.name for i in execution.inputs] == ["question"]
    assert execution.meta.usage.output_tokens == meta.usage.output_tokens


async def test_stream_events_initiated_deltas_then_one_fulfilled(pg: Running) -> None:
    request = demo("Tell me about streams", parameters=pb.ModelParameters())
    events = await collect(pg.executions.ExecutePromptStream(request))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "initiated"
    assert kinds[-1] == "fulfilled"
    assert kinds.count("fulfilled") + kinds.count("rejected") == 1
    assert set(kinds[1:-1]) == {"streaming"} and len(kinds) > 3
    assert len({e.execution_id for e in events}) == 1
    text = "".join(e.streaming.delta for e in events if e.WhichOneof("event") == "streaming")
    assert text == events[-1].fulfilled.outputs[0].string_value
    assert events[-1].fulfilled.meta.usage.output_tokens == len(text.split())
    assert events[-1].fulfilled.meta.HasField("time_to_first_token")
    stored = await pg.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=events[0].execution_id)
    )
    assert stored.execution.streamed and stored.execution.outputs[0].string_value == text


async def test_inline_prompt_with_typed_inputs(pg: Running) -> None:
    request = epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(
            model="mock-1",
            system_prompt="Be brief.",
            prompt="{{ user.name }} has {{ count }} items; vip={{ vip }}",
        ),
        inputs=[
            pb.PromptInput(
                name="user", json_value=json_format.ParseDict({"name": "Ada"}, struct_pb2.Value())
            ),
            pb.PromptInput(name="count", number_value=3),
            pb.PromptInput(name="vip", bool_value=True),
        ],
    )
    rendered = await pg.prompts.RenderPrompt(
        ppb.RenderPromptRequest(inline_prompt=request.inline_prompt, inputs=request.inputs)
    )
    assert [m.content for m in rendered.messages] == ["Be brief.", "Ada has 3 items; vip=true"]
    response = await pg.executions.ExecutePrompt(request)
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    assert response.meta.prompt_id == "" and response.meta.prompt_version == 0


async def test_chat_history_input_is_spliced_into_messages(pg: Running) -> None:
    await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="chat"))
    await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(
            prompt="chat",
            release_tags=["production"],
            version=ppb.PromptVersion(
                model="mock-1",
                messages=[
                    pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_SYSTEM, template="You help."),
                    pb.PromptTemplateMessage(chat_history_input="history"),
                ],
                input_variables=[pb.InputVariable(name="history", type=pb.INPUT_TYPE_CHAT_HISTORY)],
            ),
        )
    )
    history = pb.ChatHistory(
        messages=[
            pb.ChatMessage(role=pb.MESSAGE_ROLE_USER, content="hi"),
            pb.ChatMessage(role=pb.MESSAGE_ROLE_ASSISTANT, content="hello"),
            pb.ChatMessage(role=pb.MESSAGE_ROLE_USER, content="what next?"),
        ]
    )
    rendered = await pg.prompts.RenderPrompt(
        ppb.RenderPromptRequest(
            prompt="chat", inputs=[pb.PromptInput(name="history", chat_history=history)]
        )
    )
    assert [(m.role, m.content) for m in rendered.messages] == [
        (pb.MESSAGE_ROLE_SYSTEM, "You help."),
        (pb.MESSAGE_ROLE_USER, "hi"),
        (pb.MESSAGE_ROLE_ASSISTANT, "hello"),
        (pb.MESSAGE_ROLE_USER, "what next?"),
    ]
    payload = json_format.MessageToDict(rendered.provider_payload)
    assert payload["messages"][-1] == {"role": "user", "content": "what next?"}
    response = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            prompt="chat", inputs=[pb.PromptInput(name="history", chat_history=history)]
        )
    )
    assert response.outputs[0].string_value == "Mock reply to: what next?"


@pytest.mark.parametrize(
    ("inputs", "reason", "field", "words"),
    [
        ([], "INVALID_INPUT", "inputs", "missing required input 'question'"),
        (
            [pb.PromptInput(name="question", number_value=1)],
            "INVALID_INPUT",
            "inputs[0]",
            "got a NUMBER",
        ),
        ([pb.PromptInput(name="question")], "INVALID_INPUT", "inputs[0]", "has no value"),
        (
            [
                pb.PromptInput(name="question", string_value="q"),
                pb.PromptInput(name="topic", string_value="x"),
            ],
            "INVALID_INPUT",
            "inputs[1].name",
            "'topic' is not a declared variable",
        ),
        (
            [
                pb.PromptInput(name="question", string_value="q"),
                pb.PromptInput(name="question", string_value="r"),
            ],
            "INVALID_INPUT",
            "inputs[1].name",
            "given twice",
        ),
    ],
)
async def test_bad_inputs_are_invalid_argument_with_field_violations(
    pg: Running, inputs: list[pb.PromptInput], reason: str, field: str, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.ExecutePrompt(epb.ExecutePromptRequest(prompt="demo", inputs=inputs))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details(caught.value)
    assert info.reason == reason and info.domain == "promptgate"
    assert bad is not None
    assert any(v.field == field and words in v.description for v in bad.field_violations), bad
    # The server keeps serving after bad input.
    ok = await pg.executions.ExecutePrompt(demo())
    assert ok.state == pb.EXECUTION_STATE_FULFILLED


async def test_malformed_json_input_names_the_variable(pg: Running) -> None:
    request = epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(
            model="mock-1",
            prompt="{{ data.a }}",
            input_variables=[pb.InputVariable(name="data", type=pb.INPUT_TYPE_JSON)],
        ),
        inputs=[pb.PromptInput(name="data", string_value='{"a": 1,')],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.ExecutePrompt(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details(caught.value)
    assert info.reason == "INVALID_INPUT"
    assert bad is not None and "'data'" in bad.field_violations[0].description
    assert "not valid JSON" in bad.field_violations[0].description
    # The same variable with valid JSON text renders.
    request.inputs[0].string_value = '{"a": 41}'
    response = await pg.executions.ExecutePrompt(request)
    assert response.outputs[0].string_value == "Mock reply to: 41"


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (epb.ExecutePromptRequest(), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROMPT"),
        (inline("   "), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROMPT"),
        (inline("hi", model="gpt-9-imaginary"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL"),
        (inline("hi", model=""), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROMPT"),
        (demo(model="no-such-model"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL"),
        (demo(provider="nowhere"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL"),
        (epb.ExecutePromptRequest(prompt="nope"), grpc.StatusCode.NOT_FOUND, "PROMPT_NOT_FOUND"),
        (demo(release_tag="staging"), grpc.StatusCode.NOT_FOUND, "RELEASE_TAG_NOT_FOUND"),
        (demo(version=7), grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND"),
        (
            demo(version=1, release_tag="production"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PARAMETERS",
        ),
        (
            demo(parameters=pb.ModelParameters(temperature=3)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PARAMETERS",
        ),
        (
            demo(parameters=pb.ModelParameters(max_tokens=0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PARAMETERS",
        ),
        (
            demo(timeout=duration_pb2.Duration(seconds=-1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PARAMETERS",
        ),
        (demo(external_id="x" * 300), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETERS"),
        (inline("{{ broken"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PROMPT"),
    ],
)
async def test_bad_requests_get_status_and_reason(
    pg: Running, request_: epb.ExecutePromptRequest, code: grpc.StatusCode, reason: str
) -> None:
    for call in (pg.executions.ExecutePrompt, pg.executions.ExecutePromptStream):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = call(request_)
            if hasattr(result, "__aiter__"):
                await collect(result)
            else:
                await result
        assert caught.value.code() == code, caught.value.details()
        info, _ = error_details(caught.value)
        assert info.reason == reason
        assert "Traceback" not in (caught.value.details() or "")
    listed = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
    assert len(listed.executions) == 0, "request errors are not recorded as executions"


async def test_oversized_prompt_is_rejected(start_server: Any) -> None:
    running: Running = await start_server(
        max_prompt_chars=1000, max_receive_message_bytes=4 * 1024 * 1024
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.executions.ExecutePrompt(demo("x" * 2000))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details(caught.value)
    assert info.reason == "INVALID_PROMPT" and bad is not None
    assert "more than the limit of 1000" in bad.field_violations[0].description
    # Beyond the transport's message limit: RESOURCE_EXHAUSTED from gRPC itself.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.executions.ExecutePrompt(demo("x" * (5 * 1024 * 1024)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await running.executions.ExecutePrompt(demo())).state == pb.EXECUTION_STATE_FULFILLED


async def test_provider_error_is_rejected_and_recorded(pg: Running) -> None:
    response = await pg.executions.ExecutePrompt(
        inline("hi", mock={"error_status": 429, "retry_after_s": 3, "error_message": "slow down"})
    )
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert response.error.code == "PROVIDER_RATE_LIMITED"
    assert response.error.provider_status == 429
    assert response.error.retry_after.seconds == 3
    assert "slow down" in response.error.message
    stored = await pg.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=response.execution_id)
    )
    assert stored.execution.state == pb.EXECUTION_STATE_REJECTED
    assert stored.execution.error.code == "PROVIDER_RATE_LIMITED"
    events = await collect(pg.executions.ExecutePromptStream(inline("hi", model="mock-error-503")))
    assert [e.WhichOneof("event") for e in events] == ["initiated", "rejected"]
    assert events[-1].rejected.error.provider_status == 503


async def test_stream_cut_midway_ends_in_rejected_with_partial_output_recorded(pg: Running) -> None:
    request = inline("one two three four five six", mock={"chunks": 6, "cut_after": 2})
    events = await collect(pg.executions.ExecutePromptStream(request))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["initiated", "streaming", "streaming", "rejected"]
    assert events[-1].rejected.error.code == "STREAM_INTERRUPTED"
    stored = await pg.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=events[0].execution_id)
    )
    partial = "".join(e.streaming.delta for e in events[1:3])
    assert stored.execution.outputs[0].string_value == partial
    assert stored.execution.meta.finish_reason == pb.FINISH_REASON_ERROR


async def test_deadline_bounds_a_hanging_provider(pg: Running) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        response = await pg.executions.ExecutePrompt(inline("hi", model="mock-hang"), timeout=0.5)
    except grpc.aio.AioRpcError as err:  # the answer may lose the race with the deadline
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert response.state == pb.EXECUTION_STATE_REJECTED
        assert response.error.code == "EXECUTION_TIMEOUT"
        assert "call deadline" in response.error.message
    assert loop.time() - started < 2.0
    for _ in range(50):
        listed = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
        if listed.executions:
            break
        await asyncio.sleep(0.05)
    assert listed.executions[0].state == pb.EXECUTION_STATE_REJECTED
    assert listed.executions[0].error.code == "EXECUTION_TIMEOUT"


async def test_request_timeout_rejects_with_execution_timeout(pg: Running) -> None:
    request = inline("hi", mock={"hang": True}, timeout=duration_pb2.Duration(nanos=200_000_000))
    response = await pg.executions.ExecutePrompt(request)
    assert response.state == pb.EXECUTION_STATE_REJECTED
    assert response.error.code == "EXECUTION_TIMEOUT"
    events = await collect(
        pg.executions.ExecutePromptStream(
            inline(
                "a b c d",
                mock={"chunks": 4, "chunk_interval_ms": 400},
                timeout=duration_pb2.Duration(nanos=300_000_000),
            )
        )
    )
    assert [e.WhichOneof("event") for e in events] == ["initiated", "streaming", "rejected"]
    assert events[-1].rejected.error.code == "EXECUTION_TIMEOUT"


async def test_client_cancel_records_partial_execution(pg: Running) -> None:
    call = pg.executions.ExecutePromptStream(
        inline("a b c d e f g h", mock={"chunks": 8, "chunk_interval_ms": 200})
    )
    first = await call.read()
    second = await call.read()
    assert second.WhichOneof("event") == "streaming"
    call.cancel()
    for _ in range(100):
        listed = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
        if listed.executions:
            break
        await asyncio.sleep(0.05)
    execution = listed.executions[0]
    assert execution.id == first.execution_id
    assert execution.state == pb.EXECUTION_STATE_REJECTED
    assert execution.error.code == "CANCELLED"
    assert execution.meta.finish_reason == pb.FINISH_REASON_CANCELLED
    assert execution.outputs[0].string_value.startswith(second.streaming.delta)
    assert execution.meta.usage.output_tokens >= 1


async def test_external_id_replays_the_first_result(pg: Running) -> None:
    first = await pg.executions.ExecutePrompt(demo("first", external_id="order-42"))
    again = await pg.executions.ExecutePrompt(demo("first", external_id="order-42"))
    assert again.execution_id == first.execution_id
    assert again.replayed and not first.replayed
    assert again.outputs[0].string_value == first.outputs[0].string_value
    events = await collect(pg.executions.ExecutePromptStream(demo("first", external_id="order-42")))
    assert events[0].initiated.replayed and events[0].execution_id == first.execution_id
    assert events[-1].fulfilled.outputs[0].string_value == first.outputs[0].string_value
    listed = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
    assert [e.id for e in listed.executions] == [first.execution_id]
    by_external = await pg.executions.GetExecution(epb.GetExecutionRequest(external_id="order-42"))
    assert by_external.execution.id == first.execution_id


async def test_external_id_with_another_request_is_refused(pg: Running) -> None:
    first = await pg.executions.ExecutePrompt(demo("first", external_id="order-43"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.ExecutePrompt(demo("a different question", external_id="order-43"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(caught.value)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert info.metadata["execution_id"] == first.execution_id


async def test_concurrent_requests_with_one_external_id_run_once(pg: Running) -> None:
    request = inline("slow", mock={"latency_ms": 300}, external_id="same")
    results = await asyncio.gather(
        *(pg.executions.ExecutePrompt(request) for _ in range(5)), return_exceptions=True
    )
    done = [r for r in results if isinstance(r, epb.ExecutePromptResponse)]
    busy = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len({r.execution_id for r in done}) == 1
    assert all(e.code() == grpc.StatusCode.ABORTED for e in busy)
    assert all(error_details(e)[0].reason == "EXECUTION_IN_PROGRESS" for e in busy)
    listed = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
    assert len(listed.executions) == 1


async def test_expand_meta_and_expand_raw_and_raw_overrides(pg: Running) -> None:
    response = await pg.executions.ExecutePrompt(
        demo(expand_meta=pb.ExpandMeta(usage=True), expand_raw=["system_fingerprint", "missing"])
    )
    assert response.meta.usage.output_tokens > 0
    assert response.meta.model == "" and response.meta.prompt_version == 0
    assert not response.meta.HasField("cost")
    assert json_format.MessageToDict(response.raw) == {"system_fingerprint": "mock"}
    overrides = pb.RawOverrides()
    overrides.body.update({"mock": {"text": "overridden"}, "user": "u-1"})
    response = await pg.executions.ExecutePrompt(demo(raw_overrides=overrides))
    assert response.outputs[0].string_value == "overridden"
    rendered = await pg.prompts.RenderPrompt(
        ppb.RenderPromptRequest(
            prompt="demo",
            inputs=demo().inputs,
            raw_overrides=overrides,
            parameters=pb.ModelParameters(max_tokens=5),
        )
    )
    payload = json_format.MessageToDict(rendered.provider_payload)
    assert payload["user"] == "u-1" and payload["max_tokens"] == 5 and payload["temperature"] == 0.2


async def test_max_tokens_override_truncates_with_length_finish(pg: Running) -> None:
    response = await pg.executions.ExecutePrompt(demo(parameters=pb.ModelParameters(max_tokens=3)))
    assert len(response.outputs[0].string_value.split()) == 3
    assert response.meta.finish_reason == pb.FINISH_REASON_LENGTH


async def test_json_schema_output_is_validated(pg: Running) -> None:
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}})
    fmt = pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=schema)
    good = await pg.executions.ExecutePrompt(
        inline("x", mock={"text": '{"n": 3}'}, response_format=fmt)
    )
    assert good.state == pb.EXECUTION_STATE_FULFILLED
    assert json_format.MessageToDict(good.outputs[0].json_value) == {"n": 3}
    bad = await pg.executions.ExecutePrompt(
        inline("x", mock={"text": '{"n": "three"}'}, response_format=fmt)
    )
    assert bad.state == pb.EXECUTION_STATE_REJECTED
    assert bad.error.code == "SCHEMA_VALIDATION_FAILED" and "/n" not in bad.error.message
    stored = await pg.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=bad.execution_id)
    )
    assert stored.execution.outputs[0].string_value == '{"n": "three"}'
    not_json = await pg.executions.ExecutePrompt(
        inline("x", mock={"text": "nope"}, response_format=fmt)
    )
    assert not_json.error.code == "SCHEMA_VALIDATION_FAILED"


async def test_function_call_output(pg: Running) -> None:
    tools = [
        pb.Tool(
            name="lookup",
            description="Look up",
            parameters=json_format.ParseDict({"type": "object"}, struct_pb2.Struct()),
        )
    ]
    response = await pg.executions.ExecutePrompt(
        inline("x", mock={"function_call": {"name": "lookup", "arguments": {"id": 7}}}, tools=tools)
    )
    call = response.outputs[0].function_call
    assert call.name == "lookup" and json.loads(call.arguments_json) == {"id": 7}
    assert json_format.MessageToDict(call.arguments) == {"id": 7.0}
    assert response.meta.finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_list_executions_filters_and_pages(pg: Running) -> None:
    ids = [(await pg.executions.ExecutePrompt(demo(f"q{i}"))).execution_id for i in range(5)]
    await pg.executions.ExecutePrompt(inline("other"))
    await pg.executions.ExecutePrompt(inline("bad", model="mock-error-500"))
    seen: list[str] = []
    token = ""
    while True:
        page = await pg.executions.ListExecutions(
            epb.ListExecutionsRequest(prompt="demo", page_size=2, page_token=token)
        )
        seen.extend(e.id for e in page.executions)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    rejected = await pg.executions.ListExecutions(
        epb.ListExecutionsRequest(state=pb.EXECUTION_STATE_REJECTED)
    )
    assert len(rejected.executions) == 1
    tagged = await pg.executions.ListExecutions(epb.ListExecutionsRequest(release_tag="production"))
    assert len(tagged.executions) == 5
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.ListExecutions(epb.ListExecutionsRequest(page_token="garbage"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.GetExecution(epb.GetExecutionRequest(execution_id="exe_nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_details(caught.value)[0].reason == "EXECUTION_NOT_FOUND"


async def test_concurrent_executions_share_commits_and_none_is_lost(pg: Running) -> None:
    before = pg.server.recorder.commits
    responses = await asyncio.gather(
        *(pg.executions.ExecutePrompt(demo(f"q{i}")) for i in range(200))
    )
    assert all(r.state == pb.EXECUTION_STATE_FULFILLED for r in responses)
    ids: set[str] = set()
    token = ""
    while True:
        page = await pg.executions.ListExecutions(
            epb.ListExecutionsRequest(page_size=1000, page_token=token)
        )
        ids.update(e.id for e in page.executions)
        token = page.next_page_token
        if not token:
            break
    assert ids == {r.execution_id for r in responses}
    commits = pg.server.recorder.commits - before
    assert commits < 200, f"group commit should batch concurrent records ({commits} commits)"


async def test_tag_moves_on_another_replica_are_seen_within_the_cache_ttl(
    start_server: Any,
) -> None:
    first: Running = await start_server(resolve_cache_ttl_s=0.3)
    second: Running = await start_server(
        database_url=first.server.settings.database_url, resolve_cache_ttl_s=0.3
    )
    assert (await first.executions.ExecutePrompt(demo())).meta.prompt_version == 1
    version = ppb.PromptVersion(
        model="mock-2",
        messages=[
            pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template="v2 {{ question }}")
        ],
        input_variables=[pb.InputVariable(name="question", type=pb.INPUT_TYPE_STRING)],
    )
    await second.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(
            prompt="demo",
            version=version,
            release_tags=["production"],
            allow_breaking_changes=True,  # drops the demo's "audience" variable
        )
    )
    # The replica that moved the tag sees it at once.
    assert (await second.executions.ExecutePrompt(demo())).meta.prompt_version == 2
    await asyncio.sleep(0.4)
    moved = await first.executions.ExecutePrompt(demo())
    assert moved.meta.prompt_version == 2 and moved.meta.model == "mock-2"
