"""Logs: JSON lines, the call context on every line of a call, the access line and its
off switch, and secrets (API keys, provider keys, webhook secrets) never written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import execution_service_pb2_grpc
from promptgate.observability.logging import configure_logging, settings_secrets
from promptgate.observability.redaction import MASK, Redactor
from tests.conftest import Running, authed_channel
from tests.test_batches import wait_done

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
ACCESS = "promptgate.access"


@pytest.fixture
def capture_logs() -> Iterator[Callable[..., io.StringIO]]:
    """Configure promptgate's logging into a buffer; the previous set-up comes back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("httpx").level

    def configure(fmt: str, secrets: list[str] | None = None, level: str = "INFO") -> io.StringIO:
        stream = io.StringIO()
        configure_logging(level, fmt=fmt, secrets=secrets or [], stream=stream)
        return stream

    yield configure
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("httpx").setLevel(saved[2])


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def _rejected(model: str = "mock-error-429") -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(inline_prompt=pb.InlinePrompt(model=model, prompt="Say hi"))


async def test_json_lines_carry_the_calls_context(
    start_server: Any, capture_logs: Callable[..., io.StringIO]
) -> None:
    stream = capture_logs("json")
    running: Running = await start_server()
    response = await running.executions.ExecutePrompt(
        _rejected(), metadata=(("x-request-id", "req-123"), ("traceparent", TRACEPARENT))
    )
    assert response.state == pb.EXECUTION_STATE_REJECTED
    plain = await running.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            prompt="demo", inputs=[pb.PromptInput(name="question", string_value="hi")]
        )
    )
    assert plain.state == pb.EXECUTION_STATE_FULFILLED
    lines = _json_lines(stream)

    (rejection,) = [line for line in lines if "rejected" in line["message"]]
    assert rejection["level"] == "INFO"
    assert rejection["request_id"] == "req-123"
    assert rejection["trace_id"] == TRACE_ID
    assert rejection["method"] == "/promptgate.v1.ExecutionService/ExecutePrompt"
    assert rejection["workspace"] == "default"
    assert rejection["execution_id"] == response.execution_id
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", rejection["time"])

    access = [line for line in lines if line["logger"] == ACCESS]
    assert len(access) == 2
    first, second = access
    assert first["request_id"] == "req-123"
    assert first["method"] == "/promptgate.v1.ExecutionService/ExecutePrompt"
    assert first["grpc_code"] == "OK"
    assert first["workspace"] == "default"
    assert first["execution_id"] == response.execution_id
    assert isinstance(first["duration_ms"], float) and 0 < first["duration_ms"] < 60_000
    assert first["peer"].startswith("ipv4:127.0.0.1:")
    # Without an x-request-id a call gets one of its own.
    assert re.match(r"^[0-9a-f]{16}$", second["request_id"])
    assert second["execution_id"] == plain.execution_id
    assert "trace_id" not in second


async def test_the_access_line_has_the_status_and_can_be_turned_off(
    start_server: Any, capture_logs: Callable[..., io.StringIO]
) -> None:
    stream = capture_logs("json")
    running: Running = await start_server()
    with pytest.raises(grpc.aio.AioRpcError):
        await running.executions.GetExecution(epb.GetExecutionRequest(execution_id="exe_nope"))
    bare = grpc.aio.insecure_channel(running.address)
    stub = execution_service_pb2_grpc.ExecutionServiceStub(bare)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.ExecutePrompt(_rejected())
    await bare.close()
    access = [line for line in _json_lines(stream) if line["logger"] == ACCESS]
    assert [(a["method"].rsplit("/", 1)[1], a["grpc_code"]) for a in access] == [
        ("GetExecution", "NOT_FOUND"),
        ("ExecutePrompt", "UNAUTHENTICATED"),
    ]
    assert access[0]["workspace"] == "default"
    assert "workspace" not in access[1]  # no key, no workspace

    quiet_stream = capture_logs("json")
    quiet: Running = await start_server(access_log=False)
    response = await quiet.executions.ExecutePrompt(_rejected())
    lines = _json_lines(quiet_stream)
    assert not [line for line in lines if line["logger"] == ACCESS]
    assert [line for line in lines if line.get("execution_id") == response.execution_id]


async def test_text_lines_carry_the_calls_context(
    start_server: Any, capture_logs: Callable[..., io.StringIO]
) -> None:
    stream = capture_logs("text")
    running: Running = await start_server()
    response = await running.executions.ExecutePrompt(
        _rejected(), metadata=(("x-request-id", "req-text"),)
    )
    lines = stream.getvalue().splitlines()
    (rejection,) = [line for line in lines if "rejected" in line]
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO promptgate\.execution: ", rejection
    )
    assert "request_id=req-text" in rejection
    assert "workspace=default" in rejection
    assert f"execution_id={response.execution_id}" in rejection
    (access,) = [line for line in lines if f" {ACCESS}: " in line]
    assert " /promptgate.v1.ExecutionService/ExecutePrompt OK " in access
    assert "request_id=req-text" in access


class _Upstream:
    """A bare HTTP/1.1 server on 127.0.0.1 that answers every request with ``answer``."""

    def __init__(self, answer: Callable[[dict[str, str]], tuple[int, bytes]]) -> None:
        self._answer = answer
        self.requests: list[dict[str, str]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (h.partition(":") for h in head[1:] if h)
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(headers)
            status, body = self._answer(headers)
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()


def _echo_key(headers: dict[str, str]) -> tuple[int, bytes]:
    """A provider refusing the key, echoing it whole (as some do, unmasked)."""
    sent = headers.get("authorization", "")
    message = f"Incorrect API key provided: {sent}. authorization={sent}"
    return 401, json.dumps(
        {"error": {"message": message, "type": "invalid_request_error"}}
    ).encode()


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_secrets_never_appear_in_the_logs(
    fmt: str,
    start_server: Any,
    settings_factory: Callable[..., Any],
    capture_logs: Callable[..., io.StringIO],
) -> None:
    provider_key = "sk-live-PROVIDERSECRET0123456789abcdef"
    webhook_secret = "hook-server-SECRET-9f8e7d6c"
    async with (
        _Upstream(_echo_key) as provider,
        _Upstream(lambda headers: (500, b'{"error": "down"}')) as receiver,
    ):
        overrides = {
            "openai_api_key": provider_key,
            "openai_base_url": f"http://127.0.0.1:{provider.port}/v1",
            "webhook_secret": webhook_secret,
            "webhook_allow_private_networks": True,
            "webhook_max_attempts": 2,
            "webhook_backoff_base_s": 0.01,
            "webhook_backoff_max_s": 0.01,
        }
        stream = capture_logs(fmt, settings_secrets(settings_factory(**overrides)), "DEBUG")
        running: Running = await start_server(**overrides)
        admin_key = running.key
        secrets = [provider_key, webhook_secret, admin_key, admin_key.split(".", 1)[1]]

        # A provider that echoes our key in its 401.
        response = await running.executions.ExecutePrompt(_rejected("gpt-4o-mini"))
        assert response.state == pb.EXECUTION_STATE_REJECTED
        assert provider.requests[0]["authorization"] == f"Bearer {provider_key}"
        # ...and the echo reaches neither the caller nor the stored execution.
        assert "Incorrect API key provided" in response.error.message
        stored = await running.executions.GetExecution(
            epb.GetExecutionRequest(execution_id=response.execution_id)
        )
        for shown in (str(response), str(stored)):
            assert provider_key not in shown and "PROVIDERSECRET" not in shown

        # Bad keys: well-formed unknown, malformed, in either header.
        bogus = "pgk_" + "a" * 26 + ".BOGUSsecretBOGUSsecret0123456789"
        secrets.append(bogus.split(".", 1)[1])
        for header in (("authorization", f"Bearer {bogus}"), ("x-api-key", bogus)):
            bare = grpc.aio.insecure_channel(running.address)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await execution_service_pb2_grpc.ExecutionServiceStub(bare).ExecutePrompt(
                    _rejected(), metadata=(header,)
                )
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            await bare.close()

        # Webhook signing: the workspace's secret, and a signed delivery that fails.
        admin = apb_grpc.AdminServiceStub(authed_channel(running.address, admin_key))
        workspace_secret = (await admin.GetWebhookSecret(apb.GetWebhookSecretRequest())).secret
        secrets.append(workspace_secret)
        created = await running.executions.ExecuteBatch(
            epb.ExecuteBatchRequest(
                prompt="demo",
                callback_url=f"http://127.0.0.1:{receiver.port}/hook",
                items=[
                    epb.BatchItem(
                        custom_id="a", inputs=[pb.PromptInput(name="question", string_value="q")]
                    )
                ],
            )
        )
        await wait_done(running, created.batch.id)
        for _ in range(500):  # the delivery runs after the batch ends (wide margin)
            if len(receiver.requests) >= 2 and "not delivered" in stream.getvalue():
                break
            await asyncio.sleep(0.02)
        assert "x-promptgate-signature" in receiver.requests[0]

        # Secrets handed to the logger directly: in a message, in fields and a traceback.
        probe = logging.getLogger("promptgate.probe")
        probe.warning("headers %s", {"authorization": f"Bearer {admin_key}", "x-api-key": bogus})
        try:
            raise RuntimeError(
                f"upstream said {provider_key} / {webhook_secret} / {workspace_secret}"
            )
        except RuntimeError:
            probe.exception("failed with %s", provider_key, extra={"fields": {"key": admin_key}})

    output = stream.getvalue()
    assert "Incorrect API key provided" in output  # the provider's 401 was logged...
    assert "not delivered" in output  # ...so was the failed webhook
    assert "Traceback" in output and MASK in output  # ...and the probe, redacted
    for secret in secrets:
        assert secret not in output, secret
    if fmt == "json":
        _json_lines(stream)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("authorization: Bearer pgk_0123456789abcdefghijklmnop.SECRETsecret0123", "SECRETsecret"),
        ("authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ("{'x-api-key': 'plain-token-value'}", "plain-token-value"),
        ("x-goog-api-key=AIzaSyA1234567890123456789012345678901", "AIzaSyA12345678901"),
        ("GET https://host/v1/models?key=abcdef123456&alt=sse", "abcdef123456"),
        ("POST http://hook:hunter22@127.0.0.1/cb", "hunter22"),
        ("anthropic said sk-ant-api03-abcdefghijklmnopqrst", "abcdefghijklmnopqrst"),
        ("signing with whsec_00112233445566778899aabbccddeeff", "00112233445566778899"),
        ("server secret is S3cr3t-Server-Value in the message", "S3cr3t-Server-Value"),
        ('json: {"s": "quote\\"d-S3cr3t\\\\value"}', "S3cr3t"),
    ],
)
def test_the_redactor_masks_credentials(text: str, secret: str) -> None:
    redactor = Redactor(["S3cr3t-Server-Value", 'quote"d-S3cr3t\\value'])
    masked = redactor.redact(text)
    assert secret not in masked and MASK in masked, masked
