"""Batches between protobuf and the domain: specs, states, item results and
watch events."""

from __future__ import annotations

from promptgate.api.convert.chat import parameters_from_proto
from promptgate.api.convert.executions import (
    error_to_proto,
    meta_to_proto,
    output_to_proto,
    target_from_proto,
    usage_to_proto,
)
from promptgate.api.convert.prompts import inputs_from_proto
from promptgate.api.convert.values import dict_to_struct, struct_to_dict, timestamp
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.batches.model import (
    Batch,
    BatchEvent,
    BatchItemSpec,
    BatchSpec,
    BatchState,
    ItemResult,
    ItemState,
)
from promptgate.chains.model import StoredChain
from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.execution.model import ExecutionState, InlineTarget, StoredTarget

# Batches

_BATCH_STATES_PB = {
    BatchState.PENDING: epb.BATCH_STATE_PENDING,
    BatchState.RUNNING: epb.BATCH_STATE_RUNNING,
    BatchState.SUCCEEDED: epb.BATCH_STATE_SUCCEEDED,
    BatchState.FAILED: epb.BATCH_STATE_FAILED,
    BatchState.CANCELLED: epb.BATCH_STATE_CANCELLED,
}
_ITEM_STATES_PB = {
    ItemState.PENDING: epb.BATCH_ITEM_STATE_PENDING,
    ItemState.RUNNING: epb.BATCH_ITEM_STATE_RUNNING,
    ItemState.FULFILLED: epb.BATCH_ITEM_STATE_FULFILLED,
    ItemState.REJECTED: epb.BATCH_ITEM_STATE_REJECTED,
    ItemState.CANCELLED: epb.BATCH_ITEM_STATE_CANCELLED,
}
_ITEM_STATES: dict[epb.BatchItemState.ValueType, ItemState] = {
    v: k for k, v in _ITEM_STATES_PB.items()
}


def batch_spec_from_proto(
    request: epb.ExecuteBatchRequest, *, workspace: str, api_key_id: str = ""
) -> BatchSpec:
    """The domain batch of an ExecuteBatch request."""
    target: StoredTarget | InlineTarget | StoredChain
    if request.WhichOneof("target") == "chain":
        target = StoredChain(request.chain, request.release_tag, request.version)
    else:
        target = target_from_proto(request)
    items = []
    problems: list[FieldViolation] = []
    for i, item in enumerate(request.items):
        try:
            inputs = inputs_from_proto(item.inputs, field=f"items[{i}].inputs")
        except InvalidArgument as exc:
            problems.extend(exc.violations)
            continue
        items.append(
            BatchItemSpec(
                custom_id=item.custom_id,
                inputs=inputs,
                parameters=(
                    parameters_from_proto(item.parameters) if item.HasField("parameters") else None
                ),
                metadata=struct_to_dict(item.metadata) if item.HasField("metadata") else {},
            )
        )
    if problems:
        raise InvalidArgument.of(problems[:100], reason="INVALID_INPUT")
    return BatchSpec(
        workspace_id=workspace,
        target=target,
        items=tuple(items),
        display_name=request.display_name,
        max_concurrency=request.max_concurrency,
        callback_url=request.callback_url,
        metadata=struct_to_dict(request.metadata) if request.HasField("metadata") else {},
        parameters=(
            parameters_from_proto(request.parameters) if request.HasField("parameters") else None
        ),
        api_key_id=api_key_id,
    )


def batch_to_proto(batch: Batch) -> epb.Batch:
    """A domain Batch as a message."""
    return epb.Batch(
        id=batch.id,
        display_name=batch.display_name,
        state=_BATCH_STATES_PB[batch.state],
        counts=epb.BatchCounts(
            total=batch.total,
            pending=batch.pending,
            succeeded=batch.succeeded,
            rejected=batch.rejected,
            cancelled=batch.cancelled,
        ),
        prompt_id=batch.prompt_id,
        release_tag=batch.release_tag,
        version=batch.version,
        max_concurrency=batch.max_concurrency,
        callback_url=batch.callback_url,
        create_time=timestamp(batch.created_at),
        start_time=timestamp(batch.started_at),
        end_time=timestamp(batch.ended_at),
        metadata=dict_to_struct(batch.metadata) if batch.metadata else None,
        error=error_to_proto(batch.error),
        callback_state=batch.callback_state,
        callback_attempts=batch.callback_attempts,
        chain_id=batch.chain_id,
    )


def item_result_to_proto(result: ItemResult) -> epb.BatchItemResult:
    """A batch item's result as a message."""
    message = epb.BatchItemResult(
        custom_id=result.custom_id,
        index=result.index,
        state=_ITEM_STATES_PB[result.state],
        execution_id=result.execution_id,
    )
    chain = result.chain
    if chain is not None:
        message.execution_id = ""
        message.chain_execution_id = chain.id
        if chain.state is ExecutionState.FULFILLED:
            message.outputs.extend(output_to_proto(o) for o in chain.outputs)
        message.meta.usage.CopyFrom(
            usage_to_proto(chain.usage, chain.input_chars, chain.output_chars)
        )
        message.meta.cost.CopyFrom(
            pb.Cost(value=chain.cost.value, unit=chain.cost.unit, priced=chain.cost.priced)
        )
    record = result.execution
    if record is not None:
        if record.state is ExecutionState.FULFILLED:
            message.outputs.extend(output_to_proto(o) for o in record.outputs)
        message.meta.CopyFrom(meta_to_proto(record))
    error = result.error or (record.error if record is not None else None)
    if error is None and chain is not None:
        error = chain.error
    failure = error_to_proto(error) if result.state is not ItemState.FULFILLED else None
    if failure is not None:
        message.error.CopyFrom(failure)
    return message


def item_state_from_proto(state: epb.BatchItemState.ValueType) -> ItemState | None:
    """A BatchItemState filter (None for UNSPECIFIED)."""
    return _ITEM_STATES.get(state)


def batch_event_to_proto(event: BatchEvent) -> epb.WatchBatchResponse:
    """A WatchBatch event as a message."""
    if event.item is not None:
        return epb.WatchBatchResponse(
            sequence=event.seq, item_result=item_result_to_proto(event.item)
        )
    assert event.progress is not None
    return epb.WatchBatchResponse(sequence=event.seq, progress=batch_to_proto(event.progress))
