"""CallbackStore: the queue of batch completion webhooks and their delivery attempts.

A batch that ends with a callback URL is marked PENDING; a worker claims it
(SENDING, under its id), delivers it and marks it DELIVERED or FAILED. A
claim held by a worker whose heartbeat is stale is taken over.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, or_, update
from sqlmodel import col, select

from promptgate.store.engine import SessionFactory
from promptgate.store.tables import BatchCallbackAttemptRow, BatchRow, BatchWorkerRow, utcnow


class CallbackStore:
    """SQL for webhook deliveries. See the module docstring."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

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
                    error=error[:2000].replace(
                        "\x00", "\ufffd"
                    ),  # a text column: no NUL on PostgreSQL
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
