"""A store outage between the start and the end of an execution: the caller hears
UNAVAILABLE, and the record is written by itself once the store is back (nothing
is left RUNNING, a retry of the same request then replays the recorded result)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from tests.conftest import Running, error_details
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    async with TcpProxy("127.0.0.1", 5432) as running:
        yield running


def slow(key: str, latency_ms: int) -> epb.ExecutePromptRequest:
    params = pb.ModelParameters()
    params.extra.update({"mock": {"latency_ms": latency_ms, "text": "made it"}})
    return epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt="hold on", parameters=params),
        external_id=key,
    )


async def _until(check: Any, limit_s: float) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            result = await check()
            if result is not None:
                return result
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.1)


async def test_records_whose_write_failed_are_written_when_the_store_is_back(
    proxy: TcpProxy, postgres_url: str, start_server: Any
) -> None:
    url = postgres_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    running: Running = await start_server(database_url=url)
    executions = running.executions
    keyed = asyncio.ensure_future(executions.ExecutePrompt(slow("rec-1", 1500), timeout=30))
    unkeyed = asyncio.ensure_future(executions.ExecutePrompt(slow("", 1500), timeout=30))

    async def claimed() -> bool | None:
        got = await executions.GetExecution(epb.GetExecutionRequest(external_id="rec-1"))
        return True if got.execution.state == pb.EXECUTION_STATE_RUNNING else None

    await _until(claimed, 10)
    await proxy.cut()  # both executions finish while the store is unreachable
    for call in (keyed, unkeyed):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        assert error_details(caught.value)[0].reason == "STORE_UNAVAILABLE"
    await asyncio.sleep(1.0)
    await proxy.restore()

    async def recorded() -> epb.GetExecutionResponse | None:
        got = await executions.GetExecution(epb.GetExecutionRequest(external_id="rec-1"))
        return got if got.execution.state == pb.EXECUTION_STATE_FULFILLED else None

    done = await _until(recorded, 30)
    assert done.execution.outputs[0].string_value == "made it"
    # The retry a caller makes after UNAVAILABLE replays the recorded result.
    again = await executions.ExecutePrompt(slow("rec-1", 1500))
    assert again.replayed and again.execution_id == done.execution.id

    async def both_listed() -> list[Any] | None:
        page = await executions.ListExecutions(epb.ListExecutionsRequest(page_size=10))
        finished = [e for e in page.executions if e.state == pb.EXECUTION_STATE_FULFILLED]
        return list(page.executions) if len(finished) == 2 else None

    listed = await _until(both_listed, 30)
    assert not [e for e in listed if e.state == pb.EXECUTION_STATE_RUNNING]
    assert running.server.recorder.retrying == 0 and running.server.recorder.lost == 0
