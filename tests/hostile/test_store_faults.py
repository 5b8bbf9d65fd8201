"""A store outage is UNAVAILABLE (STORE_UNAVAILABLE, with RetryInfo), never INTERNAL.

PostgreSQL is cut off without stopping the real service: the server under
test reaches it through a TCP proxy (``tests.tcp_proxy``) that the test cuts
for a few seconds under steady traffic of reads, writes and executions, then
restores. Every call that fails must say "the store is unavailable, retry in
a second"; once the proxy is back, calls succeed again by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

CUT_S = 3.0
# Each RPC is called this often, so ~24 calls/s in all while the store is cut.
INTERVAL_S = 0.25
# After the proxy is back, every RPC must have succeeded within this time
# (pool connections are re-established on their next use): generous for CI.
RECOVERY_S = 20.0


@dataclass
class Outcome:
    """One call: when it was made, which RPC, and how it ended."""

    at: float
    rpc: str
    code: grpc.StatusCode
    reason: str = ""
    retry_s: float | None = None


@dataclass
class Traffic:
    """Every call made by the traffic loops."""

    outcomes: list[Outcome] = field(default_factory=list)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code is not grpc.StatusCode.OK]


def _outcome(rpc: str, started: float, err: grpc.aio.AioRpcError | None) -> Outcome:
    if err is None:
        return Outcome(started, rpc, grpc.StatusCode.OK)
    outcome = Outcome(started, rpc, err.code())
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            outcome.reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            outcome.retry_s = retry.retry_delay.ToTimedelta().total_seconds()
    return outcome


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy in front of the test database's PostgreSQL (set up before the server,
    so it is closed after the server has stopped)."""
    async with TcpProxy("127.0.0.1", 5432) as running:
        yield running


def _through(postgres_url: str, proxy: TcpProxy) -> str:
    assert "@127.0.0.1:5432/" in postgres_url, postgres_url
    return postgres_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")


def _calls(running: Running, execution_id: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    admin = apb_grpc.AdminServiceStub(running.channel)
    demo = epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value="still there?")]
    )
    version = ppb.PromptVersion(
        model="mock-1",
        messages=[pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template="Say hi")],
    )
    # An inline prompt needs no catalog read: its only store access is the recording.
    inline = epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt="Say hi"),
    )
    timeout = 10.0
    return {
        "ExecutePrompt": lambda: running.executions.ExecutePrompt(demo, timeout=timeout),
        "ExecutePrompt(inline)": lambda: running.executions.ExecutePrompt(inline, timeout=timeout),
        "GetExecution": lambda: running.executions.GetExecution(
            epb.GetExecutionRequest(execution_id=execution_id), timeout=timeout
        ),
        "ListExecutions": lambda: running.executions.ListExecutions(
            epb.ListExecutionsRequest(page_size=5), timeout=timeout
        ),
        "CreatePromptVersion": lambda: running.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="outage", version=version), timeout=timeout
        ),
        "WhoAmI": lambda: admin.WhoAmI(apb.WhoAmIRequest(), timeout=timeout),
    }


async def _loop(rpc: str, call: Callable[[], Awaitable[Any]], traffic: Traffic) -> None:
    while True:
        started = time.monotonic()
        try:
            await call()
        except grpc.aio.AioRpcError as err:
            traffic.outcomes.append(_outcome(rpc, started, err))
        else:
            traffic.outcomes.append(_outcome(rpc, started, None))
        await asyncio.sleep(max(0.0, INTERVAL_S - (time.monotonic() - started)))


async def test_postgres_outage_is_unavailable_and_heals(
    proxy: TcpProxy,
    start_server: Callable[..., Any],
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running: Running = await start_server(database_url=_through(postgres_url, proxy))
    await running.prompts.CreatePrompt(ppb.CreatePromptRequest(name="outage"))
    first = await running.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            prompt="demo", inputs=[pb.PromptInput(name="question", string_value="hello")]
        )
    )
    calls = _calls(running, first.execution_id)
    traffic = Traffic()
    caplog.set_level(logging.WARNING, logger="promptgate.api.errors")
    loops = [asyncio.create_task(_loop(rpc, call, traffic)) for rpc, call in calls.items()]
    try:
        await asyncio.sleep(1.0)
        await proxy.cut()
        cut_at = time.monotonic()
        await asyncio.sleep(CUT_S)
        await proxy.restore()
        restored_at = time.monotonic()
        # Every RPC must succeed again, with no restart, within RECOVERY_S.
        recovered: dict[str, float] = {}
        while len(recovered) < len(calls) and time.monotonic() - restored_at < RECOVERY_S:
            await asyncio.sleep(0.2)
            for o in traffic.outcomes:
                if o.at >= restored_at and o.code is grpc.StatusCode.OK:
                    recovered.setdefault(o.rpc, o.at - restored_at)
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    during = [o for o in traffic.outcomes if cut_at <= o.at < restored_at]
    failures = traffic.failures()
    assert len(during) >= 30, f"too little traffic while the store was cut: {len(during)}"
    assert any(o.code is not grpc.StatusCode.OK for o in during), "the cut was not noticed"
    wrong = [o for o in failures if o.code is not grpc.StatusCode.UNAVAILABLE]
    assert not wrong, (
        f"{len(wrong)} of {len(failures)} failed calls were not UNAVAILABLE: {wrong[:5]}"
    )
    unexplained = [o for o in failures if o.reason != "STORE_UNAVAILABLE" or not o.retry_s]
    assert not unexplained, (
        f"failed calls without STORE_UNAVAILABLE and RetryInfo: {unexplained[:5]}"
    )
    assert not [o for o in failures if o.at < cut_at], "calls failed before the cut"
    assert set(recovered) == set(calls), (
        f"not recovered {RECOVERY_S} s after the store came back: {set(calls) - set(recovered)}"
    )
    # The outage is logged as warning lines, not a traceback per call.
    records = [r for r in caplog.records if r.name == "promptgate.api.errors"]
    assert any("store unavailable" in r.getMessage() for r in records)
    assert not [r for r in records if r.exc_info], "a store fault was logged with a traceback"
    print(
        f"{len(traffic.outcomes)} calls, {len(during)} during the {CUT_S:.0f} s cut, "
        f"{len(failures)} failed (all UNAVAILABLE/STORE_UNAVAILABLE); "
        f"recovered after {max(recovered.values()):.2f} s"
    )
