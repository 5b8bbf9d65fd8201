"""Actuals: feedback on past executions.

A caller submits several actuals at once, each naming an execution by id or
by external_id. The submission is all-or-nothing: every entry is checked and
every execution looked up before anything is written, and the whole set is
committed in one transaction before the call returns. Several actuals for one
execution are all kept; the newest is the current one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from promptgate.errors import FieldViolation, InvalidArgument, NotFound
from promptgate.ids import new_id
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import ActualRow, ExecutionRow, as_utc, utcnow

MAX_ACTUALS_PER_CALL = 1000
MAX_DESIRED_OUTPUT_CHARS = 1_000_000


@dataclass(frozen=True, slots=True)
class Actual:
    """One piece of feedback. As submitted, ``id`` and ``created_at`` are unset."""

    execution_id: str = ""
    external_id: str = ""
    quality: float | None = None
    desired_output: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    observed_at: datetime | None = None
    id: str = ""
    created_at: datetime | None = None


class ActualsLog:
    """Stores and reads actuals."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def submit(self, workspace: str, entries: Sequence[Actual]) -> list[Actual]:
        """Store every entry or none; return them with ids and execution ids."""
        _check(entries)
        execution_ids = await self._resolve(workspace, entries)
        now = utcnow()
        stored = [
            Actual(
                id=new_id("act"),
                execution_id=execution_ids[i],
                external_id=entry.external_id,
                quality=entry.quality,
                desired_output=entry.desired_output,
                metadata=entry.metadata,
                observed_at=entry.observed_at or now,
                created_at=now,
            )
            for i, entry in enumerate(entries)
        ]
        async with self._sessions.write() as session:
            session.add_all(
                ActualRow(
                    id=a.id,
                    workspace_id=workspace,
                    execution_id=a.execution_id,
                    quality=a.quality,
                    desired_output=a.desired_output,
                    actual_metadata=a.metadata,
                    observed_at=a.observed_at or now,
                    created_at=now,
                )
                for a in stored
            )
            await session.commit()
        return stored

    async def for_executions(
        self, workspace: str, execution_ids: Sequence[str]
    ) -> dict[str, list[Actual]]:
        """The actuals of each execution, oldest first."""
        if not execution_ids:
            return {}
        query = (
            select(ActualRow)
            .where(ActualRow.workspace_id == workspace)
            .where(col(ActualRow.execution_id).in_(list(execution_ids)))
            .order_by(col(ActualRow.created_at), col(ActualRow.id))
        )
        async with self._sessions() as session:
            rows = (await session.exec(query)).all()
        result: dict[str, list[Actual]] = defaultdict(list)
        for row in rows:
            result[row.execution_id].append(
                Actual(
                    id=row.id,
                    execution_id=row.execution_id,
                    quality=row.quality,
                    desired_output=row.desired_output,
                    metadata=dict(row.actual_metadata or {}),
                    observed_at=as_utc(row.observed_at),
                    created_at=as_utc(row.created_at),
                )
            )
        return result

    async def _resolve(self, workspace: str, entries: Sequence[Actual]) -> list[str]:
        by_id = {e.execution_id for e in entries if e.execution_id}
        by_external = {e.external_id for e in entries if not e.execution_id}
        found_ids: set[str] = set()
        external_to_id: dict[str, str] = {}
        async with self._sessions() as session:
            if by_id:
                rows = await session.exec(
                    select(ExecutionRow.id).where(
                        ExecutionRow.workspace_id == workspace,
                        col(ExecutionRow.id).in_(by_id),
                    )
                )
                found_ids = set(rows.all())
            if by_external:
                pairs = await session.exec(
                    select(ExecutionRow.external_id, ExecutionRow.id).where(
                        ExecutionRow.workspace_id == workspace,
                        col(ExecutionRow.external_id).in_(by_external),
                    )
                )
                external_to_id = {ext: eid for ext, eid in pairs.all() if ext}
        resolved: list[str] = []
        missing: list[FieldViolation] = []
        for i, entry in enumerate(entries):
            if entry.execution_id:
                if entry.execution_id in found_ids:
                    resolved.append(entry.execution_id)
                    continue
                missing.append(
                    FieldViolation(
                        f"actuals[{i}].execution_id",
                        f"execution {entry.execution_id!r} not found",
                    )
                )
            elif entry.external_id in external_to_id:
                resolved.append(external_to_id[entry.external_id])
                continue
            else:
                missing.append(
                    FieldViolation(
                        f"actuals[{i}].external_id",
                        f"no execution has external_id {entry.external_id!r}",
                    )
                )
            resolved.append("")
        if missing:
            raise NotFound(
                f"{len(missing)} of {len(entries)} actuals name unknown executions; none "
                "were stored: " + "; ".join(v.description for v in missing),
                reason="EXECUTION_NOT_FOUND",
                violations=missing,
            )
        return resolved


def _check(entries: Sequence[Actual]) -> None:
    if not entries:
        raise InvalidArgument.field("actuals", "give at least one actual")
    if len(entries) > MAX_ACTUALS_PER_CALL:
        raise InvalidArgument.field("actuals", f"at most {MAX_ACTUALS_PER_CALL} per call")
    problems: list[FieldViolation] = []
    for i, entry in enumerate(entries):
        path = f"actuals[{i}]"
        if not entry.execution_id and not entry.external_id:
            problems.append(FieldViolation(path, "name the execution: execution_id or external_id"))
        if entry.quality is not None and not (
            math.isfinite(entry.quality) and 0.0 <= entry.quality <= 1.0
        ):
            problems.append(FieldViolation(f"{path}.quality", "must be between 0 and 1"))
        if entry.quality is None and not entry.desired_output and not entry.metadata:
            problems.append(
                FieldViolation(path, "an actual needs a quality, a desired_output or metadata")
            )
        if len(entry.desired_output) > MAX_DESIRED_OUTPUT_CHARS:
            problems.append(
                FieldViolation(
                    f"{path}.desired_output", f"at most {MAX_DESIRED_OUTPUT_CHARS} characters"
                )
            )
    if problems:
        raise InvalidArgument.of(problems, reason="INVALID_ACTUAL")
