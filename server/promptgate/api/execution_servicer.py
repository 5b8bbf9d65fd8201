"""ExecutionService: thin mapping between gRPC and the Executor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from promptgate.api.context import CallContext
from promptgate.api.convert.batches import (
    batch_event_to_proto,
    batch_spec_from_proto,
    batch_to_proto,
    item_result_to_proto,
    item_state_from_proto,
)
from promptgate.api.convert.executions import (
    actual_from_proto,
    actual_to_proto,
    delta_event,
    execute_response,
    execution_request_from_proto,
    execution_to_proto,
    finished_event,
    initiated_event,
    state_from_proto,
)
from promptgate.api.convert.values import to_datetime
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc as epb_grpc
from promptgate.batches.service import BatchService
from promptgate.errors import InvalidArgument
from promptgate.execution.actuals import ActualsLog
from promptgate.execution.executor import Executor
from promptgate.execution.model import Delta, Finished, Initiated
from promptgate.execution.records import ExecutionHistory
from promptgate.prompts.catalog import PromptCatalog

Context = grpc.aio.ServicerContext[Any, Any]


class ExecutionServicer(epb_grpc.ExecutionServiceServicer):
    """Serves promptgate.v1.ExecutionService."""

    def __init__(
        self,
        executor: Executor,
        history: ExecutionHistory,
        catalog: PromptCatalog,
        actuals: ActualsLog,
        batches: BatchService,
        calls: CallContext,
        *,
        batch_max_bytes: int,
    ) -> None:
        self._executor = executor
        self._history = history
        self._catalog = catalog
        self._actuals = actuals
        self._batches = batches
        self._calls = calls
        self._batch_max_bytes = batch_max_bytes

    async def ExecutePrompt(
        self, request: epb.ExecutePromptRequest, context: Context
    ) -> epb.ExecutePromptResponse:
        domain = execution_request_from_proto(
            request,
            workspace=self._calls.workspace(context),
            deadline=self._calls.deadline(context),
            api_key_id=self._calls.api_key_id(context),
        )
        record = await self._executor.execute(domain)
        return execute_response(record, request)

    async def ExecutePromptStream(
        self, request: epb.ExecutePromptRequest, context: Context
    ) -> AsyncIterator[epb.ExecutePromptStreamResponse]:
        domain = execution_request_from_proto(
            request,
            workspace=self._calls.workspace(context),
            deadline=self._calls.deadline(context),
            api_key_id=self._calls.api_key_id(context),
        )
        execution_id = ""
        async with contextlib.aclosing(self._executor.stream(domain)) as events:
            async for event in events:
                if isinstance(event, Initiated):
                    execution_id = event.record.id
                    yield initiated_event(event.record, request)
                elif isinstance(event, Delta):
                    yield delta_event(execution_id, event.text, event.index)
                elif isinstance(event, Finished):
                    yield finished_event(event.record, request)

    async def GetExecution(
        self, request: epb.GetExecutionRequest, context: Context
    ) -> epb.GetExecutionResponse:
        record = await self._history.get(
            self._calls.workspace(context),
            execution_id=request.execution_id,
            external_id=request.external_id,
        )
        return epb.GetExecutionResponse(execution=execution_to_proto(record))

    async def ListExecutions(
        self, request: epb.ListExecutionsRequest, context: Context
    ) -> epb.ListExecutionsResponse:
        workspace = self._calls.workspace(context)
        prompt_id = ""
        if request.prompt:
            prompt_id = (await self._catalog.get_prompt(workspace, request.prompt)).id
        records, token = await self._history.list(
            workspace,
            size=request.page_size,
            token=request.page_token,
            prompt_id=prompt_id,
            version=request.version,
            release_tag=request.release_tag,
            state=state_from_proto(request.state),
            start=to_datetime(request.start_time, "start_time")
            if request.HasField("start_time")
            else None,
            end=to_datetime(request.end_time, "end_time") if request.HasField("end_time") else None,
            chain_execution_id=request.chain_execution_id,
        )
        return epb.ListExecutionsResponse(
            executions=[execution_to_proto(r) for r in records], next_page_token=token
        )

    async def SubmitActuals(
        self, request: epb.SubmitActualsRequest, context: Context
    ) -> epb.SubmitActualsResponse:
        entries = [actual_from_proto(a) for a in request.actuals]
        stored = await self._actuals.submit(self._calls.workspace(context), entries)
        return epb.SubmitActualsResponse(actuals=[actual_to_proto(a) for a in stored])

    async def ExecuteBatch(
        self, request: epb.ExecuteBatchRequest, context: Context
    ) -> epb.ExecuteBatchResponse:
        size = request.ByteSize()
        if size > self._batch_max_bytes:
            raise InvalidArgument.field(
                "items",
                f"the request is {size} bytes, more than the batch limit of "
                f"{self._batch_max_bytes}; split it into several batches",
                reason="INVALID_BATCH",
            )
        spec = batch_spec_from_proto(
            request,
            workspace=self._calls.workspace(context),
            api_key_id=self._calls.api_key_id(context),
        )
        batch = await self._batches.create(spec)
        return epb.ExecuteBatchResponse(batch=batch_to_proto(batch))

    async def GetBatch(
        self, request: epb.GetBatchRequest, context: Context
    ) -> epb.GetBatchResponse:
        batch = await self._batches.get(self._calls.workspace(context), request.batch_id)
        return epb.GetBatchResponse(batch=batch_to_proto(batch))

    async def WatchBatch(
        self, request: epb.WatchBatchRequest, context: Context
    ) -> AsyncIterator[epb.WatchBatchResponse]:
        events = self._batches.watch(
            self._calls.workspace(context), request.batch_id, request.after_sequence
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield batch_event_to_proto(event)

    async def ListBatchResults(
        self, request: epb.ListBatchResultsRequest, context: Context
    ) -> epb.ListBatchResultsResponse:
        results, token = await self._batches.results(
            self._calls.workspace(context),
            request.batch_id,
            size=request.page_size,
            token=request.page_token,
            state=item_state_from_proto(request.state),
        )
        return epb.ListBatchResultsResponse(
            results=[item_result_to_proto(r) for r in results], next_page_token=token
        )

    async def CancelBatch(
        self, request: epb.CancelBatchRequest, context: Context
    ) -> epb.CancelBatchResponse:
        batch = await self._batches.cancel(self._calls.workspace(context), request.batch_id)
        return epb.CancelBatchResponse(batch=batch_to_proto(batch))
