"""Chains between protobuf and the domain: steps, specs, stored chains, requests,
chain executions and stream events."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from promptgate.api.convert.chat import parameters_from_proto, parameters_to_proto
from promptgate.api.convert.executions import (
    _STATES_PB,
    error_to_proto,
    meta_to_proto,
    output_to_proto,
    usage_to_proto,
)
from promptgate.api.convert.prompts import (
    _collect,
    inline_to_proto,
    input_to_proto,
    input_variable_from_proto,
    input_variable_to_proto,
    inputs_from_proto,
    spec_from_inline,
)
from promptgate.api.convert.values import (
    dict_to_struct,
    duration,
    now_timestamp,
    struct_to_dict,
    timestamp,
)
from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import common_pb2 as pb
from promptgate.chains.model import (
    Chain,
    ChainExecution,
    ChainRequest,
    ChainSpec,
    ChainStep,
    ChainVersion,
    InlineChain,
    StepDelta,
    StepFinished,
    StepResult,
    StepStarted,
    StoredChain,
)
from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.execution.model import ExecutionState, InlineTarget, StoredTarget
from promptgate.prompts.model import ReleaseTag, ReleaseTagEvent

# Specs


def step_from_proto(step: cpb.ChainStep, field: str) -> ChainStep:
    """A ChainStep message as a domain step."""
    kind = step.WhichOneof("target")
    target: StoredTarget | InlineTarget
    if kind == "prompt":
        target = StoredTarget(step.prompt, step.release_tag, step.version)
    elif kind == "inline_prompt":
        if step.release_tag or step.version:
            raise InvalidArgument.field(
                f"{field}.release_tag", "release_tag and version apply to stored prompts only"
            )
        target = spec_from_inline(step.inline_prompt, f"{field}.inline_prompt")
    else:
        raise InvalidArgument.field(
            f"{field}.prompt", "set prompt (a stored prompt's id or name) or inline_prompt"
        )
    return ChainStep(
        name=step.name,
        target=target,
        output_variable=step.output_variable,
        parameters=parameters_from_proto(step.parameters) if step.HasField("parameters") else None,
    )


def step_to_proto(step: ChainStep) -> cpb.ChainStep:
    """A domain step as a message."""
    message = cpb.ChainStep(name=step.name, output_variable=step.output_variable)
    if isinstance(step.target, StoredTarget):
        message.prompt = step.target.prompt
        message.release_tag = step.target.release_tag
        message.version = step.target.version
    else:
        message.inline_prompt.CopyFrom(inline_to_proto(step.target))
    if step.parameters is not None:
        message.parameters.CopyFrom(parameters_to_proto(step.parameters))
    return message


def spec_from_proto(
    steps: Sequence[cpb.ChainStep], variables: Sequence[pb.InputVariable], field: str
) -> ChainSpec:
    """The ChainSpec of an InlineChain or ChainVersion message; one error for every bad step."""
    try:
        return ChainSpec(
            steps=tuple(_collect(f"{field}.steps", steps, step_from_proto)),
            input_variables=tuple(
                _collect(f"{field}.input_variables", variables, input_variable_from_proto)
            ),
        )
    except InvalidArgument as exc:
        raise InvalidArgument.of(exc.violations, reason="INVALID_CHAIN") from None


# Stored chains


def chain_to_proto(chain: Chain) -> cpb.Chain:
    """A domain Chain as a message."""
    return cpb.Chain(
        id=chain.id,
        name=chain.name,
        description=chain.description,
        labels=chain.labels,
        archived=chain.archived,
        latest_version=chain.latest_version,
        release_tags=[release_tag_to_proto(t) for t in chain.release_tags],
        create_time=timestamp(chain.created_at),
        update_time=timestamp(chain.updated_at),
    )


def version_to_proto(version: ChainVersion) -> cpb.ChainVersion:
    """A domain ChainVersion as a message."""
    return cpb.ChainVersion(
        id=version.id,
        chain_id=version.chain_id,
        version=version.version,
        steps=[step_to_proto(s) for s in version.spec.steps],
        input_variables=[input_variable_to_proto(v) for v in version.spec.input_variables],
        description=version.description,
        create_time=timestamp(version.created_at),
    )


def release_tag_to_proto(tag: ReleaseTag) -> cpb.ChainReleaseTag:
    """A chain's release tag as a message."""
    return cpb.ChainReleaseTag(
        tag=tag.tag,
        version=tag.version,
        version_id=tag.version_id,
        automatic=tag.automatic,
        update_time=timestamp(tag.updated_at),
    )


def tag_event_to_proto(event: ReleaseTagEvent) -> cpb.ChainReleaseTagEvent:
    """One move of a chain's release tag as a message."""
    return cpb.ChainReleaseTagEvent(
        tag=event.tag,
        version=event.version,
        version_id=event.version_id,
        previous_version=event.previous_version,
        time=timestamp(event.time),
    )


# Executions


def chain_request_from_proto(
    request: cpb.ExecuteChainRequest, *, workspace: str, deadline: float | None, api_key_id: str
) -> ChainRequest:
    """The domain request of an ExecuteChain request."""
    kind = request.WhichOneof("target")
    target: StoredChain | InlineChain
    if kind == "chain":
        target = StoredChain(request.chain, request.release_tag, request.version)
    elif kind == "inline_chain":
        if request.release_tag or request.version:
            raise InvalidArgument.field(
                "release_tag", "release_tag and version apply to stored chains only"
            )
        chain = request.inline_chain
        target = InlineChain(spec_from_proto(chain.steps, chain.input_variables, "inline_chain"))
    else:
        raise InvalidArgument(
            "set chain (a stored chain's id or name) or inline_chain",
            reason="INVALID_CHAIN",
            violations=[FieldViolation("chain", "set chain or inline_chain")],
        )
    timeout: float | None = None
    if request.HasField("timeout"):
        timeout = request.timeout.seconds + request.timeout.nanos / 1e9
        if not math.isfinite(timeout) or timeout <= 0:
            raise InvalidArgument.field("timeout", "must be positive")
    return ChainRequest(
        workspace_id=workspace,
        target=target,
        inputs=inputs_from_proto(request.inputs),
        external_id=request.external_id,
        metadata=struct_to_dict(request.metadata) if request.HasField("metadata") else {},
        timeout=timeout,
        deadline=deadline,
        api_key_id=api_key_id,
        split_key=request.split_key,
    )


def step_result_to_proto(result: StepResult) -> cpb.ChainStepResult:
    """What one step did, as a message (outputs and meta when its execution is at hand)."""
    message = cpb.ChainStepResult(
        name=result.name,
        output_variable=result.output_variable,
        execution_id=result.execution_id,
        state=_STATES_PB[result.state],
        error=error_to_proto(result.error),
    )
    record = result.record
    if record is not None:
        if record.state is ExecutionState.FULFILLED:
            message.outputs.extend(output_to_proto(o) for o in record.outputs)
        message.meta.CopyFrom(meta_to_proto(record))
    return message


def chain_execution_to_proto(execution: ChainExecution) -> cpb.ChainExecution:
    """A chain execution as a message."""
    return cpb.ChainExecution(
        id=execution.id,
        state=_STATES_PB[execution.state],
        external_id=execution.external_id,
        chain_id=execution.chain_id,
        chain_name=execution.chain_name,
        chain_version=execution.version,
        chain_version_id=execution.version_id,
        release_tag=execution.release_tag,
        inputs=[input_to_proto(i) for i in execution.inputs],
        outputs=[output_to_proto(o) for o in execution.outputs],
        steps=[step_result_to_proto(s) for s in execution.steps],
        error=error_to_proto(execution.error),
        failed_step=execution.failed_step,
        usage=usage_to_proto(execution.usage, execution.input_chars, execution.output_chars),
        cost=pb.Cost(
            value=execution.cost.value, unit=execution.cost.unit, priced=execution.cost.priced
        ),
        metadata=dict_to_struct(execution.metadata) if execution.metadata else None,
        create_time=timestamp(execution.created_at),
        complete_time=timestamp(execution.completed_at),
        streamed=execution.streamed,
        latency=duration(execution.latency) if execution.completed_at else None,
    )


def execute_response(execution: ChainExecution) -> cpb.ExecuteChainResponse:
    """The ExecuteChain response for a finished chain execution."""
    return cpb.ExecuteChainResponse(
        chain_execution=chain_execution_to_proto(execution), replayed=execution.replayed
    )


def stream_event(event: StepStarted | StepDelta | StepFinished) -> cpb.ExecuteChainStreamResponse:
    """A step event of ExecuteChainStream."""
    message = cpb.ExecuteChainStreamResponse(chain_execution_id=event.chain, time=now_timestamp())
    if isinstance(event, StepStarted):
        record = event.record
        message.step_started.CopyFrom(
            cpb.ChainStepStartedEvent(
                step=event.step,
                step_index=event.index,
                execution_id=record.id,
                meta=meta_to_proto(
                    record, pb.ExpandMeta(model=True, prompt_version=True, parameters=True)
                ),
            )
        )
    elif isinstance(event, StepDelta):
        message.step_delta.CopyFrom(
            cpb.ChainStepDeltaEvent(
                step=event.step,
                step_index=event.index,
                output_index=event.output_index,
                delta=event.text,
            )
        )
    else:
        message.step_finished.CopyFrom(
            cpb.ChainStepFinishedEvent(
                step_index=event.index, result=step_result_to_proto(event.result)
            )
        )
    return message


def finished_event(execution: ChainExecution) -> cpb.ExecuteChainStreamResponse:
    """The terminal CHAIN_FULFILLED or CHAIN_REJECTED event."""
    message = cpb.ExecuteChainStreamResponse(
        chain_execution_id=execution.id,
        time=timestamp(execution.completed_at or datetime.now().astimezone()),
    )
    finished = cpb.ChainFinishedEvent(
        chain_execution=chain_execution_to_proto(execution), replayed=execution.replayed
    )
    if execution.state is ExecutionState.FULFILLED:
        message.chain_fulfilled.CopyFrom(finished)
    else:
        message.chain_rejected.CopyFrom(finished)
    return message
