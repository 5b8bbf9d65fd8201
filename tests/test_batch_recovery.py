"""Batches across process death and completion webhooks, with real processes and receivers."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc as epb_grpc
from promptgate.auth.model import Scope
from promptgate.batches.webhooks.signing import SIGNATURE_HEADER, verify
from tests.conftest import Running, authed_channel
from tests.fake_openai import FakeOpenAI
from tests.test_batches import all_results, wait_done
from tests.test_webhooks import Receiver, Reply

LISTENING = re.compile(r"promptgate listening on [^:]+:(\d+)")
DEV_KEY = re.compile(r"dev API key \(admin, shown once\): (\S+)")


class Process:
    """A ``promptgate serve`` child process."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, key: str) -> None:
        self.process = process
        self.address = f"127.0.0.1:{port}"
        self.key = key


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[asyncio.subprocess.Process] = []

    keys: dict[Path, str] = {}

    async def start(database: Path, **env: str) -> Process:
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
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
        started.append(process)
        assert process.stdout is not None
        port = 0
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            assert line, "the server exited before listening"
            match = LISTENING.search(line)
            if match:
                port = int(match.group(1))
            key = DEV_KEY.search(line)
            if key:
                keys[database] = key.group(1)
            if line.startswith("Try it"):
                return Process(process, port, keys[database])

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_kill_9_mid_batch_then_restart_runs_every_item_exactly_once(
    spawn: Any, tmp_path: Path
) -> None:
    count, concurrency = 300, 8
    database = tmp_path / "batch.db"
    async with FakeOpenAI() as fake:
        env = {
            "PROMPTGATE_OPENAI_BASE_URL": fake.base_url,
            "PROMPTGATE_BATCH_HEARTBEAT_S": "0.2",
            "PROMPTGATE_BATCH_STALE_AFTER_S": "1.0",
            "PROMPTGATE_BATCH_POLL_INTERVAL_S": "0.1",
        }
        first = await spawn(database, **env)
        params = pb.ModelParameters()
        params.extra.update({"fake_delay": 0.02})
        request = epb.ExecuteBatchRequest(
            inline_prompt=pb.InlinePrompt(model="fake-slow", prompt="{{ q }}", parameters=params),
            items=[
                epb.BatchItem(
                    custom_id=f"c{i}", inputs=[pb.PromptInput(name="q", string_value=f"q{i}")]
                )
                for i in range(count)
            ],
            max_concurrency=concurrency,
        )
        async with authed_channel(first.address, first.key) as channel:
            stub = epb_grpc.ExecutionServiceStub(channel)
            batch = (await stub.ExecuteBatch(request)).batch
            while True:
                now = (await stub.GetBatch(epb.GetBatchRequest(batch_id=batch.id))).batch
                if now.counts.succeeded >= 60:
                    break
                await asyncio.sleep(0.01)
            done_before = {
                r.custom_id
                for r in (
                    await stub.ListBatchResults(
                        epb.ListBatchResultsRequest(
                            batch_id=batch.id, page_size=1000, state=epb.BATCH_ITEM_STATE_FULFILLED
                        )
                    )
                ).results
            }
            first.process.kill()  # SIGKILL: no shutdown, no flush
            await first.process.wait()
        assert 60 <= len(done_before) < count

        second = await spawn(database, **env)
        async with authed_channel(second.address, second.key) as channel:
            stub = epb_grpc.ExecutionServiceStub(channel)
            running = Running(None, second.address, channel, stub, None)  # type: ignore[arg-type]
            final = await wait_done(running, batch.id, limit_s=60)
            results = await all_results(running, batch.id)

    assert final.state == epb.BATCH_STATE_SUCCEEDED
    assert (final.counts.succeeded, final.counts.pending) == (count, 0)
    assert [r.custom_id for r in results] == [f"c{i}" for i in range(count)]
    assert all(r.state == epb.BATCH_ITEM_STATE_FULFILLED for r in results)
    assert all(r.outputs[0].string_value == f"q{r.index}" for r in results)
    assert len({r.execution_id for r in results}) == count
    calls = collections.Counter(_question(r.body) for r in fake.requests)
    assert set(calls) == {f"q{i}" for i in range(count)}
    # Items recorded before the crash were never sent to the provider again.
    assert all(calls[f"q{custom_id[1:]}"] == 1 for custom_id in done_before)
    # Only items in flight at the crash (at most the batch's concurrency) ran twice.
    repeated = [q for q, n in calls.items() if n > 1]
    assert len(repeated) <= concurrency and all(calls[q] == 2 for q in repeated)


def _question(body: Any) -> str:
    return str(body["messages"][-1]["content"])


async def test_completion_webhook_is_signed_retried_and_recorded(start_server: Any) -> None:
    receiver = Receiver(script=[Reply(status=503), Reply(status=200)])
    await receiver.start()
    try:
        running: Running = await start_server(
            webhook_secret="s3cret",
            webhook_allow_private_networks=True,
            webhook_backoff_base_s=0.05,
            webhook_backoff_max_s=0.1,
        )
        batch = (
            await running.executions.ExecuteBatch(
                epb.ExecuteBatchRequest(
                    prompt="demo",
                    items=[
                        epb.BatchItem(
                            custom_id="only",
                            inputs=[pb.PromptInput(name="question", string_value="hook?")],
                        )
                    ],
                    display_name="hooked",
                    callback_url=receiver.url,
                )
            )
        ).batch
        await wait_done(running, batch.id)
        deadline = time.monotonic() + 15
        for _ in range(300):
            if len(receiver.requests) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(receiver.requests) == 2
        delivered = receiver.requests[-1]
        assert delivered.headers["x-promptgate-event"] == "batch.completed"
        # Signed with the workspace's own secret, not the server's nor another workspace's.
        admin = apb_grpc.AdminServiceStub(running.channel)
        secret = (await admin.GetWebhookSecret(apb.GetWebhookSecretRequest())).secret
        assert secret.startswith("whsec_") and secret != "s3cret"
        assert await running.server.keys.ensure_workspace("other")
        other = await running.server.keys.create(
            "other", name="other", scopes=[Scope.ADMIN], plan="unlimited"
        )
        async with authed_channel(running.address, other.secret) as channel:
            theirs = await apb_grpc.AdminServiceStub(channel).GetWebhookSecret(
                apb.GetWebhookSecretRequest()
            )
        assert theirs.workspace == "other" and theirs.secret != secret
        signature = delivered.headers[SIGNATURE_HEADER.lower()]
        assert verify(secret, signature, delivered.body, now=time.time())
        for wrong in ("s3cret", theirs.secret, "wrong"):
            assert not verify(wrong, signature, delivered.body, now=time.time())
        summary = json.loads(delivered.body)
        assert summary["batch"]["id"] == batch.id
        assert summary["batch"]["state"] == "SUCCEEDED"
        assert summary["batch"]["counts"]["succeeded"] == 1
        while time.monotonic() < deadline:
            got = (await running.executions.GetBatch(epb.GetBatchRequest(batch_id=batch.id))).batch
            if got.callback_state == "DELIVERED":
                break
            await asyncio.sleep(0.05)
        assert got.callback_state == "DELIVERED" and got.callback_attempts == 2
        attempts = await running.server.batches._store.callbacks.callback_attempts(batch.id)
        assert [(a.attempt, a.status_code) for a in attempts] == [(1, 503), (2, 200)]
    finally:
        await receiver.close()


@pytest.mark.parametrize(
    ("url", "allow_private"),
    [
        ("http://169.254.169.254/latest/meta-data/", True),
        ("http://127.0.0.1:9/hook", False),
        ("ftp://example.com/hook", True),
        ("http://metadata.google.internal/", True),
    ],
)
async def test_callback_urls_to_internal_addresses_are_refused(
    start_server: Any, url: str, allow_private: bool
) -> None:
    running: Running = await start_server(
        webhook_secret="s", webhook_allow_private_networks=allow_private
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo",
                items=[
                    epb.BatchItem(
                        custom_id="x", inputs=[pb.PromptInput(name="question", string_value="q")]
                    )
                ],
                callback_url=url,
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "callback_url" in (caught.value.details() or "")


async def test_own_grpc_port_is_refused_even_with_private_networks(start_server: Any) -> None:
    running: Running = await start_server(webhook_secret="s", webhook_allow_private_networks=True)
    port = running.server.port
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo",
                items=[
                    epb.BatchItem(
                        custom_id="x", inputs=[pb.PromptInput(name="question", string_value="q")]
                    )
                ],
                callback_url=f"http://127.0.0.1:{port}/",
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_items_left_running_without_a_task_are_resolved_by_the_worker_itself(
    start_server: Any,
) -> None:
    """A live worker's own stray items (its write of them was lost) do not stay RUNNING."""
    running: Running = await start_server(
        batch_heartbeat_s=0.2, batch_stale_after_s=1.0, batch_poll_interval_s=0.1
    )
    created = (
        await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo",
                items=[
                    epb.BatchItem(
                        custom_id=f"s{i}",
                        inputs=[pb.PromptInput(name="question", string_value=f"stray {i}")],
                    )
                    for i in range(2)
                ],
            )
        )
    ).batch
    await wait_done(running, created.id)
    before = {r.index: r for r in await all_results(running, created.id)}
    # As if the outcome writes were lost: both items RUNNING and claimed by this
    # (live) worker, which has no task for them. Item 0's execution is recorded,
    # item 1's is not.
    worker = running.server.runner.worker_id
    async with running.server.sessions.write() as session:
        connection = await session.connection()
        await connection.execute(
            text(
                "UPDATE batch_items SET state = 'RUNNING', claimed_by = :worker,"
                " execution_id = NULL, finished_at = NULL, seq = NULL WHERE batch_id = :batch"
            ),
            {"worker": worker, "batch": created.id},
        )
        await connection.execute(
            text("DELETE FROM executions WHERE external_id = :key"), {"key": f"{created.id}/1"}
        )
        await connection.execute(
            text(
                "UPDATE batches SET state = 'RUNNING', succeeded = 0, ended_at = NULL"
                " WHERE id = :batch"
            ),
            {"batch": created.id},
        )
        await session.commit()

    final = await wait_done(running, created.id, limit_s=30)
    after = {r.index: r for r in await all_results(running, created.id)}
    assert final.state == epb.BATCH_STATE_SUCCEEDED
    assert final.counts.succeeded == 2
    # Item 0 finished with its recorded execution, item 1 ran again.
    assert after[0].execution_id == before[0].execution_id
    assert after[1].state == epb.BATCH_ITEM_STATE_FULFILLED
    assert after[1].execution_id and after[1].execution_id != before[1].execution_id
    assert after[1].outputs[0].string_value.endswith("stray 1")
