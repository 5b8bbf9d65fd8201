"""Idempotency keys as payment APIs have them: replay, refuse reuse, rerun transient failures,
and answer a retry after the owner of a RUNNING execution crashed."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc
from tests.conftest import Running, authed_channel, error_details
from tests.live import start_live_server


def failing(status: int, key: str, text: str = "hello") -> epb.ExecutePromptRequest:
    params = pb.ModelParameters()
    params.extra.update({"mock": {"error_status": status, "error_message": "upstream trouble"}})
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt=text, parameters=params),
        external_id=key,
    )


def slow(key: str, latency_ms: int) -> epb.ExecutePromptRequest:
    params = pb.ModelParameters()
    params.extra.update({"mock": {"latency_ms": latency_ms, "text": "finally"}})
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt="wait", parameters=params),
        external_id=key,
    )


async def listed(running: Running) -> list[Any]:
    page = await running.executions.ListExecutions(epb.ListExecutionsRequest(page_size=100))
    return list(page.executions)


@pytest.mark.parametrize("status", [503, 429])
async def test_a_transient_rejection_runs_again_and_keeps_every_attempt(
    pg: Running, status: int
) -> None:
    first = await pg.executions.ExecutePrompt(failing(status, f"t-{status}"))
    assert first.state == pb.EXECUTION_STATE_REJECTED
    second = await pg.executions.ExecutePrompt(failing(status, f"t-{status}"))
    assert second.state == pb.EXECUTION_STATE_REJECTED
    assert second.execution_id != first.execution_id and not second.replayed
    # Both attempts are recorded; the key points at the newest.
    ids = {e.id for e in await listed(pg)}
    assert {first.execution_id, second.execution_id} <= ids
    by_key = await pg.executions.GetExecution(epb.GetExecutionRequest(external_id=f"t-{status}"))
    assert by_key.execution.id == second.execution_id
    old = await pg.executions.GetExecution(epb.GetExecutionRequest(execution_id=first.execution_id))
    assert old.execution.state == pb.EXECUTION_STATE_REJECTED


async def test_a_deterministic_rejection_replays(pg: Running) -> None:
    first = await pg.executions.ExecutePrompt(failing(400, "bad-request"))
    assert first.state == pb.EXECUTION_STATE_REJECTED
    again = await pg.executions.ExecutePrompt(failing(400, "bad-request"))
    assert again.replayed and again.execution_id == first.execution_id
    assert len(await listed(pg)) == 1


async def test_the_same_key_for_another_request_is_refused_also_when_streaming(
    pg: Running,
) -> None:
    await pg.executions.ExecutePrompt(failing(400, "k", text="one"))
    for call in (pg.executions.ExecutePrompt, pg.executions.ExecutePromptStream):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = call(failing(400, "k", text="two"))
            if isinstance(result, grpc.aio.UnaryStreamCall):
                async for _ in result:
                    pass
            else:
                await result
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_details(caught.value)[0].reason == "IDEMPOTENCY_KEY_REUSED"


async def test_a_retry_after_the_owner_crashed_is_answered_within_seconds(
    tmp_path: Path, start_server: Any
) -> None:
    live = start_live_server(tmp_path)
    channel = authed_channel(live.address, live.key)
    try:
        stub = execution_service_pb2_grpc.ExecutionServiceStub(channel)
        call = asyncio.ensure_future(stub.ExecutePrompt(slow("crash-1", 60_000)))
        # Wait until the execution holds its key (a RUNNING row), then kill -9 the server.
        for _ in range(200):
            try:
                got = await stub.GetExecution(epb.GetExecutionRequest(external_id="crash-1"))
                if got.execution.state == pb.EXECUTION_STATE_RUNNING:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the execution never showed up as RUNNING")
        live.process.send_signal(signal.SIGKILL)
        live.process.wait(10)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
    finally:
        await channel.close()
        live.stop()
    # Another server on the same store (its own heartbeat, a short stale limit).
    running: Running = await start_server(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'live.db'}",
        batch_heartbeat_s=0.5,
        batch_stale_after_s=2.0,
    )
    live_channel = authed_channel(running.address, live.key)
    try:
        stub = execution_service_pb2_grpc.ExecutionServiceStub(live_channel)
        started = time.monotonic()
        while True:
            try:
                answer = await stub.ExecutePrompt(slow("crash-1", 60_000), timeout=2.0)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    break  # taken over and run again; a busy machine let the deadline pass
                assert err.code() == grpc.StatusCode.ABORTED, err
                assert error_details(err)[0].reason == "EXECUTION_IN_PROGRESS"
                assert time.monotonic() - started < 30, "the dead owner was never detected"
                await asyncio.sleep(0.25)
                continue
            # Taken over: it ran again, bounded by this call's deadline.
            assert answer.state == pb.EXECUTION_STATE_REJECTED
            assert answer.error.code == "EXECUTION_TIMEOUT" and not answer.replayed
            break
        taken_over_s = time.monotonic() - started
        assert taken_over_s < 30
        executions = (await stub.ListExecutions(epb.ListExecutionsRequest(page_size=10))).executions
        states = sorted(pb.ExecutionState.Name(e.state) for e in executions)
        # The crashed attempt is ended (REJECTED ABANDONED); the retry ran under the key.
        abandoned = [e for e in executions if e.error.code == "ABANDONED"]
        assert len(abandoned) == 1, states
        assert abandoned[0].state == pb.EXECUTION_STATE_REJECTED
        by_key = await stub.GetExecution(epb.GetExecutionRequest(external_id="crash-1"))
        assert by_key.execution.id != abandoned[0].id
        assert by_key.execution.state in (pb.EXECUTION_STATE_RUNNING, pb.EXECUTION_STATE_REJECTED)
    finally:
        await live_channel.close()
