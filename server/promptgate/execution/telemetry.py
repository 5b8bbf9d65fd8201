"""The spans of an execution and what they say.

    promptgate.execution        one execution (child of the RPC's server span,
    │                           a chain step's span or a batch item's span)
    ├── promptgate.render       resolve the prompt version, check the inputs,
    │                           render the messages (planning.py)
    ├── chat <model>            one provider attempt (CLIENT), per retry and
    │                           fallback, with the GenAI semantic conventions
    └── promptgate.record       the wait for this execution's group commit,
                                linked to the commit's span (recorder.py)

Attempt spans carry the OpenTelemetry GenAI attributes: ``gen_ai.operation.name``
(``chat``), ``gen_ai.provider.name`` (``openai``, ``anthropic``,
``gcp.gemini``, ``mock``) and the deprecated ``gen_ai.system`` it replaced
(``openai``, ``anthropic``, ``gemini``, ``mock``) for back-ends that still
read it, ``gen_ai.request.model``, the request's ``temperature``,
``max_tokens``, ``top_p``, ``seed`` and ``stop_sequences`` when set,
``gen_ai.response.model``, ``gen_ai.response.id``,
``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens`` /
``output_tokens`` (and ``gen_ai.usage.cache_read.input_tokens``); a failed
attempt has ``error.type`` (promptgate's error code) and the provider's
``http.response.status_code``. No prompt or response content goes into spans.

With tracing off every function here returns at its first line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from promptgate.errors import ProviderError
from promptgate.execution.model import ExecutionRecord, ExecutionRequest, ExecutionState
from promptgate.observability import context as log_context
from promptgate.observability import tracing
from promptgate.observability.tracing import INVALID_SPAN, Span, SpanKind
from promptgate.providers.base import ProviderResponse

if TYPE_CHECKING:
    from promptgate.execution.router import Candidate

log = logging.getLogger("promptgate.execution")

EXECUTION = "promptgate.execution"
RENDER = "promptgate.render"
RECORD = "promptgate.record"

# gen_ai.provider.name where it differs from promptgate's provider name.
_PROVIDER_NAMES = {"gemini": "gcp.gemini"}


def trace_id(execution: Span) -> str:
    """The trace id an execution records: its span's, else the caller's traceparent's."""
    found = tracing.trace_id_of(execution)
    if not found:
        info = log_context.current()
        found = info.trace_id if info is not None else ""
    return found


def started(execution: Span, record: ExecutionRecord) -> None:
    """The execution was planned: note it on its span, its record and the call's log lines."""
    record.trace_id = trace_id(execution)
    log_context.bind(execution_id=record.id)
    if not execution.is_recording():
        return
    attributes: dict[str, Any] = {
        "promptgate.execution.id": record.id,
        "promptgate.workspace": record.workspace_id,
        "gen_ai.request.model": record.model,
        "gen_ai.provider.name": _PROVIDER_NAMES.get(record.provider, record.provider),
    }
    if record.prompt_id:
        attributes["promptgate.prompt.id"] = record.prompt_id
        attributes["promptgate.prompt.name"] = record.prompt_name
        attributes["promptgate.prompt.version"] = record.version
    if record.release_tag:
        attributes["promptgate.release_tag"] = record.release_tag
    if record.chain_execution_id:
        attributes["promptgate.chain_execution.id"] = record.chain_execution_id
        attributes["promptgate.chain.step"] = record.chain_step
    if record.external_id:
        attributes["promptgate.external_id"] = record.external_id
    execution.set_attributes(attributes)


def rendered(render: Span, record: ExecutionRecord, messages: int) -> None:
    """The prompt was rendered: its size on the render span."""
    if render.is_recording():
        render.set_attributes(
            {
                "promptgate.render.messages": messages,
                "promptgate.render.input_chars": record.input_chars,
            }
        )


def finished(execution: Span, record: ExecutionRecord) -> None:
    """The execution ended (recorded): its outcome on its span, a line if rejected."""
    log_context.bind(execution_id=record.id)
    if record.state is ExecutionState.REJECTED and record.error is not None and not record.replayed:
        log.info(
            "execution %s rejected: %s: %s", record.id, record.error.code, record.error.message
        )
    if not execution.is_recording():
        return
    if record.replayed:
        execution.set_attribute("promptgate.replayed", True)
    execution.set_attributes(
        {
            "promptgate.execution.id": record.id,
            "promptgate.execution.state": record.state.value,
            "promptgate.attempts": record.attempts,
            "gen_ai.usage.input_tokens": record.usage.input_tokens,
            "gen_ai.usage.output_tokens": record.usage.output_tokens,
        }
    )
    if record.cache_status:
        execution.set_attribute("promptgate.cache.status", record.cache_status)
    if record.state is ExecutionState.REJECTED and record.error is not None:
        tracing.fail(execution, record.error.code)


def request_attributes(request: ExecutionRequest, *, streamed: bool) -> dict[str, Any] | None:
    """What an execution's span knows before planning."""
    if not tracing.enabled():
        return None
    return {"promptgate.workspace": request.workspace_id, "promptgate.streamed": streamed}


class Attempt:
    """The span of one provider attempt; see the module docstring.

    ``answered`` or ``failed`` end it; ``aborted`` ends it if neither did
    (the attempt was cancelled, or the execution's time ran out).
    """

    __slots__ = ("span",)

    def __init__(self, candidate: Candidate, number: int) -> None:
        request = candidate.request
        parameters = request.parameters
        provider = candidate.provider_name
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": _PROVIDER_NAMES.get(provider, provider),
            "gen_ai.system": provider,
            "gen_ai.request.model": request.model,
            "promptgate.attempt": number,
            "promptgate.target_index": candidate.index,
        }
        if parameters.temperature is not None:
            attributes["gen_ai.request.temperature"] = parameters.temperature
        if parameters.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = parameters.max_tokens
        if parameters.top_p is not None:
            attributes["gen_ai.request.top_p"] = parameters.top_p
        if parameters.seed is not None:
            attributes["gen_ai.request.seed"] = parameters.seed
        if parameters.stop:
            attributes["gen_ai.request.stop_sequences"] = list(parameters.stop)
        self.span = tracing.start(
            f"chat {request.model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def answered(self, response: ProviderResponse) -> None:
        """The provider answered: the response's model, id, finish reason and usage."""
        span = self.span
        attributes: dict[str, Any] = {
            "gen_ai.response.model": response.model,
            "gen_ai.response.finish_reasons": [response.finish_reason.value],
            "gen_ai.usage.input_tokens": response.usage.input_tokens,
            "gen_ai.usage.output_tokens": response.usage.output_tokens,
        }
        if response.usage.cached_input_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = response.usage.cached_input_tokens
        response_id = response.raw.get("id") if isinstance(response.raw, dict) else None
        if isinstance(response_id, str) and response_id:
            attributes["gen_ai.response.id"] = response_id[:256]
        span.set_attributes(attributes)
        span.end()

    def failed(self, exc: ProviderError) -> None:
        """The attempt failed: the error code and the provider's HTTP status."""
        span = self.span
        if exc.status:
            span.set_attribute("http.response.status_code", exc.status)
        span.set_attribute("promptgate.retryable", exc.retryable)
        tracing.fail(span, exc.code)
        span.end()

    def aborted(self, exc: BaseException) -> None:
        """The attempt stopped without an answer or a provider error."""
        span = self.span
        if span.is_recording():
            tracing.finish(span, exc)


class _NoAttempt:
    """The attempt while tracing is off: one shared object that does nothing."""

    __slots__ = ()
    span: Span = INVALID_SPAN

    def answered(self, response: ProviderResponse) -> None:
        return None

    def failed(self, exc: ProviderError) -> None:
        return None

    def aborted(self, exc: BaseException) -> None:
        return None


_NO_ATTEMPT = _NoAttempt()


def attempt(candidate: Candidate, number: int) -> Attempt | _NoAttempt:
    """The span of attempt ``number`` (1 for an execution's first provider call)."""
    if not tracing.enabled():
        return _NO_ATTEMPT
    return Attempt(candidate, number)
