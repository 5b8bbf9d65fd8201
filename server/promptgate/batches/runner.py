"""BatchRunner: the background worker that runs batch items.

Each server process runs one. It claims pending items from the store (within
each batch's concurrency limit and its own overall limit), runs each as a
normal recorded execution, and records the item's outcome. Items are
idempotent: an item runs with the external_id ``<batch id>/<index>``, so if a
process dies after an execution was recorded but before the item was marked,
the retry replays the recorded execution instead of calling the provider
again.

Crash recovery: every worker heartbeats into the store. An item claimed by a
worker whose heartbeat is stale is finished with its execution if that was
recorded (FULFILLED or REJECTED); otherwise it goes back to the queue once,
and an item that was running in two workers that died is REJECTED
(``ITEM_ABANDONED``). As a safety net, each worker also resolves the same way
any item the store says it is running but for which it has no task.

Store faults (the database restarting, a dropped connection) never stop the
runner: its loops carry on, an item whose execution could not be recorded is
run again (a recorded one is replayed, not re-sent), and outcome writes are
retried with backoff until they land. When the store is back, work resumes
by itself; faults are logged as one warning line now and then.

Shutdown: claiming stops, running items get the grace period to finish, the
rest are cancelled and put back in the queue for the next start.

Each item is a trace of its own (a ``promptgate.batch.item`` span, parent of
its execution's), and its log lines carry the workspace, the item's key
``<batch id>/<index>`` as request id, and its execution id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from promptgate.backoff import Backoff
from promptgate.batches.callbacks import CallbackDeliveries
from promptgate.batches.faults import FaultLog, is_store_fault
from promptgate.batches.model import Batch, ItemOutcome, ItemState, item_external_id
from promptgate.batches.notifier import BatchNotifier
from promptgate.batches.rows import ClaimedItem, RunnableBatch
from promptgate.batches.store import BatchStore
from promptgate.batches.webhooks.delivery import WebhookSender
from promptgate.chains.model import ChainRequest, StoredChain
from promptgate.chains.runner import ChainRunner
from promptgate.errors import RequestError
from promptgate.execution.executor import Executor
from promptgate.execution.model import (
    ExecutionFailure,
    ExecutionRecord,
    ExecutionRequest,
    StoredTarget,
)
from promptgate.ids import new_id
from promptgate.observability import context as log_context
from promptgate.observability import tracing
from promptgate.observability.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["BatchNotifier", "BatchRunner", "RunnerSettings"]

# Request errors that mean the batch's target itself is gone: the batch FAILS.
FATAL_REASONS = {
    "PROMPT_ARCHIVED",
    "PROMPT_NOT_FOUND",
    "VERSION_NOT_FOUND",
    "CHAIN_ARCHIVED",
    "CHAIN_NOT_FOUND",
}

_Key = tuple[str, int]
ITEM_SPAN = "promptgate.batch.item"
_Queued = tuple[ItemOutcome, "asyncio.Future[bool] | None"]


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """How the runner paces itself."""

    concurrency: int = 64
    poll_interval_s: float = 0.5
    heartbeat_s: float = 2.0
    stale_after_s: float = 10.0
    webhook_secret: str = ""


class BatchRunner:
    """Runs batch items in the background. See the module docstring."""

    def __init__(
        self,
        store: BatchStore,
        executor: Executor,
        notifier: BatchNotifier,
        sender: WebhookSender,
        settings: RunnerSettings,
        *,
        worker_id: str = "",
        chains: ChainRunner | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._chains = chains
        self._metrics = metrics
        self._store = store
        self._executor = executor
        self._notifier = notifier
        self._callbacks = CallbackDeliveries(
            store, sender, settings.webhook_secret, stale_after_s=settings.stale_after_s
        )
        self._settings = settings
        self.worker_id = worker_id or new_id("wrk")
        self._wake = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._items: dict[_Key, asyncio.Task[None]] = {}
        self._shutdown_cancelled: set[_Key] = set()
        self._batches: dict[str, RunnableBatch] = {}
        self._deliveries_due = False
        self._outcomes: asyncio.Queue[_Queued] = asyncio.Queue()
        self._unwritten: set[_Key] = set()  # outcomes queued or being written
        self._faults = FaultLog(log)

    async def start(self) -> None:
        """Register this worker and start the loops."""
        await self._store.workers.heartbeat(self.worker_id)
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._run(), name="batch-runner"),
            loop.create_task(self._beat(), name="batch-heartbeat"),
            loop.create_task(self._write_outcomes(), name="batch-outcomes"),
        ]

    def wake(self) -> None:
        """Look for work now (a batch was created or an item finished)."""
        self._wake.set()

    def cancel_local(self, batch_id: str) -> None:
        """Cancel this process's running items of ``batch_id`` (CancelBatch)."""
        for (bid, _), task in list(self._items.items()):
            if bid == batch_id and not task.cancelling():
                task.cancel()

    async def stop(self, grace: float) -> None:
        """Stop claiming; let running items finish for ``grace`` seconds; requeue the rest."""
        self._stopping = True
        self._wake.set()
        running = list(self._items.values())
        if running:
            await asyncio.wait(running, timeout=grace)
        for key, task in list(self._items.items()):
            if not task.done():
                self._shutdown_cancelled.add(key)
                task.cancel()  # may cancel a CancelBatch; the item is then requeued
        if self._items:
            await asyncio.wait(list(self._items.values()))
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._callbacks.stop()
        with contextlib.suppress(Exception):
            await self._store.workers.retire(self.worker_id)

    # Loops

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            try:
                await self._store.workers.heartbeat(self.worker_id)
            except Exception as exc:
                self._warn("batch worker heartbeat", exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_recovery = next_upkeep = 0.0
        while not self._stopping:
            try:
                now = loop.time()
                if now >= next_recovery:
                    await self._recover()
                    next_recovery = now + self._settings.heartbeat_s
                if now >= next_upkeep or self._deliveries_due:
                    # Other replicas' cancels and webhooks: checked on a timer, not per item.
                    self._deliveries_due = False
                    await self._check_cancelled()
                    await self._callbacks.start_due(self.worker_id)
                    next_upkeep = now + self._settings.poll_interval_s
                await self._claim()
            except Exception as exc:  # the loop outlives any failure; the next turn retries
                self._warn("batch runner iteration", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()

    def _warn(self, what: str, exc: Exception) -> None:
        """One warning line for a store fault; a traceback for anything else."""
        if is_store_fault(exc):
            self._faults.warn(what, exc)
        else:
            log.exception("%s failed", what)

    async def _claim(self) -> None:
        free = self._settings.concurrency - len(self._items)
        if free <= 0 or self._stopping:
            return
        runnable = await self._store.runnable()
        self._batches = {b: self._batches[b] for b in runnable if b in self._batches}
        loop = asyncio.get_running_loop()
        for batch_id in runnable:
            # The target first: claimed items must get their task without another
            # store call in between that could fail and strand them.
            batch = self._batches.get(batch_id) or await self._store.runnable_batch(batch_id)
            self._batches[batch_id] = batch
            claimed = await self._store.claim(batch_id, self.worker_id, free)
            for item in claimed:
                key = (batch_id, item.index)
                task = loop.create_task(
                    self._run_item(batch, item), name=f"batch-item-{batch_id}-{item.index}"
                )
                self._items[key] = task
                task.add_done_callback(self._forget(key))
            free -= len(claimed)
            if self._metrics is not None:
                self._metrics.batch_items_now(len(self._items))
            if free <= 0:
                return

    def _forget(self, key: _Key) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._items.pop(key, None)
            if self._metrics is not None:
                self._metrics.batch_items_now(len(self._items))
            self._shutdown_cancelled.discard(key)
            self._wake.set()  # a slot is free only now that the task is gone

        return forget

    async def _check_cancelled(self) -> None:
        running = {bid for bid, _ in self._items}
        for batch_id in await self._store.is_cancel_requested(list(running)):
            self.cancel_local(batch_id)

    async def _recover(self) -> None:
        """Resolve the items no task runs: dead workers' items and this worker's strays."""
        abandoned = [
            a
            for a in await self._store.workers.abandoned(self._settings.stale_after_s)
            if a[3] != self.worker_id
        ]
        # Taken before the read: an item whose task ends during the read is not a stray.
        known = {*self._items, *self._unwritten}
        stray = [
            key
            for key in await self._store.workers.running_on(self.worker_id)
            if key not in known and key not in self._items and key not in self._unwritten
        ]
        if not abandoned and not stray:
            return
        recorded = await self._recorded([(b, i) for b, i, _, _ in abandoned] + stray)
        for batch_id, index, attempts, dead in abandoned:
            outcome = recorded.get((batch_id, index))
            if outcome is None and attempts < 2:
                if await self._store.workers.requeue(batch_id, index, dead):
                    log.info("batch %s item %d requeued after its worker stopped", batch_id, index)
                    self._wake.set()
                continue
            if not await self._store.workers.adopt(batch_id, index, dead, self.worker_id):
                continue
            if outcome is None:
                log.warning("batch %s item %d abandoned twice; rejecting it", batch_id, index)
                failure = ExecutionFailure(
                    "ITEM_ABANDONED",
                    "the item was running on a server that stopped, twice; it was not retried again",
                )
                outcome = ItemOutcome(batch_id, index, ItemState.REJECTED, "", failure)
            else:
                log.info(
                    "batch %s item %d: its worker stopped after recording execution %s; "
                    "finishing the item with it",
                    batch_id,
                    index,
                    outcome.execution_id,
                )
            self._submit(outcome)
        for batch_id, index in stray:
            outcome = recorded.get((batch_id, index))
            if outcome is not None:
                log.warning(
                    "batch %s item %d was left running without a task; finishing it with "
                    "its recorded execution %s",
                    batch_id,
                    index,
                    outcome.execution_id,
                )
                self._submit(outcome)
            else:
                log.warning(
                    "batch %s item %d was left running without a task; requeueing it",
                    batch_id,
                    index,
                )
                await self._store.release(batch_id, index, self.worker_id)
                self._wake.set()

    async def _recorded(self, keys: list[_Key]) -> dict[_Key, ItemOutcome]:
        """The outcomes recorded executions give these items (only those recorded final)."""
        by_batch: dict[str, list[int]] = {}
        for batch_id, index in keys:
            by_batch.setdefault(batch_id, []).append(index)
        found: dict[_Key, ItemOutcome] = {}
        for batch_id, indexes in by_batch.items():
            for index, outcome in (
                await self._store.workers.recorded_outcomes(batch_id, indexes)
            ).items():
                found[(batch_id, index)] = outcome
        return found

    # Items

    async def _run_item(self, batch: RunnableBatch, item: ClaimedItem) -> None:
        # The item's own task: its log context and span are its own.
        key = item_external_id(batch.id, item.index)
        log_context.begin(log_context.CallInfo(request_id=key, workspace=batch.workspace_id))
        about = {"promptgate.batch.id": batch.id, "promptgate.batch.custom_id": item.custom_id}
        with tracing.span(ITEM_SPAN, attributes=about):
            await self._item(batch, item)

    async def _item(self, batch: RunnableBatch, item: ClaimedItem) -> None:
        key = (batch.id, item.index)
        started: list[str] = []
        try:
            if batch.chain_id:
                outcome = await self._run_chain(batch, item)
            else:
                record = await self._execute(self._request(batch, item), started)
                outcome = ItemOutcome.of(batch.id, item.index, record)
        except asyncio.CancelledError:
            # Shielded: the item's outcome must be written even if cancelled again.
            if key in self._shutdown_cancelled:
                with contextlib.suppress(Exception):  # else the next start's recovery requeues it
                    await asyncio.shield(self._store.release(batch.id, item.index, self.worker_id))
            else:
                # The execution (if it started) is recorded CANCELLED under this id.
                execution_id = started[0] if started else ""
                failure = ExecutionFailure("CANCELLED", "the batch was cancelled")
                outcome = ItemOutcome(
                    batch.id, item.index, ItemState.CANCELLED, execution_id, failure
                )
                await asyncio.shield(self._finish(outcome))
            raise
        except RequestError as exc:
            failure = ExecutionFailure(exc.reason, exc.message)
            outcome = ItemOutcome(batch.id, item.index, ItemState.REJECTED, "", failure)
            await self._finish(outcome)
            if exc.reason in FATAL_REASONS:
                await self._fail_batch(batch.id, failure)
            return
        except Exception as exc:
            log.exception("batch %s item %d failed unexpectedly", batch.id, item.index)
            failure = ExecutionFailure("INTERNAL_ERROR", f"the item failed: {type(exc).__name__}")
            await self._finish(ItemOutcome(batch.id, item.index, ItemState.REJECTED, "", failure))
            return
        await self._finish(outcome)

    def _request(self, batch: RunnableBatch, item: ClaimedItem) -> ExecutionRequest:
        """The execution of an item of a prompt batch."""
        parameters = item.parameters
        if batch.parameters is not None:
            parameters = (
                parameters.merged_over(batch.parameters) if parameters else batch.parameters
            )
        return ExecutionRequest(
            workspace_id=batch.workspace_id,
            target=batch.inline or StoredTarget(prompt=batch.prompt_id, version=batch.version),
            inputs=item.inputs,
            external_id=item_external_id(batch.id, item.index),
            metadata={"batch_id": batch.id, "batch_custom_id": item.custom_id, **item.metadata},
            parameters=parameters,
            api_key_id=batch.api_key_id,
            resume=True,
            fresh=item.starts == 1,  # never started before: no execution can exist yet
        )

    async def _run_chain(self, batch: RunnableBatch, item: ClaimedItem) -> ItemOutcome:
        """Run an item of a chain batch as a chain execution keyed ``<batch id>/<index>``.

        The key makes a rerun (after a crash or a store fault) replay a chain
        execution that was recorded, not run it again.
        """
        assert self._chains is not None, "a chain batch needs the chain runner"
        request = ChainRequest(
            workspace_id=batch.workspace_id,
            target=StoredChain(chain=batch.chain_id, version=batch.version),
            inputs=item.inputs,
            external_id=item_external_id(batch.id, item.index),
            metadata={"batch_id": batch.id, "batch_custom_id": item.custom_id, **item.metadata},
            api_key_id=batch.api_key_id,
        )
        backoff = Backoff()
        while True:
            try:
                execution = await self._chains.execute(request)
                return ItemOutcome.of_chain(batch.id, item.index, execution)
            except Exception as exc:
                if not is_store_fault(exc):
                    raise
                self._faults.warn("running batch items", exc)
            await backoff.sleep()

    async def _execute(self, request: ExecutionRequest, started: list[str]) -> ExecutionRecord:
        """Run the item's execution; while the store is out of reach, try again later.

        After a store fault the execution may or may not have been recorded, so
        later tries look for it: a recorded one is replayed, not sent again.
        """
        backoff = Backoff()
        while True:
            try:
                return await self._executor.execute(request, on_started=started.append)
            except Exception as exc:
                if not is_store_fault(exc):
                    raise
                self._faults.warn("running batch items", exc)
            request = replace(request, fresh=False)
            started.clear()
            await backoff.sleep()

    async def _fail_batch(self, batch_id: str, failure: ExecutionFailure) -> None:
        """The batch's target is gone: fail it (a later item retries if this does not land)."""
        try:
            finished = await self._store.fail(batch_id, failure)
        except Exception as exc:
            self._warn(f"failing batch {batch_id}", exc)
            return
        self._after_finish(batch_id, finished)
        self.cancel_local(batch_id)

    async def _finish(self, outcome: ItemOutcome) -> bool:
        """Record an item's outcome, together with others finishing at the same time.

        Returns once it is written (False if it could not be, for a reason other
        than a store fault: the worker's self-check then resolves the item).
        """
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._submit(outcome, done)
        return await done

    def _submit(self, outcome: ItemOutcome, done: asyncio.Future[bool] | None = None) -> None:
        """Queue an outcome for the writer, without waiting for it."""
        self._unwritten.add((outcome.batch_id, outcome.index))
        self._outcomes.put_nowait((outcome, done))

    async def _write_outcomes(self) -> None:
        """Group commit of item outcomes, retried with backoff until they land."""
        backoff = Backoff()
        retry: list[_Queued] = []
        while True:
            group = retry or [await self._outcomes.get()]
            while not self._outcomes.empty():
                group.append(self._outcomes.get_nowait())
            retry = await self._write_group(group)
            if retry:
                await backoff.sleep()
            else:
                backoff.reset()

    async def _write_group(self, group: list[_Queued]) -> list[_Queued]:
        """Write ``group`` in one transaction; return what must be tried again."""
        try:
            finished = await self._store.finish([o for o, _ in group], self.worker_id)
        except Exception as exc:
            if is_store_fault(exc):
                # Safe to repeat: an outcome that did land is skipped the next time.
                self._faults.warn("recording batch item outcomes", exc)
                return group
            if len(group) == 1:
                outcome = group[0][0]
                log.exception(
                    "recording the outcome of batch %s item %d failed",
                    outcome.batch_id,
                    outcome.index,
                )
                self._settle(group, written=False)
                return []
            # One bad outcome must not hold the others back.
            retry: list[_Queued] = []
            for queued in group:
                retry.extend(await self._write_group([queued]))
            return retry
        self._settle(group, written=True)
        for outcome, _ in group:
            self._notifier.notify(outcome.batch_id)
        for batch in finished:
            self._after_finish(batch.id, batch)
        self._wake.set()
        return []

    def _settle(self, group: list[_Queued], *, written: bool) -> None:
        for outcome, done in group:
            self._unwritten.discard((outcome.batch_id, outcome.index))
            if written and self._metrics is not None:
                self._metrics.batch_item_finished(outcome.state.value)
            if done is not None and not done.done():
                done.set_result(written)

    def _after_finish(self, batch_id: str, finished: Batch | None) -> None:
        self._notifier.notify(batch_id)
        self._wake.set()
        if finished is not None:
            if self._metrics is not None:
                self._metrics.batch_finished(finished.state.value)
            self._batches.pop(batch_id, None)
            self._deliveries_due = bool(finished.callback_url)
            log.info(
                "batch %s %s: %d succeeded, %d rejected, %d cancelled",
                batch_id,
                finished.state.value,
                finished.succeeded,
                finished.rejected,
                finished.cancelled,
            )
