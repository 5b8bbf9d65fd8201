"""AdminService.GetUsage through real gRPC on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc as epb_grpc
from promptgate.auth.model import Scope
from tests.conftest import Running, authed_channel, error_details


def demo(**mock: Any) -> epb.ExecutePromptRequest:
    request = epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value="usage?")]
    )
    request.parameters.extra.update({"mock": mock})
    return request


def inline(model: str, **mock: Any) -> epb.ExecutePromptRequest:
    params = pb.ModelParameters()
    params.extra.update({"mock": mock})
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model=model, prompt="Say hi", parameters=params)
    )


async def _traffic(running: Running) -> dict[str, str]:
    """Known executions: 3 demo ok, 1 demo rejected, 1 inline on another model."""
    stub = running.executions
    ids: dict[str, str] = {}
    fast = await stub.ExecutePrompt(demo(input_tokens=10, output_tokens=5))
    ids["fast"] = fast.execution_id
    for i in range(2):
        slow = await stub.ExecutePrompt(demo(input_tokens=10, output_tokens=5, latency_ms=250))
        ids[f"slow{i}"] = slow.execution_id
    failed = await stub.ExecutePrompt(demo(error_status=500))
    assert failed.state == pb.EXECUTION_STATE_REJECTED
    ids["failed"] = failed.execution_id
    other = await stub.ExecutePrompt(inline("mock-other", input_tokens=3, output_tokens=7))
    ids["inline"] = other.execution_id
    await stub.SubmitActuals(
        epb.SubmitActualsRequest(
            actuals=[
                epb.Actual(execution_id=ids["fast"], quality=0.2),
                epb.Actual(execution_id=ids["fast"], quality=0.8),  # current
                epb.Actual(execution_id=ids["slow0"], quality=0.4),
                epb.Actual(execution_id=ids["slow1"], desired_output="no quality"),
            ]
        )
    )
    return ids


async def _check_usage(running: Running) -> None:
    await _traffic(running)
    admin = apb_grpc.AdminServiceStub(running.channel)

    usage = await admin.GetUsage(apb.GetUsageRequest())
    total = usage.total
    assert (total.executions, total.fulfilled, total.rejected) == (5, 4, 1)
    assert total.error_rate == pytest.approx(0.2)
    assert total.input_tokens == 3 * 10 + 3 and total.output_tokens == 3 * 5 + 7
    assert total.cost_unit == "USD"
    assert total.rated == 2 and total.mean_quality == pytest.approx(0.6)
    # three fast and two 250 ms executions: the median is fast, the 95th slow
    assert 0 < total.latency_p50_ms < 250 <= total.latency_p95_ms
    window = usage.end_time.ToDatetime(tzinfo=UTC) - usage.start_time.ToDatetime(tzinfo=UTC)
    assert window == timedelta(days=30)
    assert not usage.groups

    by_prompt = await admin.GetUsage(
        apb.GetUsageRequest(group_by=[apb.USAGE_GROUPING_PROMPT, apb.USAGE_GROUPING_MODEL])
    )
    groups = {(g.prompt, g.model): g for g in by_prompt.groups}
    assert set(groups) == {("", "mock-other"), ("demo", "mock-1")}
    demo_group = groups["demo", "mock-1"].stats
    assert (demo_group.executions, demo_group.rejected) == (4, 1)
    assert demo_group.rated == 2 and demo_group.mean_quality == pytest.approx(0.6)
    assert demo_group.latency_p95_ms >= 250
    inline_group = groups["", "mock-other"]
    assert inline_group.stats.executions == 1 and not inline_group.stats.HasField("mean_quality")
    assert inline_group.provider == "mock" and inline_group.version == 0
    assert sum(g.stats.executions for g in by_prompt.groups) == total.executions

    by_day = await admin.GetUsage(apb.GetUsageRequest(group_by=[apb.USAGE_GROUPING_DAY]))
    assert [g.day for g in by_day.groups] == [datetime.now(UTC).date().isoformat()]
    assert by_day.groups[0].stats.executions == 5 and not by_day.groups[0].prompt

    by_version = await admin.GetUsage(
        apb.GetUsageRequest(group_by=[apb.USAGE_GROUPING_VERSION], prompt="demo")
    )
    assert [(g.prompt, g.version) for g in by_version.groups] == [("demo", 1)]
    assert by_version.total.executions == 4

    only_model = await admin.GetUsage(apb.GetUsageRequest(model="mock-other"))
    assert only_model.total.executions == 1 and only_model.total.output_tokens == 7

    by_key = await admin.GetUsage(apb.GetUsageRequest(group_by=[apb.USAGE_GROUPING_API_KEY]))
    me = await admin.WhoAmI(apb.WhoAmIRequest())
    assert [g.api_key_id for g in by_key.groups] == [me.api_key.id]

    past = datetime.now(UTC) - timedelta(days=3)
    earlier = timestamp_pb2.Timestamp()
    earlier.FromDatetime(past - timedelta(days=1))
    later = timestamp_pb2.Timestamp()
    later.FromDatetime(past)
    empty = await admin.GetUsage(apb.GetUsageRequest(start_time=earlier, end_time=later))
    assert empty.total.executions == 0 and empty.total.latency_p50_ms == 0


async def test_usage_counts_tokens_errors_latency_and_quality(pg: Running) -> None:
    await _check_usage(pg)


@pytest.mark.postgres
async def test_usage_on_postgres(start_server: Any, postgres_url: str) -> None:
    running: Running = await start_server(database_url=postgres_url)
    await _check_usage(running)


async def test_usage_needs_analytics_scope_and_stays_in_its_workspace(pg: Running) -> None:
    await pg.executions.ExecutePrompt(demo())
    execute_only = await pg.server.keys.create(
        "default", name="exec", scopes=[Scope.EXECUTE], plan="unlimited"
    )
    analytics = await pg.server.keys.create(
        "default", name="analytics", scopes=[Scope.ANALYTICS], plan="unlimited"
    )
    assert await pg.server.keys.ensure_workspace("other")
    other = await pg.server.keys.create(
        "other", name="other", scopes=[Scope.ANALYTICS], plan="unlimited"
    )
    async with authed_channel(pg.address, execute_only.secret) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await apb_grpc.AdminServiceStub(channel).GetUsage(apb.GetUsageRequest())
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_details(caught.value)[0].reason == "INSUFFICIENT_PERMISSIONS"
    async with authed_channel(pg.address, analytics.secret) as channel:
        usage = await apb_grpc.AdminServiceStub(channel).GetUsage(apb.GetUsageRequest())
        assert usage.total.executions == 1
        # analytics.read alone does not execute
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await epb_grpc.ExecutionServiceStub(channel).ExecutePrompt(demo())
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with authed_channel(pg.address, other.secret) as channel:
        usage = await apb_grpc.AdminServiceStub(channel).GetUsage(apb.GetUsageRequest())
        assert usage.total.executions == 0


async def test_usage_rejects_bad_windows_and_groupings(pg: Running) -> None:
    admin = apb_grpc.AdminServiceStub(pg.channel)
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    bad = [
        apb.GetUsageRequest(start_time=now, end_time=now),
        apb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0), end_time=now),
        apb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=2**62)),
        apb.GetUsageRequest(group_by=[99]),  # type: ignore[list-item]
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.GetUsage(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        _, violations = error_details(caught.value)
        assert violations is not None and violations.field_violations


async def test_usage_counts_cancelled_streams(pg: Running) -> None:
    stream = pg.executions.ExecutePromptStream(demo(hang=True))
    async for event in stream:
        if event.HasField("initiated"):
            break
    stream.cancel()
    admin = apb_grpc.AdminServiceStub(pg.channel)
    for _ in range(100):
        usage = await admin.GetUsage(apb.GetUsageRequest())
        if usage.total.executions:
            break
        await asyncio.sleep(0.05)
    assert (usage.total.executions, usage.total.rejected, usage.total.cancelled) == (1, 1, 1)


async def test_webhook_secret_needs_a_configured_server(pg: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await apb_grpc.AdminServiceStub(pg.channel).GetWebhookSecret(apb.GetWebhookSecretRequest())
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(caught.value)[0].reason == "WEBHOOKS_DISABLED"
