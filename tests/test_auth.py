"""API keys, plans, rate limits and quotas through real gRPC (in-process and Redis)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc as epb_grpc
from tests.conftest import Running, authed_channel, error_details


def demo(**mock: Any) -> epb.ExecutePromptRequest:
    request = epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value="limits?")]
    )
    if mock:
        request.parameters.extra.update({"mock": mock})
    return request


async def new_key(running: Running, scopes: list[str], **limits: int) -> str:
    admin = apb_grpc.AdminServiceStub(running.channel)
    created = await admin.CreateApiKey(
        apb.CreateApiKeyRequest(
            name="test", scopes=scopes, plan="enterprise", limits=apb.PlanLimits(**limits)
        )
    )
    return created.secret


async def away_from_minute_end() -> None:
    """Rate limits count per calendar minute: do not straddle its end."""
    left = 60 - time.time() % 60
    if left < 3:
        await asyncio.sleep(left + 0.05)


def quota_details(err: grpc.aio.AioRpcError) -> tuple[float, list[str]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    delay, subjects = -1.0, []
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            subjects = [v.subject for v in failure.violations]
    return delay, subjects


async def test_requests_per_minute_at_the_boundary(pg: Running) -> None:
    key = await new_key(pg, ["prompt.execute"], requests_per_minute=3)
    await away_from_minute_end()
    async with authed_channel(pg.address, key) as channel:
        stub = epb_grpc.ExecutionServiceStub(channel)
        remaining = []
        for _ in range(3):
            call = stub.ExecutePrompt(demo())
            await call
            headers = dict(await call.initial_metadata())
            assert headers["x-ratelimit-limit"] == "3"
            assert int(headers["x-ratelimit-reset"]) > time.time()
            remaining.append(headers["x-ratelimit-remaining"])
        assert remaining == ["2", "1", "0"]
        call = stub.ExecutePrompt(demo())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info, _ = error_details(caught.value)
        assert info.reason == "RATE_LIMIT_EXCEEDED"
        delay, subjects = quota_details(caught.value)
        assert 0 < delay <= 60 and subjects and subjects[0].startswith("api_key:")
        headers = dict(await call.initial_metadata())
        assert headers["x-ratelimit-remaining"] == "0"


async def test_every_response_carries_rate_limit_metadata(pg: Running) -> None:
    call = pg.executions.ListExecutions(epb.ListExecutionsRequest())
    await call
    headers = dict(await call.initial_metadata())
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(headers)
    stream = pg.executions.ExecutePromptStream(demo())
    async for _ in stream:
        pass
    assert "x-ratelimit-reset" in dict(await stream.initial_metadata())


async def test_concurrent_execution_limit_with_parallel_streams(pg: Running) -> None:
    key = await new_key(pg, ["prompt.execute"], concurrent_executions=2)
    async with authed_channel(pg.address, key) as channel:
        stub = epb_grpc.ExecutionServiceStub(channel)
        slow = demo(chunks=6, chunk_interval_ms=150)
        streams = [stub.ExecutePromptStream(slow) for _ in range(2)]
        for stream in streams:
            first = await stream.read()
            assert first.WhichOneof("event") == "initiated"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExecutePrompt(demo())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_details(caught.value)[0].reason == "CONCURRENT_LIMIT_EXCEEDED"
        # Reads are not executions: they are not limited by concurrency.
        await stub.ListExecutions(epb.ListExecutionsRequest())
        for stream in streams:
            async for _ in stream:
                pass
        done = await stub.ExecutePrompt(demo())
        assert done.state == pb.EXECUTION_STATE_FULFILLED


async def test_monthly_token_quota_is_exhausted_by_a_stream(pg: Running) -> None:
    key = await new_key(pg, ["prompt.execute"], monthly_tokens=30)
    async with authed_channel(pg.address, key) as channel:
        stub = epb_grpc.ExecutionServiceStub(channel)
        admin = apb_grpc.AdminServiceStub(channel)
        events = [e async for e in stub.ExecutePromptStream(demo(output_tokens=40))]
        used = events[-1].fulfilled.meta.usage
        total = used.input_tokens + used.output_tokens
        assert total > 30
        for _ in range(50):  # tokens are counted just after the execution is recorded
            me = await admin.WhoAmI(apb.WhoAmIRequest())
            if me.tokens_this_month >= total:
                break
            await asyncio.sleep(0.02)
        assert me.tokens_this_month == total
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExecutePrompt(demo())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_details(caught.value)[0].reason == "QUOTA_EXCEEDED"
        delay, _ = quota_details(caught.value)
        assert delay > 0


async def test_cancelled_streams_count_their_partial_usage(pg: Running) -> None:
    key = await new_key(pg, ["prompt.execute"])
    async with authed_channel(pg.address, key) as channel:
        stub = epb_grpc.ExecutionServiceStub(channel)
        admin = apb_grpc.AdminServiceStub(channel)
        call = stub.ExecutePromptStream(demo(output_tokens=40, chunks=8, chunk_interval_ms=200))
        await call.read()
        await call.read()
        call.cancel()
        for _ in range(100):
            me = await admin.WhoAmI(apb.WhoAmIRequest())
            if me.tokens_this_month:
                break
            await asyncio.sleep(0.02)
        assert 0 < me.tokens_this_month


async def test_key_management_and_whoami(pg: Running) -> None:
    admin = apb_grpc.AdminServiceStub(pg.channel)
    created = await admin.CreateApiKey(
        apb.CreateApiKeyRequest(name="ci", scopes=["prompt.execute"], plan="free")
    )
    assert created.secret.startswith(f"pgk_{created.api_key.id}.")
    assert created.api_key.workspace == "default" and created.api_key.plan == "free"
    assert created.api_key.limits.requests_per_minute == 2
    listed = await admin.ListApiKeys(apb.ListApiKeysRequest())
    assert created.api_key.id in [k.id for k in listed.api_keys]
    assert all(created.secret not in str(k) for k in listed.api_keys)
    async with authed_channel(pg.address, created.secret) as channel:
        me = await apb_grpc.AdminServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
        assert (me.workspace, list(me.api_key.scopes)) == ("default", ["prompt.execute"])
        assert me.requests_this_minute == 1
        await admin.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=created.api_key.id))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await apb_grpc.AdminServiceStub(channel).WhoAmI(apb.WhoAmIRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_details(caught.value)[0].reason == "INVALID_API_KEY"
    for bad in (
        apb.CreateApiKeyRequest(scopes=["root"]),
        apb.CreateApiKeyRequest(scopes=[]),
        apb.CreateApiKeyRequest(scopes=["prompt.execute"], plan="platinum"),
        apb.CreateApiKeyRequest(
            scopes=["prompt.execute"], limits=apb.PlanLimits(monthly_tokens=-5)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.CreateApiKey(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_redis_limits_hold_jointly_across_two_servers(start_server: Any) -> None:
    first: Running = await start_server(limits_backend="redis")
    second: Running = await start_server(
        limits_backend="redis", database_url=first.server.settings.database_url
    )
    key = await new_key(first, ["prompt.execute"], requests_per_minute=4)
    await away_from_minute_end()
    async with authed_channel(first.address, key) as a, authed_channel(second.address, key) as b:
        stubs = [epb_grpc.ExecutionServiceStub(a), epb_grpc.ExecutionServiceStub(b)]
        for i in range(4):
            await stubs[i % 2].ExecutePrompt(demo())
        for stub in stubs:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ExecutePrompt(demo())
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_details(caught.value)[0].reason == "RATE_LIMIT_EXCEEDED"


async def test_cli_creates_keys(tmp_path: Any) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "promptgate",
        "keys",
        "create",
        "--workspace",
        "acme",
        "--scope",
        "prompt.execute",
        "--plan",
        "professional",
        "--database-url",
        database,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    secret = out.decode().strip().splitlines()[-1]
    assert secret.startswith("pgk_")
    from promptgate.auth.keys import KeyStore
    from promptgate.store.engine import create_engine, session_factory

    engine = create_engine(database)
    try:
        key = await KeyStore(session_factory(engine)).authenticate(secret)
        assert (key.workspace_id, key.plan) == ("acme", "professional")
    finally:
        await engine.dispose()
