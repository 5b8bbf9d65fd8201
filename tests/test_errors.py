"""The error interceptor: domain errors to rich status, never a stack trace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from promptgate.api.errors import ErrorInterceptor
from promptgate.errors import FieldViolation, InvalidArgument, NotFound
from tests.conftest import error_details


async def _unary(request: bytes, context: Any) -> bytes:
    if request == b"invalid":
        raise InvalidArgument(
            "bad thing", reason="INVALID_PROMPT", violations=[FieldViolation("prompt", "too odd")]
        )
    if request == b"missing":
        raise NotFound("no such prompt", reason="PROMPT_NOT_FOUND", metadata={"prompt": "p"})
    if request == b"crash":
        raise RuntimeError("secret internals at /srv/app.py line 12")
    return request


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    if request == b"crash":
        raise KeyError("secret-key")
    yield b"second"


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    handlers = grpc.method_handlers_generic_handler(
        "test.Errors",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


async def test_domain_errors_become_status_with_details(channel: grpc.aio.Channel) -> None:
    unary = channel.unary_unary("/test.Errors/Unary")
    assert await unary(b"ok") == b"ok"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(b"invalid")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details(caught.value)
    assert (info.reason, info.domain) == ("INVALID_PROMPT", "promptgate")
    assert bad is not None and [(v.field, v.description) for v in bad.field_violations] == [
        ("prompt", "too odd")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(b"missing")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info, bad = error_details(caught.value)
    assert info.reason == "PROMPT_NOT_FOUND" and dict(info.metadata) == {"prompt": "p"}
    assert bad is None


async def test_unexpected_errors_are_internal_without_internals(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    unary = channel.unary_unary("/test.Errors/Unary")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(b"crash")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert "secret" not in details and "Traceback" not in details and "RuntimeError" not in details
    info, _ = error_details(caught.value)
    assert info.reason == "INTERNAL_ERROR"
    reference = info.metadata["reference"]
    assert reference in details
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)

    stream = channel.unary_stream("/test.Errors/Stream")
    call = stream(b"crash")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in call:
            received.append(item)
    assert received == [b"first"]
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
