"""ChainService through real gRPC: inline and stored chains, unary and streamed, on the
mock provider and on a local OpenAI-wire server (for priced usage)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import chain_service_pb2_grpc as cpb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.auth.model import Scope
from tests.conftest import Running, authed_channel, error_details
from tests.fake_openai import FakeOpenAI
from tests.test_audit import key_id, list_events, plain

JSON_FORMAT = pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_OBJECT)


def chains(running: Running) -> cpb_grpc.ChainServiceStub:
    return cpb_grpc.ChainServiceStub(running.channel)


def step(
    name: str,
    prompt: str,
    output: str,
    *,
    model: str = "mock-1",
    mock: dict[str, Any] | None = None,
    response_format: pb.ResponseFormat | None = None,
    variables: list[pb.InputVariable] | None = None,
) -> cpb.ChainStep:
    """An inline step whose prompt is one user message."""
    params = pb.ModelParameters()
    if mock is not None:
        params.extra.update({"mock": mock})
    inline = pb.InlinePrompt(
        model=model, prompt=prompt, parameters=params, input_variables=variables or []
    )
    if response_format is not None:
        inline.response_format.CopyFrom(response_format)
    return cpb.ChainStep(name=name, inline_prompt=inline, output_variable=output)


def text(name: str, value: str) -> pb.PromptInput:
    return pb.PromptInput(name=name, string_value=value)


def inline_chain(*steps: cpb.ChainStep, **fields: Any) -> cpb.ExecuteChainRequest:
    inputs = fields.pop("inputs", [])
    return cpb.ExecuteChainRequest(
        inline_chain=cpb.InlineChain(steps=list(steps)), inputs=inputs, **fields
    )


async def chain_steps(running: Running, chain_execution_id: str) -> list[epb.Execution]:
    listed = await running.executions.ListExecutions(
        epb.ListExecutionsRequest(chain_execution_id=chain_execution_id)
    )
    return list(reversed(listed.executions))  # oldest first


def mock_reply(prompt: str) -> str:
    return f"Mock reply to: {prompt}"


async def test_three_step_chain_passes_typed_outputs_to_later_steps(pg: Running) -> None:
    request = inline_chain(
        step(
            "facts",
            "List facts about {{ topic }}",
            "facts",
            mock={"text": '{"topic": "otters", "count": 3}'},
            response_format=JSON_FORMAT,
        ),
        step("summary", "Summarise {{ facts.count }} facts on {{ facts.topic }}", "summary"),
        step("title", "Title for: {{ summary }}", "title"),
        inputs=[text("topic", "sea otters")],
    )
    response = await chains(pg).ExecuteChain(request)
    execution = response.chain_execution
    assert execution.state == pb.EXECUTION_STATE_FULFILLED, execution.error
    assert execution.id.startswith("chx_") and not response.replayed
    assert [s.name for s in execution.steps] == ["facts", "summary", "title"]
    assert [s.state for s in execution.steps] == [pb.EXECUTION_STATE_FULFILLED] * 3
    facts = execution.steps[0].outputs[0]
    assert facts.WhichOneof("value") == "json_value"
    assert facts.json_value.struct_value["topic"] == "otters"
    # The JSON output is a JSON variable: its fields render in the next step.
    summary = mock_reply("Summarise 3 facts on otters")
    assert execution.steps[1].outputs[0].string_value == summary
    title = mock_reply(f"Title for: {summary}")
    assert execution.steps[2].outputs[0].string_value == title
    assert [o.string_value for o in execution.outputs] == [title]
    assert execution.failed_step == "" and not execution.HasField("error")
    # Every step is a recorded execution linked to the chain.
    recorded = await chain_steps(pg, execution.id)
    assert [e.id for e in recorded] == [s.execution_id for s in execution.steps]
    assert [e.chain_step for e in recorded] == ["facts", "summary", "title"]
    assert {e.chain_execution_id for e in recorded} == {execution.id}
    assert [i.name for i in recorded[1].inputs] == ["facts"]
    assert recorded[1].inputs[0].WhichOneof("value") == "json_value"
    assert [(i.name, i.string_value) for i in recorded[2].inputs] == [("summary", summary)]
    # Usage adds up over the steps.
    assert execution.usage.output_tokens == sum(e.meta.usage.output_tokens for e in recorded)
    assert execution.usage.input_tokens == sum(e.meta.usage.input_tokens for e in recorded)
    assert execution.usage.output_tokens > 0
    stored = await chains(pg).GetChainExecution(
        cpb.GetChainExecutionRequest(chain_execution_id=execution.id)
    )
    assert stored.chain_execution.state == pb.EXECUTION_STATE_FULFILLED
    assert [s.execution_id for s in stored.chain_execution.steps] == [e.id for e in recorded]
    assert stored.chain_execution.steps[2].outputs[0].string_value == title
    assert stored.chain_execution.outputs[0].string_value == title


async def test_a_failing_second_step_rejects_the_chain_and_the_third_never_runs(
    pg: Running,
) -> None:
    request = inline_chain(
        step("draft", "Draft a note about {{ topic }}", "draft"),
        step(
            "review",
            "Review: {{ draft }}",
            "review",
            mock={"error_status": 503, "error_message": "upstream overloaded"},
        ),
        step("publish", "Publish: {{ review }}", "published"),
        inputs=[text("topic", "tides")],
    )
    response = await chains(pg).ExecuteChain(request)
    execution = response.chain_execution
    assert execution.state == pb.EXECUTION_STATE_REJECTED
    assert execution.failed_step == "review"
    assert execution.error.code == "PROVIDER_ERROR"
    assert execution.error.provider_status == 503
    assert "review" in execution.error.message and "upstream overloaded" in execution.error.message
    assert not execution.outputs
    assert [(s.name, s.state) for s in execution.steps] == [
        ("draft", pb.EXECUTION_STATE_FULFILLED),
        ("review", pb.EXECUTION_STATE_REJECTED),
    ]
    assert execution.steps[0].outputs[0].string_value == mock_reply("Draft a note about tides")
    assert execution.steps[1].error.code == "PROVIDER_ERROR"
    # Both steps that ran are recorded and linked; nothing ran for "publish".
    recorded = await chain_steps(pg, execution.id)
    assert [(e.chain_step, e.state) for e in recorded] == [
        ("draft", pb.EXECUTION_STATE_FULFILLED),
        ("review", pb.EXECUTION_STATE_REJECTED),
    ]
    assert recorded[1].inputs[0].string_value == execution.steps[0].outputs[0].string_value
    everything = (await pg.executions.ListExecutions(epb.ListExecutionsRequest())).executions
    assert "publish" not in {e.chain_step for e in everything}
    stored = (
        await chains(pg).GetChainExecution(
            cpb.GetChainExecutionRequest(chain_execution_id=execution.id)
        )
    ).chain_execution
    assert stored.state == pb.EXECUTION_STATE_REJECTED and stored.failed_step == "review"
    assert stored.error.code == "PROVIDER_ERROR"
    assert [s.execution_id for s in stored.steps] == [e.id for e in recorded]
    listed = await chains(pg).ListChainExecutions(
        cpb.ListChainExecutionsRequest(state=pb.EXECUTION_STATE_REJECTED)
    )
    assert [e.id for e in listed.chain_executions] == [execution.id]


async def test_an_inline_step_gets_the_variables_its_included_partials_use(pg: Running) -> None:
    await pg.prompts.CreatePartial(
        ppb.CreatePartialRequest(name="sign-off", content="-- {{ team }}")
    )
    request = inline_chain(
        step("team", "Name a team for {{ topic }}", "team", mock={"text": "Otters"}),
        step("note", "Thanks! {% include 'sign-off' %}", "note"),
        inputs=[text("topic", "rivers")],
    )
    execution = (await chains(pg).ExecuteChain(request)).chain_execution
    assert execution.state == pb.EXECUTION_STATE_FULFILLED, execution.error
    assert execution.outputs[0].string_value == mock_reply("Thanks! -- Otters")
    recorded = await chain_steps(pg, execution.id)
    assert [(i.name, i.string_value) for i in recorded[1].inputs] == [("team", "Otters")]


async def collect(call: Any) -> list[cpb.ExecuteChainStreamResponse]:
    return [event async for event in call]


async def test_a_streamed_chain_sends_step_events_in_order_then_one_terminal(
    pg: Running,
) -> None:
    request = inline_chain(
        step("outline", "Outline {{ topic }} in five words", "outline", mock={"chunks": 3}),
        step("expand", "Expand {{ outline }}", "expanded", mock={"chunks": 4}),
        inputs=[text("topic", "streams")],
    )
    events = await collect(chains(pg).ExecuteChainStream(request))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "chain_fulfilled"
    assert kinds.count("chain_fulfilled") + kinds.count("chain_rejected") == 1
    chain_id = events[-1].chain_fulfilled.chain_execution.id
    assert {e.chain_execution_id for e in events} == {chain_id}
    # Per step: started, its deltas, finished; steps strictly in order.
    assert kinds == ["step_started"] + ["step_delta"] * 3 + ["step_finished"] + ["step_started"] + [
        "step_delta"
    ] * 4 + ["step_finished", "chain_fulfilled"]
    started = [e.step_started for e in events if e.WhichOneof("event") == "step_started"]
    finished = [e.step_finished for e in events if e.WhichOneof("event") == "step_finished"]
    assert [(s.step, s.step_index) for s in started] == [("outline", 0), ("expand", 1)]
    assert [f.result.execution_id for f in finished] == [s.execution_id for s in started]
    for index, result in enumerate(f.result for f in finished):
        deltas = "".join(
            e.step_delta.delta
            for e in events
            if e.WhichOneof("event") == "step_delta" and e.step_delta.step_index == index
        )
        assert deltas == result.outputs[0].string_value
    assert finished[1].result.outputs[0].string_value == mock_reply(
        f"Expand {finished[0].result.outputs[0].string_value}"
    )
    final = events[-1].chain_fulfilled.chain_execution
    assert final.streamed and final.outputs == finished[1].result.outputs
    recorded = await chain_steps(pg, chain_id)
    assert [e.id for e in recorded] == [s.execution_id for s in started]
    assert all(e.streamed for e in recorded)


async def test_a_streamed_chain_that_fails_ends_in_one_chain_rejected(pg: Running) -> None:
    request = inline_chain(
        step("one", "First {{ x }}", "first"),
        step("two", "Second {{ first }}", "second", mock={"chunks": 4, "cut_after": 2}),
        step("three", "Third {{ second }}", "third"),
        inputs=[text("x", "go")],
    )
    events = await collect(chains(pg).ExecuteChainStream(request))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "chain_rejected"
    assert kinds.count("chain_fulfilled") + kinds.count("chain_rejected") == 1
    assert kinds.count("step_started") == 2 and kinds.count("step_finished") == 2
    rejected = events[-1].chain_rejected.chain_execution
    assert rejected.failed_step == "two" and rejected.error.code == "STREAM_INTERRUPTED"
    last_step = [e for e in events if e.WhichOneof("event") == "step_finished"][-1]
    assert last_step.step_finished.result.state == pb.EXECUTION_STATE_REJECTED
    # The text streamed before the cut is kept on the recorded step.
    streamed = "".join(
        e.step_delta.delta
        for e in events
        if e.WhichOneof("event") == "step_delta" and e.step_delta.step == "two"
    )
    recorded = await chain_steps(pg, rejected.id)
    assert [e.chain_step for e in recorded] == ["one", "two"]
    assert recorded[1].outputs[0].string_value == streamed != ""


# Stored chains


def var(name: str, kind: pb.InputType.ValueType = pb.INPUT_TYPE_STRING) -> pb.InputVariable:
    return pb.InputVariable(name=name, type=kind)


async def store_support_prompts(running: Running) -> None:
    """classify (JSON output) and reply (takes the classification as JSON)."""
    for name, version in (
        (
            "classify",
            ppb.PromptVersion(
                model="mock-1",
                messages=[
                    pb.PromptTemplateMessage(
                        role=pb.MESSAGE_ROLE_USER, template="Classify: {{ ticket }}"
                    )
                ],
                input_variables=[var("ticket")],
                response_format=JSON_FORMAT,
                parameters=pb.ModelParameters(),
            ),
        ),
        (
            "reply",
            ppb.PromptVersion(
                model="mock-1",
                messages=[
                    pb.PromptTemplateMessage(
                        role=pb.MESSAGE_ROLE_USER,
                        template="Answer {{ ticket }} as {{ classification.label }}",
                    )
                ],
                input_variables=[var("ticket"), var("classification", pb.INPUT_TYPE_JSON)],
            ),
        ),
    ):
        if name == "classify":
            version.parameters.extra.update({"mock": {"text": '{"label": "billing"}'}})
        await running.prompts.CreatePrompt(ppb.CreatePromptRequest(name=name))
        await running.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt=name, version=version, release_tags=["production"]
            )
        )


def support_steps() -> list[cpb.ChainStep]:
    return [
        cpb.ChainStep(name="classify", prompt="classify", output_variable="classification"),
        cpb.ChainStep(
            name="reply", prompt="reply", release_tag="production", output_variable="answer"
        ),
    ]


async def test_stored_chain_versions_tags_and_execution_by_tag(pg: Running) -> None:
    await store_support_prompts(pg)
    stub = chains(pg)
    created = (await stub.CreateChain(cpb.CreateChainRequest(name="support"))).chain
    assert created.id.startswith("chn_") and created.latest_version == 0
    v1 = (
        await stub.CreateChainVersion(
            cpb.CreateChainVersionRequest(
                chain="support",
                version=cpb.ChainVersion(
                    steps=support_steps(), input_variables=[var("ticket")], description="first"
                ),
                release_tags=["production"],
            )
        )
    ).version
    polish = step("polish", "Polish: {{ answer }}", "polished")
    v2 = (
        await stub.CreateChainVersion(
            cpb.CreateChainVersionRequest(
                chain=created.id,
                version=cpb.ChainVersion(
                    steps=[*support_steps(), polish], input_variables=[var("ticket")]
                ),
                release_tags=["staging"],
            )
        )
    ).version
    assert (v1.version, v2.version) == (1, 2) and v1.id.startswith("cvr_")
    assert [s.name for s in v2.steps] == ["classify", "reply", "polish"]
    assert v2.steps[0].prompt == "classify" and v2.steps[2].inline_prompt.model == "mock-1"
    chain = (await stub.GetChain(cpb.GetChainRequest(chain="support"))).chain
    tags = {t.tag: (t.version, t.automatic) for t in chain.release_tags}
    assert tags == {"production": (1, False), "staging": (2, False), "latest": (2, True)}

    async def run(**target: Any) -> cpb.ChainExecution:
        response = await stub.ExecuteChain(
            cpb.ExecuteChainRequest(chain="support", inputs=[text("ticket", "refund?")], **target)
        )
        return response.chain_execution

    default = await run()
    assert (default.chain_version, default.release_tag) == (1, "production")
    assert default.chain_id == created.id and default.chain_name == "support"
    assert default.state == pb.EXECUTION_STATE_FULFILLED, default.error
    assert default.outputs[0].string_value == mock_reply("Answer refund? as billing")
    staging = await run(release_tag="staging")
    assert (staging.chain_version, len(staging.steps)) == (2, 3)
    assert staging.outputs[0].string_value == mock_reply(
        f"Polish: {mock_reply('Answer refund? as billing')}"
    )
    assert (await run(release_tag="latest")).chain_version == 2
    pinned = await run(version=1)
    assert (pinned.chain_version, pinned.release_tag) == (1, "")
    # Moving a tag changes what runs; every move is kept.
    moved = await stub.SetChainReleaseTag(
        cpb.SetChainReleaseTagRequest(chain="support", tag="production", version=2)
    )
    assert moved.release_tag.version == 2
    assert (await run()).chain_version == 2
    history = await stub.ListChainReleaseTagHistory(
        cpb.ListChainReleaseTagHistoryRequest(chain="support")
    )
    assert [(e.tag, e.version, e.previous_version) for e in history.events] == [
        ("production", 2, 1),
        ("staging", 2, 0),
        ("production", 1, 0),
    ]
    versions = await stub.ListChainVersions(cpb.ListChainVersionsRequest(chain="support"))
    assert [v.version for v in versions.versions] == [2, 1]
    by_tag = await stub.GetChainVersion(
        cpb.GetChainVersionRequest(chain="support", release_tag="staging")
    )
    assert by_tag.version.id == v2.id
    listed = await stub.ListChainExecutions(cpb.ListChainExecutionsRequest(chain="support"))
    assert len(listed.chain_executions) == 5
    assert {e.chain_id for e in listed.chain_executions} == {created.id}
    # An archived chain is hidden and cannot run.
    await stub.ArchiveChain(cpb.ArchiveChainRequest(chain="support"))
    assert not (await stub.ListChains(cpb.ListChainsRequest())).chains
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(caught.value)[0].reason == "CHAIN_ARCHIVED"
    await stub.UnarchiveChain(cpb.UnarchiveChainRequest(chain="support"))
    assert (await run()).state == pb.EXECUTION_STATE_FULFILLED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateChain(cpb.CreateChainRequest(name="support"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def bad_request(call: Any) -> tuple[str, dict[str, str]]:
    """The reason and {field: description} of an INVALID_ARGUMENT answer."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    info, bad = error_details(caught.value)
    assert bad is not None
    return info.reason, {v.field: v.description for v in bad.field_violations}


async def test_chains_that_cannot_run_are_refused_before_anything_runs(pg: Running) -> None:
    await store_support_prompts(pg)
    stub = chains(pg)
    await stub.CreateChain(cpb.CreateChainRequest(name="broken"))

    def version(*steps: cpb.ChainStep, **fields: Any) -> cpb.CreateChainVersionRequest:
        return cpb.CreateChainVersionRequest(
            chain="broken", version=cpb.ChainVersion(steps=list(steps), **fields)
        )

    missing = cpb.ChainStep(name="ghost", prompt="no-such-prompt", output_variable="boo")
    reason, fields = await bad_request(stub.CreateChainVersion(version(*support_steps(), missing)))
    assert reason == "INVALID_CHAIN" and "not found" in fields["version.steps[2].prompt"]
    first, second = support_steps()
    second.name = "classify"
    _, fields = await bad_request(stub.CreateChainVersion(version(first, second)))
    assert "named twice" in fields["version.steps[1].name"]
    _, fields = await bad_request(
        stub.CreateChainVersion(version(*support_steps(), input_variables=[var("answer")]))
    )
    assert "chain input" in fields["version.steps[1].output_variable"]
    # A step that needs a later step's output, and a JSON output into a STRING variable.
    early = step("early", "Use {{ answer }}", "early_out")
    _, fields = await bad_request(stub.CreateChainVersion(version(early, *support_steps())))
    assert "runs later" in fields["version.steps[0]"]
    needs_text = step(
        "needs_text", "Say {{ classification }}", "said", variables=[var("classification")]
    )
    _, fields = await bad_request(stub.CreateChainVersion(version(first, needs_text)))
    assert "declared STRING" in fields["version.steps[1]"]
    many = [step(f"s{i}", "Hi", f"out{i}") for i in range(33)]
    _, fields = await bad_request(stub.CreateChainVersion(version(*many)))
    assert "at most 32" in fields["version.steps"]
    assert (await stub.GetChain(cpb.GetChainRequest(chain="broken"))).chain.latest_version == 0

    # At execution, the inputs are known: a missing one, and one a step would shadow.
    _, fields = await bad_request(
        stub.ExecuteChain(
            cpb.ExecuteChainRequest(inline_chain=cpb.InlineChain(steps=support_steps()))
        )
    )
    assert "'ticket'" in fields["inline_chain.steps[0]"]
    _, fields = await bad_request(
        stub.ExecuteChain(
            inline_chain(*support_steps(), inputs=[text("ticket", "t"), text("answer", "a")])
        )
    )
    assert "chain input" in fields["inline_chain.steps[1].output_variable"]
    reason, fields = await bad_request(
        stub.ExecuteChain(
            cpb.ExecuteChainRequest(
                inline_chain=cpb.InlineChain(steps=support_steps(), input_variables=[var("ticket")])
            )
        )
    )
    assert reason == "INVALID_INPUT" and "missing required input 'ticket'" in fields["inputs"]
    json_step = step("parse", "{{ data.x }}", "parsed", variables=[var("data", pb.INPUT_TYPE_JSON)])
    _, fields = await bad_request(
        stub.ExecuteChain(inline_chain(json_step, inputs=[text("data", "{not json")]))
    )
    assert "not valid JSON" in fields["inline_chain.steps[0]"]
    # Nothing ran or was recorded.
    assert not (await pg.executions.ListExecutions(epb.ListExecutionsRequest())).executions
    assert not (await stub.ListChainExecutions(cpb.ListChainExecutionsRequest())).chain_executions


# Idempotency, usage and cost (priced model on a local OpenAI-wire server)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        yield server


@pytest.fixture
async def gw(start_server: Any, fake: FakeOpenAI) -> Running:
    running: Running = await start_server(openai_base_url=fake.base_url, openai_api_key="sk-test")
    return running


def priced_chain(word: str, external_id: str = "", second: str = "gpt-4o-mini") -> Any:
    return inline_chain(
        step("first", "Echo {{ word }}", "first", model="gpt-4o-mini"),
        step("second", "Again {{ first }}", "second", model=second),
        inputs=[text("word", word)],
        external_id=external_id,
    )


async def test_usage_and_cost_add_up_and_external_id_replays_without_provider_calls(
    gw: Running, fake: FakeOpenAI
) -> None:
    stub = chains(gw)
    first = await stub.ExecuteChain(priced_chain("hello", "chain-key-1"))
    execution = first.chain_execution
    assert execution.state == pb.EXECUTION_STATE_FULFILLED, execution.error
    assert execution.outputs[0].string_value == "Again Echo hello"
    assert len(fake.requests) == 2
    steps = [s.meta for s in execution.steps]
    assert execution.usage.input_tokens == sum(m.usage.input_tokens for m in steps) > 0
    assert execution.usage.output_tokens == sum(m.usage.output_tokens for m in steps) > 0
    assert execution.cost.priced and execution.cost.unit == "USD"
    assert execution.cost.value == pytest.approx(sum(m.cost.value for m in steps))
    expected = sum(
        (r.response_json["usage"]["prompt_tokens"] * 0.15)
        + (r.response_json["usage"]["completion_tokens"] * 0.60)
        for r in fake.requests
    )
    assert execution.cost.value == pytest.approx(expected / 1_000_000) and expected > 0

    # The same request again: the recorded result, no provider call, nothing new recorded.
    again = await stub.ExecuteChain(priced_chain("hello", "chain-key-1"))
    assert again.replayed and again.chain_execution.id == execution.id
    assert again.chain_execution.outputs == execution.outputs
    assert [s.execution_id for s in again.chain_execution.steps] == [
        s.execution_id for s in execution.steps
    ]
    events = await collect(stub.ExecuteChainStream(priced_chain("hello", "chain-key-1")))
    assert events[-1].chain_fulfilled.replayed
    assert events[-1].chain_fulfilled.chain_execution.id == execution.id
    replayed = "".join(
        e.step_delta.delta
        for e in events
        if e.WhichOneof("event") == "step_delta" and e.step_delta.step == "second"
    )
    assert replayed == "Again Echo hello"
    assert len(fake.requests) == 2
    assert len(await chain_steps(gw, execution.id)) == 2
    listed = await stub.ListChainExecutions(cpb.ListChainExecutionsRequest())
    assert len(listed.chain_executions) == 1

    # The same key with another request is refused, and runs nothing.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ExecuteChain(priced_chain("goodbye", "chain-key-1"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(caught.value)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert info.metadata["chain_execution_id"] == execution.id
    assert len(fake.requests) == 2
    by_key = await stub.GetChainExecution(cpb.GetChainExecutionRequest(external_id="chain-key-1"))
    assert by_key.chain_execution.id == execution.id


async def test_a_transient_rejection_is_not_replayed(gw: Running, fake: FakeOpenAI) -> None:
    stub = chains(gw)
    request = priced_chain("hello", "chain-key-2", second="fake-500")
    failed = (await stub.ExecuteChain(request)).chain_execution
    assert failed.state == pb.EXECUTION_STATE_REJECTED and failed.failed_step == "second"
    assert failed.error.code == "PROVIDER_ERROR" and failed.error.provider_status == 500
    assert len(fake.requests) == 2
    retried = await stub.ExecuteChain(request)
    assert not retried.replayed and retried.chain_execution.id != failed.id
    assert retried.chain_execution.state == pb.EXECUTION_STATE_REJECTED
    assert len(fake.requests) == 4
    by_key = await stub.GetChainExecution(cpb.GetChainExecutionRequest(external_id="chain-key-2"))
    assert by_key.chain_execution.id == retried.chain_execution.id
    earlier = await stub.GetChainExecution(
        cpb.GetChainExecutionRequest(chain_execution_id=failed.id)
    )
    assert earlier.chain_execution.external_id == ""


# Time and cancellation


def slow_chain(**fields: Any) -> cpb.ExecuteChainRequest:
    return inline_chain(
        step("one", "One {{ x }}", "one", mock={"latency_ms": 600}),
        step("two", "Two {{ one }}", "two", mock={"latency_ms": 600}),
        step("three", "Three {{ two }}", "three", mock={"latency_ms": 600}),
        inputs=[text("x", "go")],
        **fields,
    )


async def test_the_deadline_spans_the_whole_chain(pg: Running) -> None:
    """Each step alone fits the time; the three together do not."""
    stub = chains(pg)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        response = await stub.ExecuteChain(slow_chain(), timeout=1.5)
    except grpc.aio.AioRpcError as err:  # the answer may lose the race with the deadline
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        execution = response.chain_execution
        assert execution.state == pb.EXECUTION_STATE_REJECTED
        assert execution.error.code == "EXECUTION_TIMEOUT"
        assert execution.failed_step in ("two", "three")
    assert loop.time() - started < 1.5 + 1.0
    listed: list[cpb.ChainExecution] = []
    for _ in range(100):
        listed = list(
            (await stub.ListChainExecutions(cpb.ListChainExecutionsRequest())).chain_executions
        )
        if listed and listed[0].state != pb.EXECUTION_STATE_RUNNING:
            break
        await asyncio.sleep(0.05)
    stored = listed[0]
    assert stored.state == pb.EXECUTION_STATE_REJECTED and stored.error.code == "EXECUTION_TIMEOUT"
    assert stored.failed_step in ("two", "three")
    assert stored.steps[0].state == pb.EXECUTION_STATE_FULFILLED

    # The request's own timeout spans the chain the same way, and always answers.
    response = await stub.ExecuteChain(
        slow_chain(timeout=duration_pb2.Duration(seconds=1, nanos=500_000_000))
    )
    execution = response.chain_execution
    assert execution.state == pb.EXECUTION_STATE_REJECTED
    assert execution.error.code == "EXECUTION_TIMEOUT"
    assert execution.failed_step in ("two", "three")
    assert execution.steps[0].state == pb.EXECUTION_STATE_FULFILLED
    # The failed step ran out of time, or the time ran out before it started.
    ran = {s.name: s.state for s in execution.steps}
    assert ran.get(execution.failed_step, pb.EXECUTION_STATE_REJECTED) == (
        pb.EXECUTION_STATE_REJECTED
    )


async def test_cancelling_a_streamed_chain_cancels_and_records_the_running_step(
    pg: Running,
) -> None:
    request = inline_chain(
        step("one", "One {{ x }}", "one"),
        step(
            "two", "a b c d e f g h {{ one }}", "two", mock={"chunks": 8, "chunk_interval_ms": 300}
        ),
        step("three", "Three {{ two }}", "three"),
        inputs=[text("x", "go")],
    )
    call = chains(pg).ExecuteChainStream(request)
    chain_id = ""
    while True:
        event = await call.read()
        chain_id = event.chain_execution_id
        if event.WhichOneof("event") == "step_delta" and event.step_delta.step == "two":
            break
    call.cancel()
    stored = cpb.ChainExecution()
    for _ in range(100):
        stored = (
            await chains(pg).GetChainExecution(
                cpb.GetChainExecutionRequest(chain_execution_id=chain_id)
            )
        ).chain_execution
        recorded = await chain_steps(pg, chain_id)
        if stored.state != pb.EXECUTION_STATE_RUNNING and len(recorded) == 2:
            break
        await asyncio.sleep(0.05)
    assert stored.state == pb.EXECUTION_STATE_REJECTED
    assert (stored.failed_step, stored.error.code) == ("two", "CANCELLED")
    assert [(e.chain_step, e.state) for e in recorded] == [
        ("one", pb.EXECUTION_STATE_FULFILLED),
        ("two", pb.EXECUTION_STATE_REJECTED),
    ]
    assert recorded[1].error.code == "CANCELLED"
    assert recorded[1].meta.finish_reason == pb.FINISH_REASON_CANCELLED


# Batches


async def test_a_stored_chain_is_a_batch_target(pg: Running) -> None:
    await store_support_prompts(pg)
    stub = chains(pg)
    chain = (await stub.CreateChain(cpb.CreateChainRequest(name="support"))).chain
    await stub.CreateChainVersion(
        cpb.CreateChainVersionRequest(
            chain="support",
            version=cpb.ChainVersion(steps=support_steps(), input_variables=[var("ticket")]),
            release_tags=["production"],
        )
    )

    def item(custom_id: str, *inputs: pb.PromptInput) -> epb.BatchItem:
        return epb.BatchItem(custom_id=custom_id, inputs=list(inputs))

    # Every item's inputs are checked against the chain before anything is stored.
    _, fields = await bad_request(
        pg.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                chain="support", items=[item("a", text("ticket", "x")), item("b")]
            )
        )
    )
    assert "missing required input 'ticket'" in fields["items[1].inputs"]
    _, fields = await bad_request(
        pg.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                chain="support",
                items=[item("a", text("ticket", "x"))],
                parameters=pb.ModelParameters(temperature=0.1),
            )
        )
    )
    assert "chain" in fields["parameters"]

    created = (
        await pg.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                chain="support",
                items=[item(f"t{i}", text("ticket", f"ticket {i}")) for i in range(3)],
            )
        )
    ).batch
    assert (created.chain_id, created.version, created.release_tag) == (chain.id, 1, "production")
    assert created.prompt_id == ""
    # A new version moved to production does not change the pinned batch.
    await stub.CreateChainVersion(
        cpb.CreateChainVersionRequest(
            chain="support",
            version=cpb.ChainVersion(steps=support_steps()[:1], input_variables=[var("ticket")]),
            release_tags=["production"],
        )
    )
    batch = await wait_done(pg, created.id)
    assert batch.state == epb.BATCH_STATE_SUCCEEDED and batch.counts.succeeded == 3
    results = (
        await pg.executions.ListBatchResults(epb.ListBatchResultsRequest(batch_id=created.id))
    ).results
    assert [r.custom_id for r in results] == ["t0", "t1", "t2"]
    for index, result in enumerate(results):
        assert result.state == epb.BATCH_ITEM_STATE_FULFILLED
        assert result.chain_execution_id.startswith("chx_") and result.execution_id == ""
        assert result.outputs[0].string_value == mock_reply(f"Answer ticket {index} as billing")
        assert result.meta.usage.output_tokens > 0
        execution = (
            await stub.GetChainExecution(
                cpb.GetChainExecutionRequest(chain_execution_id=result.chain_execution_id)
            )
        ).chain_execution
        assert execution.chain_version == 1 and len(execution.steps) == 2
        assert execution.external_id == f"{created.id}/{index}"
        assert execution.metadata["batch_custom_id"] == f"t{index}"
        assert result.meta.usage.output_tokens == execution.usage.output_tokens
        recorded = await chain_steps(pg, result.chain_execution_id)
        assert [e.chain_step for e in recorded] == ["classify", "reply"]


async def wait_done(running: Running, batch_id: str, limit_s: float = 60) -> epb.Batch:
    terminal = {epb.BATCH_STATE_SUCCEEDED, epb.BATCH_STATE_FAILED, epb.BATCH_STATE_CANCELLED}
    for _ in range(int(limit_s / 0.05)):
        batch = (await running.executions.GetBatch(epb.GetBatchRequest(batch_id=batch_id))).batch
        if batch.state in terminal:
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish")


# Workspaces and PostgreSQL


async def test_another_workspace_sees_none_of_the_chains(pg: Running) -> None:
    await store_support_prompts(pg)
    stub = chains(pg)
    await stub.CreateChain(cpb.CreateChainRequest(name="support"))
    await stub.CreateChainVersion(
        cpb.CreateChainVersionRequest(
            chain="support",
            version=cpb.ChainVersion(steps=support_steps()),
            release_tags=["production"],
        )
    )
    mine = (
        await stub.ExecuteChain(
            cpb.ExecuteChainRequest(
                chain="support", inputs=[text("ticket", "t")], external_id="shared-key"
            )
        )
    ).chain_execution
    assert await pg.server.keys.ensure_workspace("other")
    issued = await pg.server.keys.create(
        "other", name="other", scopes=[Scope.EXECUTE, Scope.TEMPLATES], plan="unlimited"
    )
    async with authed_channel(pg.address, issued.secret) as channel:
        other = cpb_grpc.ChainServiceStub(channel)
        for call in (
            other.GetChain(cpb.GetChainRequest(chain="support")),
            other.GetChain(cpb.GetChainRequest(chain=mine.chain_id)),
            other.ListChainVersions(cpb.ListChainVersionsRequest(chain="support")),
            other.SetChainReleaseTag(
                cpb.SetChainReleaseTagRequest(chain="support", tag="hijack", version=1)
            ),
            other.ExecuteChain(cpb.ExecuteChainRequest(chain="support")),
            other.GetChainExecution(cpb.GetChainExecutionRequest(chain_execution_id=mine.id)),
            other.GetChainExecution(cpb.GetChainExecutionRequest(external_id="shared-key")),
            other.ListChainExecutions(cpb.ListChainExecutionsRequest(chain="support")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (await other.ListChains(cpb.ListChainsRequest())).chains
        assert not (
            await other.ListChainExecutions(cpb.ListChainExecutionsRequest())
        ).chain_executions
        # The default workspace's prompts are not steps the other one can use.
        _, fields = await bad_request(
            other.ExecuteChain(inline_chain(*support_steps(), inputs=[text("ticket", "t")]))
        )
        assert "not found" in fields["inline_chain.steps[0].prompt"]
        # Its own chain may share the name and the external_id.
        ran = await other.ExecuteChain(
            inline_chain(
                step("s", "Hi {{ x }}", "y"), inputs=[text("x", "1")], external_id="shared-key"
            )
        )
        assert not ran.replayed and ran.chain_execution.state == pb.EXECUTION_STATE_FULFILLED
        assert (await other.CreateChain(cpb.CreateChainRequest(name="support"))).chain.id != (
            mine.chain_id
        )
        executions = await execution_service_stub(channel).ListExecutions(
            epb.ListExecutionsRequest(chain_execution_id=mine.id)
        )
        assert not executions.executions
    tags = (await stub.GetChain(cpb.GetChainRequest(chain="support"))).chain.release_tags
    assert "hijack" not in {t.tag for t in tags}


def execution_service_stub(channel: grpc.aio.Channel) -> Any:
    from promptgate.api.v1 import execution_service_pb2_grpc

    return execution_service_pb2_grpc.ExecutionServiceStub(channel)


@pytest.mark.postgres
async def test_stored_chain_on_postgresql(postgres_url: str, start_server: Any) -> None:
    running: Running = await start_server(database_url=postgres_url)
    await store_support_prompts(running)
    stub = chains(running)
    await stub.CreateChain(cpb.CreateChainRequest(name="support"))
    await stub.CreateChainVersion(
        cpb.CreateChainVersionRequest(
            chain="support",
            version=cpb.ChainVersion(steps=support_steps(), input_variables=[var("ticket")]),
            release_tags=["production"],
        )
    )
    request = cpb.ExecuteChainRequest(
        chain="support", inputs=[text("ticket", "pg?")], external_id="pg-chain"
    )
    first = (await stub.ExecuteChain(request)).chain_execution
    assert first.state == pb.EXECUTION_STATE_FULFILLED, first.error
    assert first.outputs[0].string_value == mock_reply("Answer pg? as billing")
    again = await stub.ExecuteChain(request)
    assert again.replayed and again.chain_execution.id == first.id
    recorded = await chain_steps(running, first.id)
    assert [e.chain_step for e in recorded] == ["classify", "reply"]
    assert json.loads(json.dumps([e.chain_execution_id for e in recorded])) == [first.id] * 2


async def test_grpcurl_runs_the_readme_chain_through_reflection(pg: Running) -> None:
    from tests.test_grpcurl import grpcurl

    body = {
        "inline_chain": {
            "steps": [
                {
                    "name": "facts",
                    "output_variable": "facts",
                    "inline_prompt": {
                        "model": "mock-1",
                        "prompt": "Facts about {{ topic }} as JSON",
                        "response_format": {"type": "TYPE_JSON_OBJECT"},
                        "parameters": {
                            "extra": {"mock": {"text": '{"topic": "otters", "count": 3}'}}
                        },
                    },
                },
                {
                    "name": "summary",
                    "output_variable": "question",
                    "inline_prompt": {
                        "model": "mock-1",
                        "prompt": "Summarise {{ facts.count }} facts on {{ facts.topic }}",
                    },
                },
                {"name": "answer", "prompt": "demo", "output_variable": "answer"},
            ]
        },
        "inputs": [{"name": "topic", "string_value": "sea otters"}],
    }
    listed = await grpcurl(pg, "list")
    assert "promptgate.v1.ChainService" in listed.stdout.split()
    result = (await grpcurl(pg, "promptgate.v1.ChainService/ExecuteChain", data=body)).json()
    execution = result["chainExecution"]
    assert execution["state"] == "EXECUTION_STATE_FULFILLED"
    assert [s["name"] for s in execution["steps"]] == ["facts", "summary", "answer"]
    summary = mock_reply("Summarise 3 facts on otters")
    assert execution["outputs"] == [
        {"stringValue": mock_reply(f"Answer in one sentence: {summary}")}
    ]


@pytest.mark.postgres
async def test_a_chain_whose_end_could_not_be_written_is_not_left_running(
    postgres_url: str, start_server: Any
) -> None:
    """The store goes away while a step runs: the caller hears UNAVAILABLE; once the store
    is back the chain is recorded REJECTED (transient), so a retry with its key runs again."""
    from tests.tcp_proxy import TcpProxy

    async with TcpProxy("127.0.0.1", 5432) as proxy:
        url = postgres_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        running: Running = await start_server(database_url=url)
        stub = chains(running)
        request = inline_chain(
            step("slow", "Hold on {{ x }}", "held", mock={"latency_ms": 1500}),
            inputs=[text("x", "please")],
            external_id="outage-1",
        )
        call = asyncio.ensure_future(stub.ExecuteChain(request, timeout=30))
        by_key = cpb.GetChainExecutionRequest(external_id="outage-1")
        for _ in range(100):  # the chain is stored RUNNING before its step starts
            try:
                if (await stub.GetChainExecution(by_key)).chain_execution.id:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
        await proxy.cut()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        await asyncio.sleep(1.0)
        await proxy.restore()
        stored = cpb.ChainExecution()
        for _ in range(300):
            try:
                stored = (await stub.GetChainExecution(by_key)).chain_execution
            except grpc.aio.AioRpcError:
                stored = cpb.ChainExecution()
            if stored.state == pb.EXECUTION_STATE_REJECTED:
                break
            await asyncio.sleep(0.1)
        assert stored.state == pb.EXECUTION_STATE_REJECTED and stored.failed_step == "slow"
        assert stored.error.code == "STORE_UNAVAILABLE"
        again = (await stub.ExecuteChain(request, timeout=30)).chain_execution
        assert again.state == pb.EXECUTION_STATE_FULFILLED and again.id != stored.id
        assert again.outputs[0].string_value == mock_reply("Hold on please")


async def test_chain_changes_are_in_the_audit_log(pg: Running) -> None:
    await store_support_prompts(pg)
    stub = chains(pg)
    created = (await stub.CreateChain(cpb.CreateChainRequest(name="audited"))).chain
    body = cpb.ChainVersion(steps=support_steps(), input_variables=[var("ticket")])
    request = cpb.CreateChainVersionRequest(chain="audited", version=body)
    await stub.CreateChainVersion(request)
    request.release_tags.append("production")
    v2 = (await stub.CreateChainVersion(request)).version
    await stub.SetChainReleaseTag(
        cpb.SetChainReleaseTagRequest(chain="audited", tag="production", version=1)
    )
    await stub.ArchiveChain(cpb.ArchiveChainRequest(chain="audited"))
    await stub.ArchiveChain(cpb.ArchiveChainRequest(chain="audited"))  # no change, no entry
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.CreateChain(cpb.CreateChainRequest(name="audited"))  # refused, no entry

    me = await key_id(pg.channel)
    events = await list_events(pg.channel, resource="chains/audited")
    assert [plain(e) for e in reversed(events)] == [
        {
            "action": "chain.create",
            "resource": "chains/audited",
            "actor": me,
            "before": None,
            "after": {"id": created.id, "description": "", "labels": {}},
        },
        {
            "action": "chain_version.create",
            "resource": "chains/audited/versions/1",
            "actor": me,
            "before": None,
            "after": {"version": 1.0, "id": events[-2].after["id"], "description": ""},
        },
        {
            "action": "chain_version.create",
            "resource": "chains/audited/versions/2",
            "actor": me,
            "before": None,
            "after": {"version": 2.0, "id": v2.id, "description": ""},
        },
        {
            "action": "chain_release_tag.set",
            "resource": "chains/audited/releaseTags/production",
            "actor": me,
            "before": None,
            "after": {"version": 2.0, "version_id": v2.id},
        },
        {
            "action": "chain_release_tag.set",
            "resource": "chains/audited/releaseTags/production",
            "actor": me,
            "before": {"version": 2.0},
            "after": {"version": 1.0, "version_id": events[-2].after["id"]},
        },
        {
            "action": "chain.archive",
            "resource": "chains/audited",
            "actor": me,
            "before": {"archived": False},
            "after": {"archived": True},
        },
    ]
    kinds = await list_events(pg.channel, action="chain_version")
    assert {e.resource for e in kinds} == {
        "chains/audited/versions/1",
        "chains/audited/versions/2",
    }


async def test_a_split_key_keeps_every_step_on_one_variant(pg: Running) -> None:
    await store_support_prompts(pg)
    reply_v2 = ppb.PromptVersion(
        model="mock-1",
        messages=[
            pb.PromptTemplateMessage(
                role=pb.MESSAGE_ROLE_USER, template="V2 {{ ticket }} / {{ classification.label }}"
            )
        ],
        input_variables=[var("ticket"), var("classification", pb.INPUT_TYPE_JSON)],
    )
    await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(prompt="reply", version=reply_v2)
    )
    await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(
            prompt="reply",
            tag="production",
            splits=[
                ppb.VersionWeight(version=1, weight=50),
                ppb.VersionWeight(version=2, weight=50),
            ],
        )
    )
    stub = chains(pg)

    async def reply_version(key: str) -> int:
        response = await stub.ExecuteChain(
            inline_chain(*support_steps(), inputs=[text("ticket", "refund?")], split_key=key)
        )
        steps = await chain_steps(pg, response.chain_execution.id)
        return {s.chain_step: s.meta.prompt_version for s in steps}["reply"]

    assert len({await reply_version("customer-7") for _ in range(8)}) == 1
    seen = {await reply_version(f"customer-{i}") for i in range(40)}
    assert seen == {1, 2}

    code, fields = await bad_request(
        stub.ExecuteChain(
            inline_chain(*support_steps(), inputs=[text("ticket", "x")], split_key="k" * 257)
        )
    )
    assert code == "INVALID_PARAMETERS" and "split_key" in fields
