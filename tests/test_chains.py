"""ChainService through real gRPC: inline and stored chains, unary and streamed, on the
mock provider and on a local OpenAI-wire server (for priced usage)."""

from __future__ import annotations

from typing import Any

from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import chain_service_pb2_grpc as cpb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from tests.conftest import Running

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
