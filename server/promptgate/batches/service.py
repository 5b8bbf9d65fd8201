"""BatchService: what the batch RPCs do, free of gRPC.

ExecuteBatch checks the whole batch before storing anything: limits, unique
custom ids, the callback URL, the target (a stored prompt's or chain's version
is pinned at creation) and every item's inputs, rendered as they will run (for
a chain: checked against every step). A stored batch is PENDING and the runner
picks it up at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Any

from promptgate.batches.model import Batch, BatchEvent, BatchSpec, ItemResult, ItemState
from promptgate.batches.notifier import BatchNotifier
from promptgate.batches.runner import BatchRunner
from promptgate.batches.store import BatchStore
from promptgate.batches.webhooks.guard import CallbackGuard
from promptgate.chains.model import ResolvedChain, StoredChain
from promptgate.chains.runner import ChainRunner
from promptgate.errors import FailedPrecondition, FieldViolation, InvalidArgument
from promptgate.execution.executor import Executor
from promptgate.execution.model import ExecutionRequest, StoredTarget
from promptgate.execution.records import ExecutionHistory, error_from_json
from promptgate.ids import new_id
from promptgate.prompts.catalog import PromptCatalog
from promptgate.prompts.model import ResolvedPrompt
from promptgate.store.tables import BatchItemRow

MAX_CUSTOM_ID = 256
MAX_REPORTED_VIOLATIONS = 100


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Limits on what a batch may ask for."""

    max_items: int = 10_000
    default_concurrency: int = 16
    max_concurrency: int = 256
    default_release_tag: str = "production"
    webhooks_enabled: bool = False


class BatchService:
    """Creates, reads, watches and cancels batches."""

    def __init__(
        self,
        store: BatchStore,
        runner: BatchRunner,
        notifier: BatchNotifier,
        executor: Executor,
        catalog: PromptCatalog,
        history: ExecutionHistory,
        guard: CallbackGuard,
        limits: BatchLimits,
        *,
        chains: ChainRunner | None = None,
    ) -> None:
        self._chains = chains
        self._store = store
        self._runner = runner
        self._notifier = notifier
        self._executor = executor
        self._catalog = catalog
        self._history = history
        self._guard = guard
        self._limits = limits
        self._reads: dict[tuple[str, str, int], asyncio.Future[tuple[Batch, list[BatchEvent]]]] = {}

    async def create(self, spec: BatchSpec) -> Batch:
        """Check and store a batch; it starts running in the background."""
        limits = self._limits
        problems: list[FieldViolation] = []
        if not spec.items:
            problems.append(FieldViolation("items", "a batch needs at least one item"))
        if len(spec.items) > limits.max_items:
            problems.append(FieldViolation("items", f"at most {limits.max_items} items per batch"))
        seen: dict[str, int] = {}
        for i, item in enumerate(spec.items):
            if not item.custom_id:
                problems.append(FieldViolation(f"items[{i}].custom_id", "a custom_id is required"))
            elif len(item.custom_id) > MAX_CUSTOM_ID:
                problems.append(
                    FieldViolation(f"items[{i}].custom_id", f"at most {MAX_CUSTOM_ID} characters")
                )
            elif item.custom_id in seen:
                problems.append(
                    FieldViolation(
                        f"items[{i}].custom_id",
                        f"custom_id {item.custom_id!r} is also items[{seen[item.custom_id]}]",
                    )
                )
            else:
                seen[item.custom_id] = i
        concurrency = spec.max_concurrency or limits.default_concurrency
        if spec.max_concurrency < 0 or spec.max_concurrency > limits.max_concurrency:
            problems.append(
                FieldViolation("max_concurrency", f"must be between 0 and {limits.max_concurrency}")
            )
        if problems:
            raise InvalidArgument.of(problems[:MAX_REPORTED_VIOLATIONS], reason="INVALID_BATCH")
        if spec.callback_url:
            if not limits.webhooks_enabled:
                raise FailedPrecondition(
                    "callback URLs need a webhook signing secret: set PROMPTGATE_WEBHOOK_SECRET",
                    reason="WEBHOOKS_NOT_CONFIGURED",
                )
            self._guard.check_url(spec.callback_url)
            await self._guard.check_destination(spec.callback_url)
        resolved: ResolvedPrompt | ResolvedChain | None = None
        target = spec.target
        if isinstance(target, StoredChain):
            resolved = await self._chain_target(spec, target)
            await self._check_chain_items(spec, resolved)
            batch = await self._store.create(new_id("bat"), spec, resolved, concurrency)
            self._runner.wake()
            return batch
        if isinstance(target, StoredTarget):
            if target.release_tag and target.version:
                raise InvalidArgument.field("version", "give a release_tag or a version, not both")
            resolved = await self._catalog.resolve(
                spec.workspace_id,
                target.prompt,
                tag=target.release_tag or limits.default_release_tag,
                version=target.version,
            )
            target = StoredTarget(prompt=resolved.prompt.id, version=resolved.version.version)
        await self._check_items(replace(spec, target=target))
        batch = await self._store.create(new_id("bat"), spec, resolved, concurrency)
        self._runner.wake()
        return batch

    async def get(self, workspace: str, batch_id: str) -> Batch:
        """A batch with its counts."""
        return await self._store.get(workspace, batch_id)

    async def results(
        self, workspace: str, batch_id: str, *, size: int, token: str, state: ItemState | None
    ) -> tuple[list[ItemResult], str]:
        """A page of item results, in item order."""
        rows, next_token = await self._store.results(
            workspace, batch_id, size=size, token=token, state=state
        )
        return await self._item_results(workspace, rows), next_token

    async def cancel(self, workspace: str, batch_id: str) -> Batch:
        """Cancel a batch: pending items now, running ones as they stop."""
        batch, _ = await self._store.cancel(workspace, batch_id)
        self._runner.cancel_local(batch_id)
        self._notifier.notify(batch_id)
        return batch

    async def watch(
        self, workspace: str, batch_id: str, after: int
    ) -> AsyncGenerator[BatchEvent, None]:
        """Progress and item results after event ``after``, until the batch finishes.

        While nothing happens the stream costs nothing: it waits on the
        notifier, which wakes it when this process changes the batch and, for
        changes made by other replicas, from one shared poll of the batch's
        ``last_seq``. A position past the last event gets nothing until newer
        events exist (or the batch finishes).
        """
        if after < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative")
        position = after
        batch, _ = await self._store.events_after(workspace, batch_id, position, limit=0)
        yield BatchEvent(seq=position, progress=batch)
        with self._notifier.watch(batch_id) as changes:
            while True:
                mark = changes.mark()
                batch, events = await self._events_after(workspace, batch_id, position)
                for event in events:
                    position = event.seq
                    yield event
                if events:
                    continue
                if batch.state.terminal and position >= batch.last_seq:
                    return
                if self._notifier.closed:  # shutting down: the client resumes elsewhere
                    return
                if position < batch.last_seq:
                    continue  # events committed between our two reads: read them now
                await changes.wait(mark, batch.last_seq)

    async def _events_after(
        self, workspace: str, batch_id: str, position: int
    ) -> tuple[Batch, list[BatchEvent]]:
        """The batch and its events after ``position``, read once for all watchers there.

        A change wakes every watcher of the batch at once; those at the same
        position share one read instead of each querying the store.
        """
        key = (workspace, batch_id, position)
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(self._read_events(workspace, batch_id, position))
            self._reads[key] = read
            read.add_done_callback(lambda _: self._reads.pop(key, None))
        # Shielded: one watcher leaving must not cancel the others' read.
        return await asyncio.shield(read)

    async def _read_events(
        self, workspace: str, batch_id: str, position: int
    ) -> tuple[Batch, list[BatchEvent]]:
        batch, events = await self._store.events_after(workspace, batch_id, position)
        rows = [item for _, item in events if item is not None]
        results = {r.index: r for r in await self._item_results(workspace, rows)}
        return batch, [
            BatchEvent(seq=event.seq, item=results[item.idx])
            if item is not None
            else BatchEvent(seq=event.seq, progress=batch)
            for event, item in events
        ]

    async def _chain_target(self, spec: BatchSpec, target: StoredChain) -> ResolvedChain:
        """The chain version the batch's items run; parameters do not apply to chains."""
        if self._chains is None:
            raise FailedPrecondition("chains are not served here", reason="CHAINS_UNAVAILABLE")
        if spec.parameters is not None or any(i.parameters is not None for i in spec.items):
            raise InvalidArgument.field(
                "parameters",
                "parameters apply to prompt targets; a chain's steps carry their own",
                reason="INVALID_BATCH",
            )
        return await self._chains.resolve(spec.workspace_id, target)

    async def _check_chain_items(self, spec: BatchSpec, resolved: ResolvedChain) -> None:
        """Every item's inputs, checked against the chain's declarations and steps."""
        assert self._chains is not None
        problems: list[FieldViolation] = []
        targets: dict[int, Any] = {}  # the steps' prompts, checked once for all items
        for i, item in enumerate(spec.items):
            try:
                await self._chains.check_inputs(
                    spec.workspace_id, resolved.version.spec, item.inputs, targets
                )
            except InvalidArgument as exc:
                problems.extend(
                    FieldViolation(f"items[{i}].{v.field}", v.description) for v in exc.violations
                )
            if len(problems) >= MAX_REPORTED_VIOLATIONS:
                break
        if problems:
            raise InvalidArgument.of(problems[:MAX_REPORTED_VIOLATIONS], reason="INVALID_INPUT")

    async def _check_items(self, spec: BatchSpec) -> None:
        problems: list[FieldViolation] = []
        target = spec.target
        assert not isinstance(target, StoredChain)
        for i, item in enumerate(spec.items):
            parameters = item.parameters
            if spec.parameters is not None:
                parameters = (
                    parameters.merged_over(spec.parameters) if parameters else spec.parameters
                )
            request = ExecutionRequest(
                workspace_id=spec.workspace_id,
                target=target,
                inputs=item.inputs,
                parameters=parameters,
            )
            try:
                await self._executor.check(request)
            except InvalidArgument as exc:
                own = [v for v in exc.violations if v.field.startswith(("inputs", "parameters"))]
                if not own:  # the target itself is wrong, the same for every item
                    raise
                problems.extend(FieldViolation(f"items[{i}].{v.field}", v.description) for v in own)
            if len(problems) >= MAX_REPORTED_VIOLATIONS:
                break
        if problems:
            raise InvalidArgument.of(problems[:MAX_REPORTED_VIOLATIONS], reason="INVALID_INPUT")

    async def _item_results(self, workspace: str, rows: list[BatchItemRow]) -> list[ItemResult]:
        ids = [r.execution_id for r in rows if r.execution_id]
        # An item of a chain batch ran as a chain execution ("chx_..." ids).
        chain_ids = [i for i in ids if i.startswith("chx_")]
        executions = await self._history.get_many(
            workspace, [i for i in ids if not i.startswith("chx_")]
        )
        chained = (
            await self._chains.find_many(workspace, chain_ids)
            if chain_ids and self._chains is not None
            else {}
        )
        return [
            ItemResult(
                custom_id=r.custom_id,
                index=r.idx,
                state=ItemState(r.state),
                execution_id=r.execution_id or "",
                execution=executions.get(r.execution_id or ""),
                error=error_from_json(r.error),
                chain=chained.get(r.execution_id or ""),
            )
            for r in rows
        ]
