"""Hostile JSON: catastrophic patterns, remote references, runaway schemas and JSON text.

Every attack goes through real gRPC on a real server. A request problem must
be INVALID_ARGUMENT with a field violation; an unacceptable model output a
REJECTED execution with a clear code, recorded (never left RUNNING); and the
server keeps answering other callers while the attack runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from tests.conftest import Running, error_details
from tests.hostile.probe import while_attacking

EVIL = "^(a+)+$"


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def schema_format(schema: dict[str, Any]) -> pb.ResponseFormat:
    return pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=struct(schema))


JSON_OBJECT = pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_OBJECT)


def inline(text: str = "", **fields: Any) -> epb.ExecutePromptRequest:
    """An inline prompt whose mock model answers ``text``."""
    params = pb.ModelParameters()
    params.extra.update({"mock": {"text": text}})
    prompt = pb.InlinePrompt(model="mock-1", prompt="answer", parameters=params)
    return epb.ExecutePromptRequest(inline_prompt=prompt, **fields)


async def recorded_state(running: Running, execution_id: str) -> int:
    found = await running.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=execution_id)
    )
    return found.execution.state


async def refused(call: Any) -> tuple[grpc.aio.AioRpcError, str, list[str]]:
    """The INVALID_ARGUMENT error of ``call``: the error, its reason, its violated fields."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    info, bad = error_details(err)
    assert bad is not None
    return err, info.reason, [v.field for v in bad.field_violations]


async def test_catastrophic_patterns_run_in_linear_time(pg: Running) -> None:
    """pattern / patternProperties / tool parameter patterns: RE2, never backtracking."""
    victim = json.dumps("a" * 40 + "!")  # Python's re would take longer than the universe
    key_victim = json.dumps({"a" * 40 + "!": 1})
    pattern_format = schema_format({"type": "string", "pattern": EVIL})
    properties_format = schema_format(
        {"type": "object", "patternProperties": {EVIL: {}}, "additionalProperties": False}
    )
    tool = pb.Tool(
        name="f", parameters=struct({"type": "object", "properties": {"x": {"pattern": EVIL}}})
    )

    async def attack() -> list[epb.ExecutePromptResponse]:
        calls = [
            pg.executions.ExecutePrompt(inline(victim, response_format=pattern_format), timeout=30)
            for _ in range(4)
        ]
        calls += [
            pg.executions.ExecutePrompt(
                inline(key_victim, response_format=properties_format), timeout=30
            )
            for _ in range(4)
        ]
        calls.append(pg.executions.ExecutePrompt(inline("fine", tools=[tool]), timeout=30))
        return list(await asyncio.gather(*calls))

    answers, probe = await while_attacking(pg, attack())
    probe.assert_responsive()
    *schema_checked, with_tool = answers
    for answer in schema_checked:
        assert answer.state == pb.EXECUTION_STATE_REJECTED
        assert answer.error.code == "SCHEMA_VALIDATION_FAILED"
        assert await recorded_state(pg, answer.execution_id) == pb.EXECUTION_STATE_REJECTED
    assert "does not match" in schema_checked[0].error.message
    assert with_tool.state == pb.EXECUTION_STATE_FULFILLED
    matching = await pg.executions.ExecutePrompt(
        inline(json.dumps("aaaa"), response_format=pattern_format)
    )
    assert matching.state == pb.EXECUTION_STATE_FULFILLED
    assert json_format.MessageToDict(matching.outputs[0]) == {"jsonValue": "aaaa"}

    # A pattern RE2 cannot run (lookahead) is refused when the schema is given.
    lookahead = schema_format({"type": "string", "pattern": "^(?=a)a$"})
    err, reason, fields = await refused(
        pg.executions.ExecutePrompt(inline('"a"', response_format=lookahead))
    )
    assert reason == "INVALID_PARAMETERS" and fields == ["response_format.json_schema"]
    assert "RE2" in err.details()
    bad_tool = pb.Tool(name="g", parameters=struct({"patternProperties": {"(?<=x)y": {}}}))
    _, _, fields = await refused(pg.executions.ExecutePrompt(inline("x", tools=[bad_tool])))
    assert fields == ["tools[0].parameters"]


@pytest.fixture
async def counting_http_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A slow local HTTP server that records every request it gets."""
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.read(1024))
        await asyncio.sleep(5)  # a slow host
        body = b'{"type": "string"}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/s.json", requests
    finally:
        server.close()


async def test_remote_references_are_refused_without_network(
    pg: Running, counting_http_server: tuple[str, list[bytes]]
) -> None:
    """A $ref to another host is refused at once: no fetch (no SSRF), no INTERNAL."""
    url, requests = counting_http_server
    schemas = [
        {"$ref": url},
        {"type": "object", "properties": {"a": {"$ref": f"{url}#/x"}}},
        {"$defs": {"a": {"$ref": url}}, "items": {"$ref": "#/$defs/a"}},
        {"$id": url, "$ref": "other.json"},
    ]

    async def attack() -> list[tuple[grpc.aio.AioRpcError, str, list[str]]]:
        results = [
            await refused(
                pg.executions.ExecutePrompt(
                    inline('"x"', response_format=schema_format(schema)), timeout=30
                )
            )
            for schema in schemas
        ]
        tool = pb.Tool(name="f", parameters=struct({"$ref": url}))
        results.append(
            await refused(pg.executions.ExecutePrompt(inline("x", tools=[tool]), timeout=30))
        )
        return results

    results, probe = await while_attacking(pg, attack())
    probe.assert_responsive()
    for err, reason, fields in results[:-1]:
        assert reason == "INVALID_PARAMETERS"
        assert fields == ["response_format.json_schema"]
        assert "not local" in err.details()
    assert results[-1][2] == ["tools[0].parameters"]
    assert requests == [], "the server fetched a remote schema"


async def test_self_referencing_and_unresolvable_schemas_are_refused(pg: Running) -> None:
    """{"$ref": "#"}, loops, dangling pointers and runaway fan-out: INVALID_ARGUMENT."""
    fan_out = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(30)}
    fan_out["d30"] = {"type": "integer"}
    cases = {
        "refers back to itself": {"$ref": "#"},
        "does not resolve": {"$ref": "#/$defs/missing"},
        "refers back": {"$defs": {"a": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/a"}]}}},
        "applies more than": {"$defs": fan_out, "$ref": "#/$defs/d0"},
        "unknown $schema": {"$schema": "http://example.com/my-meta"},
    }
    for expected, schema in cases.items():
        err, _, fields = await refused(
            pg.executions.ExecutePrompt(inline('"x"', response_format=schema_format(schema)))
        )
        assert expected in err.details(), (expected, err.details())
        assert fields[0].startswith("response_format.json_schema"), fields
    # Recursion that descends into the value is fine.
    tree = {
        "type": "object",
        "properties": {"children": {"type": "array", "items": {"$ref": "#"}}},
    }
    answer = await pg.executions.ExecutePrompt(
        inline('{"children": [{"children": []}]}', response_format=schema_format(tree))
    )
    assert answer.state == pb.EXECUTION_STATE_FULFILLED


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


async def test_json_text_inputs_are_bounded(pg: Running) -> None:
    """JSON input given as text: too deep, huge or NaN is INVALID_INPUT naming the variable."""
    variable = pb.InputVariable(name="data", type=pb.INPUT_TYPE_JSON)

    def request(text: str) -> epb.ExecutePromptRequest:
        prompt = pb.InlinePrompt(
            model="mock-1", prompt="Look: {{ data }}", input_variables=[variable]
        )
        return epb.ExecutePromptRequest(
            inline_prompt=prompt, inputs=[pb.PromptInput(name="data", string_value=text)]
        )

    for text, expected in [
        (nested(1000), "nested deeper than 32"),
        (nested(100_000), "nested deeper than 32"),
        ("1" * 5000, "5000 digits"),
        ('{"x": NaN}', "NaN"),
        ("[1e400]", "does not fit"),
    ]:
        err, reason, fields = await refused(pg.executions.ExecutePrompt(request(text)))
        assert reason == "INVALID_INPUT" and fields == ["inputs[0]"]
        assert "'data'" in err.details() and expected in err.details(), err.details()
    ok = await pg.executions.ExecutePrompt(request(nested(32)))
    assert ok.state == pb.EXECUTION_STATE_FULFILLED


BAD_OUTPUTS = {
    "5000 digits": "1" * 5000,
    "301 digits": "-" + "9" * 301,
    "nested deeper": nested(3000),
    "nested deeper than 32": '{"a":' * 33 + "1" + "}" * 33,
    "NaN": '{"x": NaN}',
    "Infinity": "[-Infinity]",
    "does not fit": "1e400",
}


async def check_outputs_rejected_and_recorded(running: Running) -> None:
    for expected, text in BAD_OUTPUTS.items():
        for fmt in (JSON_OBJECT, schema_format({"type": ["object", "array", "number"]})):
            answer = await running.executions.ExecutePrompt(inline(text, response_format=fmt))
            assert answer.state == pb.EXECUTION_STATE_REJECTED, expected
            assert answer.error.code == "SCHEMA_VALIDATION_FAILED"
            assert expected in answer.error.message, answer.error.message
            assert await recorded_state(running, answer.execution_id) == (
                pb.EXECUTION_STATE_REJECTED
            )
    # The deepest output allowed reaches the client through every response.
    deepest = '{"a":' * 32 + "1" + "}" * 32
    answer = await running.executions.ExecutePrompt(inline(deepest, response_format=JSON_OBJECT))
    assert answer.state == pb.EXECUTION_STATE_FULFILLED
    expected_value = json.loads(deepest)
    assert json_format.MessageToDict(answer.outputs[0].json_value) == expected_value
    found = await running.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=answer.execution_id)
    )
    assert json_format.MessageToDict(found.execution.outputs[0].json_value) == expected_value
    events = [
        e
        async for e in running.executions.ExecutePromptStream(
            inline(deepest, response_format=JSON_OBJECT)
        )
    ]
    streamed = events[-1].fulfilled.outputs[0].json_value
    assert json_format.MessageToDict(streamed) == expected_value


async def test_unacceptable_json_outputs_are_rejected_and_recorded(pg: Running) -> None:
    """Huge numbers, deep nesting, NaN in model output: REJECTED, recorded, never RUNNING."""
    await check_outputs_rejected_and_recorded(pg)


@pytest.mark.postgres
async def test_unacceptable_json_outputs_on_postgres(start_server: Any, postgres_url: str) -> None:
    """The same on PostgreSQL, whose JSONB refuses NaN: nothing left RUNNING."""
    running = await start_server(database_url=postgres_url)
    await check_outputs_rejected_and_recorded(running)


async def test_costly_validation_leaves_the_event_loop(pg: Running) -> None:
    """An output too large to validate on the loop is validated in a worker, correctly."""
    schema = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "s": {"pattern": "^[a-z]+$"}},
            "required": ["n"],
        },
    }
    # Over 64 KB and thousands of keyword steps: checked in the worker thread.
    good = json.dumps([{"n": i, "s": "abc"} for i in range(8_000)])
    bad = json.dumps([{"n": i, "s": "abc"} for i in range(7_999)] + [{"n": "x"}])

    async def attack() -> list[epb.ExecutePromptResponse]:
        return list(
            await asyncio.gather(
                *(
                    pg.executions.ExecutePrompt(
                        inline(text, response_format=schema_format(schema)), timeout=60
                    )
                    for text in (good, bad)
                )
            )
        )

    answers, probe = await while_attacking(pg, attack())
    probe.assert_responsive()
    assert [a.state for a in answers] == [pb.EXECUTION_STATE_FULFILLED, pb.EXECUTION_STATE_REJECTED]
    assert "at 7999/n" in answers[1].error.message


@pytest.fixture
async def raw_openai() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An OpenAI-shaped HTTP server answering each request with the next queued body."""
    bodies: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        body = bodies.pop(0)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", bodies
    finally:
        server.close()


def completion(message: str) -> bytes:
    """A chat completion whose ``message`` object is spliced in as raw JSON text."""
    return (
        '{"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini", "choices": '
        f'[{{"index": 0, "finish_reason": "stop", "message": {message}}}], '
        '"usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
    ).encode()


async def test_unreadable_provider_bodies_are_rejected_and_recorded(
    start_server: Any, raw_openai: tuple[str, list[bytes]]
) -> None:
    """Provider bodies too deep, with NaN or huge numbers: PROVIDER_BAD_RESPONSE, recorded."""
    base_url, bodies = raw_openai
    running = await start_server(openai_base_url=base_url, openai_api_key="sk-test")
    request = epb.ExecutePromptRequest(
        inline_prompt=pb.InlinePrompt(model="gpt-4o-mini", prompt="hi")
    )
    for body in [
        completion('{"role": "assistant", "content": ' + nested(3000) + "}"),
        completion('{"role": "assistant", "content": "x", "n": NaN}'),
        completion('{"role": "assistant", "content": "x", "n": ' + "7" * 5000 + "}"),
    ]:
        bodies.append(body)
        answer = await running.executions.ExecutePrompt(request)
        assert answer.state == pb.EXECUTION_STATE_REJECTED
        assert answer.error.code == "PROVIDER_BAD_RESPONSE", answer.error
        assert await recorded_state(running, answer.execution_id) == pb.EXECUTION_STATE_REJECTED
    # Tool-call arguments too deep to carry back are kept as text only.
    arguments = json.dumps({"a": json.loads(nested(40))})
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    bodies.append(completion(json.dumps({"role": "assistant", "tool_calls": [call]})))
    answer = await running.executions.ExecutePrompt(request)
    assert answer.state == pb.EXECUTION_STATE_FULFILLED, answer.error
    function_call = answer.outputs[0].function_call
    assert function_call.arguments_json == arguments
    assert not function_call.HasField("arguments")
