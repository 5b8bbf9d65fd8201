"""Hostile input at the edge: huge ids, NUL and control characters, header injection.

A 10,000-character id must get its NOT_FOUND or INVALID_ARGUMENT, not a
status whose trailers the client refuses (RESOURCE_EXHAUSTED); a NUL that
PostgreSQL cannot store is INVALID_ARGUMENT, never INTERNAL; a CR/LF in a
header override never reaches the shared HTTP connections. Provider output
(which the caller does not control) with a NUL is recorded as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running, error_details

HUGE = 10_000
# What status_for promises (promptgate.api.errors).
MAX_MESSAGE_BYTES = 1000
MAX_DETAIL_BYTES = 256


def demo(question: str = "hello", **fields: Any) -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value=question)], **fields
    )


async def refused(
    call: Awaitable[Any], *codes: grpc.StatusCode
) -> tuple[grpc.aio.AioRpcError, str, dict[str, str]]:
    """Await ``call``, which must fail with one of ``codes`` and bounded details.

    Returns the error, its ErrorInfo reason and its field violations (field -> description).
    """
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() in codes, f"{err.code()}: {(err.details() or '')[:300]}"
    details = err.details() or ""
    assert len(details.encode()) <= MAX_MESSAGE_BYTES, f"message of {len(details)} characters"
    info, bad = error_details(err)
    for value in info.metadata.values():
        assert len(value.encode()) <= MAX_DETAIL_BYTES
    violations = {v.field: v.description for v in bad.field_violations} if bad else {}
    for field, description in violations.items():
        assert len(field.encode()) <= MAX_DETAIL_BYTES
        assert len(description.encode()) <= MAX_DETAIL_BYTES
    return err, info.reason, violations


# Huge ids and bounded errors (SQLite: the size of a message does not depend on the store)


@pytest.mark.parametrize("char", ["x", "é", "\U0001f600"], ids=["ascii", "latin", "emoji"])
async def test_huge_ids_are_refused_with_a_bounded_error(pg: Running, char: str) -> None:
    huge = char * HUGE
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "execution_id": lambda: pg.executions.GetExecution(
            epb.GetExecutionRequest(execution_id=huge)
        ),
        "external_id": lambda: pg.executions.GetExecution(
            epb.GetExecutionRequest(external_id=huge)
        ),
        "batch_id": lambda: pg.executions.GetBatch(epb.GetBatchRequest(batch_id=huge)),
        "prompt": lambda: pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt=huge)),
        "page_token": lambda: pg.executions.ListExecutions(
            epb.ListExecutionsRequest(page_token=huge)
        ),
    }
    for field, call in calls.items():
        _, reason, violations = await refused(
            call(), grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
        )
        assert field in violations, f"{field}: {reason} {violations}"
        assert huge[:300] not in str(violations)
    # ... and the server is fine.
    answer = await pg.executions.ExecutePrompt(demo())
    assert answer.state == pb.EXECUTION_STATE_FULFILLED


async def test_an_error_echoing_huge_input_is_bounded(pg: Running) -> None:
    # Variable names are checked by the domain, which quotes the bad name in its
    # message; 200 of them of 10,000 characters make a ~2 MB message unbounded.
    names = [f"{i}-" + "é" * HUGE for i in range(200)]
    version = ppb.PromptVersion(
        model="mock-1",
        messages=[pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template="Hi")],
        input_variables=[pb.InputVariable(name=n, type=pb.INPUT_TYPE_STRING) for n in names],
    )
    await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="echo"))
    err, reason, violations = await refused(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="echo", version=version)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert reason == "INVALID_PROMPT"
    assert "version.input_variables[0].name" in violations
    assert (err.details() or "").endswith("…"), "a cut message ends in an ellipsis"


# NUL and control characters on PostgreSQL (where a NUL in a text column fails)


@pytest.mark.postgres
async def test_nul_in_identifiers_is_invalid_argument_on_postgres(
    start_server: Callable[..., Any], postgres_url: str
) -> None:
    running: Running = await start_server(database_url=postgres_url)
    admin = apb_grpc.AdminServiceStub(running.channel)
    metadata = struct_pb2.Struct()
    metadata.update({"bad\x00key": "v"})
    item = epb.BatchItem(
        custom_id="c\x00", inputs=[pb.PromptInput(name="question", string_value="x")]
    )
    cases: list[tuple[str, Awaitable[Any]]] = [
        ("external_id", running.executions.ExecutePrompt(demo(external_id="id\x00"))),
        ("external_id", running.executions.ExecutePrompt(demo(external_id="id\r\nx"))),
        ("release_tag", running.executions.ExecutePrompt(demo(release_tag="prod\x00"))),
        ("metadata[bad?key]", running.executions.ExecutePrompt(demo(metadata=metadata))),
        ("inputs[0].string_value", running.executions.ExecutePrompt(demo("a\x00b"))),
        (
            "items[0].custom_id",
            running.executions.ExecuteBatch(epb.ExecuteBatchRequest(prompt="demo", items=[item])),
        ),
        (
            "display_name",
            running.executions.ExecuteBatch(
                epb.ExecuteBatchRequest(
                    prompt="demo",
                    display_name="d\x00",
                    items=[epb.BatchItem(custom_id="c", inputs=item.inputs)],
                )
            ),
        ),
        (
            "name",
            admin.CreateApiKey(apb.CreateApiKeyRequest(name="key\x00", scopes=["prompt.execute"])),
        ),
        ("name", running.prompts.CreatePrompt(ppb.CreatePromptRequest(name="p\x00"))),
        ("prompt", running.prompts.GetPrompt(ppb.GetPromptRequest(prompt="de\x00mo"))),
        (
            "description",
            running.prompts.CreatePrompt(ppb.CreatePromptRequest(name="p", description="a\x00")),
        ),
        (
            "execution_id",
            running.executions.GetExecution(epb.GetExecutionRequest(execution_id="exe\x00")),
        ),
    ]
    for field, call in cases:
        _, _, violations = await refused(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert field in violations, f"{field}: {violations}"
    answer = await running.executions.ExecutePrompt(demo(external_id="fine"))
    assert answer.state == pb.EXECUTION_STATE_FULFILLED


@pytest.mark.postgres
async def test_nul_in_provider_output_and_json_values_is_recorded_on_postgres(
    start_server: Callable[..., Any], postgres_url: str
) -> None:
    running: Running = await start_server(database_url=postgres_url)
    # The mock answers the text it is told to: provider output with a NUL.
    extra = struct_pb2.Struct()
    extra.update({"mock": {"text": "out\x00put"}})
    metadata = struct_pb2.Struct()
    metadata.update({"note": "json\x00value"})
    answer = await running.executions.ExecutePrompt(
        demo(parameters=pb.ModelParameters(extra=extra), metadata=metadata, external_id="nul-out")
    )
    assert answer.state == pb.EXECUTION_STATE_FULFILLED, answer.error
    assert answer.outputs[0].string_value == "out\x00put"
    stored = (
        await running.executions.GetExecution(epb.GetExecutionRequest(external_id="nul-out"))
    ).execution
    assert stored.id == answer.execution_id
    assert stored.outputs[0].string_value == "out\x00put"
    assert stored.metadata["note"] == "json\x00value"
    # Streamed, the output is recorded the same way.
    events = [
        event
        async for event in running.executions.ExecutePromptStream(
            demo(parameters=pb.ModelParameters(extra=extra))
        )
    ]
    assert events[-1].WhichOneof("event") == "fulfilled", events[-1]
    streamed = (
        await running.executions.GetExecution(
            epb.GetExecutionRequest(execution_id=events[-1].execution_id)
        )
    ).execution
    assert streamed.outputs[0].string_value == "out\x00put"


# Header overrides


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-trace", "a\r\nx-injected: 1"),
        ("x-trace", "a\nb"),
        ("x-trace", "a\x00b"),
        ("x-trace", "a\x7fb"),
        ("x-bad name", "v"),
        ("x-bad:name", "v"),
        ("x-bad\r\nname", "v"),
        ("", "v"),
    ],
    ids=["crlf", "lf", "nul", "del", "space-in-name", "colon-in-name", "crlf-in-name", "empty"],
)
async def test_header_overrides_with_control_characters_are_refused(
    pg: Running, name: str, value: str
) -> None:
    request = demo(raw_overrides=pb.RawOverrides(headers={name: value}))
    _, _, violations = await refused(
        pg.executions.ExecutePrompt(request), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert any(f.startswith("raw_overrides.headers[") for f in violations), violations


async def test_header_overrides_with_a_tab_are_accepted(pg: Running) -> None:
    request = demo(raw_overrides=pb.RawOverrides(headers={"x-trace": "a\tb", "X-Id_1.~": "v"}))
    answer = await pg.executions.ExecutePrompt(request)
    assert answer.state == pb.EXECUTION_STATE_FULFILLED, answer.error
