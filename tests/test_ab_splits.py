"""A/B tests on a release tag, through real gRPC: weighted and sticky assignment,
the split in tags and history, ending a test, and GetUsage's variant comparison
checked against numbers computed here independently of the server's code."""

from __future__ import annotations

import asyncio
import hashlib
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.execution.intervals import newcombe_interval, student_t_quantile
from tests.conftest import Running, error_details
from tests.test_batches import all_results, wait_done
from tests.test_prompts import add_version, new_prompt, q

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

# Helpers


def weights(*pairs: tuple[int, float]) -> list[ppb.VersionWeight]:
    return [ppb.VersionWeight(version=v, weight=w) for v, w in pairs]


async def versions_prompt(pg: Running, name: str, count: int) -> list[ppb.PromptVersion]:
    """A prompt with ``count`` versions, each saying which one it is."""
    await new_prompt(pg, name)
    return [await add_version(pg, name, f"v{i + 1} says: {{{{ q }}}}") for i in range(count)]


async def split_tag(
    pg: Running, prompt: str, *pairs: tuple[int, float], tag: str = "production"
) -> ppb.ReleaseTag:
    response = await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt=prompt, tag=tag, splits=weights(*pairs))
    )
    return response.release_tag


def execute(prompt: str, key: str = "", **mock: Any) -> epb.ExecutePromptRequest:
    request = epb.ExecutePromptRequest(prompt=prompt, inputs=q("hello"), split_key=key)
    if mock:
        request.parameters.extra.update({"mock": mock})
    return request


async def render_version(pg: Running, prompt: str, key: str) -> int:
    response = await pg.prompts.RenderPrompt(
        ppb.RenderPromptRequest(prompt=prompt, inputs=q("hello"), split_key=key)
    )
    return response.prompt_version


async def gather_bounded(calls: list[Any], limit: int = 48) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


def expected_version(split: ppb.TrafficSplit, key: str) -> int:
    """The documented assignment: sha256(split id, NUL, key), first 8 bytes as a fraction."""
    digest = hashlib.sha256(f"{split.id}\x00{key}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for entry in split.versions:
        edge += entry.weight
        if point < edge:
            return entry.version
    return split.versions[-1].version


async def compare(pg: Running, prompt: str, tag: str = "production", **fields: Any) -> Any:
    admin = apb_grpc.AdminServiceStub(pg.channel)
    return await admin.GetUsage(
        apb.GetUsageRequest(prompt=prompt, compare_release_tag=tag, **fields)
    )


async def expect_error(call: Any, code: grpc.StatusCode, reason: str) -> list[str]:
    """Await ``call``, which must fail with ``code`` and ``reason``; the violated fields."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    info, bad = error_details(caught.value)
    assert info.reason == reason, (info.reason, caught.value.details())
    return [v.field for v in bad.field_violations] if bad else []


# Assignment


async def test_a_90_10_split_sends_about_a_tenth_of_calls_to_the_variant(pg: Running) -> None:
    v1, v2 = await versions_prompt(pg, "weighted", 2)
    tag = await split_tag(pg, "weighted", (1, 90), (2, 10))
    assert tag.split.id.startswith("spl_")
    calls = 3000
    responses = await gather_bounded(
        [pg.executions.ExecutePrompt(execute("weighted")) for _ in range(calls)]
    )
    counts = Counter(r.meta.prompt_version for r in responses)
    assert set(counts) == {1, 2}
    assert all(r.state == pb.EXECUTION_STATE_FULFILLED for r in responses)
    # Binomial sd of the share is 0.55%; 2.5% is over four of them.
    assert abs(counts[2] / calls - 0.10) < 0.025, counts
    # Every execution records the version it ran, the tag and the split.
    for response in responses[:50]:
        meta = response.meta
        assert meta.release_tag == "production" and meta.split_id == tag.split.id
        assert meta.prompt_version_id == (v1.id if meta.prompt_version == 1 else v2.id)
    usage = await compare(pg, "weighted")
    recorded = {v.version: v.stats.executions for v in usage.split_comparison.variants}
    assert recorded == {1: counts[1], 2: counts[2]}


async def test_a_split_key_sticks_to_one_version_and_keys_spread_by_weight(pg: Running) -> None:
    await versions_prompt(pg, "sticky", 3)
    tag = await split_tag(pg, "sticky", (1, 7), (2, 3))
    assert [(v.version, v.weight) for v in tag.split.versions] == [
        (1, pytest.approx(0.7)),
        (2, pytest.approx(0.3)),
    ]
    # The same key runs the same version on every call, as RenderPrompt shows beforehand.
    for key in ("user-1", "user-2", "user-3", "session-abc", "ünïcode-ключ"):
        shown = await render_version(pg, "sticky", key)
        assert shown == expected_version(tag.split, key)
        runs = await asyncio.gather(
            *(pg.executions.ExecutePrompt(execute("sticky", key)) for _ in range(6))
        )
        assert {r.meta.prompt_version for r in runs} == {shown}
        events = [e async for e in pg.executions.ExecutePromptStream(execute("sticky", key))]
        assert events[0].initiated.meta.prompt_version == shown
        assert events[-1].fulfilled.meta.split_id == tag.split.id
    # Many keys spread by weight, each where the documented hash puts it.
    keys = [f"customer-{i}" for i in range(1500)]
    before = dict(
        zip(
            keys, await gather_bounded([render_version(pg, "sticky", k) for k in keys]), strict=True
        )
    )
    assert before == {k: expected_version(tag.split, k) for k in keys}
    # sd of the share: 1.2%; 4.5% is well past chance.
    assert abs(sum(v == 1 for v in before.values()) / len(keys) - 0.7) < 0.045

    # New weights for the same versions: the same split, and keys move only one way.
    ramped = await split_tag(pg, "sticky", (1, 1), (2, 1))
    assert ramped.split.id == tag.split.id
    after = dict(
        zip(
            keys, await gather_bounded([render_version(pg, "sticky", k) for k in keys]), strict=True
        )
    )
    assert after == {k: expected_version(ramped.split, k) for k in keys}
    assert all(after[k] == 2 for k in keys if before[k] == 2)
    moved = sum(before[k] == 1 and after[k] == 2 for k in keys)
    assert 0.1 * len(keys) < moved < 0.3 * len(keys)  # about 20% (0.7 -> 0.5)

    # Other versions: a new split, with a fresh assignment.
    other = await split_tag(pg, "sticky", (1, 1), (3, 1))
    assert other.split.id != tag.split.id
    again = await gather_bounded([render_version(pg, "sticky", k) for k in keys[:300]])
    assert again == [expected_version(other.split, k) for k in keys[:300]]
    assert set(again) == {1, 3}


async def test_moving_the_tag_to_one_version_ends_the_split_and_history_keeps_it(
    pg: Running,
) -> None:
    _, v2 = await versions_prompt(pg, "ending", 2)
    first = await split_tag(pg, "ending", (2, 9), (1, 1))
    # The first version is the control: the tag's version, and GetPromptVersion's answer.
    assert (first.version, first.version_id) == (2, v2.id)
    got = await pg.prompts.GetPromptVersion(
        ppb.GetPromptVersionRequest(prompt="ending", release_tag="production")
    )
    assert got.version.id == v2.id
    second = await split_tag(pg, "ending", (2, 1), (1, 1))
    assert second.split.id == first.split.id
    tags = {
        t.tag: t
        for t in (
            await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="ending"))
        ).prompt.release_tags
    }
    assert tags["production"].split == second.split
    assert not tags["latest"].HasField("split")

    ended = await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="ending", tag="production", version=1)
    )
    assert not ended.release_tag.HasField("split") and ended.release_tag.version == 1
    runs = await asyncio.gather(
        *(pg.executions.ExecutePrompt(execute("ending", f"k{i}")) for i in range(20))
    )
    assert {(r.meta.prompt_version, r.meta.split_id) for r in runs} == {(1, "")}

    history = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="ending", tag="production")
    )
    events = list(history.events)
    assert [(e.version, e.previous_version) for e in events[:3]] == [(1, 2), (2, 2), (2, 0)]
    assert not events[0].HasField("split")
    assert [(v.version, round(v.weight, 6)) for v in events[1].split.versions] == [
        (2, 0.5),
        (1, 0.5),
    ]
    assert [(v.version, round(v.weight, 6)) for v in events[2].split.versions] == [
        (2, 0.9),
        (1, 0.1),
    ]
    assert events[1].split.id == events[2].split.id == first.split.id
    assert events[2].split.start_time == events[1].split.start_time

    # The ended test can still be compared; it is no longer active.
    usage = await compare(pg, "ending")
    assert usage.split_comparison.split_id == first.split.id
    assert not usage.split_comparison.active
    assert sum(v.stats.executions for v in usage.split_comparison.variants) == 0
    # The audit log has each change with the split before and after.
    audit = await apb_grpc.AdminServiceStub(pg.channel).ListAuditEvents(
        apb.ListAuditEventsRequest(resource="prompts/ending/releaseTags/production")
    )
    changes = [
        (json_format.MessageToDict(e.before), json_format.MessageToDict(e.after))
        for e in audit.audit_events
    ]
    (end_before, end_after), (ramp_before, ramp_after), (_, start_after) = changes[:3]
    assert end_before["split"]["id"] == first.split.id and "split" not in end_after
    assert end_after["version"] == 1
    assert [v["weight"] for v in ramp_before["split"]["versions"]] == pytest.approx([0.9, 0.1])
    assert [v["weight"] for v in ramp_after["split"]["versions"]] == pytest.approx([0.5, 0.5])
    assert [v["version"] for v in start_after["split"]["versions"]] == [2, 1]
    # A single-entry split is a plain move.
    single = await split_tag(pg, "ending", (2, 5))
    assert single.version == 2 and not single.HasField("split")


async def test_split_entries_are_validated(pg: Running) -> None:
    v1, v2 = await versions_prompt(pg, "checked", 2)
    prompts = pg.prompts

    def set_tag(**fields: Any) -> Any:
        return prompts.SetReleaseTag(
            ppb.SetReleaseTagRequest(prompt="checked", tag="production", **fields)
        )

    fields = await expect_error(
        set_tag(splits=weights((1, 50), (2, 0), (1, -1), (2, math.nan), (1, math.inf))),
        INVALID,
        "INVALID_SPLIT",
    )
    assert fields == [f"splits[{i}].weight" for i in range(1, 5)]
    fields = await expect_error(set_tag(splits=weights((1, 1), (2, 1e7))), INVALID, "INVALID_SPLIT")
    assert fields == ["splits[1].weight"]
    fields = await expect_error(
        set_tag(splits=weights(*[(1 + i % 2, 1) for i in range(11)])), INVALID, "INVALID_SPLIT"
    )
    assert fields == ["splits"]
    fields = await expect_error(
        set_tag(splits=[ppb.VersionWeight(weight=1), ppb.VersionWeight(version=-2, weight=1)]),
        INVALID,
        "INVALID_SPLIT",
    )
    assert fields == ["splits[0]", "splits[1].version"]
    # Distinct versions, by number or id.
    fields = await expect_error(
        set_tag(splits=weights((1, 1), (2, 1), (1, 1))), INVALID, "INVALID_SPLIT"
    )
    assert fields == ["splits[2]"]
    fields = await expect_error(
        set_tag(
            splits=[
                ppb.VersionWeight(version=2, weight=1),
                ppb.VersionWeight(version_id=v2.id, weight=1),
            ]
        ),
        INVALID,
        "INVALID_SPLIT",
    )
    assert fields == ["splits[1]"]
    fields = await expect_error(
        set_tag(splits=[ppb.VersionWeight(version=1, version_id=v2.id, weight=1)]),
        INVALID,
        "INVALID_SPLIT",
    )
    assert fields == ["splits[0]"]
    await expect_error(set_tag(version=1, splits=weights((1, 1), (2, 1))), INVALID, "INVALID_SPLIT")
    await expect_error(set_tag(splits=weights((1, 1), (7, 1))), NOT_FOUND, "VERSION_NOT_FOUND")
    await expect_error(
        prompts.SetReleaseTag(
            ppb.SetReleaseTagRequest(prompt="checked", tag="latest", splits=weights((1, 1), (2, 1)))
        ),
        INVALID,
        "INVALID_RELEASE_TAG",
    )
    # Nothing above moved the tag.
    listed = await prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="checked"))
    assert [t.tag for t in listed.release_tags] == ["latest"]

    # Mixed selectors work: ids and numbers, weights normalised.
    tag = await prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(
            prompt="checked",
            tag="production",
            splits=[
                ppb.VersionWeight(version_id=v1.id, weight=3),
                ppb.VersionWeight(version=2, version_id=v2.id, weight=1),
            ],
        )
    )
    assert [(v.version, v.version_id, v.weight) for v in tag.release_tag.split.versions] == [
        (1, v1.id, 0.75),
        (2, v2.id, 0.25),
    ]
    fields = await expect_error(
        pg.executions.ExecutePrompt(execute("checked", "k" * 257)), INVALID, "INVALID_PARAMETERS"
    )
    assert fields == ["split_key"]

    # GetUsage's comparison needs a prompt, a tag that split, and split_id only with a tag.
    admin = apb_grpc.AdminServiceStub(pg.channel)
    assert await expect_error(
        admin.GetUsage(apb.GetUsageRequest(compare_release_tag="production")),
        INVALID,
        "INVALID_PARAMETERS",
    ) == ["prompt"]
    assert await expect_error(
        admin.GetUsage(apb.GetUsageRequest(prompt="checked", split_id="spl_x")),
        INVALID,
        "INVALID_PARAMETERS",
    ) == ["split_id"]
    await expect_error(compare(pg, "checked", tag="staging"), NOT_FOUND, "SPLIT_NOT_FOUND")
    await expect_error(compare(pg, "checked", split_id="spl_nope"), NOT_FOUND, "SPLIT_NOT_FOUND")
    await expect_error(compare(pg, "nope"), NOT_FOUND, "PROMPT_NOT_FOUND")


async def test_split_key_is_part_of_the_idempotency_fingerprint(pg: Running) -> None:
    await versions_prompt(pg, "keyed", 2)
    await split_tag(pg, "keyed", (1, 1), (2, 1))
    request = execute("keyed", "user-7")
    request.external_id = "order-1"
    first = await pg.executions.ExecutePrompt(request)
    again = await pg.executions.ExecutePrompt(request)
    assert again.replayed and again.execution_id == first.execution_id
    request.split_key = "user-8"
    await expect_error(
        pg.executions.ExecutePrompt(request),
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
    )
    stored = await pg.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=first.execution_id)
    )
    assert stored.execution.meta.split_id == first.meta.split_id != ""
    assert stored.execution.meta.prompt_version == first.meta.prompt_version


async def test_a_batch_through_a_split_tag_runs_the_control(pg: Running) -> None:
    await versions_prompt(pg, "batched", 2)
    await split_tag(pg, "batched", (1, 1), (2, 99))
    created = await pg.executions.ExecuteBatch(
        epb.ExecuteBatchRequest(
            prompt="batched",
            items=[epb.BatchItem(custom_id=f"i{i}", inputs=q(str(i))) for i in range(20)],
        )
    )
    assert created.batch.version == 1 and created.batch.release_tag == "production"
    await wait_done(pg, created.batch.id)
    results = await all_results(pg, created.batch.id)
    assert {r.meta.prompt_version for r in results} == {1}
    assert {r.meta.split_id for r in results} == {""}


# The comparison, against numbers computed here


def t_quantile_by_integration(p: float, df: float) -> float:
    """Student's t quantile from Simpson integration of the density (not the server's method)."""

    def density(x: float) -> float:
        return math.exp(
            math.lgamma((df + 1) / 2)
            - math.lgamma(df / 2)
            - 0.5 * math.log(df * math.pi)
            - (df + 1) / 2 * math.log1p(x * x / df)
        )

    def cdf(t: float) -> float:
        steps = 4000
        h = t / steps
        total = density(0) + density(t)
        total += sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + total * h / 3

    low, high = 0.0, 64.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre = (2 * n * p + z * z) / (2 * (n + z * z))
    half = z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
    return max(0.0, centre - half), min(1.0, centre + half)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@dataclass
class Run:
    version: int
    rejected: bool
    latency_ms: float
    input_tokens: int
    output_tokens: int
    quality: float | None = None


async def _comparison_traffic(pg: Running, name: str) -> tuple[ppb.ReleaseTag, list[Run]]:
    """Executions with known outcomes: v2 fails more often and is rated higher."""
    await versions_prompt(pg, name, 2)
    # Traffic through the tag before the split started does not count.
    await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt=name, tag="production", version=1)
    )
    before = await pg.executions.ExecutePrompt(execute(name, "user-0"))
    assert before.meta.release_tag == "production" and not before.meta.split_id
    tag = await split_tag(pg, name, (1, 1), (2, 1))
    keys = [f"user-{i}" for i in range(48)]
    planned = [await render_version(pg, name, k) for k in keys]  # sticky: what each key runs
    calls = []
    seen = Counter[int]()
    for key, version in zip(keys, planned, strict=True):
        n = seen[version]
        seen[version] += 1
        fail = n % (3 if version == 2 else 7) == 1
        mock: dict[str, Any] = {"input_tokens": 10 + n % 3, "output_tokens": 4 + n % 5}
        if fail:
            mock["error_status"] = 500
        calls.append(pg.executions.ExecutePrompt(execute(name, key, **mock)))
    responses = await asyncio.gather(*calls)
    runs: list[Run] = []
    actuals: list[epb.Actual] = []
    superseded: list[epb.Actual] = []
    for i, (response, version) in enumerate(zip(responses, planned, strict=True)):
        meta = response.meta
        assert meta.prompt_version == version and meta.split_id == tag.split.id
        rejected = response.state == pb.EXECUTION_STATE_REJECTED
        run = Run(
            version=version,
            rejected=rejected,
            latency_ms=meta.latency.ToTimedelta().total_seconds() * 1000,
            input_tokens=meta.usage.input_tokens,
            output_tokens=meta.usage.output_tokens,
        )
        runs.append(run)
        if i % 5 == 4:
            continue  # never rated
        if i % 6 == 5:
            # an actual without quality: the execution is not rated
            actuals.append(epb.Actual(execution_id=response.execution_id, desired_output="x"))
            continue
        run.quality = (0.55 if version == 1 else 0.7) + 0.05 * (i % 4) - (0.1 if rejected else 0)
        actuals.append(epb.Actual(execution_id=response.execution_id, quality=run.quality))
        if i % 3 == 0:  # an earlier rating, replaced by the one above
            superseded.append(epb.Actual(execution_id=response.execution_id, quality=0.01))
    await pg.executions.SubmitActuals(epb.SubmitActualsRequest(actuals=superseded))
    await pg.executions.SubmitActuals(epb.SubmitActualsRequest(actuals=actuals))
    return tag, runs


async def _check_comparison(pg: Running) -> None:
    tag, runs = await _comparison_traffic(pg, "compared")
    usage = await compare(pg, "compared")
    comparison = usage.split_comparison
    assert comparison.split_id == tag.split.id and comparison.active
    assert comparison.release_tag == "production" and comparison.confidence_level == 0.95
    assert usage.total.executions == len(runs)  # the call before the split is not part of it

    by_version = {v: [r for r in runs if r.version == v] for v in (1, 2)}
    assert all(len(group) >= 10 for group in by_version.values()), "both versions ran"
    assert [v.version for v in comparison.variants] == [1, 2]
    for variant in comparison.variants:
        group = by_version[variant.version]
        stats = variant.stats
        rejected = sum(r.rejected for r in group)
        qualities = [r.quality for r in group if r.quality is not None]
        assert variant.weight == pytest.approx(0.5)
        assert (stats.executions, stats.rejected) == (len(group), rejected)
        assert stats.error_rate == pytest.approx(rejected / len(group))
        assert stats.input_tokens == sum(r.input_tokens for r in group)
        assert stats.output_tokens == sum(r.output_tokens for r in group)
        assert stats.latency_p50_ms == pytest.approx(
            nearest_rank([r.latency_ms for r in group], 50), abs=0.01
        )
        assert stats.latency_p95_ms == pytest.approx(
            nearest_rank([r.latency_ms for r in group], 95), abs=0.01
        )
        assert stats.rated == len(qualities)
        assert stats.mean_quality == pytest.approx(statistics.fmean(qualities))
        assert variant.quality_stddev == pytest.approx(statistics.stdev(qualities))

    (difference,) = comparison.comparisons
    assert (difference.version, difference.control_version) == (2, 1)
    q2 = [r.quality for r in by_version[2] if r.quality is not None]
    q1 = [r.quality for r in by_version[1] if r.quality is not None]
    share2, share1 = statistics.variance(q2) / len(q2), statistics.variance(q1) / len(q1)
    df = (share2 + share1) ** 2 / (share2**2 / (len(q2) - 1) + share1**2 / (len(q1) - 1))
    half = t_quantile_by_integration(0.975, df) * math.sqrt(share2 + share1)
    estimate = statistics.fmean(q2) - statistics.fmean(q1)
    quality = difference.mean_quality
    assert quality.estimate == pytest.approx(estimate)
    assert quality.degrees_of_freedom == pytest.approx(df)
    assert (quality.low, quality.high) == (
        pytest.approx(estimate - half, abs=1e-7),
        pytest.approx(estimate + half, abs=1e-7),
    )
    assert (quality.count, quality.control_count) == (len(q2), len(q1))
    assert quality.significant == (estimate - half > 0 or estimate + half < 0)

    k2, n2 = sum(r.rejected for r in by_version[2]), len(by_version[2])
    k1, n1 = sum(r.rejected for r in by_version[1]), len(by_version[1])
    (l2, u2), (l1, u1) = wilson(k2, n2), wilson(k1, n1)
    d = k2 / n2 - k1 / n1
    errors = difference.error_rate
    assert errors.estimate == pytest.approx(d)
    assert errors.low == pytest.approx(d - math.sqrt((k2 / n2 - l2) ** 2 + (u1 - k1 / n1) ** 2))
    assert errors.high == pytest.approx(d + math.sqrt((u2 - k2 / n2) ** 2 + (k1 / n1 - l1) ** 2))
    assert (errors.count, errors.control_count) == (n2, n1)
    assert errors.significant == (errors.low > 0 or errors.high < 0)

    # group_by still works, within the split's executions.
    by_version_groups = await compare(pg, "compared", group_by=[apb.USAGE_GROUPING_VERSION])
    assert {g.version: g.stats.executions for g in by_version_groups.groups} == {
        v: len(group) for v, group in by_version.items()
    }


async def test_the_comparison_matches_hand_computed_numbers(pg: Running) -> None:
    await _check_comparison(pg)


@pytest.mark.postgres
async def test_splits_and_the_comparison_on_postgres(start_server: Any, postgres_url: str) -> None:
    running: Running = await start_server(database_url=postgres_url)
    await _check_comparison(running)
    await running.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="compared", tag="production", version=2)
    )
    history = await running.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="compared", tag="production")
    )
    assert [e.HasField("split") for e in history.events] == [False, True, False]
    ended = await compare(running, "compared")
    assert not ended.split_comparison.active and ended.total.executions == 48


# The interval arithmetic, against published values


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.7062047),
        (0.975, 2, 4.3026527),
        (0.975, 5, 2.5705818),
        (0.975, 10, 2.2281389),
        (0.975, 30, 2.0422725),
        (0.975, 120, 1.9799304),
        (0.995, 3, 5.8409093),
        (0.9995, 1, 636.6192488),
        (0.025, 4, -2.7764451),
    ],
)
def test_t_quantile_matches_tables(p: float, df: float, expected: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("df", [1.5, 3.7, 13.37, 57.2])
def test_t_quantile_for_fractional_degrees_of_freedom(df: float) -> None:
    assert student_t_quantile(0.975, df) == pytest.approx(
        t_quantile_by_integration(0.975, df), abs=1e-7
    )


def test_newcombe_interval_matches_the_paper() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, table II, method 10.
    for (k1, n1, k2, n2), (low, high) in [
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
    ]:
        interval = newcombe_interval(k1, n1, k2, n2)
        assert interval is not None
        assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)
