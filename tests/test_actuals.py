"""SubmitActuals through real gRPC: all-or-nothing, durable, visible on executions."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from tests.conftest import Running, error_details


def demo(question: str, external_id: str = "") -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        prompt="demo",
        inputs=[pb.PromptInput(name="question", string_value=question)],
        external_id=external_id,
    )


async def test_actuals_by_id_and_external_id_are_stored_and_shown(pg: Running) -> None:
    first = await pg.executions.ExecutePrompt(demo("one"))
    second = await pg.executions.ExecutePrompt(demo("two", external_id="ticket-9"))
    meta = struct_pb2.Struct()
    meta.update({"reviewer": "ada"})
    observed = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    response = await pg.executions.SubmitActuals(
        epb.SubmitActualsRequest(
            actuals=[
                epb.Actual(execution_id=first.execution_id, quality=0.25, metadata=meta),
                epb.Actual(external_id="ticket-9", desired_output="Better answer", time=observed),
                epb.Actual(execution_id=first.execution_id, quality=1.0),
            ]
        )
    )
    stored = list(response.actuals)
    assert [a.execution_id for a in stored] == [
        first.execution_id,
        second.execution_id,
        first.execution_id,
    ]
    assert all(a.id.startswith("act_") for a in stored)
    assert stored[1].time.seconds == 1_700_000_000
    got = (
        await pg.executions.GetExecution(epb.GetExecutionRequest(execution_id=first.execution_id))
    ).execution
    assert [a.quality for a in got.actuals] == [0.25, 1.0]  # history; the last is current
    assert json_format.MessageToDict(got.actuals[0].metadata) == {"reviewer": "ada"}
    assert not got.actuals[1].HasField("metadata")
    other = (
        await pg.executions.GetExecution(epb.GetExecutionRequest(external_id="ticket-9"))
    ).execution
    assert [a.desired_output for a in other.actuals] == ["Better answer"]
    assert not other.actuals[0].HasField("quality")
    listed = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
    by_id = {e.id: e for e in listed.executions}
    assert len(by_id[first.execution_id].actuals) == 2


async def test_one_unknown_execution_stores_nothing(pg: Running) -> None:
    known = await pg.executions.ExecutePrompt(demo("known"))
    request = epb.SubmitActualsRequest(
        actuals=[
            epb.Actual(execution_id=known.execution_id, quality=0.9),
            epb.Actual(execution_id="exe_missing", quality=0.1),
            epb.Actual(external_id="nobody", quality=0.5),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.SubmitActuals(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info, bad = error_details(caught.value)
    assert info.reason == "EXECUTION_NOT_FOUND"
    assert bad is not None
    assert [v.field for v in bad.field_violations] == [
        "actuals[1].execution_id",
        "actuals[2].external_id",
    ]
    got = (
        await pg.executions.GetExecution(epb.GetExecutionRequest(execution_id=known.execution_id))
    ).execution
    assert len(got.actuals) == 0, "all-or-nothing: the valid entry was not stored either"


@pytest.mark.parametrize(
    ("actual", "field"),
    [
        (epb.Actual(quality=0.5), "actuals[0]"),
        (epb.Actual(execution_id="x", quality=1.5), "actuals[0].quality"),
        (epb.Actual(execution_id="x", quality=-0.1), "actuals[0].quality"),
        (epb.Actual(execution_id="x", quality=math.nan), "actuals[0].quality"),
        (epb.Actual(execution_id="x"), "actuals[0]"),
    ],
)
async def test_bad_entries_are_invalid_argument(
    pg: Running, actual: epb.Actual, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.SubmitActuals(epb.SubmitActualsRequest(actuals=[actual]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details(caught.value)
    assert info.reason == "INVALID_ACTUAL"
    assert bad is not None and field in [v.field for v in bad.field_violations]


async def test_empty_and_oversized_submissions(pg: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.SubmitActuals(epb.SubmitActualsRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    known = await pg.executions.ExecutePrompt(demo("x"))
    many = [epb.Actual(execution_id=known.execution_id, quality=0.5)] * 1001
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.executions.SubmitActuals(epb.SubmitActualsRequest(actuals=many))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = await pg.executions.SubmitActuals(epb.SubmitActualsRequest(actuals=many[:1000]))
    assert len(ok.actuals) == 1000


async def test_actuals_survive_a_restart(start_server: object) -> None:
    first: Running = await start_server()  # type: ignore[operator]
    done = await first.executions.ExecutePrompt(demo("durable"))
    await first.executions.SubmitActuals(
        epb.SubmitActualsRequest(actuals=[epb.Actual(execution_id=done.execution_id, quality=0.7)])
    )
    url = first.server.settings.database_url
    await first.server.stop(grace=0)
    second: Running = await start_server(database_url=url)  # type: ignore[operator]
    got = (
        await second.executions.GetExecution(
            epb.GetExecutionRequest(execution_id=done.execution_id)
        )
    ).execution
    assert [a.quality for a in got.actuals] == [pytest.approx(0.7)]
