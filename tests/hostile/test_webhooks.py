"""A hostile callback receiver: its Retry-After must not hold deliveries for ever.

The receiver of a batch's completion webhook is chosen by the caller. Answering
``Retry-After: 99999999999``, a date in the year 9999 or garbage must neither
crash delivery nor make it wait beyond ``webhook_backoff_max_s``: the batch's
callback ends DELIVERED or FAILED in bounded time, and the server keeps
answering meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from promptgate.api.v1 import execution_service_pb2 as epb
from tests.conftest import Running
from tests.hostile.probe import while_attacking
from tests.test_batches import items, wait_done
from tests.test_webhooks import Receiver, Reply

HUGE_SECONDS = "99999999999"  # over 3000 years
FAR_FUTURE = "Fri, 31 Dec 9999 23:59:59 GMT"
HOSTILE_RETRY_AFTER = [
    HUGE_SECONDS,
    FAR_FUTURE,
    "1e300",
    "NaN",
    "-5",
    "soon, maybe",
    "9" * 400,  # more digits than a float holds
]
CAP_S = 0.2
# Every wait is at most CAP_S (1.2 s in all below); uncapped, one would last
# years. Far above a busy CI machine's slowness, far below "for ever".
BOUND_S = 30.0


async def start(start_server: Any, max_attempts: int) -> Running:
    running: Running = await start_server(
        webhook_secret="s3cret",
        webhook_allow_private_networks=True,  # the receiver is on 127.0.0.1
        webhook_max_attempts=max_attempts,
        webhook_backoff_base_s=0.05,
        webhook_backoff_max_s=CAP_S,
    )
    return running


async def run_batch_with_callback(running: Running, receiver: Receiver) -> epb.Batch:
    """Run a one-item batch calling back ``receiver``; the batch once its callback ended."""
    batch = (
        await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(prompt="demo", items=items(1), callback_url=receiver.url)
        )
    ).batch
    await wait_done(running, batch.id)
    async with asyncio.timeout(BOUND_S):
        while True:
            got = (await running.executions.GetBatch(epb.GetBatchRequest(batch_id=batch.id))).batch
            if got.callback_state in ("DELIVERED", "FAILED"):
                return got
            await asyncio.sleep(0.05)


async def test_hostile_retry_after_values_are_capped_and_delivery_ends(start_server: Any) -> None:
    receiver = Receiver(
        script=[Reply(503, (("retry-after", value),)) for value in HOSTILE_RETRY_AFTER]
    )
    await receiver.start()
    try:
        running = await start(start_server, max_attempts=len(HOSTILE_RETRY_AFTER) + 1)
        started = time.monotonic()
        got, probe = await while_attacking(running, run_batch_with_callback(running, receiver))
        elapsed = time.monotonic() - started
        assert got.callback_state == "DELIVERED"
        assert got.callback_attempts == len(HOSTILE_RETRY_AFTER) + 1
        assert len(receiver.requests) == len(HOSTILE_RETRY_AFTER) + 1
        attempts = await running.server.batches._store.callbacks.callback_attempts(got.id)
        assert [a.status_code for a in attempts] == [503] * len(HOSTILE_RETRY_AFTER) + [200]
        assert elapsed < BOUND_S
        probe.assert_responsive()
    finally:
        await receiver.close()
    assert receiver.errors == []


async def test_a_receiver_that_always_says_come_back_in_3000_years_ends_failed(
    start_server: Any,
) -> None:
    attempts_allowed = 3
    receiver = Receiver(
        script=[Reply(429, (("retry-after", HUGE_SECONDS),))] * attempts_allowed
        + [Reply(200)]  # never reached: delivery gives up first
    )
    await receiver.start()
    try:
        running = await start(start_server, max_attempts=attempts_allowed)
        started = time.monotonic()
        got = await run_batch_with_callback(running, receiver)
        elapsed = time.monotonic() - started
        assert got.callback_state == "FAILED"
        assert got.callback_attempts == attempts_allowed
        assert len(receiver.requests) == attempts_allowed
        assert elapsed < BOUND_S
    finally:
        await receiver.close()
    assert receiver.errors == []
