"""Usage analytics to protobuf: aggregate figures and A/B split comparisons."""

from __future__ import annotations

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.execution.comparison import Difference, SplitComparison, VariantFigures
from promptgate.execution.usage import UsageStats


def usage_stats_to_proto(stats: UsageStats) -> apb.UsageStats:
    """Aggregate figures as a message."""
    out = apb.UsageStats(
        executions=stats.executions,
        fulfilled=stats.fulfilled,
        rejected=stats.rejected,
        cancelled=stats.cancelled,
        error_rate=stats.error_rate,
        input_tokens=stats.input_tokens,
        output_tokens=stats.output_tokens,
        cached_input_tokens=stats.cached_input_tokens,
        cost=stats.cost,
        cost_unit="USD",
        latency_p50_ms=stats.percentile(50),
        latency_p95_ms=stats.percentile(95),
        cache_hits=stats.cache_hits,
        rated=stats.rated,
    )
    if stats.mean_quality is not None:
        out.mean_quality = stats.mean_quality
    return out


def _variant(figures: VariantFigures) -> apb.VariantStats:
    out = apb.VariantStats(
        version=figures.version.version,
        version_id=figures.version.version_id,
        weight=figures.version.weight,
        stats=usage_stats_to_proto(figures.stats),
    )
    if figures.quality_stddev is not None:
        out.quality_stddev = figures.quality_stddev
    return out


def _difference(difference: Difference | None) -> apb.DifferenceEstimate | None:
    if difference is None:
        return None
    interval = difference.interval
    return apb.DifferenceEstimate(
        estimate=interval.estimate,
        low=interval.low,
        high=interval.high,
        count=difference.count,
        control_count=difference.control_count,
        degrees_of_freedom=interval.degrees_of_freedom,
        significant=interval.excludes_zero,
    )


def split_comparison_to_proto(comparison: SplitComparison) -> apb.SplitComparison:
    """A split's versions side by side as a message."""
    return apb.SplitComparison(
        release_tag=comparison.release_tag,
        split_id=comparison.split_id,
        active=comparison.active,
        variants=[_variant(v) for v in comparison.variants],
        comparisons=[
            apb.VariantComparison(
                version=d.version,
                control_version=d.control_version,
                mean_quality=_difference(d.mean_quality),
                error_rate=_difference(d.error_rate),
            )
            for d in comparison.differences
        ],
        confidence_level=comparison.confidence_level,
    )
