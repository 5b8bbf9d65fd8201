"""The provider client's keep-alive transport against scripted HTTP/1.1 servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from promptgate.providers.transport import KeepAliveTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A server whose connections run ``handler``; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[str, Scripted]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[str, Scripted]:
        scripted = Scripted(handler)
        server = await asyncio.start_server(scripted, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/x", scripted

    yield start
    await asyncio.sleep(0.1)  # let the handlers see their connections close
    for server in servers:
        server.close()
        await server.wait_closed()


def client(**kwargs: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=KeepAliveTransport(max_connections=4), timeout=httpx.Timeout(2.0, **kwargs)
    )


async def test_keep_alive_content_length_and_chunked(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    url, scripted = await serve(handler)
    async with client() as http:
        first = await http.post(url, content=b'{"a":1}')
        second = await http.post(url, content=b"{}")
    assert (first.status_code, first.content) == (200, b'{"a":1}')
    assert second.content == b"hello world"
    assert scripted.connections == 1


async def test_close_delimited_body_and_connection_close(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await writer.drain()

    url, scripted = await serve(handler)
    async with client() as http:
        assert (await http.post(url, content=b"1")).content == b"all of it"
        assert (await http.post(url, content=b"2")).content == b"all of it"
    assert scripted.connections == 2


async def test_a_body_cut_short_is_a_protocol_error(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()

    url, _ = await serve(handler)
    async with client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url, content=b"x")


async def test_closing_a_stream_early_closes_the_connection(serve) -> None:  # type: ignore[no-untyped-def]
    saw_eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        if await reader.read() == b"":
            saw_eof.set()

    url, _ = await serve(handler)
    async with client() as http:
        request = http.build_request("POST", url, content=b"x")
        response = await http.send(request, stream=True)
        chunks = response.aiter_bytes()
        assert await anext(chunks) == b"one"
        await response.aclose()
        await asyncio.wait_for(saw_eof.wait(), 2)


async def test_a_stale_idle_connection_is_replaced(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # then close the kept-alive connection without a word

    url, scripted = await serve(handler)
    async with client() as http:
        assert (await http.post(url, content=b"1")).content == b"ok"
        await asyncio.sleep(0.05)
        assert (await http.post(url, content=b"2")).content == b"ok"
    assert scripted.connections == 2


async def test_timeouts_and_refused_connections() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with client(read=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"http://127.0.0.1:{port}/", content=b"x")
    await asyncio.sleep(0.1)
    server.close()
    await server.wait_closed()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{free}/", content=b"x")
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.post("ftp://127.0.0.1/", content=b"x")


async def test_the_pool_limit_queues_requests(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    url, scripted = await serve(handler)
    async with client() as http:
        answers = await asyncio.gather(*(http.post(url, content=b"x") for _ in range(12)))
    assert all(a.content == b"ok" for a in answers)
    assert scripted.connections == 4
