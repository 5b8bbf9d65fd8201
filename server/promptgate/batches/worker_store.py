"""WorkerStore: worker heartbeats, and the recovery of items whose worker died.

Every server process heartbeats into ``batch_workers``. An item RUNNING under a
worker whose heartbeat is stale was abandoned: it is put back in the queue, or
adopted to be ended, unless its execution was recorded final meanwhile, in
which case the item ends with that execution (``recorded_outcomes``). The
same heartbeats tell the idempotency keys whether the owner of a RUNNING
execution is alive.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import col, select

from promptgate.batches.model import ItemOutcome, ItemState, item_external_id
from promptgate.execution.model import ExecutionState
from promptgate.execution.records import from_row
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import BatchItemRow, BatchRow, BatchWorkerRow, ExecutionRow, utcnow


class WorkerStore:
    """SQL for worker liveness and abandoned items. See the module docstring."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def heartbeat(self, worker: str) -> None:
        """Record that ``worker`` is alive."""
        now = utcnow()
        async with self._sessions.write() as session:
            row = await session.get(BatchWorkerRow, worker)
            if row is None:
                session.add(BatchWorkerRow(id=worker, heartbeat_at=now, started_at=now))
            else:
                row.heartbeat_at = now
                session.add(row)
            await session.commit()

    async def retire(self, worker: str) -> None:
        """Forget a worker that stopped cleanly."""
        async with self._sessions.write() as session:
            row = await session.get(BatchWorkerRow, worker)
            if row is not None:
                await session.delete(row)
                await session.commit()

    async def abandoned(self, stale_after: float) -> list[tuple[str, int, int, str]]:
        """(batch, index, attempts, worker) of items running on workers that died."""
        cutoff = utcnow() - timedelta(seconds=stale_after)
        async with self._sessions() as session:
            live = select(BatchWorkerRow.id).where(col(BatchWorkerRow.heartbeat_at) >= cutoff)
            rows = await session.exec(
                select(
                    BatchItemRow.batch_id,
                    BatchItemRow.idx,
                    BatchItemRow.attempts,
                    BatchItemRow.claimed_by,
                ).where(
                    BatchItemRow.state == ItemState.RUNNING.value,
                    or_(
                        col(BatchItemRow.claimed_by).is_(None),
                        col(BatchItemRow.claimed_by).not_in(live),
                    ),
                )
            )
            return [(b, i, a, w or "") for b, i, a, w in rows.all()]

    async def running_on(self, worker: str) -> list[tuple[str, int]]:
        """(batch, index) of the items RUNNING and claimed by ``worker``."""
        async with self._sessions() as session:
            rows = await session.exec(
                select(BatchItemRow.batch_id, BatchItemRow.idx).where(
                    BatchItemRow.claimed_by == worker,
                    BatchItemRow.state == ItemState.RUNNING.value,
                )
            )
            return [(b, i) for b, i in rows.all()]

    async def recorded_outcomes(
        self, batch_id: str, indexes: Sequence[int]
    ) -> dict[int, ItemOutcome]:
        """The outcomes of those items whose execution was recorded final, by index.

        An item's execution is the one with external_id ``<batch id>/<index>``
        in the batch's workspace. FULFILLED and REJECTED are final; one that
        was cancelled (a shutdown) is not: the item may run again.
        """
        if not indexes:
            return {}
        keys = {item_external_id(batch_id, i): i for i in indexes}
        async with self._sessions() as session:
            workspace = (
                await session.exec(select(BatchRow.workspace_id).where(BatchRow.id == batch_id))
            ).first()
            if workspace is None:
                return {}
            rows = await session.exec(
                select(ExecutionRow).where(
                    ExecutionRow.workspace_id == workspace,
                    col(ExecutionRow.external_id).in_(list(keys)),
                    col(ExecutionRow.state).in_(
                        (ExecutionState.FULFILLED.value, ExecutionState.REJECTED.value)
                    ),
                )
            )
            records = [from_row(row) for row in rows.all()]
        outcomes = {}
        for record in records:
            outcome = ItemOutcome.of(batch_id, keys[record.external_id], record)
            if outcome.state is not ItemState.CANCELLED:
                outcomes[outcome.index] = outcome
        return outcomes

    async def requeue(self, batch_id: str, index: int, dead_worker: str) -> bool:
        """Give an abandoned item back to the queue; False if another worker did first."""
        async with self._sessions.write() as session:
            done = await session.exec(
                update(BatchItemRow)
                .where(*_abandoned(batch_id, index, dead_worker))
                .values(state=ItemState.PENDING.value, claimed_by=None, claimed_at=None)
            )
            await session.commit()
            return bool(done.rowcount == 1)

    async def adopt(self, batch_id: str, index: int, dead_worker: str, worker: str) -> bool:
        """Take an abandoned item over (to reject it); False if another worker did first."""
        async with self._sessions.write() as session:
            done = await session.exec(
                update(BatchItemRow)
                .where(*_abandoned(batch_id, index, dead_worker))
                .values(claimed_by=worker)
            )
            await session.commit()
            return bool(done.rowcount == 1)


def _abandoned(batch_id: str, index: int, dead_worker: str) -> tuple[Any, ...]:
    """The item, still RUNNING and still claimed by the dead worker."""
    return (
        col(BatchItemRow.batch_id) == batch_id,
        col(BatchItemRow.idx) == index,
        col(BatchItemRow.state) == ItemState.RUNNING.value,
        col(BatchItemRow.claimed_by) == (dead_worker or None),
    )
