"""ChainRunner: runs a chain execution from request to recorded outcome.

    check the request: resolve the chain, check its inputs and every step
    (planning.py); a RequestError before anything is recorded
    -> take its idempotency key, if any, and store it RUNNING (keys.py)
    -> each step in turn: an execution through the Executor (limits, routing,
       cache, recording) linked to the chain, given the chain's inputs and
       earlier outputs it takes; its output becomes a variable for later steps
    -> a rejected step, or the chain's time running out, rejects the chain
       naming the step; later steps do not run
    -> record the chain execution, then answer

The chain's time (the call's deadline, the request's timeout and the
server's default timeout, whichever ends first) spans all steps: each step
gets what is left of it. A caller's cancellation cancels the running step
(which the executor records as CANCELLED), records the chain REJECTED
(CANCELLED) and propagates.

Traced as a chain span with a span per step, each the parent of the step's
execution span (telemetry.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic_core import to_jsonable_python

from promptgate.backoff import Backoff
from promptgate.chains import telemetry
from promptgate.chains.catalog import ChainCatalog
from promptgate.chains.keys import ChainKeys
from promptgate.chains.model import (
    ChainEvent,
    ChainExecution,
    ChainFinished,
    ChainRequest,
    ChainSpec,
    InlineChain,
    ResolvedChain,
    StepDelta,
    StepFinished,
    StepResult,
    StepStarted,
    StoredChain,
)
from promptgate.chains.planning import ChainPlanner, PlannedStep
from promptgate.chains.store import ChainExecutionStore
from promptgate.errors import FieldViolation, InvalidArgument, RequestError
from promptgate.execution.executor import Executor
from promptgate.execution.model import (
    Delta,
    ExecutionFailure,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionState,
    Finished,
    FunctionCallOutput,
    Initiated,
    JsonOutput,
    Output,
    TextOutput,
)
from promptgate.execution.planning import MAX_EXTERNAL_ID, ExecutorLimits
from promptgate.execution.records import input_to_json
from promptgate.ids import new_id
from promptgate.observability import tracing
from promptgate.observability.metrics import Metrics
from promptgate.observability.tracing import Span
from promptgate.prompts.model import InputType, PromptInput
from promptgate.prompts.splits import MAX_SPLIT_KEY
from promptgate.store.faults import is_store_fault
from promptgate.store.tables import utcnow

log = logging.getLogger(__name__)

# Left of the caller's deadline to record and answer a chain whose time ran out.
CHAIN_MARGIN_S = 0.05
# The end of a chain whose caller left, or whose write failed, is written in the
# background: this many tries, backing off, while the store is unavailable.
SAVE_ATTEMPTS = 20
SAVE_RETRY_INITIAL_S = 0.5
SAVE_RETRY_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class _Plan:
    spec: ChainSpec
    steps: tuple[PlannedStep, ...]
    inputs: tuple[PromptInput, ...]
    chain_id: str = ""
    chain_name: str = ""
    version_id: str = ""
    version: int = 0
    release_tag: str = ""


class ChainRunner:
    """Runs chains; see the module docstring."""

    def __init__(
        self,
        *,
        catalog: ChainCatalog,
        planner: ChainPlanner,
        executor: Executor,
        store: ChainExecutionStore,
        keys: ChainKeys,
        limits: ExecutorLimits,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._catalog = catalog
        self._planner = planner
        self._executor = executor
        self._store = store
        self._keys = keys
        self._limits = limits
        self._saving: set[asyncio.Task[None]] = set()

    async def execute(self, request: ChainRequest) -> ChainExecution:
        """Run ``request`` to a recorded FULFILLED or REJECTED chain execution."""
        with tracing.span(telemetry.CHAIN) as span:
            async with contextlib.aclosing(self._run(request, span, streamed=False)) as events:
                async for event in events:
                    if isinstance(event, ChainFinished):
                        telemetry.finished(span, event.execution)
                        return event.execution
        raise AssertionError("a chain run ends with ChainFinished")

    async def stream(self, request: ChainRequest) -> AsyncGenerator[ChainEvent, None]:
        """Run ``request``, yielding each step's StepStarted, StepDeltas and
        StepFinished, then one ChainFinished (after recording).

        Close the iterator (``contextlib.aclosing``) when abandoning it: the
        running step is then cancelled and recorded, and the chain with it.
        """
        span = tracing.start(telemetry.CHAIN)  # not current: it lives across yields
        try:
            async with contextlib.aclosing(self._run(request, span, streamed=True)) as events:
                async for event in events:
                    if isinstance(event, ChainFinished):
                        telemetry.finished(span, event.execution)
                    yield event
        except BaseException as exc:
            tracing.finish(span, exc)
            raise
        span.end()

    async def check(self, request: ChainRequest) -> None:
        """Raise the RequestError ``request`` would fail with, without running it."""
        await self._plan(request)

    async def resolve(self, workspace: str, target: StoredChain) -> ResolvedChain:
        """The stored chain version ``target`` names (by version, else by tag)."""
        if target.release_tag and target.version:
            raise InvalidArgument.field("version", "give a release_tag or a version, not both")
        return await self._catalog.resolve(
            workspace,
            target.chain,
            tag=target.release_tag or self._limits.default_release_tag,
            version=target.version,
        )

    async def check_inputs(
        self,
        workspace: str,
        spec: ChainSpec,
        inputs: tuple[PromptInput, ...],
        targets: dict[int, Any] | None = None,
    ) -> None:
        """Raise the INVALID_ARGUMENT a run of ``spec`` with ``inputs`` would fail with.

        Pass the same ``targets`` dict for many inputs of one spec: its steps'
        prompts are then resolved and validated once.
        """
        checked = self._planner.inputs(spec, inputs)
        await self._planner.check(workspace, spec, field="chain", inputs=checked, targets=targets)

    async def find_many(self, workspace: str, ids: list[str]) -> dict[str, ChainExecution]:
        """The chain executions with these ids (without their steps' executions)."""
        return await self._store.get_many(workspace, ids)

    async def drain(self, limit_s: float) -> None:
        """Wait (up to ``limit_s``) for the records of cancelled chains to be written;
        give up on the rest (they are logged)."""
        if not self._saving:
            return
        _, pending = await asyncio.wait(list(self._saving), timeout=limit_s)
        for task in pending:
            task.cancel()
        if pending:
            log.error("%d chain executions could not be recorded before shutdown", len(pending))
            await asyncio.wait(pending)

    async def _run(
        self, request: ChainRequest, span: Span, *, streamed: bool
    ) -> AsyncGenerator[ChainEvent, None]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + self._time_allowed(request)
        _check_request(request)
        fingerprint = chain_fingerprint(request) if request.external_id else ""
        replay, replaced = await self._keys.lookup(
            request.workspace_id, request.external_id, fingerprint
        )
        if replay is not None:
            for event in _replay(replay):
                yield event
            return
        plan = await self._plan(request)
        execution = ChainExecution(
            id=new_id("chx"),
            workspace_id=request.workspace_id,
            state=ExecutionState.RUNNING,
            created_at=utcnow(),
            external_id=request.external_id,
            streamed=streamed,
            chain_id=plan.chain_id,
            chain_name=plan.chain_name,
            version_id=plan.version_id,
            version=plan.version,
            release_tag=plan.release_tag,
            inputs=request.inputs,
            metadata=request.metadata,
            api_key_id=request.api_key_id,
            fingerprint=fingerprint,
        )
        telemetry.started(span, execution)
        answer = await self._keys.claim(execution, replaced)
        if answer is not None:
            for event in _replay(answer):
                yield event
            return
        variables = {i.name: i for i in plan.inputs}
        running: StepResult | None = None
        try:
            for index, planned in enumerate(plan.steps):
                step = planned.step
                running = StepResult(step.name, step.output_variable, ExecutionState.RUNNING)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    running = None
                    _reject(
                        execution,
                        step.name,
                        ExecutionFailure(
                            "EXECUTION_TIMEOUT",
                            "the chain's time limit ran out before the step started",
                        ),
                    )
                    break
                step_request = self._step_request(request, execution, planned, variables, remaining)
                record: ExecutionRecord | None = None
                step_span = telemetry.step(span, index, step.name)
                try:
                    if streamed:
                        events = self._executor.stream(step_request, parent=step_span)
                        async with contextlib.aclosing(events):
                            async for part in events:
                                if isinstance(part, Initiated):
                                    running.execution_id = part.record.id
                                    yield StepStarted(execution.id, index, step.name, part.record)
                                elif isinstance(part, Delta):
                                    yield StepDelta(
                                        execution.id, index, step.name, part.text, part.index
                                    )
                                elif isinstance(part, Finished):
                                    record = part.record
                    else:
                        record = await self._executor.execute(
                            step_request,
                            on_started=partial(setattr, running, "execution_id"),
                            parent=step_span,
                        )
                except RequestError as exc:
                    # The step could not run (e.g. an output that is not the JSON
                    # the next prompt declares): the chain is rejected at this step.
                    running.state = ExecutionState.REJECTED
                    running.error = ExecutionFailure(exc.reason, exc.message)
                except BaseException as exc:
                    tracing.finish(step_span, exc)
                    raise
                assert record is not None or running.error is not None
                if record is not None:
                    running.record = record
                    running.execution_id = record.id
                    running.state = record.state
                    running.error = record.error
                finished, running = running, None
                telemetry.step_finished(step_span, finished)
                execution.add_step(finished)
                yield StepFinished(execution.id, index, finished)
                if finished.state is not ExecutionState.FULFILLED or record is None:
                    _reject(execution, step.name, finished.error)
                    break
                variables[step.output_variable] = output_variable(
                    step.output_variable, record.outputs
                )
                execution.outputs = record.outputs
            else:
                execution.state = ExecutionState.FULFILLED
        except (asyncio.CancelledError, GeneratorExit):
            self._abandon(execution, running, "CANCELLED", "the caller cancelled the chain")
            self._observe(execution, time.monotonic() - started)
            raise
        except Exception:
            self._abandon(execution, running, "INTERNAL_ERROR", "the chain failed unexpectedly")
            self._observe(execution, time.monotonic() - started)
            raise
        execution.latency = time.monotonic() - started
        execution.completed_at = utcnow()
        self._observe(execution, execution.latency)
        try:
            await self._store.save(execution)
        except Exception:
            # Not acknowledged (the caller gets UNAVAILABLE), but the row must not
            # stay RUNNING and hold its key: keep writing it in the background.
            self._save_later(execution)
            raise
        yield ChainFinished(execution)

    def _observe(self, execution: ChainExecution, seconds: float) -> None:
        """Count the ended chain execution in the metrics (when they are on)."""
        if self._metrics is not None:
            error = execution.error.code if execution.error is not None else ""
            self._metrics.chain_finished(execution.state.value, error, seconds)

    def _abandon(
        self, execution: ChainExecution, running: StepResult | None, code: str, message: str
    ) -> None:
        """The chain stops without finishing: record it REJECTED in the background."""
        failure = ExecutionFailure(code, message)
        if running is not None:
            running.state, running.error = ExecutionState.REJECTED, failure
            if running.execution_id:
                execution.add_step(running)
        _reject(execution, running.name if running else "", failure)
        execution.completed_at = utcnow()
        self._save_later(execution)

    def _save_later(self, execution: ChainExecution) -> None:
        """Write the chain execution's end in the background, retried while the store fails."""
        task = asyncio.get_running_loop().create_task(self._save_retried(execution))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def _save_retried(self, execution: ChainExecution) -> None:
        backoff = Backoff(SAVE_RETRY_INITIAL_S, SAVE_RETRY_MAX_S)
        for _ in range(SAVE_ATTEMPTS):
            try:
                await self._store.save(execution)
                return
            except Exception as exc:
                if not is_store_fault(exc):
                    break
            await backoff.sleep()
        log.error("chain execution %s could not be recorded", execution.id)

    def _time_allowed(self, request: ChainRequest) -> float:
        limits = [self._limits.default_timeout_s]
        if request.timeout:
            limits.append(request.timeout)
        if request.deadline is not None:
            limits.append(max(request.deadline - CHAIN_MARGIN_S, 0.0))
        return min(limits)

    async def _plan(self, request: ChainRequest) -> _Plan:
        target = request.target
        if isinstance(target, InlineChain):
            inputs = self._planner.inputs(target.spec, request.inputs)
            steps = await self._planner.check(
                request.workspace_id, target.spec, field="inline_chain", inputs=inputs
            )
            return _Plan(target.spec, steps, inputs)
        resolved = await self.resolve(request.workspace_id, target)
        spec = resolved.version.spec
        inputs = self._planner.inputs(spec, request.inputs)
        steps = await self._planner.check(request.workspace_id, spec, field="chain", inputs=inputs)
        return _Plan(
            spec,
            steps,
            inputs,
            chain_id=resolved.chain.id,
            chain_name=resolved.chain.name,
            version_id=resolved.version.id,
            version=resolved.version.version,
            release_tag=resolved.release_tag,
        )

    def _step_request(
        self,
        request: ChainRequest,
        execution: ChainExecution,
        planned: PlannedStep,
        variables: dict[str, PromptInput],
        remaining: float,
    ) -> ExecutionRequest:
        step = planned.step
        return ExecutionRequest(
            workspace_id=request.workspace_id,
            target=step.target,
            inputs=tuple(variables[name] for name in planned.takes if name in variables),
            metadata=request.metadata,
            parameters=step.parameters,
            deadline=max(remaining - CHAIN_MARGIN_S, 0.0),
            api_key_id=request.api_key_id,
            chain_execution_id=execution.id,
            chain_step=step.name,
            split_key=request.split_key,
        )


def _check_request(request: ChainRequest) -> None:
    problems: list[FieldViolation] = []
    if len(request.external_id) > MAX_EXTERNAL_ID:
        problems.append(FieldViolation("external_id", f"at most {MAX_EXTERNAL_ID} characters"))
    if request.timeout is not None and request.timeout <= 0:
        problems.append(FieldViolation("timeout", "must be positive"))
    if len(request.split_key) > MAX_SPLIT_KEY:
        problems.append(FieldViolation("split_key", f"at most {MAX_SPLIT_KEY} characters"))
    if problems:
        raise InvalidArgument.of(problems, reason="INVALID_PARAMETERS")


def _reject(execution: ChainExecution, step: str, failure: ExecutionFailure | None) -> None:
    """The chain is REJECTED at ``step``, with the step's error naming it."""
    failure = failure or ExecutionFailure("STEP_REJECTED", "the step was rejected")
    execution.state = ExecutionState.REJECTED
    execution.failed_step = step
    execution.outputs = ()
    message = f"step {step!r}: {failure.message}" if step else failure.message
    execution.error = ExecutionFailure(
        failure.code, message, failure.provider_status, failure.retry_after
    )


def output_variable(name: str, outputs: tuple[Output, ...]) -> PromptInput:
    """The variable a step's outputs make: its text (STRING) or its JSON value (JSON).

    A step that only called functions yields its first call as JSON
    ({"id", "name", "arguments"}).
    """
    for output in outputs:
        if isinstance(output, TextOutput):
            return PromptInput(name, InputType.STRING, output.text)
        if isinstance(output, JsonOutput):
            return PromptInput(name, InputType.JSON, output.value)
    for output in outputs:
        if isinstance(output, FunctionCallOutput):
            call = output.call
            arguments: Any = call.arguments if call.arguments is not None else call.arguments_json
            return PromptInput(
                name, InputType.JSON, {"id": call.id, "name": call.name, "arguments": arguments}
            )
    return PromptInput(name, InputType.STRING, "")


def chain_fingerprint(request: ChainRequest) -> str:
    """A hash of what ``request`` asks to run (its target and inputs), kept with its
    external_id; not the timeout or metadata, which do not change what runs."""
    document: dict[str, object] = {
        "target": to_jsonable_python(request.target),
        "inputs": [input_to_json(i) for i in request.inputs],
    }
    if request.split_key:  # only when set: fingerprints stored before it existed stay valid
        document["split_key"] = request.split_key
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _replay(execution: ChainExecution) -> list[ChainEvent]:
    """The events of a recorded chain execution, as a stream of it would have had them."""
    events: list[ChainEvent] = []
    for index, step in enumerate(execution.steps):
        if step.record is not None:
            events.append(StepStarted(execution.id, index, step.name, step.record))
            for position, output in enumerate(step.record.outputs):
                if isinstance(output, TextOutput) and output.text:
                    events.append(StepDelta(execution.id, index, step.name, output.text, position))
        events.append(StepFinished(execution.id, index, step))
    events.append(ChainFinished(execution))
    return events
