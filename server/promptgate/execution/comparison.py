"""A/B comparison: the versions of a release tag's traffic split side by side.

The executions counted are those the split assigned (their ``split_id``) in
the usage window, also filtered by the query's model and API key, grouped by
the version they ran. Each version gets the usual usage figures and the
standard deviation of its quality; each version after the first (the
control) gets its difference from the control in mean quality (Welch's t
interval) and in error rate (Newcombe's hybrid score interval), both at 95%
(see intervals.py).

Quality is that of each execution's current (newest) actual, as everywhere
in usage; executions without a quality are not rated. The error rate is
rejected / executions, cancellations included, as in UsageStats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from promptgate.errors import InvalidArgument
from promptgate.execution.intervals import Interval, newcombe_interval, welch_interval
from promptgate.execution.usage import UsageQuery, UsageReader, UsageReport, UsageStats
from promptgate.prompts.catalog import PromptCatalog
from promptgate.prompts.model import VersionWeight

CONFIDENCE_LEVEL = 0.95


@dataclass(frozen=True, slots=True)
class VariantFigures:
    """One version of the split and the figures of its executions."""

    version: VersionWeight
    stats: UsageStats

    @property
    def quality_stddev(self) -> float | None:
        """Sample standard deviation of quality; None with fewer than two rated."""
        variance = self.stats.quality_variance
        return math.sqrt(variance) if variance is not None else None


@dataclass(frozen=True, slots=True)
class Difference:
    """A version's value minus the control's, with its interval and sample sizes."""

    interval: Interval
    count: int
    control_count: int


@dataclass(frozen=True, slots=True)
class VariantDifference:
    """One version against the control."""

    version: int
    control_version: int
    mean_quality: Difference | None
    error_rate: Difference | None


@dataclass(frozen=True, slots=True)
class SplitComparison:
    """A split's versions side by side; the first is the control."""

    release_tag: str
    split_id: str
    active: bool
    variants: tuple[VariantFigures, ...]
    differences: tuple[VariantDifference, ...]
    confidence_level: float = CONFIDENCE_LEVEL


def compare_variants(variant: VariantFigures, control: VariantFigures) -> VariantDifference:
    """``variant`` against ``control``: differences in mean quality and error rate."""
    ours, theirs = variant.stats, control.stats
    quality = None
    if ours.rated > 1 and theirs.rated > 1:
        interval = welch_interval(
            ours.mean_quality or 0.0,
            ours.quality_variance or 0.0,
            ours.rated,
            theirs.mean_quality or 0.0,
            theirs.quality_variance or 0.0,
            theirs.rated,
            CONFIDENCE_LEVEL,
        )
        if interval is not None:
            quality = Difference(interval, ours.rated, theirs.rated)
    errors = None
    interval = newcombe_interval(
        ours.rejected, ours.executions, theirs.rejected, theirs.executions, CONFIDENCE_LEVEL
    )
    if interval is not None:
        errors = Difference(interval, ours.executions, theirs.executions)
    return VariantDifference(
        version=variant.version.version,
        control_version=control.version.version,
        mean_quality=quality,
        error_rate=errors,
    )


class SplitComparer:
    """Compares the versions of a release tag's traffic split (GetUsage)."""

    def __init__(self, catalog: PromptCatalog, usage: UsageReader) -> None:
        self._catalog = catalog
        self._usage = usage

    async def compare(
        self, workspace: str, query: UsageQuery, tag: str, split_id: str = ""
    ) -> tuple[UsageReport, SplitComparison]:
        """The usage report of the split's executions, and the comparison of its versions.

        ``split_id`` picks one of the tag's splits; by default the current one,
        else the most recent.
        """
        if not query.prompt:
            raise InvalidArgument.field(
                "prompt", "comparing a release tag's versions needs the prompt"
            )
        found = await self._catalog.find_split(workspace, query.prompt, tag, split_id)
        report = await self._usage.report(
            workspace, replace(query, prompt=found.prompt_id, split_id=found.split.id)
        )
        variants = tuple(
            VariantFigures(v, report.versions.get(v.version_id, UsageStats()))
            for v in found.split.versions
        )
        control = variants[0]
        comparison = SplitComparison(
            release_tag=tag,
            split_id=found.split.id,
            active=found.active,
            variants=variants,
            differences=tuple(compare_variants(v, control) for v in variants[1:]),
        )
        return report, comparison
