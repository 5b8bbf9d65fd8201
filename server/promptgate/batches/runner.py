"""BatchRunner: the background worker that runs batch items.

Each server process runs one. It claims pending items from the store (within
each batch's concurrency limit and its own overall limit), runs each as a
normal recorded execution, and records the item's outcome. Items are
idempotent: an item runs with the external_id ``<batch id>/<index>``, so if a
process dies after an execution was recorded but before the item was marked,
the retry replays the recorded execution instead of calling the provider
again.

Crash recovery: every worker heartbeats into the store. Items claimed by a
worker whose heartbeat is stale go back to the queue once; an item that was
running in two workers that died is REJECTED (``ITEM_ABANDONED``).

Shutdown: claiming stops, running items get the grace period to finish, the
rest are cancelled and put back in the queue for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from promptgate.batches.model import Batch, ItemState
from promptgate.batches.store import BatchStore, ClaimedItem, ItemOutcome, RunnableBatch
from promptgate.batches.webhooks.delivery import DeliveryAttempt, WebhookSender
from promptgate.batches.webhooks.signing import workspace_secret
from promptgate.errors import RequestError
from promptgate.execution.executor import Executor
from promptgate.execution.model import (
    ExecutionFailure,
    ExecutionRequest,
    ExecutionState,
    StoredTarget,
)
from promptgate.ids import new_id

log = logging.getLogger(__name__)

# Request errors that mean the batch's target itself is gone: the batch FAILS.
FATAL_REASONS = {"PROMPT_ARCHIVED", "PROMPT_NOT_FOUND", "VERSION_NOT_FOUND"}


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """How the runner paces itself."""

    concurrency: int = 64
    poll_interval_s: float = 0.5
    heartbeat_s: float = 2.0
    stale_after_s: float = 10.0
    webhook_secret: str = ""


class BatchNotifier:
    """Wakes WatchBatch streams in this process when a batch changes."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closed = False

    def close(self) -> None:
        """Shutdown: wake every watcher for good, so watch streams end."""
        self.closed = True
        for event in self._events.values():
            event.set()
        self._events.clear()

    def notify(self, batch_id: str) -> None:
        """Something happened to ``batch_id``."""
        event = self._events.pop(batch_id, None)
        if event is not None:
            event.set()

    async def wait(self, batch_id: str, seconds: float) -> None:
        """Return when ``batch_id`` changes or after ``seconds``."""
        if self.closed:
            return
        event = self._events.setdefault(batch_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()


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
    ) -> None:
        self._store = store
        self._executor = executor
        self._notifier = notifier
        self._sender = sender
        self._settings = settings
        self.worker_id = worker_id or new_id("wrk")
        self._wake = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._items: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._shutdown_cancelled: set[tuple[str, int]] = set()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._batches: dict[str, RunnableBatch] = {}
        self._deliveries_due = False
        self._outcomes: asyncio.Queue[tuple[ItemOutcome, asyncio.Future[None]]] = asyncio.Queue()

    async def start(self) -> None:
        """Register this worker and start the loops."""
        await self._store.heartbeat(self.worker_id)
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
        for task in [*self._loops, *self._deliveries]:
            task.cancel()
        for task in [*self._loops, *self._deliveries]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._store.retire(self.worker_id)

    # Loops

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            try:
                await self._store.heartbeat(self.worker_id)
            except Exception:
                log.exception("batch worker heartbeat failed")

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
                    await self._start_deliveries()
                    next_upkeep = now + self._settings.poll_interval_s
                await self._claim()
            except Exception:
                log.exception("batch runner iteration failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def _claim(self) -> None:
        free = self._settings.concurrency - len(self._items)
        if free <= 0 or self._stopping:
            return
        for batch_id in await self._store.runnable():
            claimed = await self._store.claim(batch_id, self.worker_id, free)
            if not claimed:
                continue
            batch = self._batches.get(batch_id) or await self._store.runnable_batch(batch_id)
            self._batches[batch_id] = batch
            loop = asyncio.get_running_loop()
            for item in claimed:
                key = (batch_id, item.index)
                task = loop.create_task(
                    self._run_item(batch, item), name=f"batch-item-{batch_id}-{item.index}"
                )
                self._items[key] = task
                task.add_done_callback(self._forget(key))
            free -= len(claimed)
            if free <= 0:
                return

    def _forget(self, key: tuple[str, int]) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._items.pop(key, None)
            self._shutdown_cancelled.discard(key)
            self._wake.set()  # a slot is free only now that the task is gone

        return forget

    async def _check_cancelled(self) -> None:
        running = {bid for bid, _ in self._items}
        for batch_id in await self._store.is_cancel_requested(list(running)):
            self.cancel_local(batch_id)

    async def _recover(self) -> None:
        for batch_id, index, attempts, dead in await self._store.abandoned(
            self._settings.stale_after_s
        ):
            if dead == self.worker_id:
                continue
            if attempts >= 2:
                if await self._store.adopt(batch_id, index, dead, self.worker_id):
                    log.warning("batch %s item %d abandoned twice; rejecting it", batch_id, index)
                    failure = ExecutionFailure(
                        "ITEM_ABANDONED",
                        "the item was running on a server that stopped, twice; it was not retried again",
                    )
                    await self._finish(batch_id, index, ItemState.REJECTED, "", failure)
            elif await self._store.requeue(batch_id, index, dead):
                log.info("batch %s item %d requeued after its worker stopped", batch_id, index)
                self._wake.set()

    # Items

    async def _run_item(self, batch: RunnableBatch, item: ClaimedItem) -> None:
        key = (batch.id, item.index)
        parameters = item.parameters
        if batch.parameters is not None:
            parameters = (
                parameters.merged_over(batch.parameters) if parameters else batch.parameters
            )
        request = ExecutionRequest(
            workspace_id=batch.workspace_id,
            target=batch.inline or StoredTarget(prompt=batch.prompt_id, version=batch.version),
            inputs=item.inputs,
            external_id=f"{batch.id}/{item.index}",
            metadata={"batch_id": batch.id, "batch_custom_id": item.custom_id, **item.metadata},
            parameters=parameters,
            api_key_id=batch.api_key_id,
            resume=True,
            fresh=item.starts == 1,  # never started before: no execution can exist yet
        )
        started: list[str] = []
        try:
            record = await self._executor.execute(request, on_started=started.append)
        except asyncio.CancelledError:
            # Shielded: the item's outcome must be written even if cancelled again.
            if key in self._shutdown_cancelled:
                await asyncio.shield(self._store.release(batch.id, item.index, self.worker_id))
            else:
                # The execution (if it started) is recorded CANCELLED under this id.
                execution_id = started[0] if started else ""
                failure = ExecutionFailure("CANCELLED", "the batch was cancelled")
                await asyncio.shield(
                    self._finish(batch.id, item.index, ItemState.CANCELLED, execution_id, failure)
                )
            raise
        except RequestError as exc:
            failure = ExecutionFailure(exc.reason, exc.message)
            await self._finish(batch.id, item.index, ItemState.REJECTED, "", failure)
            if exc.reason in FATAL_REASONS:
                finished = await self._store.fail(batch.id, failure)
                self._after_finish(batch.id, finished)
                self.cancel_local(batch.id)
            return
        except Exception as exc:
            log.exception("batch %s item %d failed unexpectedly", batch.id, item.index)
            failure = ExecutionFailure("INTERNAL_ERROR", f"the item failed: {type(exc).__name__}")
            await self._finish(batch.id, item.index, ItemState.REJECTED, "", failure)
            return
        if record.state is ExecutionState.FULFILLED:
            state = ItemState.FULFILLED
        elif record.error is not None and record.error.code == "CANCELLED":
            state = ItemState.CANCELLED
        else:
            state = ItemState.REJECTED
        await self._finish(batch.id, item.index, state, record.id, record.error)

    async def _finish(
        self,
        batch_id: str,
        index: int,
        state: ItemState,
        execution_id: str,
        error: ExecutionFailure | None,
    ) -> None:
        """Record an item's outcome, together with others finishing at the same time."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outcomes.put_nowait((ItemOutcome(batch_id, index, state, execution_id, error), done))
        await done

    async def _write_outcomes(self) -> None:
        """Group commit of item outcomes (one transaction for all finished meanwhile)."""
        while True:
            group = [await self._outcomes.get()]
            while not self._outcomes.empty():
                group.append(self._outcomes.get_nowait())
            try:
                finished = await self._store.finish([o for o, _ in group], self.worker_id)
            except Exception as exc:
                log.exception("recording %d batch item outcomes failed", len(group))
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for outcome, done in group:
                self._notifier.notify(outcome.batch_id)
                if not done.done():
                    done.set_result(None)
            for batch in finished:
                self._after_finish(batch.id, batch)
            self._wake.set()

    def _after_finish(self, batch_id: str, finished: Batch | None) -> None:
        self._notifier.notify(batch_id)
        self._wake.set()
        if finished is not None:
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

    # Webhooks

    async def _start_deliveries(self) -> None:
        while not self._stopping:
            batch_id = await self._store.claim_callback(
                self.worker_id, self._settings.stale_after_s
            )
            if batch_id is None:
                return
            task = asyncio.get_running_loop().create_task(self._deliver(batch_id))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, batch_id: str) -> None:
        batch = await self._store.callback_batch(batch_id)

        async def record(attempt: DeliveryAttempt) -> None:
            await self._store.record_callback_attempt(
                batch_id, attempt.attempt, attempt.status_code, attempt.error, attempt.duration_s
            )

        result = await self._sender.deliver(
            batch.callback_url,
            "batch.completed",
            callback_payload(batch),
            workspace_secret(self._settings.webhook_secret, batch.workspace_id),
            on_attempt=record,
        )
        await self._store.callback_done(batch_id, result.delivered)
        if not result.delivered:
            log.warning(
                "batch %s webhook not delivered after %d attempts: %s",
                batch_id,
                result.attempts,
                result.last_error or result.last_status,
            )


def callback_payload(batch: Batch) -> dict[str, Any]:
    """The JSON summary POSTed to a batch's callback URL."""
    return {
        "type": "batch.completed",
        "batch": {
            "id": batch.id,
            "display_name": batch.display_name,
            "state": batch.state.value,
            "counts": {
                "total": batch.total,
                "succeeded": batch.succeeded,
                "rejected": batch.rejected,
                "cancelled": batch.cancelled,
                "pending": batch.pending,
            },
            "prompt_id": batch.prompt_id,
            "version": batch.version,
            "metadata": batch.metadata,
            "create_time": batch.created_at.isoformat(),
            "end_time": batch.ended_at.isoformat() if batch.ended_at else None,
            "error": (
                {"code": batch.error.code, "message": batch.error.message} if batch.error else None
            ),
        },
    }
