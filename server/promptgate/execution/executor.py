"""Executor: runs one execution from request to recorded outcome.

    plan it (planning.py: resolve the prompt, check inputs, render, pick targets)
    -> take its idempotency key, if any (records.IdempotencyKeys)
    -> call the provider (unary or streamed) within the time allowed, or the cache
    -> build the outcome (outcomes.py: outputs, usage, cost, finish reason)
    -> record the execution durably, then answer

Each execution is a span with children for its render, each provider
attempt and its record write (telemetry.py); nothing when tracing is off.

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
from dataclasses import replace
from typing import Any

from promptgate.errors import ProviderError
from promptgate.execution import telemetry
from promptgate.execution.cache import CachedAnswer, ResponseCache
from promptgate.execution.model import (
    Delta,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionState,
    Finished,
    FunctionCallOutput,
    Initiated,
    JsonOutput,
    Rendering,
    TextOutput,
)
from promptgate.execution.outcomes import Outcomes, apply_run, failure_of, is_transient
from promptgate.execution.planning import ExecutorLimits, Plan, Planner
from promptgate.execution.pricing import PriceTable
from promptgate.execution.recorder import ExecutionRecorder
from promptgate.execution.records import ExecutionHistory, IdempotencyKeys, request_fingerprint
from promptgate.execution.router import RoutePolicy, Router, RouteRun
from promptgate.execution.telemetry import EXECUTION, RECORD, RENDER
from promptgate.observability import tracing
from promptgate.observability.metrics import Metrics
from promptgate.observability.tracing import Span
from promptgate.prompts.catalog import PromptCatalog
from promptgate.prompts.model import CacheMode
from promptgate.prompts.templates import TemplateEngine
from promptgate.providers.base import StreamDone
from promptgate.providers.registry import ProviderRegistry
from promptgate.store.engine import SessionFactory

__all__ = ["Executor", "ExecutorLimits"]

# Leave this much of the caller's deadline to record and answer a timeout.
DEADLINE_MARGIN_S = 0.05


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
        owner: str = "",
        stale_after_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        """``owner`` names this server process in the rows of executions it runs;
        another process takes a RUNNING execution over once the owner's heartbeat
        is older than ``stale_after_s``. ``metrics`` counts finished executions."""
        self._planner = Planner(
            catalog=catalog,
            registry=registry,
            templates=templates,
            limits=limits,
            routing_defaults=routing_defaults,
            cache_ttl_s=cache_ttl_s,
        )
        self._outcomes = Outcomes(prices, limits)
        self._keys = IdempotencyKeys(
            sessions,
            history,
            owner=owner,
            stale_after_s=stale_after_s,
            running_limit_s=limits.default_timeout_s + 60,
            is_transient=is_transient,
        )
        self._recorder = recorder
        self._limits = limits
        self._router = router
        self._cache = cache
        self._usage_sink = usage_sink
        self._metrics = metrics
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
            split_id=plan.record.split_id,
            partials=plan.partials,
        )

    async def check(self, request: ExecutionRequest) -> None:
        """Raise the RequestError ``request`` would fail with, without executing it."""
        await self._planner.plan(request, streamed=False)

    async def execute(
        self,
        request: ExecutionRequest,
        *,
        on_started: Callable[[str], None] | None = None,
        parent: Span | None = None,
    ) -> ExecutionRecord:
        """Run ``request`` to a recorded FULFILLED or REJECTED execution.

        ``on_started`` gets the execution id once the execution will be recorded
        whatever happens (even if the call is cancelled from then on).
        ``parent``: the parent of the execution's span (default: the current span).
        """
        self._active += 1
        try:
            attributes = telemetry.request_attributes(request, streamed=False)
            with tracing.span(EXECUTION, parent=parent, attributes=attributes) as span:
                record = await self._execute(request, on_started, span)
                telemetry.finished(span, record)
                return record
        finally:
            self._leave()

    async def stream(
        self, request: ExecutionRequest, *, parent: Span | None = None
    ) -> AsyncGenerator[ExecutionEvent, None]:
        """Run ``request``, yielding Initiated, Deltas, then one Finished (after recording).

        Close the iterator (``contextlib.aclosing``) when abandoning it: the
        provider call is then cancelled and the partial execution recorded.
        ``parent``: the parent of the execution's span (default: the span
        current when iteration starts).
        """
        self._active += 1
        # Not made current: it lives across yields (see observability.tracing).
        span = tracing.start(
            EXECUTION,
            parent=parent,
            attributes=telemetry.request_attributes(request, streamed=True),
        )
        try:
            async with contextlib.aclosing(self._stream(request, span)) as events:
                async for event in events:
                    if isinstance(event, Finished):
                        telemetry.finished(span, event.record)
                    yield event
        except BaseException as exc:
            tracing.finish(span, exc)
            raise
        else:
            span.end()
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

    def _observe(self, record: ExecutionRecord, run: RouteRun) -> None:
        """Count the finished execution in the metrics (when they are on)."""
        if self._metrics is not None:
            self._metrics.execution_finished(record, run.in_flight, time.monotonic())

    def _leave(self) -> None:
        self._active -= 1
        if not self._active:
            self._idle.set()

    async def _plan(self, request: ExecutionRequest, *, streamed: bool) -> Plan:
        """``request`` planned, in a render span (a child of the current span)."""
        with tracing.span(RENDER) as span:
            plan = await self._planner.plan(request, streamed=streamed)
            telemetry.rendered(span, plan.record, len(plan.request.messages))
            return plan

    async def _record(self, record: ExecutionRecord, *, upsert: bool) -> None:
        """Record ``record`` and wait for its commit, in a record span."""
        with tracing.span(RECORD):
            await self._recorder.record(record, upsert=upsert)

    async def _execute(
        self,
        request: ExecutionRequest,
        on_started: Callable[[str], None] | None,
        span: Span,
    ) -> ExecutionRecord:
        started = time.monotonic()
        keyed = request.external_id and not request.resume
        fingerprint = request_fingerprint(request) if keyed else ""
        replay, replaced = await self._keys.lookup(request, fingerprint)
        if replay is not None:
            return replay
        plan = await self._plan(request, streamed=False)
        record = plan.record
        telemetry.started(span, record)
        record.fingerprint = fingerprint
        claimed = await self._keys.claim(request, record, replaced)
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
                    await self._outcomes.fulfil_cached(plan, cached, request, started)
                else:
                    try:
                        response = await self._router.complete(
                            plan.candidates, plan.policy, deadline, run
                        )
                    finally:
                        apply_run(record, run)
                    await self._outcomes.fulfil(plan, response, request, started)
                    await self._store_cached(plan)
        except TimeoutError:
            self._outcomes.reject(record, self._outcomes.timeout_failure(request), started)
        except ProviderError as exc:
            self._outcomes.reject(record, failure_of(exc), started)
        except asyncio.CancelledError:
            apply_run(record, run)
            self._outcomes.cancel(record, "", started)
            self._observe(record, run)
            self._recorder.submit(record, upsert=claimed)
            self._count_usage(record)
            raise
        self._observe(record, run)
        await self._record(record, upsert=claimed)
        self._count_usage(record)
        return record

    async def _stream(
        self, request: ExecutionRequest, span: Span
    ) -> AsyncGenerator[ExecutionEvent, None]:
        started = time.monotonic()
        keyed = request.external_id and not request.resume
        fingerprint = request_fingerprint(request) if keyed else ""
        replay, replaced = await self._keys.lookup(request, fingerprint)
        if replay is not None:
            yield Initiated(replay)
            for index, output in enumerate(replay.outputs):
                if isinstance(output, TextOutput) and output.text:
                    yield Delta(output.text, index)
            yield Finished(replay)
            return
        with tracing.use(span):
            plan = await self._plan(request, streamed=True)
        record = plan.record
        telemetry.started(span, record)
        record.fingerprint = fingerprint
        claimed = await self._keys.claim(request, record, replaced)
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
                await self._outcomes.fulfil_cached(plan, cached, request, started)
                if cached.text:
                    record.time_to_first_token = time.monotonic() - started
                    yield Delta(cached.text, 0)
            else:
                events = self._router.stream(plan.candidates, plan.policy, deadline, run)
                async with contextlib.aclosing(events):
                    while True:
                        try:
                            async with asyncio.timeout_at(deadline):
                                with tracing.use(span):  # the attempts' parent
                                    event = await anext(events)
                        except StopAsyncIteration:
                            raise ProviderError(
                                "the provider's stream ended without a final event",
                                code="STREAM_INTERRUPTED",
                            ) from None
                        if isinstance(event, StreamDone):
                            apply_run(record, run)
                            await self._outcomes.fulfil(plan, event.response, request, started)
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
            apply_run(record, run)
            self._outcomes.reject(
                record, self._outcomes.timeout_failure(request), started, partial="".join(parts)
            )
        except ProviderError as exc:
            apply_run(record, run)
            self._outcomes.reject(record, failure_of(exc), started, partial="".join(parts))
        except (asyncio.CancelledError, GeneratorExit):
            apply_run(record, run)
            self._outcomes.cancel(record, "".join(parts), started)
            self._observe(record, run)
            self._recorder.submit(record, upsert=claimed)
            self._count_usage(record)
            raise
        self._observe(record, run)
        with tracing.use(span):
            await self._record(record, upsert=claimed)
        self._count_usage(record)
        yield Finished(record)

    # Cache

    async def _cached(self, plan: Plan) -> CachedAnswer | None:
        if plan.cache_key is None:
            return None
        if plan.cache_mode is CacheMode.REFRESH:
            plan.record.cache_status = "refresh"
            return None
        answer = await self._cache.get(plan.cache_key)
        if answer is None:
            plan.record.cache_status = "miss"
        return answer

    async def _store_cached(self, plan: Plan) -> None:
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

    def _deadline(self, request: ExecutionRequest) -> float:
        limits = [self._limits.default_timeout_s]
        if request.timeout:
            limits.append(request.timeout)
        if request.deadline is not None:
            limits.append(max(request.deadline - DEADLINE_MARGIN_S, 0.0))
        return asyncio.get_running_loop().time() + min(limits)
