"""The asyncio client (grpc.aio)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

from promptgate_client import _build
from promptgate_client._channel import (
    AsyncStreamDefaults,
    AsyncUnaryDefaults,
    RetryPolicy,
    channel_options,
)
from promptgate_client._errors import ExecutionRejectedError, from_rpc_error
from promptgate_client._sync import TERMINAL_BATCH_STATES, Prompt
from promptgate_client.v1 import (
    admin_service_pb2_grpc,
    chain_service_pb2,
    chain_service_pb2_grpc,
    common_pb2,
    execution_service_pb2,
    execution_service_pb2_grpc,
    prompt_service_pb2_grpc,
)


class AsyncClient:
    """The asyncio twin of :class:`~promptgate_client.Client` (same methods, awaited).

    Create it inside a running event loop; ``await client.close()`` or use
    ``async with``.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        credentials: grpc.ChannelCredentials | None = None,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 (frozen)
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = channel_options(retry, options)
        interceptors: list[Any] = [
            AsyncUnaryDefaults(api_key, timeout),
            AsyncStreamDefaults(api_key, timeout),
        ]
        self.channel = (
            aio.secure_channel(target, credentials, options=opts, interceptors=interceptors)
            if credentials is not None
            else aio.insecure_channel(target, options=opts, interceptors=interceptors)
        )
        self.executions = execution_service_pb2_grpc.ExecutionServiceStub(self.channel)
        self.prompts = prompt_service_pb2_grpc.PromptServiceStub(self.channel)
        self.chains = chain_service_pb2_grpc.ChainServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def execute(
        self,
        prompt: Prompt,
        *,
        inputs: _build.Inputs | None = None,
        parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> execution_service_pb2.ExecutePromptResponse:
        """Run a prompt; a REJECTED execution is returned, not raised."""
        request = _build.execute_request(
            prompt, inputs=inputs, parameters=parameters, metadata=metadata, **fields
        )
        try:
            return await self.executions.ExecutePrompt(request, timeout=timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def stream(
        self,
        prompt: Prompt,
        *,
        inputs: _build.Inputs | None = None,
        parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> AsyncIterator[execution_service_pb2.ExecutePromptStreamResponse]:
        """The stream events; leaving the loop early cancels the call."""
        request = _build.execute_request(
            prompt, inputs=inputs, parameters=parameters, metadata=metadata, **fields
        )
        call = self.executions.ExecutePromptStream(request, timeout=timeout)
        try:
            async for event in call:
                yield event
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    async def stream_text(
        self,
        prompt: Prompt,
        *,
        inputs: _build.Inputs | None = None,
        parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> AsyncIterator[str]:
        """The text deltas; raises ExecutionRejectedError if the execution is REJECTED."""
        events = self.stream(
            prompt,
            inputs=inputs,
            parameters=parameters,
            metadata=metadata,
            timeout=timeout,
            **fields,
        )
        async for event in events:
            kind = event.WhichOneof("event")
            if kind == "streaming":
                yield event.streaming.delta
            elif kind == "rejected":
                error = event.rejected.error
                raise ExecutionRejectedError(event.execution_id, error.code, error.message)

    async def execute_chain(
        self,
        chain: _build.Chain,
        *,
        inputs: _build.Inputs | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> chain_service_pb2.ExecuteChainResponse:
        """Run a chain; a REJECTED chain is returned, not raised."""
        request = _build.chain_request(chain, inputs=inputs, metadata=metadata, **fields)
        try:
            return await self.chains.ExecuteChain(request, timeout=timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def stream_chain(
        self,
        chain: _build.Chain,
        *,
        inputs: _build.Inputs | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> AsyncIterator[chain_service_pb2.ExecuteChainStreamResponse]:
        """The chain's events; leaving the loop early cancels the call."""
        request = _build.chain_request(chain, inputs=inputs, metadata=metadata, **fields)
        call = self.chains.ExecuteChainStream(request, timeout=timeout)
        try:
            async for event in call:
                yield event
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()

    async def get_chain_execution(
        self, chain_execution_id: str, *, timeout: float | None = None
    ) -> chain_service_pb2.ChainExecution:
        """One chain execution with its steps."""
        request = chain_service_pb2.GetChainExecutionRequest(chain_execution_id=chain_execution_id)
        try:
            return (await self.chains.GetChainExecution(request, timeout=timeout)).chain_execution
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def get_execution(
        self, execution_id: str, *, timeout: float | None = None
    ) -> execution_service_pb2.Execution:
        """One recorded execution."""
        request = execution_service_pb2.GetExecutionRequest(execution_id=execution_id)
        try:
            return (await self.executions.GetExecution(request, timeout=timeout)).execution
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def submit_actuals(
        self, actuals: Iterable[execution_service_pb2.Actual], *, timeout: float | None = None
    ) -> list[execution_service_pb2.Actual]:
        """Store feedback; all entries or none."""
        request = execution_service_pb2.SubmitActualsRequest(actuals=list(actuals))
        try:
            return list((await self.executions.SubmitActuals(request, timeout=timeout)).actuals)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def execute_batch(
        self,
        prompt: str | common_pb2.InlinePrompt,
        items: Iterable[execution_service_pb2.BatchItem],
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> execution_service_pb2.Batch:
        """Create a background batch."""
        request = execution_service_pb2.ExecuteBatchRequest(items=list(items), **fields)
        if isinstance(prompt, common_pb2.InlinePrompt):
            request.inline_prompt.CopyFrom(prompt)
        else:
            request.prompt = prompt
        try:
            return (await self.executions.ExecuteBatch(request, timeout=timeout)).batch
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def get_batch(
        self, batch_id: str, *, timeout: float | None = None
    ) -> execution_service_pb2.Batch:
        """A batch with its counts."""
        request = execution_service_pb2.GetBatchRequest(batch_id=batch_id)
        try:
            return (await self.executions.GetBatch(request, timeout=timeout)).batch
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def wait_batch(
        self, batch_id: str, *, timeout: float | None = None
    ) -> execution_service_pb2.Batch:
        """Watch a batch until it succeeds, fails or is cancelled; return it then."""
        request = execution_service_pb2.WatchBatchRequest(batch_id=batch_id)
        call = self.executions.WatchBatch(request, timeout=timeout)
        try:
            async for event in call:
                if event.WhichOneof("event") == "progress":
                    if event.progress.state in TERMINAL_BATCH_STATES:
                        return event.progress
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()
        return await self.get_batch(batch_id, timeout=timeout)

    async def batch_results(
        self, batch_id: str, *, page_size: int = 100, timeout: float | None = None
    ) -> AsyncIterator[execution_service_pb2.BatchItemResult]:
        """Every item result of a batch, in item order."""
        token = ""
        while True:
            request = execution_service_pb2.ListBatchResultsRequest(
                batch_id=batch_id, page_size=page_size, page_token=token
            )
            try:
                page = await self.executions.ListBatchResults(request, timeout=timeout)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            for result in page.results:
                yield result
            token = page.next_page_token
            if not token:
                return
