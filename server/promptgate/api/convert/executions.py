"""Executions between protobuf and the domain: requests, outputs, meta, stream
events, actuals and attempts."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from promptgate.api.convert.chat import (
    function_call_to_proto,
    parameters_from_proto,
    parameters_to_proto,
    response_format_from_proto,
    tool_choice_from_proto,
    tool_from_proto,
)
from promptgate.api.convert.prompts import (
    CACHE_STATUS_PB,
    cache_from_proto,
    input_to_proto,
    inputs_from_proto,
    routing_from_proto,
    spec_from_inline,
)
from promptgate.api.convert.values import (
    dict_to_struct,
    duration,
    now_timestamp,
    python_to_value,
    struct_to_dict,
    timestamp,
    to_datetime,
)
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.chat import (
    FinishReason,
    Usage,
)
from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.execution.actuals import Actual
from promptgate.execution.model import (
    Attempt,
    ExecutionFailure,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionState,
    FunctionCallOutput,
    InlineTarget,
    JsonOutput,
    Output,
    StoredTarget,
    TextOutput,
)
from promptgate.prompts.model import (
    CachePolicy,
    Routing,
)

_FINISH_PB = {
    FinishReason.UNSPECIFIED: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_STATES_PB = {
    ExecutionState.RUNNING: pb.EXECUTION_STATE_RUNNING,
    ExecutionState.FULFILLED: pb.EXECUTION_STATE_FULFILLED,
    ExecutionState.REJECTED: pb.EXECUTION_STATE_REJECTED,
}
_STATES: dict[pb.ExecutionState.ValueType, ExecutionState] = {v: k for k, v in _STATES_PB.items()}


# Executions


def target_from_proto(
    request: epb.ExecutePromptRequest | epb.ExecuteBatchRequest | ppb.RenderPromptRequest,
) -> StoredTarget | InlineTarget:
    """The stored or inline prompt a request names."""
    target_kind = request.WhichOneof("target")
    if target_kind == "prompt":
        return StoredTarget(request.prompt, request.release_tag, request.version)
    if target_kind == "inline_prompt":
        if request.release_tag or request.version:
            raise InvalidArgument.field(
                "release_tag", "release_tag and version apply to stored prompts only"
            )
        return spec_from_inline(request.inline_prompt)
    raise InvalidArgument(
        "set prompt (a stored prompt's id or name) or inline_prompt",
        reason="INVALID_PROMPT",
        violations=[FieldViolation("prompt", "set prompt or inline_prompt")],
    )


def execution_request_from_proto(
    request: epb.ExecutePromptRequest | ppb.RenderPromptRequest,
    *,
    workspace: str,
    deadline: float | None,
    api_key_id: str = "",
) -> ExecutionRequest:
    """The domain request of an ExecutePrompt (or RenderPrompt) request."""
    target = target_from_proto(request)
    timeout: float | None = None
    external_id = ""
    metadata: dict[str, Any] = {}
    expand_raw: tuple[str, ...] = ()
    routing: Routing | None = None
    cache: CachePolicy | None = None
    if isinstance(request, epb.ExecutePromptRequest):
        if request.HasField("routing"):
            routing = routing_from_proto(request.routing)
        if request.HasField("cache"):
            cache = cache_from_proto(request.cache)
        if request.HasField("timeout"):
            timeout = request.timeout.seconds + request.timeout.nanos / 1e9
            if not math.isfinite(timeout) or timeout <= 0:
                raise InvalidArgument.field("timeout", "must be positive")
        external_id = request.external_id
        if request.HasField("metadata"):
            metadata = struct_to_dict(request.metadata)
        expand_raw = tuple(request.expand_raw)
    return ExecutionRequest(
        workspace_id=workspace,
        target=target,
        inputs=inputs_from_proto(request.inputs),
        external_id=external_id,
        metadata=metadata,
        parameters=parameters_from_proto(request.parameters)
        if request.HasField("parameters")
        else None,
        response_format=(
            response_format_from_proto(request.response_format)
            if request.HasField("response_format")
            else None
        ),
        tools=tuple(tool_from_proto(t) for t in request.tools) if request.tools else None,
        tool_choice=tool_choice_from_proto(request.tool_choice)
        if request.HasField("tool_choice")
        else None,
        expand_raw=expand_raw,
        raw_body=struct_to_dict(request.raw_overrides.body)
        if request.raw_overrides.HasField("body")
        else {},
        raw_headers=dict(request.raw_overrides.headers),
        model=request.model,
        provider=request.provider,
        timeout=timeout,
        deadline=deadline,
        routing=routing,
        cache=cache,
        api_key_id=api_key_id,
        split_key=request.split_key,
    )


def output_to_proto(output: Output) -> pb.PromptOutput:
    """A domain output as a message."""
    if isinstance(output, TextOutput):
        return pb.PromptOutput(string_value=output.text)
    if isinstance(output, JsonOutput):
        return pb.PromptOutput(json_value=python_to_value(output.value))
    assert isinstance(output, FunctionCallOutput)
    return pb.PromptOutput(function_call=function_call_to_proto(output.call))


def error_to_proto(error: ExecutionFailure | None) -> pb.ExecutionError | None:
    """A domain failure as a message (None stays unset)."""
    if error is None:
        return None
    return pb.ExecutionError(
        code=error.code,
        message=error.message,
        provider_status=error.provider_status,
        retry_after=duration(error.retry_after),
    )


def usage_to_proto(usage: Usage, input_chars: int, output_chars: int) -> pb.Usage:
    """Usage as a message."""
    return pb.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        input_chars=input_chars,
        output_chars=output_chars,
    )


def meta_to_proto(record: ExecutionRecord, expand: pb.ExpandMeta | None = None) -> pb.ExecutionMeta:
    """The meta of ``record``, limited to the groups ``expand`` asks for (all if None)."""
    every = expand is None

    def wanted(group: str) -> bool:
        return every or bool(getattr(expand, group))

    meta = pb.ExecutionMeta()
    if wanted("model"):
        meta.provider = record.provider
        meta.model = record.model
    if wanted("prompt_version"):
        meta.prompt_id = record.prompt_id
        meta.prompt_version_id = record.version_id
        meta.prompt_version = record.version
        meta.release_tag = record.release_tag
        meta.split_id = record.split_id
    if wanted("finish_reason"):
        meta.finish_reason = _FINISH_PB[record.finish_reason]
    if wanted("usage"):
        meta.usage.CopyFrom(usage_to_proto(record.usage, record.input_chars, record.output_chars))
    if wanted("cost"):
        meta.cost.CopyFrom(
            pb.Cost(value=record.cost.value, unit=record.cost.unit, priced=record.cost.priced)
        )
    if wanted("latency"):
        meta.latency.FromTimedelta(timedelta(seconds=record.latency))
        if record.time_to_first_token is not None:
            meta.time_to_first_token.FromTimedelta(timedelta(seconds=record.time_to_first_token))
    if wanted("parameters"):
        meta.parameters.CopyFrom(parameters_to_proto(record.parameters))
    if wanted("routing"):
        meta.cache_hit = record.cache_hit
        meta.attempts = record.attempts
        meta.cache_status = CACHE_STATUS_PB.get(record.cache_status, pb.CACHE_STATUS_UNSPECIFIED)
        meta.target_index = record.target_index
    return meta


def _expand(request: epb.ExecutePromptRequest) -> pb.ExpandMeta | None:
    return request.expand_meta if request.HasField("expand_meta") else None


def execute_response(
    record: ExecutionRecord, request: epb.ExecutePromptRequest
) -> epb.ExecutePromptResponse:
    """The ExecutePrompt response for a finished execution."""
    return epb.ExecutePromptResponse(
        execution_id=record.id,
        state=_STATES_PB[record.state],
        outputs=[output_to_proto(o) for o in record.outputs]
        if record.state is ExecutionState.FULFILLED
        else [],
        error=error_to_proto(record.error),
        meta=meta_to_proto(record, _expand(request)),
        raw=dict_to_struct(record.raw) if record.raw else None,
        external_id=record.external_id,
        replayed=record.replayed,
    )


def _known_at_start(expand: pb.ExpandMeta | None) -> pb.ExpandMeta:
    """Meta groups that are known when an execution starts, as far as asked for."""
    asked = expand or pb.ExpandMeta(model=True, prompt_version=True, parameters=True)
    return pb.ExpandMeta(
        model=asked.model, prompt_version=asked.prompt_version, parameters=asked.parameters
    )


def initiated_event(
    record: ExecutionRecord, request: epb.ExecutePromptRequest
) -> epb.ExecutePromptStreamResponse:
    """The INITIATED stream event."""
    return epb.ExecutePromptStreamResponse(
        execution_id=record.id,
        time=timestamp(datetime.now(record.created_at.tzinfo)),
        initiated=epb.InitiatedEvent(
            meta=meta_to_proto(record, _known_at_start(_expand(request))),
            external_id=record.external_id,
            replayed=record.replayed,
        ),
    )


def delta_event(execution_id: str, text: str, index: int) -> epb.ExecutePromptStreamResponse:
    """A STREAMING stream event."""
    return epb.ExecutePromptStreamResponse(
        execution_id=execution_id,
        time=now_timestamp(),
        streaming=epb.StreamingEvent(output_index=index, delta=text),
    )


def finished_event(
    record: ExecutionRecord, request: epb.ExecutePromptRequest
) -> epb.ExecutePromptStreamResponse:
    """The terminal FULFILLED or REJECTED stream event."""
    event = epb.ExecutePromptStreamResponse(
        execution_id=record.id, time=timestamp(record.completed_at or datetime.now().astimezone())
    )
    meta = meta_to_proto(record, _expand(request))
    if record.state is ExecutionState.FULFILLED:
        event.fulfilled.CopyFrom(
            epb.FulfilledEvent(
                outputs=[output_to_proto(o) for o in record.outputs],
                meta=meta,
                raw=dict_to_struct(record.raw) if record.raw else None,
            )
        )
    else:
        event.rejected.CopyFrom(epb.RejectedEvent(error=error_to_proto(record.error), meta=meta))
    return event


def actual_from_proto(actual: epb.Actual) -> Actual:
    """An Actual message as submitted."""
    return Actual(
        execution_id=actual.execution_id,
        external_id=actual.external_id,
        quality=actual.quality if actual.HasField("quality") else None,
        desired_output=actual.desired_output,
        metadata=struct_to_dict(actual.metadata) if actual.HasField("metadata") else {},
        observed_at=to_datetime(actual.time, "actuals.time") if actual.HasField("time") else None,
    )


def actual_to_proto(actual: Actual) -> epb.Actual:
    """A stored actual as a message."""
    message = epb.Actual(
        id=actual.id,
        execution_id=actual.execution_id,
        desired_output=actual.desired_output,
        metadata=dict_to_struct(actual.metadata) if actual.metadata else None,
        time=timestamp(actual.observed_at),
    )
    if actual.quality is not None:
        message.quality = actual.quality
    return message


def execution_to_proto(record: ExecutionRecord) -> epb.Execution:
    """A recorded execution as a message."""
    return epb.Execution(
        id=record.id,
        state=_STATES_PB[record.state],
        external_id=record.external_id,
        prompt_name=record.prompt_name,
        inputs=[input_to_proto(i) for i in record.inputs],
        outputs=[output_to_proto(o) for o in record.outputs],
        error=error_to_proto(record.error),
        meta=meta_to_proto(record),
        metadata=dict_to_struct(record.metadata) if record.metadata else None,
        create_time=timestamp(record.created_at),
        complete_time=timestamp(record.completed_at),
        streamed=record.streamed,
        actuals=[actual_to_proto(a) for a in record.actuals],
        attempt_log=[attempt_to_proto(a) for a in record.attempt_log],
        chain_execution_id=record.chain_execution_id,
        chain_step=record.chain_step,
        trace_id=record.trace_id,
    )


def state_from_proto(state: pb.ExecutionState.ValueType) -> ExecutionState | None:
    """An ExecutionState filter (None for UNSPECIFIED)."""
    return _STATES.get(state)


def attempt_to_proto(attempt: Attempt) -> pb.ExecutionAttempt:
    """One provider call as a message."""
    failure = attempt.failure
    return pb.ExecutionAttempt(
        number=attempt.number,
        provider=attempt.provider,
        model=attempt.model,
        error_code=failure.code if failure else "",
        error_message=failure.message if failure else "",
        provider_status=failure.provider_status if failure else 0,
        latency=duration(attempt.latency_s),
    )
