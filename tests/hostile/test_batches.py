"""Batches under hostile conditions: store outages, abandoned items, idle watchers, odd positions.

- The store goes away mid-batch (a TCP proxy in front of PostgreSQL is cut
  for a few seconds) and the batch still finishes by itself, every item once.
- An item abandoned twice whose execution was recorded ends with that
  execution instead of ITEM_ABANDONED.
- Hundreds of idle WatchBatch streams cost next to nothing (CPU and SQL) and
  still all see a change made elsewhere promptly.
- ``after_sequence`` at the int64 extremes on PostgreSQL is a normal answer.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import grpc
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.store.engine import create_engine
from tests.conftest import Running, error_details
from tests.hostile.probe import while_attacking
from tests.tcp_proxy import TcpProxy
from tests.test_batches import all_results, items, wait_done

FAST_RECOVERY = {
    "batch_heartbeat_s": 0.2,
    "batch_stale_after_s": 1.0,
    "batch_poll_interval_s": 0.1,
}


async def _get(running: Running, batch_id: str) -> epb.Batch:
    return (await running.executions.GetBatch(epb.GetBatchRequest(batch_id=batch_id))).batch


async def _watch_all(running: Running, batch_id: str, after: int = 0) -> list[Any]:
    return [
        e
        async for e in running.executions.WatchBatch(
            epb.WatchBatchRequest(batch_id=batch_id, after_sequence=after), timeout=30
        )
    ]


@pytest.mark.postgres
async def test_store_outage_mid_batch_the_batch_finishes_by_itself(
    start_server: Any, postgres_url: str
) -> None:
    count = 200
    async with TcpProxy("127.0.0.1", make_url(postgres_url).port or 5432) as proxy:
        through_proxy = make_url(postgres_url).set(port=proxy.port)
        running: Running = await start_server(
            database_url=through_proxy.render_as_string(hide_password=False),
            batch_heartbeat_s=0.5,
            batch_poll_interval_s=0.1,
        )
        request = epb.ExecuteBatchRequest(
            prompt="demo", items=items(count, latency_ms=150), max_concurrency=8
        )
        batch = (await running.executions.ExecuteBatch(request)).batch
        for _ in range(3000):  # until some items are done (bounded: a minute)
            if (await _get(running, batch.id)).counts.succeeded >= 40:
                break
            await asyncio.sleep(0.02)
        at_cut = (await _get(running, batch.id)).counts
        assert 40 <= at_cut.succeeded < count - 40, "the outage must come mid-batch"
        await proxy.cut()
        cut_at = time.monotonic()
        await asyncio.sleep(3.0)
        await proxy.restore()
        # Nothing is restarted: the batch must get going again and finish by itself.
        final = await wait_done(running, batch.id, limit_s=60)
        took = time.monotonic() - cut_at
        results = await all_results(running, batch.id)
        events = await _watch_all(running, batch.id)

    assert final.state == epb.BATCH_STATE_SUCCEEDED, final
    assert (final.counts.succeeded, final.counts.rejected, final.counts.pending) == (count, 0, 0)
    assert [r.custom_id for r in results] == [f"item-{i}" for i in range(count)]
    assert all(r.state == epb.BATCH_ITEM_STATE_FULFILLED for r in results)
    # Every item's execution is recorded (its outputs come from the stored execution).
    assert len({r.execution_id for r in results}) == count
    assert all(
        r.outputs[0].string_value == f"Mock reply to: Answer in one sentence: question {r.index}"
        for r in results
    )
    # Exactly one final outcome per item in the batch's event log.
    finished = collections.Counter(
        e.item_result.index for e in events if e.WhichOneof("event") == "item_result"
    )
    assert finished == {i: 1 for i in range(count)}
    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as connection:
            recorded = (
                await connection.execute(
                    text(
                        "SELECT count(*), count(DISTINCT external_id) FROM executions"
                        " WHERE external_id LIKE :prefix AND state = 'FULFILLED'"
                    ),
                    {"prefix": f"{batch.id}/%"},
                )
            ).one()
    finally:
        await engine.dispose()
    assert tuple(recorded) == (count, count)
    print(f"\nbatch finished {took:.1f} s after a 3 s store outage")


async def _rewind(database_url: str, sql: list[tuple[str, dict[str, Any]]]) -> None:
    """Direct writes to the store, as a crashed worker would have left it."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            for statement, params in sql:
                await connection.execute(text(statement), params)
    finally:
        await engine.dispose()


async def test_item_abandoned_twice_with_a_recorded_execution_ends_with_it(
    start_server: Any,
) -> None:
    first: Running = await start_server(**FAST_RECOVERY)
    created = (
        await first.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(prompt="demo", items=items(3), max_concurrency=3)
        )
    ).batch
    assert (await wait_done(first, created.id)).state == epb.BATCH_STATE_SUCCEEDED
    before = {r.index: r for r in await all_results(first, created.id)}
    await first.server.stop(grace=0)
    # As if the worker running items 0..2 died before recording their outcomes, and
    # each had run before: 0 twice with its execution recorded, 1 twice without a
    # recorded execution, 2 once with it recorded.
    reset = (
        "UPDATE batch_items SET state = 'RUNNING', claimed_by = 'wrk_dead', execution_id = NULL,"
        " error = NULL, finished_at = NULL, seq = NULL, attempts = :attempts, starts = :attempts"
        " WHERE batch_id = :batch AND idx = :idx"
    )
    await _rewind(
        first.server.settings.database_url,
        [
            (reset, {"batch": created.id, "idx": 0, "attempts": 2}),
            (reset, {"batch": created.id, "idx": 1, "attempts": 2}),
            (reset, {"batch": created.id, "idx": 2, "attempts": 1}),
            (
                "DELETE FROM executions WHERE external_id = :key",
                {"key": f"{created.id}/1"},
            ),
            (
                "UPDATE batches SET state = 'RUNNING', succeeded = 0, ended_at = NULL"
                " WHERE id = :batch",
                {"batch": created.id},
            ),
        ],
    )

    second: Running = await start_server(**FAST_RECOVERY)
    final = await wait_done(second, created.id, limit_s=30)
    after = {r.index: r for r in await all_results(second, created.id)}

    assert final.state == epb.BATCH_STATE_SUCCEEDED
    assert (final.counts.succeeded, final.counts.rejected) == (2, 1)
    for index in (0, 2):  # the recorded execution wins: the item ends with it
        assert after[index].state == epb.BATCH_ITEM_STATE_FULFILLED, after[index]
        assert after[index].execution_id == before[index].execution_id
        assert after[index].outputs == before[index].outputs
    assert after[1].state == epb.BATCH_ITEM_STATE_REJECTED
    assert after[1].error.code == "ITEM_ABANDONED"


async def test_idle_watchers_cost_next_to_nothing_and_all_see_a_change(
    start_server: Any,
) -> None:
    watchers, idle_s, poll_s = 300, 3.0, 0.5
    running: Running = await start_server(batch_poll_interval_s=poll_s)
    # No worker in this process: the batch stays PENDING, unchanging, and the
    # change below is made behind the server's back, as another replica would.
    await running.server.runner.stop(0)
    batch = (
        await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(prompt="demo", items=items(5))
        )
    ).batch
    started = [asyncio.Event() for _ in range(watchers)]
    ended: list[float] = [0.0] * watchers

    async def watch(n: int) -> list[Any]:
        seen = []
        call = running.executions.WatchBatch(epb.WatchBatchRequest(batch_id=batch.id), timeout=60)
        async for e in call:
            seen.append(e)
            started[n].set()
        ended[n] = time.monotonic()
        return seen

    tasks = [asyncio.create_task(watch(n)) for n in range(watchers)]
    await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 30)
    await asyncio.sleep(poll_s * 2)  # let the streams settle

    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = running.server.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(idle_s)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finally:
        event.remove(engine, "before_cursor_execute", count)
    print(
        f"\n{watchers} idle WatchBatch streams: {cpu / wall:.1%} of a core, "
        f"{len(statements)} SQL statements in {wall:.1f} s"
    )
    assert cpu / wall < 0.25, f"{watchers} idle watchers used {cpu / wall:.0%} of a core"
    # One shared poll per interval for the batch, not one per watcher.
    assert len(statements) <= idle_s / poll_s + 4, statements[:10]
    assert running.server.notifier.pollers == 1

    # ... and the server keeps answering others meanwhile.
    _, probe = await while_attacking(running, asyncio.sleep(1.0))
    probe.assert_responsive()

    workspace = (await running.server.batches._store.runnable_batch(batch.id)).workspace_id
    changed = time.monotonic()
    await running.server.batches._store.cancel(workspace, batch.id)  # no local notification
    done = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    slowest = max(ended) - changed
    assert slowest < poll_s + 5.0, f"the last watcher saw the change after {slowest:.1f} s"
    for seen in done:
        assert seen[-1].WhichOneof("event") == "progress"
        assert seen[-1].progress.state == epb.BATCH_STATE_CANCELLED
        assert sum(e.WhichOneof("event") == "item_result" for e in seen) == 5
    print(f"every watcher saw the change within {slowest:.2f} s")


@pytest.mark.postgres
async def test_after_sequence_extremes_on_postgres(start_server: Any, postgres_url: str) -> None:
    running: Running = await start_server(database_url=postgres_url, batch_poll_interval_s=0.1)
    done = (
        await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(prompt="demo", items=items(3))
        )
    ).batch
    await wait_done(running, done.id)
    everything = await _watch_all(running, done.id)
    assert sum(e.WhichOneof("event") == "item_result" for e in everything) == 3

    for past_the_end in (2**31 - 1, 2**31, 2**63 - 1):
        events = await _watch_all(running, done.id, after=past_the_end)
        # Nothing after that position: the current progress, then the stream ends.
        assert [e.WhichOneof("event") for e in events] == ["progress"]
        assert events[0].progress.state == epb.BATCH_STATE_SUCCEEDED

    for negative in (-1, -(2**63)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _watch_all(running, done.id, after=negative)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info, bad = error_details(caught.value)
        assert info.reason == "INVALID_PARAMETERS" and bad is not None
        assert [v.field for v in bad.field_violations] == ["after_sequence"]

    # On a batch still running, a position past the end waits for something new
    # and ends when the batch does.
    slow = (
        await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(prompt="demo", items=items(1, latency_ms=60_000))
        )
    ).batch
    call = running.executions.WatchBatch(
        epb.WatchBatchRequest(batch_id=slow.id, after_sequence=2**63 - 1), timeout=30
    )
    first = await call.read()
    assert first.WhichOneof("event") == "progress"
    pending = asyncio.ensure_future(call.read())
    finished, _ = await asyncio.wait({pending}, timeout=1.0)
    assert not finished, "nothing is past the end, yet something came"
    await running.executions.CancelBatch(epb.CancelBatchRequest(batch_id=slow.id))
    assert await asyncio.wait_for(pending, 10) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
