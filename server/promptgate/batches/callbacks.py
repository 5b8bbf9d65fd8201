"""CallbackDeliveries: the batch worker's part in completion webhooks.

When a batch with a ``callback_url`` finishes, the store marks its webhook
due. Any worker claims it (one at a time across replicas; a claim by a worker
that died is taken over) and sends it with the ``WebhookSender``, recording
every attempt. If the store fails during a delivery, the delivery starts
again once it is back: webhooks are sent at least once, and receivers tell
repeats apart by the batch id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from promptgate.backoff import Backoff
from promptgate.batches.faults import FaultLog, is_store_fault
from promptgate.batches.model import Batch
from promptgate.batches.store import BatchStore
from promptgate.batches.webhooks.delivery import DeliveryAttempt, WebhookSender
from promptgate.batches.webhooks.signing import workspace_secret

log = logging.getLogger(__name__)


class CallbackDeliveries:
    """Claims due webhooks and delivers each in a task of its own."""

    def __init__(
        self, store: BatchStore, sender: WebhookSender, secret: str, *, stale_after_s: float
    ) -> None:
        self._store = store
        self._sender = sender
        self._secret = secret
        self._stale_after_s = stale_after_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._faults = FaultLog(log)

    async def start_due(self, worker_id: str) -> None:
        """Claim every due webhook for ``worker_id`` and start delivering it."""
        while not self._stopping:
            batch_id = await self._store.callbacks.claim_callback(worker_id, self._stale_after_s)
            if batch_id is None:
                return
            task = asyncio.get_running_loop().create_task(self._deliver(batch_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel deliveries in flight (another worker takes them over)."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _deliver(self, batch_id: str) -> None:
        backoff = Backoff(cap_s=10.0)
        while True:
            try:
                await self._deliver_once(batch_id)
                return
            except Exception as exc:
                if not is_store_fault(exc):
                    raise
                self._faults.warn("delivering batch webhooks", exc)
            await backoff.sleep()

    async def _deliver_once(self, batch_id: str) -> None:
        batch = await self._store.callback_batch(batch_id)

        async def record(attempt: DeliveryAttempt) -> None:
            await self._store.callbacks.record_callback_attempt(
                batch_id, attempt.attempt, attempt.status_code, attempt.error, attempt.duration_s
            )

        result = await self._sender.deliver(
            batch.callback_url,
            "batch.completed",
            callback_payload(batch),
            workspace_secret(self._secret, batch.workspace_id),
            on_attempt=record,
        )
        await self._store.callbacks.callback_done(batch_id, result.delivered)
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
