"""The provider HTTP client (aiohttp) on its own: sent once, headers, pool, proxies, TLS files.

Through the whole server (gRPC, attempt logs, HTTPS upstreams, a CONNECT
proxy): ``tests/test_provider_egress.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from promptgate.providers.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamErrorKind,
    UpstreamSettings,
)
from tests.conftest import provider_http_client
from tests.dying_upstream import DyingUpstream
from tests.fake_openai import FakeOpenAI

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"content-type": "application/json", "accept": "application/json"}

Opener = Callable[..., Awaitable[UpstreamClient]]


@pytest.fixture
async def open_client() -> AsyncIterator[Opener]:
    """Open ``UpstreamClient``s with settings overrides; all are closed after the test."""
    opened: list[UpstreamClient] = []

    async def open_one(**settings: object) -> UpstreamClient:
        client = await UpstreamClient.open(UpstreamSettings(**settings))  # type: ignore[arg-type]
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        await client.aclose()


async def test_a_post_on_a_dead_kept_alive_connection_is_not_sent_again() -> None:
    async with DyingUpstream() as upstream, provider_http_client() as http:
        url = upstream.base_url + "/chat/completions"
        first = await http.send(url, BODY, HEADERS, stream=False)
        assert first.status_code == 200 and json.loads(first.content)["id"] == "chatcmpl-1"
        with pytest.raises(UpstreamError) as caught:
            await http.send(url, BODY, HEADERS, stream=False)
        assert caught.value.kind is UpstreamErrorKind.DISCONNECTED
        # The second request reached the upstream once, on the reused connection,
        # and was not sent again on a new one.
        assert (upstream.requests, upstream.connections) == (2, 1)
        third = await http.send(url, BODY, HEADERS, stream=False)
        assert third.status_code == 200
        assert (upstream.requests, upstream.connections) == (3, 2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-trace", "a\r\nx-injected: 1"),
        ("x-trace", "a\nb"),
        ("x-trace", "a\rb"),
        ("x-trace", "a\x00b"),
        ("x-bad name", "v"),
        ("x-bad:name", "v"),
        ("x-bad\r\nname", "v"),
    ],
    ids=["crlf", "lf", "cr", "nul", "space-in-name", "colon-in-name", "crlf-in-name"],
)
async def test_a_bad_header_is_refused_before_connecting(name: str, value: str) -> None:
    async with DyingUpstream() as upstream, provider_http_client() as http:
        with pytest.raises(UpstreamError) as caught:
            await http.send(
                upstream.base_url + "/chat/completions",
                BODY,
                {**HEADERS, name: value},
                stream=False,
            )
        assert caught.value.kind is UpstreamErrorKind.INVALID_REQUEST
        assert value not in caught.value.message
        await asyncio.sleep(0.05)  # a connection, had one been opened, would show by now
        assert (upstream.connections, upstream.requests) == (0, 0)


async def test_a_tab_in_a_header_value_is_sent() -> None:
    async with FakeOpenAI() as fake, provider_http_client() as http:
        answer = await http.send(
            fake.base_url + "/chat/completions", BODY, {**HEADERS, "x-trace": "a\tb"}, stream=False
        )
        assert answer.is_success
        assert fake.last_request.headers["x-trace"] == "a\tb"


async def test_connections_per_host_are_limited(open_client: Opener) -> None:
    http = await open_client(max_connections_per_host=2)
    async with FakeOpenAI() as fake:
        url = fake.base_url + "/chat/completions"
        slow = json.dumps({"model": "fake-slow", "messages": [], "fake_delay": 0.2}).encode()
        answers = await asyncio.gather(
            *(http.send(url, slow, HEADERS, stream=False) for _ in range(6))
        )
        assert all(a.status_code == 200 for a in answers)
        assert len({r.client_port for r in fake.requests}) == 2


async def test_idle_connections_expire(open_client: Opener) -> None:
    http = await open_client(keepalive_s=0.2)
    async with FakeOpenAI() as fake:
        url = fake.base_url + "/chat/completions"
        await http.send(url, BODY, HEADERS, stream=False)
        await http.send(url, BODY, HEADERS, stream=False)
        await asyncio.sleep(0.6)
        await http.send(url, BODY, HEADERS, stream=False)
        ports = [r.client_port for r in fake.requests]
        assert ports[0] == ports[1] != ports[2]


async def test_proxies_come_from_the_environment(
    open_client: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@egress.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example,10.1.2.3")
    http = await open_client()
    assert http.proxy_for("https://api.openai.com/v1/chat/completions") == (
        "http://user:secret@egress.internal:3128"
    )
    assert http.proxy_for("https://llm.corp.example/v1/chat/completions") is None
    assert http.proxy_for("https://localhost:8443/v1") is None
    assert http.proxy_for("https://10.1.2.3/v1") is None
    assert http.proxy_for("http://api.example.com/v1") is None  # no HTTP_PROXY
    monkeypatch.setenv("HTTP_PROXY", "http://plain.internal:8080")
    monkeypatch.setenv("NO_PROXY", "*")
    assert http.proxy_for("https://api.openai.com/v1") is not None  # read once, at open
    later = await open_client()
    assert later.proxy_for("https://api.openai.com/v1") is None
    assert later.proxy_for("http://api.example.com/v1") is None


async def test_without_proxy_variables_every_request_is_direct(
    open_client: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    http = await open_client()
    assert http.proxy_for("https://api.openai.com/v1") is None


async def test_a_ca_bundle_that_cannot_be_read_fails_at_open(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=r"missing\.pem"):
        await UpstreamClient.open(UpstreamSettings(ca_bundle=str(missing)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"garbage\.pem"):
        await UpstreamClient.open(UpstreamSettings(ca_bundle=str(garbage)))


async def test_urls_that_are_not_http_are_invalid_requests() -> None:
    async with provider_http_client() as http:
        for url in ("ftp://127.0.0.1/x", "http:///no-host", "not a url"):
            with pytest.raises(UpstreamError) as caught:
                await http.send(url, BODY, HEADERS, stream=False)
            assert caught.value.kind is UpstreamErrorKind.INVALID_REQUEST, url


async def test_a_body_that_cannot_be_decoded_is_a_bad_response() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"\x1f\x8b not gzip at all"
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()  # after the whole (undecodable) body
        await writer.wait_closed()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        async with provider_http_client() as http:
            with pytest.raises(UpstreamError) as caught:
                await http.send(url, BODY, HEADERS, stream=False)
            assert caught.value.kind is UpstreamErrorKind.BAD_RESPONSE
            answer = await http.send(url, BODY, HEADERS, stream=True)
            with pytest.raises(UpstreamError) as caught:
                async for _ in answer.aiter_bytes():
                    pass
            answer.close()
            assert caught.value.kind is UpstreamErrorKind.BAD_RESPONSE
    finally:
        server.close()
        await server.wait_closed()
