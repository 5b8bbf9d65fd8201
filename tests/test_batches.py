"""Durable batches through real gRPC: create, run, watch, list, cancel."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running, error_details

TERMINAL = {epb.BATCH_STATE_SUCCEEDED, epb.BATCH_STATE_FAILED, epb.BATCH_STATE_CANCELLED}


def items(count: int, **mock: Any) -> list[epb.BatchItem]:
    result = []
    for i in range(count):
        item = epb.BatchItem(
            custom_id=f"item-{i}",
            inputs=[pb.PromptInput(name="question", string_value=f"question {i}")],
        )
        if mock:
            item.parameters.extra.update({"mock": mock})
        result.append(item)
    return result


async def wait_done(running: Running, batch_id: str, limit_s: float = 60) -> epb.Batch:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        batch = (await running.executions.GetBatch(epb.GetBatchRequest(batch_id=batch_id))).batch
        if batch.state in TERMINAL:
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish")


async def all_results(running: Running, batch_id: str, **filters: Any) -> list[epb.BatchItemResult]:
    results: list[epb.BatchItemResult] = []
    token = ""
    while True:
        page = await running.executions.ListBatchResults(
            epb.ListBatchResultsRequest(
                batch_id=batch_id, page_size=300, page_token=token, **filters
            )
        )
        results.extend(page.results)
        token = page.next_page_token
        if not token:
            return results


async def test_a_thousand_item_batch_completes_with_correct_counts(pg: Running) -> None:
    request = epb.ExecuteBatchRequest(
        prompt="demo", items=items(1000), display_name="thousand", max_concurrency=64
    )
    started = time.monotonic()
    created = (await pg.executions.ExecuteBatch(request)).batch
    assert created.id.startswith("bat_")
    assert created.state == epb.BATCH_STATE_PENDING
    assert created.counts.total == 1000 and created.counts.pending == 1000
    assert created.version == 1 and created.release_tag == "production"
    batch = await wait_done(pg, created.id)
    elapsed = time.monotonic() - started
    assert batch.state == epb.BATCH_STATE_SUCCEEDED
    assert (batch.counts.total, batch.counts.succeeded, batch.counts.pending) == (1000, 1000, 0)
    assert batch.HasField("start_time") and batch.HasField("end_time")
    results = await all_results(pg, created.id)
    assert [r.index for r in results] == list(range(1000))
    assert [r.custom_id for r in results] == [f"item-{i}" for i in range(1000)]
    assert all(r.state == epb.BATCH_ITEM_STATE_FULFILLED for r in results)
    assert results[7].outputs[0].string_value == "Mock reply to: Answer in one sentence: question 7"
    assert len({r.execution_id for r in results}) == 1000
    print(f"\n1000-item batch on the mock provider: {elapsed:.2f} s, {1000 / elapsed:.0f} items/s")


async def test_item_failures_do_not_fail_the_batch(pg: Running) -> None:
    batch_items = items(6)
    for item in batch_items[::2]:
        item.parameters.extra.update({"mock": {"error_status": 500}})
    created = (
        await pg.executions.ExecuteBatch(epb.ExecuteBatchRequest(prompt="demo", items=batch_items))
    ).batch
    batch = await wait_done(pg, created.id)
    assert batch.state == epb.BATCH_STATE_SUCCEEDED
    assert (batch.counts.succeeded, batch.counts.rejected) == (3, 3)
    rejected = await all_results(pg, created.id, state=epb.BATCH_ITEM_STATE_REJECTED)
    assert [r.custom_id for r in rejected] == ["item-0", "item-2", "item-4"]
    assert all(r.error.code == "PROVIDER_ERROR" and r.execution_id for r in rejected)
    # Each item is a normal recorded execution: actuals work on it.
    await pg.executions.SubmitActuals(
        epb.SubmitActualsRequest(
            actuals=[epb.Actual(execution_id=rejected[0].execution_id, quality=0.0)]
        )
    )
    execution = (
        await pg.executions.GetExecution(
            epb.GetExecutionRequest(execution_id=rejected[0].execution_id)
        )
    ).execution
    assert execution.actuals[0].quality == 0.0
    assert execution.metadata["batch_id"] == created.id


async def test_watch_resumed_midway_delivers_every_item_exactly_once(pg: Running) -> None:
    created = (
        await pg.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo", items=items(60, latency_ms=20), max_concurrency=4
            )
        )
    ).batch
    seen: dict[str, int] = {}
    last = 0
    call = pg.executions.WatchBatch(epb.WatchBatchRequest(batch_id=created.id))
    async for event in call:
        last = max(last, event.sequence)
        if event.WhichOneof("event") == "item_result":
            seen[event.item_result.custom_id] = seen.get(event.item_result.custom_id, 0) + 1
        if len(seen) >= 15:
            break
    call.cancel()
    final: epb.Batch | None = None
    sequences: list[int] = []
    async for event in pg.executions.WatchBatch(
        epb.WatchBatchRequest(batch_id=created.id, after_sequence=last)
    ):
        sequences.append(event.sequence)
        if event.WhichOneof("event") == "item_result":
            seen[event.item_result.custom_id] = seen.get(event.item_result.custom_id, 0) + 1
            assert event.sequence > last
        else:
            final = event.progress
    assert seen == {f"item-{i}": 1 for i in range(60)}
    assert sequences == sorted(sequences)
    assert final is not None and final.state == epb.BATCH_STATE_SUCCEEDED
    # Replaying from the start gives the same items again, in the same order.
    replay = [
        e.item_result.custom_id
        async for e in pg.executions.WatchBatch(epb.WatchBatchRequest(batch_id=created.id))
        if e.WhichOneof("event") == "item_result"
    ]
    assert sorted(replay) == sorted(seen)


async def test_cancel_mid_run(pg: Running) -> None:
    created = (
        await pg.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo", items=items(40, latency_ms=300), max_concurrency=2
            )
        )
    ).batch
    for _ in range(100):
        batch = (await pg.executions.GetBatch(epb.GetBatchRequest(batch_id=created.id))).batch
        if batch.counts.succeeded >= 2:
            break
        await asyncio.sleep(0.05)
    cancelled = (await pg.executions.CancelBatch(epb.CancelBatchRequest(batch_id=created.id))).batch
    batch = await wait_done(pg, created.id)
    assert batch.state == epb.BATCH_STATE_CANCELLED
    assert batch.counts.succeeded >= 2 and batch.counts.cancelled >= 30
    assert batch.counts.succeeded + batch.counts.rejected + batch.counts.cancelled == 40
    assert cancelled.counts.cancelled >= 30
    results = await all_results(pg, created.id)
    assert {r.state for r in results} <= {
        epb.BATCH_ITEM_STATE_FULFILLED,
        epb.BATCH_ITEM_STATE_CANCELLED,
    }
    # Items running when the batch was cancelled point at their CANCELLED
    # executions; items that never started have none.
    interrupted = [
        r for r in results if r.state == epb.BATCH_ITEM_STATE_CANCELLED and r.execution_id
    ]
    assert 1 <= len(interrupted) <= 2
    for result in interrupted:
        assert result.error.code == "CANCELLED"
        execution = (
            await pg.executions.GetExecution(
                epb.GetExecutionRequest(execution_id=result.execution_id)
            )
        ).execution
        assert execution.state == pb.EXECUTION_STATE_REJECTED
        assert execution.error.code == "CANCELLED"
    again = (await pg.executions.CancelBatch(epb.CancelBatchRequest(batch_id=created.id))).batch
    assert again.state == epb.BATCH_STATE_CANCELLED
    done = (
        await pg.executions.ExecuteBatch(epb.ExecuteBatchRequest(prompt="demo", items=items(1)))
    ).batch
    await wait_done(pg, done.id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.CancelBatch(epb.CancelBatchRequest(batch_id=done.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_inline_batch_with_per_item_overrides(pg: Running) -> None:
    batch_items = items(3)
    batch_items[1].parameters.max_tokens = 2
    request = epb.ExecuteBatchRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt="Q: {{ question }}"),
        items=batch_items,
    )
    created = (await pg.executions.ExecuteBatch(request)).batch
    batch = await wait_done(pg, created.id)
    assert batch.state == epb.BATCH_STATE_SUCCEEDED and batch.prompt_id == ""
    results = await all_results(pg, created.id)
    assert results[0].outputs[0].string_value == "Mock reply to: Q: question 0"
    assert results[1].outputs[0].string_value == "Mock reply"
    assert results[1].meta.finish_reason == pb.FINISH_REASON_LENGTH


@pytest.mark.parametrize(
    ("request_", "code", "reason", "field"),
    [
        (
            epb.ExecuteBatchRequest(prompt="demo"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_BATCH",
            "items",
        ),
        (
            epb.ExecuteBatchRequest(prompt="demo", items=[*items(2), items(1)[0]]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_BATCH",
            "items[2].custom_id",
        ),
        (
            epb.ExecuteBatchRequest(
                prompt="demo", items=[epb.BatchItem(inputs=items(1)[0].inputs)]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_BATCH",
            "items[0].custom_id",
        ),
        (
            epb.ExecuteBatchRequest(prompt="demo", items=[*items(2), epb.BatchItem(custom_id="x")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_INPUT",
            "items[2].inputs",
        ),
        (
            epb.ExecuteBatchRequest(
                prompt="demo",
                items=[
                    epb.BatchItem(
                        custom_id="x", inputs=[pb.PromptInput(name="question", number_value=1)]
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_INPUT",
            "items[0].inputs[0]",
        ),
        (
            epb.ExecuteBatchRequest(prompt="demo", items=items(1), max_concurrency=100_000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_BATCH",
            "max_concurrency",
        ),
        (
            epb.ExecuteBatchRequest(prompt="nope", items=items(1)),
            grpc.StatusCode.NOT_FOUND,
            "PROMPT_NOT_FOUND",
            "",
        ),
        (
            epb.ExecuteBatchRequest(items=items(1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PROMPT",
            "prompt",
        ),
        (
            epb.ExecuteBatchRequest(
                prompt="demo", items=items(1), callback_url="http://example.com/hook"
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "WEBHOOKS_NOT_CONFIGURED",
            "",
        ),
    ],
)
async def test_bad_batches_are_refused_and_nothing_is_stored(
    pg: Running, request_: epb.ExecuteBatchRequest, code: grpc.StatusCode, reason: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.ExecuteBatch(request_)
    assert caught.value.code() == code, caught.value.details()
    info, bad = error_details(caught.value)
    assert info.reason == reason
    if field:
        assert bad is not None and field in [v.field for v in bad.field_violations], bad


async def test_batch_limits(start_server: Any) -> None:
    running: Running = await start_server(batch_max_items=5, batch_max_request_bytes=2048)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(prompt="demo", items=items(6))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 5 items" in (caught.value.details() or "")
    big = items(2)
    big[0].inputs[0].string_value = "x" * 4096
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.executions.ExecuteBatch(epb.ExecuteBatchRequest(prompt="demo", items=big))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2048" in (caught.value.details() or "")


async def test_unknown_batches_are_not_found(pg: Running) -> None:
    calls = [
        pg.executions.GetBatch(epb.GetBatchRequest(batch_id="bat_nope")),
        pg.executions.CancelBatch(epb.CancelBatchRequest(batch_id="bat_nope")),
        pg.executions.ListBatchResults(epb.ListBatchResultsRequest(batch_id="bat_nope")),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_details(caught.value)[0].reason == "BATCH_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in pg.executions.WatchBatch(epb.WatchBatchRequest(batch_id="bat_nope")):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.GetBatch(epb.GetBatchRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    created = (
        await pg.executions.ExecuteBatch(epb.ExecuteBatchRequest(prompt="demo", items=items(1)))
    ).batch
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.ListBatchResults(
            epb.ListBatchResultsRequest(batch_id=created.id, page_token="bogus")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in pg.executions.WatchBatch(
            epb.WatchBatchRequest(batch_id=created.id, after_sequence=-1)
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_batch_metadata_and_parameters(pg: Running) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"owner": "team-a"})
    created = (
        await pg.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo",
                items=items(2),
                metadata=metadata,
                parameters=pb.ModelParameters(max_tokens=1),
            )
        )
    ).batch
    batch = await wait_done(pg, created.id)
    assert batch.metadata["owner"] == "team-a"
    results = await all_results(pg, created.id)
    assert all(r.outputs[0].string_value == "Mock" for r in results)


@pytest.mark.postgres
async def test_two_replicas_share_a_batch_on_postgresql(
    start_server: Any, postgres_url: str
) -> None:
    first: Running = await start_server(database_url=postgres_url)
    second: Running = await start_server(database_url=postgres_url, dev=False)
    created = (
        await first.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo", items=items(200, latency_ms=5), max_concurrency=16
            )
        )
    ).batch
    batch = await wait_done(second, created.id)
    assert batch.state == epb.BATCH_STATE_SUCCEEDED
    assert (batch.counts.succeeded, batch.counts.pending) == (200, 0)
    results = await all_results(second, created.id)
    assert [r.index for r in results] == list(range(200))
    assert len({r.execution_id for r in results}) == 200
    events = [
        e.sequence
        async for e in second.executions.WatchBatch(epb.WatchBatchRequest(batch_id=created.id))
        if e.WhichOneof("event") == "item_result"
    ]
    assert len(events) == 200 and len(set(events)) == 200
    cancelled = (
        await second.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo", items=items(50, latency_ms=200), max_concurrency=2
            )
        )
    ).batch
    await first.executions.CancelBatch(epb.CancelBatchRequest(batch_id=cancelled.id))
    done = await wait_done(first, cancelled.id)
    assert done.state == epb.BATCH_STATE_CANCELLED
    assert done.counts.succeeded + done.counts.cancelled + done.counts.rejected == 50


async def test_archiving_the_prompt_fails_the_batch(pg: Running) -> None:
    created = (
        await pg.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo", items=items(30, latency_ms=100), max_concurrency=2
            )
        )
    ).batch
    for _ in range(100):
        batch = (await pg.executions.GetBatch(epb.GetBatchRequest(batch_id=created.id))).batch
        if batch.counts.succeeded >= 2:
            break
        await asyncio.sleep(0.05)
    await pg.prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="demo"))
    batch = await wait_done(pg, created.id)
    assert batch.state == epb.BATCH_STATE_FAILED
    assert batch.error.code == "PROMPT_ARCHIVED"
    assert batch.counts.pending == 0 and batch.counts.cancelled > 0
    assert batch.counts.succeeded + batch.counts.rejected + batch.counts.cancelled == 30
    rejected = await all_results(pg, created.id, state=epb.BATCH_ITEM_STATE_REJECTED)
    assert rejected and rejected[0].error.code == "PROMPT_ARCHIVED"
