"""Graceful shutdown of a real ``promptgate serve`` process.

Each test runs ``python -m promptgate serve --port 0 --dev`` on its own SQLite
file, reads the port from the ``promptgate listening on HOST:PORT`` line, and
signals the process the way an orchestrator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc
from tests.conftest import authed_channel

START_TIMEOUT_S = 20.0
DEV_KEY = "dev API key (admin, shown once): "
LISTENING = "promptgate listening on "


@dataclass
class ServerProcess:
    """A running ``promptgate serve`` and what it printed."""

    process: asyncio.subprocess.Process
    address: str
    database: Path
    stderr_path: Path
    stdout_lines: list[str] = field(default_factory=list)
    key: str = ""
    reader: asyncio.Task[None] | None = None

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait(self, limit_s: float) -> int:
        """The exit code, failing the test if the process does not exit in time."""
        try:
            code = await asyncio.wait_for(self.process.wait(), limit_s)
        except TimeoutError:
            pytest.fail(f"the server did not exit within {limit_s}s\n{self.logs()}")
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 5)
        return code

    async def wait_for_log(self, text: str, limit_s: float) -> None:
        """Wait until the server's stderr log contains ``text``."""
        deadline = asyncio.get_running_loop().time() + limit_s
        while text not in self.stderr_path.read_text(errors="replace"):
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"no log line {text!r} within {limit_s}s\n{self.logs()}")
            await asyncio.sleep(0.02)

    def logs(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"--- stdout ---\n{''.join(self.stdout_lines)}--- stderr ---\n{stderr}"


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Any]:
    """Start ``promptgate serve`` processes; any still running are killed afterwards."""
    started: list[ServerProcess] = []

    async def start(grace_period_s: float) -> ServerProcess:
        index = len(started)
        database = tmp_path / f"server{index}.db"
        stderr_path = tmp_path / f"server{index}.stderr"
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "promptgate",
                "serve",
                "--port",
                "0",
                "--dev",
                "--database-url",
                f"sqlite+aiosqlite:///{database}",
                "--grace-period-s",
                str(grace_period_s),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        server = ServerProcess(process, "", database, stderr_path)
        started.append(server)
        assert process.stdout is not None
        try:
            line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)).decode()
        except TimeoutError:
            pytest.fail(f"no listening line within {START_TIMEOUT_S}s\n{server.logs()}")
        server.stdout_lines.append(line)
        assert line.startswith(LISTENING), server.logs()
        server.address = line.removeprefix(LISTENING).strip()
        host, _, port = server.address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0, line
        key_line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)).decode()
        server.stdout_lines.append(key_line)
        assert key_line.startswith(DEV_KEY), key_line
        server.key = key_line.removeprefix(DEV_KEY).strip()

        async def drain() -> None:
            assert process.stdout is not None
            async for raw in process.stdout:
                server.stdout_lines.append(raw.decode())

        server.reader = asyncio.create_task(drain())
        return server

    yield start
    for server in started:
        if server.process.returncode is None:
            server.process.kill()
            await server.process.wait()
        if server.reader is not None and not server.reader.done():
            server.reader.cancel()
            await asyncio.gather(server.reader, return_exceptions=True)


def slow_stream_request(chunks: int, interval_ms: int) -> epb.ExecutePromptRequest:
    """The demo prompt, streamed by the mock in ``chunks`` deltas ``interval_ms`` apart."""
    params = pb.ModelParameters()
    params.extra.update(
        {"mock": {"chunks": chunks, "chunk_interval_ms": interval_ms, "output_tokens": 40}}
    )
    return epb.ExecutePromptRequest(
        prompt="demo",
        inputs=[pb.PromptInput(name="question", string_value="will you drain?")],
        parameters=params,
    )


def stored_execution(database: Path, execution_id: str) -> dict[str, Any] | None:
    """The ``executions`` row of ``execution_id``, read with the stdlib driver."""
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT id, state, streamed, outputs, error, finish_reason"
            " FROM executions WHERE id = ?",
            (execution_id,),
        ).fetchone()
    return dict(row) if row else None


async def refused_new_call(executions: execution_service_pb2_grpc.ExecutionServiceStub) -> None:
    """A new call now fails fast: the server no longer accepts calls."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await executions.ExecutePrompt(
            epb.ExecutePromptRequest(
                prompt="demo", inputs=[pb.PromptInput(name="question", string_value="late")]
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value


async def finish(call: Any, events: list[epb.ExecutePromptStreamResponse]) -> None:
    """Read the rest of a stream into ``events``; it must end with status OK."""
    while (event := await asyncio.wait_for(call.read(), 5)) is not grpc.aio.EOF:
        events.append(event)
    assert await call.code() == grpc.StatusCode.OK


async def test_sigterm_drains_an_in_flight_stream_and_records_it(spawn: Any) -> None:
    grace = 10.0
    server: ServerProcess = await spawn(grace)
    loop = asyncio.get_running_loop()
    async with authed_channel(server.address, server.key) as channel:
        executions = execution_service_pb2_grpc.ExecutionServiceStub(channel)
        # ~2.25 s of streaming: 10 deltas 250 ms apart.
        call = executions.ExecutePromptStream(slow_stream_request(chunks=10, interval_ms=250))
        initiated = await asyncio.wait_for(call.read(), 5)
        assert initiated.WhichOneof("event") == "initiated"
        delta = await asyncio.wait_for(call.read(), 5)
        assert delta.WhichOneof("event") == "streaming"
        events = [initiated, delta]

        signalled_at = loop.time()
        server.signal(signal.SIGTERM)
        await server.wait_for_log("shutting down: draining", limit_s=5)

        # New calls are refused while the in-flight stream drains...
        await refused_new_call(executions)
        assert loop.time() - signalled_at < 1.5, "the refusal came only after the drain"
        # ...and the in-flight stream still completes normally.
        await finish(call, events)

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["initiated"] + ["streaming"] * 10 + ["fulfilled"], kinds
    text = "".join(e.streaming.delta for e in events[1:-1])
    assert len(text.split()) == 40
    assert events[-1].fulfilled.outputs[0].string_value == text

    code = await server.wait(grace)
    assert code == 0, server.logs()
    assert loop.time() - signalled_at < grace
    assert "promptgate stopped\n" in server.stdout_lines, server.logs()

    row = await asyncio.to_thread(stored_execution, server.database, events[0].execution_id)
    assert row is not None, "the drained execution was not recorded"
    assert row["state"] == "FULFILLED" and row["streamed"]
    assert json.loads(row["outputs"]) == [{"type": "STRING", "value": text}]


async def test_health_watch_opened_before_sigterm_sees_not_serving(spawn: Any) -> None:
    grace = 10.0
    server: ServerProcess = await spawn(grace)
    loop = asyncio.get_running_loop()
    async with authed_channel(server.address, server.key) as channel:
        executions = execution_service_pb2_grpc.ExecutionServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await asyncio.wait_for(watch.read(), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        # An in-flight stream keeps the server draining while we look.
        call = executions.ExecutePromptStream(slow_stream_request(chunks=10, interval_ms=250))
        initiated = await asyncio.wait_for(call.read(), 5)
        assert initiated.WhichOneof("event") == "initiated"
        events = [initiated]

        signalled_at = loop.time()
        server.signal(signal.SIGTERM)
        status = await asyncio.wait_for(watch.read(), 5)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert loop.time() - signalled_at < 1.5
        watch.cancel()

        # Once health says NOT_SERVING, new calls are refused.
        await refused_new_call(executions)
        await finish(call, events)
        assert events[-1].WhichOneof("event") == "fulfilled"

    code = await server.wait(grace)
    assert code == 0, server.logs()
    assert loop.time() - signalled_at < grace


async def test_sigint_on_an_idle_server_exits_zero_promptly(spawn: Any) -> None:
    server: ServerProcess = await spawn(10.0)
    async with authed_channel(server.address, server.key) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
    loop = asyncio.get_running_loop()
    signalled_at = loop.time()
    server.signal(signal.SIGINT)
    code = await server.wait(5)
    assert code == 0, server.logs()
    # Nothing was in flight, so the 10 s grace period is not waited out.
    assert loop.time() - signalled_at < 3.0
    assert "promptgate stopped\n" in server.stdout_lines, server.logs()
    assert "Traceback" not in server.logs()


async def test_stream_outlasting_the_grace_period_is_cut_and_recorded_cancelled(
    spawn: Any,
) -> None:
    grace = 0.5
    server: ServerProcess = await spawn(grace)
    loop = asyncio.get_running_loop()
    received: list[str] = []
    async with authed_channel(server.address, server.key) as channel:
        executions = execution_service_pb2_grpc.ExecutionServiceStub(channel)
        # ~5 s of streaming: 11 deltas 500 ms apart.
        call = executions.ExecutePromptStream(slow_stream_request(chunks=11, interval_ms=500))
        initiated = await asyncio.wait_for(call.read(), 5)
        assert initiated.WhichOneof("event") == "initiated"
        delta = await asyncio.wait_for(call.read(), 5)
        assert delta.WhichOneof("event") == "streaming"
        received.append(delta.streaming.delta)

        signalled_at = loop.time()
        server.signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while (event := await asyncio.wait_for(call.read(), 5)) is not grpc.aio.EOF:
                assert event.WhichOneof("event") == "streaming", "the stream was not cut off"
                received.append(event.streaming.delta)
            pytest.fail(f"the stream ended normally with status {await call.code()}")
        # grpc cancels the calls still running at the end of the grace period.
        assert caught.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
        ), caught.value
        cut_after = loop.time() - signalled_at
        assert cut_after < 3.0, f"cut off only after {cut_after:.1f}s (grace {grace}s)"

    code = await server.wait(5)
    assert code == 0, server.logs()
    assert loop.time() - signalled_at < 4.0
    assert "promptgate stopped\n" in server.stdout_lines, server.logs()

    row = await asyncio.to_thread(stored_execution, server.database, initiated.execution_id)
    assert row is not None, f"the cut-off execution was not recorded\n{server.logs()}"
    assert row["state"] == "REJECTED", row
    assert json.loads(row["error"])["code"] == "CANCELLED", row
    assert row["finish_reason"] == "cancelled"
    outputs = json.loads(row["outputs"])
    assert len(outputs) == 1 and outputs[0]["type"] == "STRING"
    partial = outputs[0]["value"]
    # The partial text holds at least what the caller saw, and not the whole answer.
    assert partial.startswith("".join(received)), (partial, received)
    assert 0 < len(partial.split()) < 40
