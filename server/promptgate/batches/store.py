"""BatchStore: batches, their items and event log in the database.

The store is the batch queue. Workers claim items with a conditional update
inside a transaction that first writes the batch row, so claims on one batch
are serialised (a row lock on PostgreSQL, the write lock on SQLite) and the
batch's concurrency limit holds across replicas. Every finished item and
every state change takes the next number of the batch's event log, in the
same transaction that records it, so WatchBatch can resume from any number
and miss nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.batches.callback_store import CallbackStore
from promptgate.batches.model import (
    Batch,
    BatchSpec,
    BatchState,
    ItemOutcome,
    ItemState,
)
from promptgate.batches.rows import (
    PARAMS,
    ClaimedItem,
    RunnableBatch,
    batch_of,
)
from promptgate.batches.worker_store import WorkerStore
from promptgate.chains.model import ResolvedChain
from promptgate.errors import FailedPrecondition, InvalidArgument, NotFound
from promptgate.execution.model import (
    ExecutionFailure,
    InlineTarget,
)
from promptgate.execution.records import error_json, input_to_json
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.prompts.model import ResolvedPrompt, spec_to_json
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import (
    BatchEventRow,
    BatchItemRow,
    BatchRow,
    utcnow,
)

ACTIVE = (BatchState.PENDING.value, BatchState.RUNNING.value)
UNFINISHED = (ItemState.PENDING.value, ItemState.RUNNING.value)
# Sequence numbers are 32-bit integers on PostgreSQL: no event is numbered above this.
MAX_SEQ = 2**31 - 1


class BatchStore:
    """SQL for batches. See the module docstring."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions
        self.workers = WorkerStore(sessions)
        """Worker heartbeats and the recovery of items whose worker died."""
        self.callbacks = CallbackStore(sessions)
        """The queue of completion webhooks and their delivery attempts."""

    # Creation and reads

    async def create(
        self,
        batch_id: str,
        spec: BatchSpec,
        resolved: ResolvedPrompt | ResolvedChain | None,
        max_concurrency: int,
    ) -> Batch:
        """Store a new PENDING batch with its items."""
        now = utcnow()
        inline = None
        if isinstance(spec.target, InlineTarget):
            inline = {"spec": spec_to_json(spec.target.spec), "declared": spec.target.declared}
        prompt = resolved.prompt if isinstance(resolved, ResolvedPrompt) else None
        row = BatchRow(
            id=batch_id,
            workspace_id=spec.workspace_id,
            display_name=spec.display_name,
            state=BatchState.PENDING.value,
            prompt_id=prompt.id if prompt else None,
            prompt_name=prompt.name if prompt else "",
            chain_id=resolved.chain.id if isinstance(resolved, ResolvedChain) else None,
            version_id=resolved.version.id if resolved else None,
            version=resolved.version.version if resolved else 0,
            release_tag=resolved.release_tag if resolved else "",
            inline_spec=inline,
            parameters=PARAMS.dump_python(spec.parameters, mode="json") if spec.parameters else {},
            max_concurrency=max_concurrency,
            callback_url=spec.callback_url,
            batch_metadata=spec.metadata,
            total=len(spec.items),
            api_key_id=spec.api_key_id or None,
            created_at=now,
            updated_at=now,
        )
        items = [
            {
                "batch_id": batch_id,
                "idx": index,
                "custom_id": item.custom_id,
                "inputs": [input_to_json(i) for i in item.inputs],
                "parameters": (
                    PARAMS.dump_python(item.parameters, mode="json") if item.parameters else None
                ),
                "item_metadata": item.metadata,
                "state": ItemState.PENDING.value,
                "attempts": 0,
                "starts": 0,
            }
            for index, item in enumerate(spec.items)
        ]
        async with self._sessions.write() as session:
            session.add(row)
            await session.flush()
            await (await session.connection()).execute(insert(BatchItemRow), items)
            await session.commit()
        return batch_of(row)

    async def get(self, workspace: str, batch_id: str) -> Batch:
        """A batch; NOT_FOUND if absent or in another workspace."""
        async with self._sessions() as session:
            row = await _batch_row(session, workspace, batch_id)
            return batch_of(row)

    async def results(
        self,
        workspace: str,
        batch_id: str,
        *,
        size: int,
        token: str,
        state: ItemState | None,
    ) -> tuple[list[BatchItemRow], str]:
        """A page of item rows in item order, and the next page's token."""
        limit = page_size(size, default=100)
        after = decode_token("batch-results", token, {"i": int})
        async with self._sessions() as session:
            await _batch_row(session, workspace, batch_id)
            query = select(BatchItemRow).where(BatchItemRow.batch_id == batch_id)
            if state is not None:
                query = query.where(BatchItemRow.state == state.value)
            if after:
                query = query.where(col(BatchItemRow.idx) > after["i"])
            query = query.order_by(col(BatchItemRow.idx)).limit(limit + 1)
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = encode_token("batch-results", {"i": page[-1].idx}) if len(rows) > limit else ""
        return page, next_token

    async def events_after(
        self, workspace: str, batch_id: str, after: int, limit: int = 500
    ) -> tuple[Batch, list[tuple[BatchEventRow, BatchItemRow | None]]]:
        """The batch now, and its events numbered above ``after`` (with their items).

        The batch is read last: each statement may see a newer snapshot than the
        one before, and the batch must be at least as new as the last event (a
        terminal progress event must carry the terminal state).
        """
        after = min(after, MAX_SEQ)  # a position past any event: nothing (yet) after it
        async with self._sessions() as session:
            events = list(
                (
                    await session.exec(
                        select(BatchEventRow)
                        .where(BatchEventRow.batch_id == batch_id, col(BatchEventRow.seq) > after)
                        .order_by(col(BatchEventRow.seq))
                        .limit(limit)
                    )
                ).all()
            )
            indexes = [e.item_idx for e in events if e.item_idx is not None]
            items: dict[int, BatchItemRow] = {}
            if indexes:
                rows = await session.exec(
                    select(BatchItemRow).where(
                        BatchItemRow.batch_id == batch_id, col(BatchItemRow.idx).in_(indexes)
                    )
                )
                items = {r.idx: r for r in rows.all()}
            batch = await _batch_row(session, workspace, batch_id)
        return batch_of(batch), [
            (e, items.get(e.item_idx) if e.item_idx is not None else None) for e in events
        ]

    async def last_seq(self, batch_id: str) -> int | None:
        """The number of the batch's latest event (None if there is no such batch)."""
        async with self._sessions() as session:
            return (
                await session.exec(select(BatchRow.last_seq).where(BatchRow.id == batch_id))
            ).first()

    # Work

    async def callback_batch(self, batch_id: str) -> Batch:
        """The batch a webhook is about."""
        async with self._sessions() as session:
            row = await session.get(BatchRow, batch_id)
            assert row is not None
            return batch_of(row)

    async def runnable(self, limit: int = 100) -> list[str]:
        """Ids of batches that may have items to claim, oldest first."""
        async with self._sessions() as session:
            rows = await session.exec(
                select(BatchRow.id)
                .where(col(BatchRow.state).in_(ACTIVE), col(BatchRow.cancel_requested).is_(False))
                .order_by(col(BatchRow.created_at))
                .limit(limit)
            )
            return list(rows.all())

    async def runnable_batch(self, batch_id: str) -> RunnableBatch:
        """A batch's target, for running its items."""
        async with self._sessions() as session:
            row = await session.get(BatchRow, batch_id)
            if row is None:
                raise NotFound(f"batch {batch_id!r} not found", reason="BATCH_NOT_FOUND")
            return RunnableBatch(row)

    async def claim(self, batch_id: str, worker: str, free: int) -> list[ClaimedItem]:
        """Claim up to ``free`` pending items, within the batch's concurrency limit."""
        now = utcnow()
        async with self._sessions.write() as session:
            locked = await session.exec(
                update(BatchRow)
                .where(
                    col(BatchRow.id) == batch_id,
                    col(BatchRow.state).in_(ACTIVE),
                    col(BatchRow.cancel_requested).is_(False),
                )
                .values(updated_at=now)
            )
            if locked.rowcount != 1:
                return []
            batch = await session.get(BatchRow, batch_id, populate_existing=True)
            assert batch is not None
            running = (
                await session.exec(
                    select(func.count())
                    .select_from(BatchItemRow)
                    .where(
                        BatchItemRow.batch_id == batch_id,
                        BatchItemRow.state == ItemState.RUNNING.value,
                    )
                )
            ).one()
            slots = min(batch.max_concurrency - running, free)
            if slots <= 0:
                await session.commit()
                return []
            indexes = list(
                (
                    await session.exec(
                        select(BatchItemRow.idx)
                        .where(
                            BatchItemRow.batch_id == batch_id,
                            BatchItemRow.state == ItemState.PENDING.value,
                        )
                        .order_by(col(BatchItemRow.idx))
                        .limit(slots)
                    )
                ).all()
            )
            if not indexes:
                await session.commit()
                return []
            await session.exec(
                update(BatchItemRow)
                .where(
                    col(BatchItemRow.batch_id) == batch_id,
                    col(BatchItemRow.idx).in_(indexes),
                    col(BatchItemRow.state) == ItemState.PENDING.value,
                )
                .values(
                    state=ItemState.RUNNING.value,
                    claimed_by=worker,
                    claimed_at=now,
                    attempts=col(BatchItemRow.attempts) + 1,
                    starts=col(BatchItemRow.starts) + 1,
                )
            )
            if batch.state == BatchState.PENDING.value:
                batch.state = BatchState.RUNNING.value
                batch.started_at = now
                await self._add_state_event(session, batch, now)
            rows = await session.exec(
                select(BatchItemRow)
                .where(BatchItemRow.batch_id == batch_id, col(BatchItemRow.idx).in_(indexes))
                .execution_options(populate_existing=True)
            )
            claimed = [ClaimedItem(r) for r in rows.all()]
            await session.commit()
        return sorted(claimed, key=lambda c: c.index)

    async def finish(self, outcomes: Sequence[ItemOutcome], worker: str) -> list[Batch]:
        """Record item outcomes in one transaction; return the batches they finished.

        An outcome whose item is no longer RUNNING under ``worker`` (cancelled
        or taken over meanwhile) is skipped.
        """
        now = utcnow()
        by_batch: dict[str, list[ItemOutcome]] = {}
        for outcome in outcomes:
            by_batch.setdefault(outcome.batch_id, []).append(outcome)
        finished: list[Batch] = []
        async with self._sessions.write() as session:
            for batch_id, group in by_batch.items():
                batch = await self._lock(session, batch_id, now)
                for outcome in group:
                    seq = batch.last_seq + 1
                    done = await session.exec(
                        update(BatchItemRow)
                        .where(
                            col(BatchItemRow.batch_id) == batch_id,
                            col(BatchItemRow.idx) == outcome.index,
                            col(BatchItemRow.state) == ItemState.RUNNING.value,
                            col(BatchItemRow.claimed_by) == worker,
                        )
                        .values(
                            state=outcome.state.value,
                            execution_id=outcome.execution_id or None,
                            error=error_json(outcome.error),
                            finished_at=now,
                            seq=seq,
                        )
                    )
                    if done.rowcount != 1:
                        continue
                    batch.last_seq = seq
                    if outcome.state is ItemState.FULFILLED:
                        batch.succeeded += 1
                    elif outcome.state is ItemState.REJECTED:
                        batch.rejected += 1
                    else:
                        batch.cancelled += 1
                    session.add(
                        BatchEventRow(
                            batch_id=batch_id,
                            seq=seq,
                            kind="item",
                            item_idx=outcome.index,
                            created_at=now,
                        )
                    )
                session.add(batch)
                if await self._finish_if_done(session, batch, now):
                    finished.append(batch_of(batch))
            await session.commit()
        return finished

    async def release(self, batch_id: str, index: int, worker: str) -> None:
        """Put a claimed item back to PENDING, its attempt not counted (shutdown)."""
        async with self._sessions.write() as session:
            await session.exec(
                update(BatchItemRow)
                .where(
                    col(BatchItemRow.batch_id) == batch_id,
                    col(BatchItemRow.idx) == index,
                    col(BatchItemRow.state) == ItemState.RUNNING.value,
                    col(BatchItemRow.claimed_by) == worker,
                )
                .values(
                    state=ItemState.PENDING.value,
                    claimed_by=None,
                    claimed_at=None,
                    attempts=col(BatchItemRow.attempts) - 1,
                )
            )
            await session.commit()

    async def cancel(self, workspace: str, batch_id: str) -> tuple[Batch, bool]:
        """Cancel pending items; return the batch and whether it is now finished."""
        now = utcnow()
        async with self._sessions.write() as session:
            await _batch_row(session, workspace, batch_id)
            batch = await self._lock(session, batch_id, now)
            state = BatchState(batch.state)
            if state is BatchState.CANCELLED:
                return batch_of(batch), True
            if state.terminal:
                raise FailedPrecondition(
                    f"batch {batch_id!r} has already finished ({state.value})",
                    reason="BATCH_FINISHED",
                    metadata={"batch": batch_id, "state": state.value},
                )
            finished = await self._stop(session, batch, now)
            await session.commit()
            return batch_of(batch), finished

    async def fail(self, batch_id: str, error: ExecutionFailure) -> Batch | None:
        """Fail a batch that cannot run; return it if it is now finished."""
        now = utcnow()
        async with self._sessions.write() as session:
            batch = await self._lock(session, batch_id, now)
            if BatchState(batch.state).terminal:
                return None
            batch.error = error_json(error)
            finished = await self._stop(session, batch, now)
            await session.commit()
            return batch_of(batch) if finished else None

    async def _stop(self, session: AsyncSession, batch: BatchRow, now: datetime) -> bool:
        """Stop a locked batch: no more claims, pending items CANCELLED; True if it finished."""
        batch.cancel_requested = True
        pending = list(
            (
                await session.exec(
                    select(BatchItemRow.idx)
                    .where(
                        BatchItemRow.batch_id == batch.id,
                        BatchItemRow.state == ItemState.PENDING.value,
                    )
                    .order_by(col(BatchItemRow.idx))
                )
            ).all()
        )
        if pending:
            first = batch.last_seq + 1
            table: Any = BatchItemRow.__table__  # type: ignore[attr-defined]
            connection = await session.connection()
            await connection.execute(
                update(table)
                .where(
                    and_(
                        table.c.batch_id == batch.id,
                        table.c.idx == bindparam("b_idx"),
                        table.c.state == ItemState.PENDING.value,
                    )
                )
                .values(state=ItemState.CANCELLED.value, finished_at=now, seq=bindparam("b_seq")),
                [{"b_idx": idx, "b_seq": first + n} for n, idx in enumerate(pending)],
            )
            await connection.execute(
                insert(BatchEventRow),
                [
                    {
                        "batch_id": batch.id,
                        "seq": first + n,
                        "kind": "item",
                        "item_idx": idx,
                        "state": "",
                        "created_at": now,
                    }
                    for n, idx in enumerate(pending)
                ],
            )
            batch.last_seq += len(pending)
            batch.cancelled += len(pending)
        return await self._finish_if_done(session, batch, now)

    async def is_cancel_requested(self, batch_ids: Sequence[str]) -> set[str]:
        """Which of ``batch_ids`` were asked to stop."""
        if not batch_ids:
            return set()
        async with self._sessions() as session:
            rows = await session.exec(
                select(BatchRow.id).where(
                    col(BatchRow.id).in_(list(batch_ids)), col(BatchRow.cancel_requested).is_(True)
                )
            )
            return set(rows.all())

    # Internals

    async def _lock(self, session: AsyncSession, batch_id: str, now: datetime) -> BatchRow:
        await session.exec(
            update(BatchRow).where(col(BatchRow.id) == batch_id).values(updated_at=now)
        )
        batch = await session.get(BatchRow, batch_id, populate_existing=True)
        if batch is None:
            raise NotFound(f"batch {batch_id!r} not found", reason="BATCH_NOT_FOUND")
        return batch

    async def _finish_if_done(self, session: AsyncSession, batch: BatchRow, now: datetime) -> bool:
        if BatchState(batch.state).terminal:
            return False
        unfinished = (
            await session.exec(
                select(func.count())
                .select_from(BatchItemRow)
                .where(BatchItemRow.batch_id == batch.id, col(BatchItemRow.state).in_(UNFINISHED))
            )
        ).one()
        if unfinished:
            return False
        if batch.error:
            batch.state = BatchState.FAILED.value
        elif batch.cancel_requested:
            batch.state = BatchState.CANCELLED.value
        else:
            batch.state = BatchState.SUCCEEDED.value
        batch.ended_at = now
        if batch.started_at is None:
            batch.started_at = now
        if batch.callback_url:
            batch.callback_state = "PENDING"
        await self._add_state_event(session, batch, now)
        return True

    async def _add_state_event(self, session: AsyncSession, batch: BatchRow, now: datetime) -> None:
        batch.last_seq += 1
        session.add(batch)
        session.add(
            BatchEventRow(
                batch_id=batch.id,
                seq=batch.last_seq,
                kind="state",
                state=batch.state,
                created_at=now,
            )
        )


async def _batch_row(session: AsyncSession, workspace: str, batch_id: str) -> BatchRow:
    if not batch_id:
        raise InvalidArgument.field("batch_id", "a batch id is required")
    row = await session.get(BatchRow, batch_id)
    if row is None or row.workspace_id != workspace:
        raise NotFound(
            f"batch {batch_id!r} not found", reason="BATCH_NOT_FOUND", metadata={"batch": batch_id}
        )
    return row
