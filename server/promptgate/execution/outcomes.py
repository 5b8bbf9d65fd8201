"""Outcomes: how an execution's record ends, FULFILLED or REJECTED.

The executor runs a plan; this module turns what happened (a provider
response, a cached answer, a provider error, a timeout, a cancellation) into
the record's final state, outputs, usage, cost and error. It also says which
rejections are transient: those an idempotent retry runs again instead of
replaying (see ``is_transient``).
"""

from __future__ import annotations

import time
from datetime import timedelta

from promptgate.chat import FinishReason, ResponseFormatType, Usage
from promptgate.errors import ProviderError
from promptgate.execution.cache import CachedAnswer
from promptgate.execution.model import (
    Cost,
    ExecutionFailure,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionState,
    FunctionCallOutput,
    JsonOutput,
    Output,
    TextOutput,
)
from promptgate.execution.planning import ExecutorLimits, Plan
from promptgate.execution.pricing import PriceTable
from promptgate.execution.router import RouteRun
from promptgate.prompts.schemas import check_output
from promptgate.providers.base import ProviderResponse
from promptgate.store.tables import utcnow

# Failures a retry may not repeat: the provider or the path to it was
# unavailable, slow or overloaded, or the call was cut short. A retry with the
# same external_id runs these again; other rejections (a bad request to the
# provider, output that breaks its schema) replay, as they would fail again.
TRANSIENT_CODES = frozenset(
    {
        "PROVIDER_ERROR",
        "PROVIDER_RATE_LIMITED",
        "PROVIDER_TIMEOUT",
        "PROVIDER_UNREACHABLE",
        "STREAM_INTERRUPTED",
        "EXECUTION_TIMEOUT",
        "CANCELLED",
        "ABANDONED",
        "STORE_UNAVAILABLE",
    }
)


def is_transient(failure: ExecutionFailure | None) -> bool:
    """Whether a rejection with ``failure`` could succeed if run again."""
    if failure is None:
        return False
    if failure.code in TRANSIENT_CODES:
        # A provider error with a client-error status (other than 408/429) is not.
        status = failure.provider_status
        return not (400 <= status < 500 and status not in (408, 429))
    return False


class Outcomes:
    """Builds final records; holds the price table for their cost."""

    def __init__(self, prices: PriceTable, limits: ExecutorLimits) -> None:
        self._prices = prices
        self._limits = limits

    async def fulfil(
        self, plan: Plan, response: ProviderResponse, request: ExecutionRequest, started: float
    ) -> None:
        """The provider answered: outputs (parsed and checked for JSON formats), usage, cost."""
        record = plan.record
        outputs: list[Output] = []
        failure: ExecutionFailure | None = None
        fmt = plan.request.response_format
        if response.text or not response.function_calls:
            if fmt is not None and fmt.type is not ResponseFormatType.TEXT:
                # Bounded parsing; a costly validation leaves the event loop.
                value, problem = await check_output(response.text, fmt.json_schema)
                if problem:
                    failure = ExecutionFailure("SCHEMA_VALIDATION_FAILED", problem)
                    outputs.append(TextOutput(response.text))
                else:
                    outputs.append(JsonOutput(value))
            else:
                outputs.append(TextOutput(response.text))
        outputs.extend(FunctionCallOutput(call) for call in response.function_calls)
        record.outputs = tuple(outputs)
        record.output_chars = len(response.text)
        record.usage = response.usage
        record.cost = self._prices.cost(record.provider, record.model, response.usage)
        record.finish_reason = response.finish_reason
        record.raw = {k: response.raw[k] for k in request.expand_raw if k in response.raw}
        record.latency = time.monotonic() - started
        record.completed_at = utcnow()
        if failure is not None:
            record.state = ExecutionState.REJECTED
            record.error = failure
        else:
            record.state = ExecutionState.FULFILLED

    async def fulfil_cached(
        self, plan: Plan, cached: CachedAnswer, request: ExecutionRequest, started: float
    ) -> None:
        """A cache hit: the cached answer, no usage, no cost."""
        response = ProviderResponse(
            model=cached.model,
            text=cached.text,
            function_calls=cached.function_calls,
            finish_reason=cached.finish_reason,
        )
        await self.fulfil(plan, response, request, started)
        record = plan.record
        record.cache_hit = True
        record.cache_status = "hit"
        record.attempts = 0
        record.usage = Usage()
        record.cost = Cost(value=0.0, priced=True)

    def reject(
        self, record: ExecutionRecord, failure: ExecutionFailure, started: float, partial: str = ""
    ) -> None:
        """The execution failed; text streamed so far is kept, with estimated usage."""
        record.state = ExecutionState.REJECTED
        record.error = failure
        record.finish_reason = FinishReason.ERROR
        if partial:
            record.outputs = (TextOutput(partial),)
            record.output_chars = len(partial)
            record.usage = _estimated_usage(record, partial)
        record.latency = time.monotonic() - started
        record.completed_at = utcnow()

    def cancel(self, record: ExecutionRecord, partial: str, started: float) -> None:
        """The caller cancelled: REJECTED CANCELLED, priced by the (estimated) usage."""
        self.reject(
            record,
            ExecutionFailure("CANCELLED", "the caller cancelled the execution"),
            started,
            partial=partial,
        )
        record.finish_reason = FinishReason.CANCELLED
        record.cost = self._prices.cost(record.provider, record.model, record.usage)

    def timeout_failure(self, request: ExecutionRequest) -> ExecutionFailure:
        """EXECUTION_TIMEOUT, naming the limit that fired."""
        return ExecutionFailure(
            code="EXECUTION_TIMEOUT",
            message="the execution did not finish within its time limit "
            f"({_describe_limit(request, self._limits)})",
        )


def apply_run(record: ExecutionRecord, run: RouteRun) -> None:
    """Put what routing did on the record: attempts, and the target that served."""
    record.attempts = len(run.attempts)
    record.attempt_log = tuple(run.attempts)
    if run.served is not None:
        record.provider = run.served.provider_name
        record.model = run.served.request.model
        record.parameters = run.served.request.parameters
        record.target_index = run.served.index
    elif run.attempts:
        last = run.attempts[-1]
        record.provider, record.model = last.provider, last.model


def failure_of(exc: ProviderError) -> ExecutionFailure:
    """The recorded failure for a provider error."""
    return ExecutionFailure(
        code=exc.code,
        message=exc.message,
        provider_status=exc.status,
        retry_after=exc.retry_after,
    )


def _estimated_usage(record: ExecutionRecord, partial: str) -> Usage:
    """Partial usage when the provider never reported it: about 4 characters a token."""
    if record.usage.output_tokens:
        return record.usage
    return Usage(
        input_tokens=record.usage.input_tokens or -(-record.input_chars // 4),
        output_tokens=-(-len(partial) // 4),
    )


def _describe_limit(request: ExecutionRequest, limits: ExecutorLimits) -> str:
    options = {"server limit": limits.default_timeout_s}
    if request.timeout:
        options["request timeout"] = request.timeout
    if request.deadline is not None:
        options["call deadline"] = request.deadline
    name = min(options, key=lambda k: options[k])
    return f"{name} {timedelta(seconds=round(options[name], 3))}"
