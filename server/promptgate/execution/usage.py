"""Usage analytics over recorded executions: counts, tokens, cost, latency, quality.

Rows are read in one streamed query (only the columns needed) and aggregated
here, which keeps the arithmetic the same on SQLite and PostgreSQL (SQLite has
no percentile function). Memory grows with the number of groups and with one
float per execution for the latency percentiles.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_
from sqlalchemy import select as columns
from sqlmodel import col, select

from promptgate.errors import InvalidArgument
from promptgate.execution.model import ExecutionState
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import ActualRow, ExecutionRow, as_utc

DEFAULT_WINDOW = timedelta(days=30)
MAX_WINDOW = timedelta(days=366)


class Grouping(enum.StrEnum):
    """A dimension usage is grouped by."""

    PROMPT = "prompt"
    VERSION = "version"
    MODEL = "model"
    DAY = "day"
    API_KEY = "api_key"


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which executions to count and how to group them."""

    start: datetime
    end: datetime
    group_by: tuple[Grouping, ...] = ()
    prompt: str = ""
    model: str = ""
    api_key_id: str = ""
    split_id: str = ""
    """Only executions a release tag's traffic split assigned (then also per version)."""

    @classmethod
    def window(
        cls,
        now: datetime,
        start: datetime | None,
        end: datetime | None,
        *,
        group_by: tuple[Grouping, ...] = (),
        prompt: str = "",
        model: str = "",
        api_key_id: str = "",
    ) -> UsageQuery:
        """A query with the default window filled in and checked."""
        end = end or now
        start = start or end - DEFAULT_WINDOW
        if start >= end:
            raise InvalidArgument.field("start_time", "start_time must be before end_time")
        if end - start > MAX_WINDOW:
            raise InvalidArgument.field(
                "start_time", f"the window may span at most {MAX_WINDOW.days} days"
            )
        return cls(start, end, group_by, prompt, model, api_key_id)


@dataclass(frozen=True, slots=True)
class GroupKey:
    """The values of the grouping dimensions (unset dimensions stay empty)."""

    prompt: str = ""
    prompt_id: str = ""
    version: int = 0
    provider: str = ""
    model: str = ""
    day: str = ""
    api_key_id: str = ""


@dataclass(slots=True)
class UsageStats:
    """Aggregates over a set of executions."""

    executions: int = 0
    fulfilled: int = 0
    rejected: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost: float = 0.0
    cache_hits: int = 0
    rated: int = 0
    quality_sum: float = 0.0
    quality_m2: float = 0.0
    """Sum of squared deviations from the mean quality (Welford's update)."""
    latencies: list[float] = field(default_factory=list)

    def add_quality(self, quality: float) -> None:
        """Count one rated execution."""
        before = self.quality_sum / self.rated if self.rated else 0.0
        self.rated += 1
        self.quality_sum += quality
        self.quality_m2 += (quality - before) * (quality - self.quality_sum / self.rated)

    @property
    def error_rate(self) -> float:
        return self.rejected / self.executions if self.executions else 0.0

    @property
    def mean_quality(self) -> float | None:
        return self.quality_sum / self.rated if self.rated else None

    @property
    def quality_variance(self) -> float | None:
        """The sample variance (n - 1) of quality; None with fewer than two rated."""
        return max(self.quality_m2, 0.0) / (self.rated - 1) if self.rated > 1 else None

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of latency, nearest-rank; 0 with no data."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]


@dataclass(slots=True)
class UsageReport:
    """The total and the groups of a usage query."""

    query: UsageQuery
    total: UsageStats
    groups: list[tuple[GroupKey, UsageStats]]
    versions: dict[str, UsageStats] = field(default_factory=dict)
    """With ``query.split_id``: the figures per version id."""


def _key(row: Sequence[Any], group_by: tuple[Grouping, ...]) -> GroupKey:
    """The group of a row: the requested dimensions' values, the others empty."""
    (_, prompt_name, prompt_id, version, provider, model, created, api_key_id) = row[:8]
    by_prompt = Grouping.PROMPT in group_by or Grouping.VERSION in group_by
    by_model = Grouping.MODEL in group_by
    return GroupKey(
        prompt=(prompt_name or "") if by_prompt else "",
        prompt_id=(prompt_id or "") if by_prompt else "",
        version=(version or 0) if Grouping.VERSION in group_by else 0,
        provider=(provider or "") if by_model else "",
        model=(model or "") if by_model else "",
        day=as_utc(created).date().isoformat() if Grouping.DAY in group_by else "",
        api_key_id=(api_key_id or "") if Grouping.API_KEY in group_by else "",
    )


_COLUMNS = [
    col(ExecutionRow.id),
    col(ExecutionRow.prompt_name),
    col(ExecutionRow.prompt_id),
    col(ExecutionRow.version),
    col(ExecutionRow.provider),
    col(ExecutionRow.model),
    col(ExecutionRow.created_at),
    col(ExecutionRow.api_key_id),
    col(ExecutionRow.state),
    col(ExecutionRow.error),
    col(ExecutionRow.input_tokens),
    col(ExecutionRow.output_tokens),
    col(ExecutionRow.cached_input_tokens),
    col(ExecutionRow.cost),
    col(ExecutionRow.latency_ms),
    col(ExecutionRow.cache_hit),
    col(ExecutionRow.version_id),
]


class UsageReader:
    """Computes usage reports from the executions table."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def report(self, workspace: str, query: UsageQuery) -> UsageReport:
        """Aggregates the workspace's finished executions that match ``query``."""
        rows = columns(*_COLUMNS).where(
            col(ExecutionRow.workspace_id) == workspace,
            col(ExecutionRow.created_at) >= query.start,
            col(ExecutionRow.created_at) < query.end,
            col(ExecutionRow.state) != ExecutionState.RUNNING.value,
        )
        if query.prompt:
            rows = rows.where(
                or_(
                    col(ExecutionRow.prompt_id) == query.prompt,
                    col(ExecutionRow.prompt_name) == query.prompt,
                )
            )
        if query.model:
            rows = rows.where(col(ExecutionRow.model) == query.model)
        if query.api_key_id:
            rows = rows.where(col(ExecutionRow.api_key_id) == query.api_key_id)
        if query.split_id:
            rows = rows.where(col(ExecutionRow.split_id) == query.split_id)

        total = UsageStats()
        groups: dict[GroupKey, UsageStats] = {}
        versions: dict[str, UsageStats] = {}
        of_execution: dict[str, tuple[UsageStats, ...]] = {}
        async with self._sessions() as session:
            result = await session.stream(rows.execution_options(yield_per=1000))
            async for row in result:
                key = _key(row, query.group_by)
                targets = (
                    (total, groups.setdefault(key, UsageStats())) if query.group_by else (total,)
                )
                if query.split_id:
                    targets = (*targets, versions.setdefault(row[16] or "", UsageStats()))
                state, error = row[8], row[9]
                cancelled = bool(error) and (error or {}).get("code") == "CANCELLED"
                for stats in targets:
                    stats.executions += 1
                    if state == ExecutionState.FULFILLED.value:
                        stats.fulfilled += 1
                    else:
                        stats.rejected += 1
                        stats.cancelled += cancelled
                    stats.input_tokens += row[10] or 0
                    stats.output_tokens += row[11] or 0
                    stats.cached_input_tokens += row[12] or 0
                    stats.cost += row[13] or 0.0
                    stats.latencies.append(float(row[14] or 0.0))
                    stats.cache_hits += bool(row[15])
                of_execution[row[0]] = targets

            # The newest actual of an execution is its current one.
            if of_execution:
                actuals = (
                    select(ActualRow.execution_id, ActualRow.quality)
                    .join(ExecutionRow, col(ExecutionRow.id) == col(ActualRow.execution_id))
                    .where(
                        ActualRow.workspace_id == workspace,
                        ExecutionRow.workspace_id == workspace,
                        col(ExecutionRow.created_at) >= query.start,
                        col(ExecutionRow.created_at) < query.end,
                    )
                    .order_by(col(ActualRow.created_at), col(ActualRow.id))
                )
                current: dict[str, float | None] = {}
                found = await session.stream(actuals.execution_options(yield_per=1000))
                async for execution_id, quality in found:
                    if execution_id in of_execution:
                        current[execution_id] = quality
                for execution_id, quality in current.items():
                    if quality is None:
                        continue
                    for stats in of_execution[execution_id]:
                        stats.add_quality(quality)

        ordered = sorted(
            groups.items(),
            key=lambda item: (
                item[0].day,
                item[0].prompt,
                item[0].prompt_id,
                item[0].version,
                item[0].provider,
                item[0].model,
                item[0].api_key_id,
            ),
        )
        return UsageReport(query=query, total=total, groups=ordered, versions=versions)
