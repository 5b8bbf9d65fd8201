"""Executor: runs one execution from request to recorded outcome.

    resolve the prompt version (stored) or check the inline prompt
    -> check inputs and render messages
    -> pick the provider for the model
    -> call it (unary or streamed) within the time allowed
    -> normalise outputs, usage, cost and finish reason
    -> record the execution durably, then answer

Request problems raise ``RequestError`` before anything is recorded.
Failures of the execution itself (provider errors, timeouts, an interrupted
stream, output that breaks its JSON schema) produce a REJECTED record. A
caller's cancellation records the partial execution and propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import jsonschema
from sqlalchemy.exc import IntegrityError

from promptgate.chat import (
    FinishReason,
    ModelParameters,
    ResponseFormatType,
    Usage,
    parameter_problems,
)
from promptgate.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    ProviderError,
)
from promptgate.execution.cache import CachedAnswer, ResponseCache, cache_key
from promptgate.execution.model import (
    Cost,
    Delta,
    ExecutionEvent,
    ExecutionFailure,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionState,
    Finished,
    FunctionCallOutput,
    Initiated,
    InlineTarget,
    JsonOutput,
    Output,
    Rendering,
    TextOutput,
)
from promptgate.execution.pricing import PriceTable
from promptgate.execution.recorder import ExecutionRecorder
from promptgate.execution.records import ExecutionHistory, to_row
from promptgate.execution.router import Candidate, RoutePolicy, Router, RouteRun
from promptgate.ids import new_id
from promptgate.prompts.catalog import PromptCatalog
from promptgate.prompts.inputs import resolve_inputs
from promptgate.prompts.model import (
    CacheMode,
    CachePolicy,
    PromptSpec,
    RetryPolicy,
    Routing,
    Strategy,
)
from promptgate.prompts.render import render_messages
from promptgate.prompts.templates import TemplateEngine
from promptgate.prompts.validation import (
    ModelCheck,
    cache_problems,
    response_format_problems,
    routing_problems,
    tool_problems,
    validate_spec,
)
from promptgate.providers.base import Provider, ProviderRequest, ProviderResponse, StreamDone
from promptgate.providers.registry import ProviderRegistry
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import utcnow

# Leave this much of the caller's deadline to record and answer a timeout.
DEADLINE_MARGIN_S = 0.05
MAX_EXTERNAL_ID = 256


@dataclass(frozen=True, slots=True)
class ExecutorLimits:
    """Limits and defaults of the execution path."""

    max_prompt_chars: int = 1_000_000
    max_inputs: int = 256
    default_timeout_s: float = 600.0
    default_release_tag: str = "production"


@dataclass(frozen=True, slots=True)
class _Plan:
    record: ExecutionRecord
    candidates: tuple[Candidate, ...]
    policy: RoutePolicy
    spec: PromptSpec
    cache_mode: CacheMode
    cache_ttl_s: float
    cache_key: str | None

    @property
    def provider(self) -> Provider:
        """The first target's adapter."""
        return self.candidates[0].provider

    @property
    def request(self) -> ProviderRequest:
        """The first target's provider request."""
        return self.candidates[0].request


class Executor:
    """Runs executions; see the module docstring for the steps."""

    def __init__(
        self,
        *,
        catalog: PromptCatalog,
        registry: ProviderRegistry,
        templates: TemplateEngine,
        prices: PriceTable,
        recorder: ExecutionRecorder,
        history: ExecutionHistory,
        sessions: SessionFactory,
        limits: ExecutorLimits,
        router: Router,
        cache: ResponseCache,
        routing_defaults: RoutePolicy,
        cache_ttl_s: float = 300.0,
        usage_sink: Callable[[str, int], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._catalog = catalog
        self._registry = registry
        self._templates = templates
        self._prices = prices
        self._recorder = recorder
        self._history = history
        self._sessions = sessions
        self._limits = limits
        self._router = router
        self._cache = cache
        self._routing_defaults = routing_defaults
        self._cache_ttl_s = cache_ttl_s
        self._usage_sink = usage_sink
        self._counting: set[asyncio.Task[None]] = set()
        self._active = 0
        self._idle = asyncio.Event()

    # Public API

    async def render(self, request: ExecutionRequest) -> Rendering:
        """The rendered messages and the exact provider body, without executing."""
        plan = await self._plan(request, streamed=False)
        build = plan.provider.build_payload
        return Rendering(
            messages=plan.request.messages,
            provider=plan.record.provider,
            model=plan.record.model,
            payload=build(plan.request),
            prompt_id=plan.record.prompt_id,
            version_id=plan.record.version_id,
            version=plan.record.version,
            release_tag=plan.record.release_tag,
        )

    async def check(self, request: ExecutionRequest) -> None:
        """Raise the RequestError ``request`` would fail with, without executing it."""
        await self._plan(request, streamed=False)

    async def execute(
        self, request: ExecutionRequest, *, on_started: Callable[[str], None] | None = None
    ) -> ExecutionRecord:
        """Run ``request`` to a recorded FULFILLED or REJECTED execution.

        ``on_started`` gets the execution id once the execution will be recorded
        whatever happens (even if the call is cancelled from then on).
        """
        self._active += 1
        try:
            return await self._execute(request, on_started)
        finally:
            self._leave()

    async def stream(self, request: ExecutionRequest) -> AsyncGenerator[ExecutionEvent, None]:
        """Run ``request``, yielding Initiated, Deltas, then one Finished (after recording).

        Close the iterator (``contextlib.aclosing``) when abandoning it: the
        provider call is then cancelled and the partial execution recorded.
        """
        self._active += 1
        try:
            async with contextlib.aclosing(self._stream(request)) as events:
                async for event in events:
                    yield event
        finally:
            self._leave()

    async def wait_idle(self, limit_s: float) -> bool:
        """Wait until no execution is running (their records are then queued); False on timeout."""
        try:
            async with asyncio.timeout(limit_s):
                while self._active:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _count_usage(self, record: ExecutionRecord) -> None:
        """Count the record's tokens against its API key (in the background)."""
        tokens = record.usage.input_tokens + record.usage.output_tokens
        if self._usage_sink is None or not record.api_key_id or not tokens:
            return
        task = asyncio.get_running_loop().create_task(self._usage_sink(record.api_key_id, tokens))
        self._counting.add(task)
        task.add_done_callback(self._counting.discard)

    def _leave(self) -> None:
        self._active -= 1
        if not self._active:
            self._idle.set()

    async def _execute(
        self, request: ExecutionRequest, on_started: Callable[[str], None] | None = None
    ) -> ExecutionRecord:
        started = time.monotonic()
        replay, existing = await self._replay(request)
        if replay is not None:
            return replay
        plan = await self._plan(request, streamed=False)
        record = plan.record
        claimed = await self._claim(request, record, existing)
        if isinstance(claimed, ExecutionRecord):
            return claimed
        if on_started is not None:
            on_started(record.id)
        deadline = self._deadline(request)
        run = RouteRun()
        try:
            async with asyncio.timeout_at(deadline):
                cached = await self._cached(plan)
                if cached is not None:
                    self._fulfil_cached(plan, cached, request, started)
                else:
                    try:
                        response = await self._router.complete(
                            plan.candidates, plan.policy, deadline, run
                        )
                    finally:
                        _apply_run(record, run)
                    self._fulfil(plan, response, request, started)
                    await self._store_cached(plan)
        except TimeoutError:
            self._reject(record, self._timeout_failure(request), started)
        except ProviderError as exc:
            self._reject(record, _failure(exc), started)
        except asyncio.CancelledError:
            _apply_run(record, run)
            self._cancel(record, "", started)
            self._recorder.submit(record, upsert=claimed)
            self._count_usage(record)
            raise
        await self._recorder.record(record, upsert=claimed)
        self._count_usage(record)
        return record

    async def _stream(self, request: ExecutionRequest) -> AsyncGenerator[ExecutionEvent, None]:
        started = time.monotonic()
        replay, existing = await self._replay(request)
        if replay is not None:
            yield Initiated(replay)
            for index, output in enumerate(replay.outputs):
                if isinstance(output, TextOutput) and output.text:
                    yield Delta(output.text, index)
            yield Finished(replay)
            return
        plan = await self._plan(request, streamed=True)
        record = plan.record
        claimed = await self._claim(request, record, existing)
        if isinstance(claimed, ExecutionRecord):
            yield Initiated(claimed)
            yield Finished(claimed)
            return
        yield Initiated(replace(record))
        deadline = self._deadline(request)
        parts: list[str] = []
        run = RouteRun()
        try:
            async with asyncio.timeout_at(deadline):
                cached = await self._cached(plan)
            if cached is not None:
                self._fulfil_cached(plan, cached, request, started)
                if cached.text:
                    record.time_to_first_token = time.monotonic() - started
                    yield Delta(cached.text, 0)
            else:
                events = self._router.stream(plan.candidates, plan.policy, deadline, run)
                async with contextlib.aclosing(events):
                    while True:
                        try:
                            async with asyncio.timeout_at(deadline):
                                event = await anext(events)
                        except StopAsyncIteration:
                            raise ProviderError(
                                "the provider's stream ended without a final event",
                                code="STREAM_INTERRUPTED",
                            ) from None
                        if isinstance(event, StreamDone):
                            _apply_run(record, run)
                            self._fulfil(plan, event.response, request, started)
                            break
                        if not event.text:
                            continue
                        if record.time_to_first_token is None:
                            record.time_to_first_token = time.monotonic() - started
                        parts.append(event.text)
                        yield Delta(event.text, 0)
                async with asyncio.timeout_at(deadline):
                    await self._store_cached(plan)
        except TimeoutError:
            _apply_run(record, run)
            self._reject(record, self._timeout_failure(request), started, partial="".join(parts))
        except ProviderError as exc:
            _apply_run(record, run)
            self._reject(record, _failure(exc), started, partial="".join(parts))
        except (asyncio.CancelledError, GeneratorExit):
            _apply_run(record, run)
            self._cancel(record, "".join(parts), started)
            self._recorder.submit(record, upsert=claimed)
            self._count_usage(record)
            raise
        await self._recorder.record(record, upsert=claimed)
        self._count_usage(record)
        yield Finished(record)

    # Cache

    async def _cached(self, plan: _Plan) -> CachedAnswer | None:
        if plan.cache_key is None:
            return None
        if plan.cache_mode is CacheMode.REFRESH:
            plan.record.cache_status = "refresh"
            return None
        answer = await self._cache.get(plan.cache_key)
        if answer is None:
            plan.record.cache_status = "miss"
        return answer

    async def _store_cached(self, plan: _Plan) -> None:
        record = plan.record
        if plan.cache_key is None or record.state is not ExecutionState.FULFILLED:
            return
        text = "".join(o.text for o in record.outputs if isinstance(o, TextOutput))
        text += "".join(json.dumps(o.value) for o in record.outputs if isinstance(o, JsonOutput))
        answer = CachedAnswer(
            provider=record.provider,
            model=record.model,
            text=text,
            function_calls=tuple(
                o.call for o in record.outputs if isinstance(o, FunctionCallOutput)
            ),
            finish_reason=record.finish_reason,
        )
        await self._cache.put(plan.cache_key, answer, plan.cache_ttl_s)

    def _fulfil_cached(
        self, plan: _Plan, cached: CachedAnswer, request: ExecutionRequest, started: float
    ) -> None:
        response = ProviderResponse(
            model=cached.model,
            text=cached.text,
            function_calls=cached.function_calls,
            finish_reason=cached.finish_reason,
        )
        self._fulfil(plan, response, request, started)
        record = plan.record
        record.cache_hit = True
        record.cache_status = "hit"
        record.attempts = 0
        record.usage = Usage()
        record.cost = Cost(value=0.0, priced=True)

    # Planning

    async def _plan(self, request: ExecutionRequest, *, streamed: bool) -> _Plan:
        _check_request(request, self._limits, self._registry.check)
        target = request.target
        prompt_id = prompt_name = version_id = release_tag = ""
        version = 0
        if isinstance(target, InlineTarget):
            spec = target.spec
            # Compiled off the event loop, so validation below hits the cache.
            await self._templates.prepare(m.template for m in spec.messages)
            validate_spec(
                spec,
                self._templates,
                field="inline_prompt",
                check_model=self._registry.check if not request.model else _accept_model,
                declared_required=target.declared,
            )
            declared = spec.input_variables if target.declared else None
            model_field = "inline_prompt.model"
        else:
            if target.release_tag and target.version:
                raise InvalidArgument.field("version", "give a release_tag or a version, not both")
            resolved = await self._catalog.resolve(
                request.workspace_id,
                target.prompt,
                tag=target.release_tag or self._limits.default_release_tag,
                version=target.version,
            )
            spec = resolved.version.spec
            declared = spec.input_variables
            prompt_id, prompt_name = resolved.prompt.id, resolved.prompt.name
            version_id, version = resolved.version.id, resolved.version.version
            release_tag = resolved.release_tag
            model_field = "prompt"
        model = request.model or spec.model
        provider_hint = request.provider or ("" if request.model else spec.provider)
        field = "model" if request.model else ("provider" if request.provider else model_field)
        overrides = request.parameters or ModelParameters()
        parameters = overrides.merged_over(spec.parameters)
        response_format = request.response_format or spec.response_format
        tools = request.tools if request.tools is not None else spec.tools
        tool_choice = request.tool_choice or spec.tool_choice
        values = resolve_inputs(declared, request.inputs)
        messages = await render_messages(
            spec,
            values,
            self._templates,
            field=model_field if isinstance(target, InlineTarget) else "inputs",
            max_chars=self._limits.max_prompt_chars,
        )
        base = ProviderRequest(
            model=model,
            messages=messages,
            parameters=parameters,
            response_format=response_format,
            tools=tuple(tools),
            tool_choice=tool_choice,
            raw_body=request.raw_body,
            raw_headers=request.raw_headers,
        )
        candidates = self._candidates(request, spec, base, provider_hint, field, model_field)
        first = candidates[0]
        policy = self._policy(request.routing, spec.routing, len(candidates))
        cache_mode, cache_ttl = self._cache_policy(request.cache, spec.cache)
        key = None
        if cache_mode in (CacheMode.ENABLED, CacheMode.REFRESH):
            payload = first.provider.build_payload(first.request)
            key = cache_key(request.workspace_id, first.provider_name, payload)
        record = ExecutionRecord(
            id=new_id("exe"),
            workspace_id=request.workspace_id,
            state=ExecutionState.RUNNING,
            created_at=utcnow(),
            external_id=request.external_id,
            streamed=streamed,
            prompt_id=prompt_id,
            prompt_name=prompt_name,
            version_id=version_id,
            version=version,
            release_tag=release_tag,
            provider=first.provider_name,
            model=first.request.model,
            inputs=request.inputs,
            input_chars=sum(len(m.content) for m in messages),
            parameters=first.request.parameters,
            metadata=request.metadata,
            api_key_id=request.api_key_id,
        )
        return _Plan(
            record=record,
            candidates=tuple(candidates),
            policy=policy,
            spec=spec,
            cache_mode=cache_mode,
            cache_ttl_s=cache_ttl,
            cache_key=key,
        )

    def _candidates(
        self,
        request: ExecutionRequest,
        spec: PromptSpec,
        base: ProviderRequest,
        provider_hint: str,
        field: str,
        model_field: str,
    ) -> list[Candidate]:
        """The provider targets: the request's routing, else the version's, else its model."""
        if request.routing is not None and request.routing.targets:
            targets, prefix = request.routing.targets, "routing.targets"
        elif not (request.model or request.provider) and spec.routing and spec.routing.targets:
            targets, prefix = spec.routing.targets, f"{model_field}.routing.targets"
        else:
            name, adapter = self._registry.resolve(provider_hint, base.model, field)
            return [Candidate(0, name, adapter, base)]
        candidates = []
        for index, target in enumerate(targets):
            name, adapter = self._registry.resolve(
                target.provider, target.model, f"{prefix}[{index}].model"
            )
            parameters = (
                target.parameters.merged_over(base.parameters)
                if target.parameters is not None
                else base.parameters
            )
            candidates.append(
                Candidate(
                    index,
                    name,
                    adapter,
                    replace(base, model=target.model, parameters=parameters),
                    target.weight,
                )
            )
        return candidates

    def _policy(
        self, requested: Routing | None, versioned: Routing | None, count: int
    ) -> RoutePolicy:
        """The effective routing policy: the request's fields over the version's, over defaults."""
        defaults = self._routing_defaults

        def pick(name: str) -> Any:
            for source in (requested, versioned):
                value = getattr(source, name, None) if source is not None else None
                if value is not None:
                    return value
            return None

        retry: RetryPolicy | None = pick("retry")
        strategy: Strategy | None = pick("strategy")
        timeout: float | None = pick("attempt_timeout_s")
        return RoutePolicy(
            strategy=strategy or (Strategy.FALLBACK if count > 1 else Strategy.SINGLE),
            max_attempts=(
                retry.max_attempts if retry and retry.max_attempts else defaults.max_attempts
            ),
            initial_backoff_s=(
                retry.initial_backoff_s
                if retry and retry.initial_backoff_s is not None
                else defaults.initial_backoff_s
            ),
            max_backoff_s=(
                retry.max_backoff_s
                if retry and retry.max_backoff_s is not None
                else defaults.max_backoff_s
            ),
            attempt_timeout_s=timeout if timeout is not None else defaults.attempt_timeout_s,
        )

    def _cache_policy(
        self, requested: CachePolicy | None, versioned: CachePolicy | None
    ) -> tuple[CacheMode, float]:
        mode = (requested.mode if requested else None) or (versioned.mode if versioned else None)
        ttl = (requested.ttl_s if requested else None) or (versioned.ttl_s if versioned else None)
        return mode or CacheMode.DISABLED, ttl or self._cache_ttl_s

    def _deadline(self, request: ExecutionRequest) -> float:
        limits = [self._limits.default_timeout_s]
        if request.timeout:
            limits.append(request.timeout)
        if request.deadline is not None:
            limits.append(max(request.deadline - DEADLINE_MARGIN_S, 0.0))
        return asyncio.get_running_loop().time() + min(limits)

    def _timeout_failure(self, request: ExecutionRequest) -> ExecutionFailure:
        return ExecutionFailure(
            code="EXECUTION_TIMEOUT",
            message="the execution did not finish within its time limit "
            f"({_describe_limit(request, self._limits)})",
        )

    # Idempotency

    async def _replay(
        self, request: ExecutionRequest
    ) -> tuple[ExecutionRecord | None, ExecutionRecord | None]:
        """(the stored result to return, the stored execution to run again), either may be None."""
        if not request.external_id or request.fresh:
            return None, None
        existing = await self._history.find(request.workspace_id, external_id=request.external_id)
        if existing is None:
            return None, None
        replay = self._replay_or_conflict(existing, request.resume)
        return replay, (existing if replay is None else None)

    def _replay_or_conflict(
        self, existing: ExecutionRecord, resume: bool
    ) -> ExecutionRecord | None:
        """The stored result to replay, or None when the execution should run (again)."""
        if resume and (
            existing.state is ExecutionState.RUNNING
            or (existing.error is not None and existing.error.code == "CANCELLED")
        ):
            return None
        if existing.state is ExecutionState.RUNNING:
            age = (utcnow() - existing.created_at).total_seconds()
            if age > self._limits.default_timeout_s + 60:
                return None  # abandoned by a process that died; run it again
            raise Aborted(
                f"an execution with external_id {existing.external_id!r} is still running",
                reason="EXECUTION_IN_PROGRESS",
                metadata={"external_id": existing.external_id, "execution_id": existing.id},
            )
        existing.replayed = True
        return existing

    async def _claim(
        self,
        request: ExecutionRequest,
        record: ExecutionRecord,
        existing: ExecutionRecord | None,
    ) -> bool | ExecutionRecord:
        """Insert a RUNNING row for an external_id so concurrent retries see it.

        Returns True when a row with the record's id now exists (the final
        write must replace it), False when there is none, or the execution
        that won the race.
        """
        if not request.external_id:
            return False
        if existing is not None:  # an abandoned or cancelled run, taken over
            record.id = existing.id
            return True
        if request.resume:
            # The caller (a batch worker) owns this external_id exclusively:
            # no placeholder is needed.
            return False
        try:
            async with self._sessions.write() as session:
                session.add(to_row(record))
                await session.commit()
            return True
        except IntegrityError:
            existing = await self._history.find(
                request.workspace_id, external_id=request.external_id
            )
            if existing is None:
                raise
            replay = self._replay_or_conflict(existing, request.resume)
            if replay is None:
                record.id = existing.id
                return True
            return replay

    # Outcomes

    def _fulfil(
        self,
        plan: _Plan,
        response: ProviderResponse,
        request: ExecutionRequest,
        started: float,
    ) -> None:
        record = plan.record
        outputs: list[Output] = []
        failure: ExecutionFailure | None = None
        fmt = plan.request.response_format
        if response.text or not response.function_calls:
            if fmt is not None and fmt.type is not ResponseFormatType.TEXT:
                try:
                    value = json.loads(response.text)
                except json.JSONDecodeError as exc:
                    failure = ExecutionFailure(
                        "SCHEMA_VALIDATION_FAILED", f"the output is not valid JSON: {exc.msg}"
                    )
                    outputs.append(TextOutput(response.text))
                else:
                    problem = _schema_problem(fmt.json_schema, value)
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

    def _reject(
        self, record: ExecutionRecord, failure: ExecutionFailure, started: float, partial: str = ""
    ) -> None:
        record.state = ExecutionState.REJECTED
        record.error = failure
        record.finish_reason = FinishReason.ERROR
        if partial:
            record.outputs = (TextOutput(partial),)
            record.output_chars = len(partial)
            record.usage = _estimated_usage(record, partial)
        record.latency = time.monotonic() - started
        record.completed_at = utcnow()

    def _cancel(self, record: ExecutionRecord, partial: str, started: float) -> None:
        self._reject(
            record,
            ExecutionFailure("CANCELLED", "the caller cancelled the execution"),
            started,
            partial=partial,
        )
        record.finish_reason = FinishReason.CANCELLED
        record.cost = self._prices.cost(record.provider, record.model, record.usage)


def _apply_run(record: ExecutionRecord, run: RouteRun) -> None:
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


def _accept_model(provider: str, model: str, field: str) -> None:
    """The inline prompt's own model is overridden by the request's; nothing to check."""


def _check_request(
    request: ExecutionRequest, limits: ExecutorLimits, check_model: ModelCheck
) -> None:
    problems: list[FieldViolation] = []
    if len(request.inputs) > limits.max_inputs:
        problems.append(FieldViolation("inputs", f"at most {limits.max_inputs} inputs"))
    if len(request.external_id) > MAX_EXTERNAL_ID:
        problems.append(FieldViolation("external_id", f"at most {MAX_EXTERNAL_ID} characters"))
    if request.timeout is not None and request.timeout <= 0:
        problems.append(FieldViolation("timeout", "must be positive"))
    if request.parameters is not None:
        problems.extend(
            FieldViolation(f, d) for f, d in parameter_problems(request.parameters, "parameters")
        )
    problems.extend(response_format_problems(request.response_format, "response_format"))
    problems.extend(routing_problems(request.routing, "routing", check_model))
    problems.extend(cache_problems(request.cache, "cache"))
    if request.tools is not None or request.tool_choice is not None:
        problems.extend(tool_problems(request.tools or (), request.tool_choice, ""))
    if problems:
        problems = [FieldViolation(p.field.lstrip("."), p.description) for p in problems]
        raise InvalidArgument.of(problems, reason="INVALID_PARAMETERS")


def _failure(exc: ProviderError) -> ExecutionFailure:
    return ExecutionFailure(
        code=exc.code,
        message=exc.message,
        provider_status=exc.status,
        retry_after=exc.retry_after,
    )


def _schema_problem(schema: dict[str, Any] | None, value: Any) -> str:
    if not schema:
        return ""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return ""
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"the output does not match its JSON schema at {where}: {error.message}"


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
