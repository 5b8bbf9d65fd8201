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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import and_, bindparam, func, insert, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.batches.model import Batch, BatchSpec, BatchState, ItemState
from promptgate.chat import ModelParameters
from promptgate.errors import FailedPrecondition, InvalidArgument, NotFound
from promptgate.execution.model import (
    ExecutionFailure,
    ExecutionRecord,
    ExecutionState,
    InlineTarget,
)
from promptgate.execution.records import from_row, input_from_json, input_to_json
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.prompts.model import PromptInput, ResolvedPrompt, spec_from_json, spec_to_json
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import (
    BatchCallbackAttemptRow,
    BatchEventRow,
    BatchItemRow,
    BatchRow,
    BatchWorkerRow,
    ExecutionRow,
    as_utc,
    utcnow,
)

_PARAMS: TypeAdapter[ModelParameters] = TypeAdapter(ModelParameters)
ACTIVE = (BatchState.PENDING.value, BatchState.RUNNING.value)
UNFINISHED = (ItemState.PENDING.value, ItemState.RUNNING.value)
# Sequence numbers are 32-bit integers on PostgreSQL: no event is numbered above this.
MAX_SEQ = 2**31 - 1


class ClaimedItem:
    """An item a worker has claimed, with what it needs to run."""

    __slots__ = ("attempts", "custom_id", "index", "inputs", "metadata", "parameters", "starts")

    def __init__(self, row: BatchItemRow) -> None:
        self.index = row.idx
        self.custom_id = row.custom_id
        self.inputs: tuple[PromptInput, ...] = tuple(input_from_json(i) for i in row.inputs)
        self.parameters = _PARAMS.validate_python(row.parameters) if row.parameters else None
        self.metadata: dict[str, Any] = dict(row.item_metadata or {})
        self.attempts = row.attempts
        self.starts = row.starts


class RunnableBatch:
    """What a worker needs to run a batch's items."""

    __slots__ = ("api_key_id", "id", "inline", "parameters", "prompt_id", "version", "workspace_id")

    def __init__(self, row: BatchRow) -> None:
        self.id = row.id
        self.workspace_id = row.workspace_id
        self.api_key_id = row.api_key_id or ""
        self.prompt_id = row.prompt_id or ""
        self.version = row.version
        self.inline = (
            InlineTarget(
                spec=spec_from_json(row.inline_spec["spec"]), declared=row.inline_spec["declared"]
            )
            if row.inline_spec
            else None
        )
        self.parameters = _PARAMS.validate_python(row.parameters) if row.parameters else None


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """How a batch item ended."""

    batch_id: str
    index: int
    state: ItemState
    execution_id: str = ""
    error: ExecutionFailure | None = None

    @classmethod
    def of(cls, batch_id: str, index: int, record: ExecutionRecord) -> ItemOutcome:
        """How an item whose execution ended as ``record`` ends."""
        if record.state is ExecutionState.FULFILLED:
            state = ItemState.FULFILLED
        elif record.error is not None and record.error.code == "CANCELLED":
            state = ItemState.CANCELLED
        else:
            state = ItemState.REJECTED
        return cls(batch_id, index, state, record.id, record.error)


def item_external_id(batch_id: str, index: int) -> str:
    """The idempotency key an item's execution runs (and is recorded) under."""
    return f"{batch_id}/{index}"


class BatchStore:
    """SQL for batches. See the module docstring."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    # Creation and reads

    async def create(
        self,
        batch_id: str,
        spec: BatchSpec,
        resolved: ResolvedPrompt | None,
        max_concurrency: int,
    ) -> Batch:
        """Store a new PENDING batch with its items."""
        now = utcnow()
        inline = None
        if isinstance(spec.target, InlineTarget):
            inline = {"spec": spec_to_json(spec.target.spec), "declared": spec.target.declared}
        row = BatchRow(
            id=batch_id,
            workspace_id=spec.workspace_id,
            display_name=spec.display_name,
            state=BatchState.PENDING.value,
            prompt_id=resolved.prompt.id if resolved else None,
            prompt_name=resolved.prompt.name if resolved else "",
            version_id=resolved.version.id if resolved else None,
            version=resolved.version.version if resolved else 0,
            release_tag=resolved.release_tag if resolved else "",
            inline_spec=inline,
            parameters=_PARAMS.dump_python(spec.parameters, mode="json") if spec.parameters else {},
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
                    _PARAMS.dump_python(item.parameters, mode="json") if item.parameters else None
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
        return _batch(row)

    async def get(self, workspace: str, batch_id: str) -> Batch:
        """A batch; NOT_FOUND if absent or in another workspace."""
        async with self._sessions() as session:
            row = await _batch_row(session, workspace, batch_id)
            return _batch(row)

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
        return _batch(batch), [
            (e, items.get(e.item_idx) if e.item_idx is not None else None) for e in events
        ]

    async def last_seq(self, batch_id: str) -> int | None:
        """The number of the batch's latest event (None if there is no such batch)."""
        async with self._sessions() as session:
            return (
                await session.exec(select(BatchRow.last_seq).where(BatchRow.id == batch_id))
            ).first()

    # Work

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
                            error=_error_json(outcome.error),
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
                    finished.append(_batch(batch))
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
                return _batch(batch), True
            if state.terminal:
                raise FailedPrecondition(
                    f"batch {batch_id!r} has already finished ({state.value})",
                    reason="BATCH_FINISHED",
                    metadata={"batch": batch_id, "state": state.value},
                )
            finished = await self._stop(session, batch, now)
            await session.commit()
            return _batch(batch), finished

    async def fail(self, batch_id: str, error: ExecutionFailure) -> Batch | None:
        """Fail a batch that cannot run; return it if it is now finished."""
        now = utcnow()
        async with self._sessions.write() as session:
            batch = await self._lock(session, batch_id, now)
            if BatchState(batch.state).terminal:
                return None
            batch.error = _error_json(error)
            finished = await self._stop(session, batch, now)
            await session.commit()
            return _batch(batch) if finished else None

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

    # Workers and recovery

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

    # Callbacks

    async def claim_callback(self, worker: str, stale_after: float) -> str | None:
        """A finished batch whose webhook is due, claimed by ``worker``; None if none."""
        cutoff = utcnow() - timedelta(seconds=stale_after)
        async with self._sessions.write() as session:
            live = select(BatchWorkerRow.id).where(col(BatchWorkerRow.heartbeat_at) >= cutoff)
            candidate = (
                await session.exec(
                    select(BatchRow.id)
                    .where(
                        or_(
                            col(BatchRow.callback_state) == "PENDING",
                            and_(
                                col(BatchRow.callback_state) == "SENDING",
                                col(BatchRow.callback_claimed_by).not_in(live),
                            ),
                        )
                    )
                    .limit(1)
                )
            ).first()
            if candidate is None:
                return None
            done = await session.exec(
                update(BatchRow)
                .where(
                    col(BatchRow.id) == candidate,
                    col(BatchRow.callback_state).in_(("PENDING", "SENDING")),
                )
                .values(callback_state="SENDING", callback_claimed_by=worker)
            )
            await session.commit()
            return candidate if done.rowcount == 1 else None

    async def callback_batch(self, batch_id: str) -> Batch:
        """The batch a webhook is about."""
        async with self._sessions() as session:
            row = await session.get(BatchRow, batch_id)
            assert row is not None
            return _batch(row)

    async def record_callback_attempt(
        self, batch_id: str, attempt: int, status_code: int, error: str, duration_s: float
    ) -> None:
        """Keep one delivery attempt."""
        async with self._sessions.write() as session:
            session.add(
                BatchCallbackAttemptRow(
                    batch_id=batch_id,
                    attempt=attempt,
                    status_code=status_code,
                    error=error[:2000],
                    duration_ms=duration_s * 1000,
                    created_at=utcnow(),
                )
            )
            await session.exec(
                update(BatchRow)
                .where(col(BatchRow.id) == batch_id)
                .values(callback_attempts=attempt)
            )
            await session.commit()

    async def callback_done(self, batch_id: str, delivered: bool) -> None:
        """Mark the webhook DELIVERED or FAILED."""
        async with self._sessions.write() as session:
            await session.exec(
                update(BatchRow)
                .where(col(BatchRow.id) == batch_id)
                .values(callback_state="DELIVERED" if delivered else "FAILED")
            )
            await session.commit()

    async def callback_attempts(self, batch_id: str) -> list[BatchCallbackAttemptRow]:
        """The delivery attempts of a batch's webhook, in order."""
        async with self._sessions() as session:
            rows = await session.exec(
                select(BatchCallbackAttemptRow)
                .where(BatchCallbackAttemptRow.batch_id == batch_id)
                .order_by(col(BatchCallbackAttemptRow.attempt))
            )
            return list(rows.all())

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


def _error_json(error: ExecutionFailure | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "code": error.code,
        "message": error.message,
        "provider_status": error.provider_status,
        "retry_after": error.retry_after,
    }


def error_from_json(data: dict[str, Any] | None) -> ExecutionFailure | None:
    """A stored error."""
    if not data:
        return None
    return ExecutionFailure(
        code=data["code"],
        message=data["message"],
        provider_status=data.get("provider_status") or 0,
        retry_after=data.get("retry_after"),
    )


def _batch(row: BatchRow) -> Batch:
    return Batch(
        id=row.id,
        workspace_id=row.workspace_id,
        display_name=row.display_name,
        state=BatchState(row.state),
        total=row.total,
        succeeded=row.succeeded,
        rejected=row.rejected,
        cancelled=row.cancelled,
        prompt_id=row.prompt_id or "",
        release_tag=row.release_tag,
        version=row.version,
        max_concurrency=row.max_concurrency,
        callback_url=row.callback_url,
        metadata=dict(row.batch_metadata or {}),
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at) if row.started_at else None,
        ended_at=as_utc(row.ended_at) if row.ended_at else None,
        last_seq=row.last_seq,
        error=error_from_json(row.error),
        callback_state=row.callback_state,
        callback_attempts=row.callback_attempts,
    )


def _abandoned(batch_id: str, index: int, dead_worker: str) -> tuple[Any, ...]:
    """The item, still RUNNING and still claimed by the dead worker."""
    return (
        col(BatchItemRow.batch_id) == batch_id,
        col(BatchItemRow.idx) == index,
        col(BatchItemRow.state) == ItemState.RUNNING.value,
        col(BatchItemRow.claimed_by) == (dead_worker or None),
    )
