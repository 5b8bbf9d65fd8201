"""The synchronous client."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from promptgate_client import _build
from promptgate_client._channel import DefaultsInterceptor, RetryPolicy, channel_options
from promptgate_client._errors import ExecutionRejectedError, from_rpc_error
from promptgate_client.v1 import (
    admin_service_pb2_grpc,
    chain_service_pb2,
    chain_service_pb2_grpc,
    common_pb2,
    execution_service_pb2,
    execution_service_pb2_grpc,
    prompt_service_pb2_grpc,
)

Prompt = str | common_pb2.InlinePrompt | execution_service_pb2.ExecutePromptRequest
TERMINAL_BATCH_STATES = frozenset(
    {
        execution_service_pb2.BATCH_STATE_SUCCEEDED,
        execution_service_pb2.BATCH_STATE_FAILED,
        execution_service_pb2.BATCH_STATE_CANCELLED,
    }
)


class Client:
    """A promptgate client over one gRPC channel.

    ``timeout`` (seconds) is the deadline of every call that sets none;
    ``retry`` retries UNAVAILABLE calls in the channel (None: no retries).
    Failed calls raise a :class:`~promptgate_client.StatusError` subclass.
    The generated stubs are ``executions``, ``prompts``, ``chains`` and ``admin``
    (they carry the API key and default deadline too).
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
        raw = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._raw = raw
        self.channel = grpc.intercept_channel(raw, DefaultsInterceptor(api_key, timeout))
        self.executions = execution_service_pb2_grpc.ExecutionServiceStub(self.channel)
        self.prompts = prompt_service_pb2_grpc.PromptServiceStub(self.channel)
        self.chains = chain_service_pb2_grpc.ChainServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def execute(
        self,
        prompt: Prompt,
        *,
        inputs: _build.Inputs | None = None,
        parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> execution_service_pb2.ExecutePromptResponse:
        """Run a stored prompt (name or id), an inline prompt or a full request.

        A REJECTED execution is returned, not raised: check ``response.state``.
        """
        request = _build.execute_request(
            prompt, inputs=inputs, parameters=parameters, metadata=metadata, **fields
        )
        try:
            return self.executions.ExecutePrompt(request, timeout=timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def stream(
        self,
        prompt: Prompt,
        *,
        inputs: _build.Inputs | None = None,
        parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> Iterator[execution_service_pb2.ExecutePromptStreamResponse]:
        """The stream events: initiated, streaming deltas, then fulfilled or rejected.

        Leaving the loop early cancels the call (and the provider request).
        """
        request = _build.execute_request(
            prompt, inputs=inputs, parameters=parameters, metadata=metadata, **fields
        )
        call = self.executions.ExecutePromptStream(request, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def stream_text(
        self,
        prompt: Prompt,
        *,
        inputs: _build.Inputs | None = None,
        parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> Iterator[str]:
        """The text deltas of a streamed execution; raises ExecutionRejectedError if
        it ends REJECTED."""
        for event in self.stream(
            prompt,
            inputs=inputs,
            parameters=parameters,
            metadata=metadata,
            timeout=timeout,
            **fields,
        ):
            kind = event.WhichOneof("event")
            if kind == "streaming":
                yield event.streaming.delta
            elif kind == "rejected":
                error = event.rejected.error
                raise ExecutionRejectedError(event.execution_id, error.code, error.message)

    def execute_chain(
        self,
        chain: _build.Chain,
        *,
        inputs: _build.Inputs | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> chain_service_pb2.ExecuteChainResponse:
        """Run a stored chain (name or id), an InlineChain or a list of steps (built with
        :func:`promptgate_client.chain_step`).

        A REJECTED chain is returned, not raised: check
        ``response.chain_execution.state`` (``failed_step`` names the step).
        """
        request = _build.chain_request(chain, inputs=inputs, metadata=metadata, **fields)
        try:
            return self.chains.ExecuteChain(request, timeout=timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def stream_chain(
        self,
        chain: _build.Chain,
        *,
        inputs: _build.Inputs | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> Iterator[chain_service_pb2.ExecuteChainStreamResponse]:
        """The chain's events: per step step_started, step_delta..., step_finished; then
        chain_fulfilled or chain_rejected. Leaving the loop early cancels the call
        (and the running step)."""
        request = _build.chain_request(chain, inputs=inputs, metadata=metadata, **fields)
        call = self.chains.ExecuteChainStream(request, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def get_chain_execution(
        self, chain_execution_id: str, *, timeout: float | None = None
    ) -> chain_service_pb2.ChainExecution:
        """One chain execution with its steps."""
        request = chain_service_pb2.GetChainExecutionRequest(chain_execution_id=chain_execution_id)
        try:
            return self.chains.GetChainExecution(request, timeout=timeout).chain_execution
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def get_execution(
        self, execution_id: str, *, timeout: float | None = None
    ) -> execution_service_pb2.Execution:
        """One recorded execution."""
        request = execution_service_pb2.GetExecutionRequest(execution_id=execution_id)
        try:
            return self.executions.GetExecution(request, timeout=timeout).execution
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def submit_actuals(
        self, actuals: Iterable[execution_service_pb2.Actual], *, timeout: float | None = None
    ) -> list[execution_service_pb2.Actual]:
        """Store feedback (build entries with :func:`promptgate_client.actual`); all or none."""
        request = execution_service_pb2.SubmitActualsRequest(actuals=list(actuals))
        try:
            return list(self.executions.SubmitActuals(request, timeout=timeout).actuals)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def execute_batch(
        self,
        prompt: str | common_pb2.InlinePrompt,
        items: Iterable[execution_service_pb2.BatchItem],
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> execution_service_pb2.Batch:
        """Create a background batch (build items with :func:`promptgate_client.batch_item`)."""
        request = execution_service_pb2.ExecuteBatchRequest(items=list(items), **fields)
        if isinstance(prompt, common_pb2.InlinePrompt):
            request.inline_prompt.CopyFrom(prompt)
        else:
            request.prompt = prompt
        try:
            return self.executions.ExecuteBatch(request, timeout=timeout).batch
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def get_batch(
        self, batch_id: str, *, timeout: float | None = None
    ) -> execution_service_pb2.Batch:
        """A batch with its counts."""
        request = execution_service_pb2.GetBatchRequest(batch_id=batch_id)
        try:
            return self.executions.GetBatch(request, timeout=timeout).batch
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def wait_batch(
        self, batch_id: str, *, timeout: float | None = None
    ) -> execution_service_pb2.Batch:
        """Watch a batch until it succeeds, fails or is cancelled; return it then."""
        request = execution_service_pb2.WatchBatchRequest(batch_id=batch_id)
        call = self.executions.WatchBatch(request, timeout=timeout)
        try:
            for event in call:
                if event.WhichOneof("event") == "progress":
                    if event.progress.state in TERMINAL_BATCH_STATES:
                        return event.progress
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()  # type: ignore[no-untyped-call]
        return self.get_batch(batch_id, timeout=timeout)

    def batch_results(
        self, batch_id: str, *, page_size: int = 100, timeout: float | None = None
    ) -> Iterator[execution_service_pb2.BatchItemResult]:
        """Every item result of a batch, in item order (pages fetched as needed)."""
        token = ""
        while True:
            request = execution_service_pb2.ListBatchResultsRequest(
                batch_id=batch_id, page_size=page_size, page_token=token
            )
            try:
                page = self.executions.ListBatchResults(request, timeout=timeout)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            yield from page.results
            token = page.next_page_token
            if not token:
                return
