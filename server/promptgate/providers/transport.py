"""A lean HTTP/1.1 transport for the provider client.

``KeepAliveTransport`` is an ``httpx.AsyncBaseTransport`` on plain asyncio
streams: one pool of keep-alive connections per origin, at most
``max_connections`` open in all, each idle connection kept for
``keepalive_expiry`` seconds. It does what the provider path needs and no
more (HTTP/1.1, TLS with certificate checks, Content-Length, chunked and
close-delimited bodies), which costs far less per request than httpcore,
whose pool inspects every connection's socket on every request.

Behaviour the callers rely on, as with httpcore:

- timeouts from the request's ``timeout`` extension raise
  ``httpx.ConnectTimeout`` / ``WriteTimeout`` / ``ReadTimeout`` /
  ``PoolTimeout``; failures raise ``httpx.ConnectError``, ``WriteError``,
  ``ReadError`` or ``RemoteProtocolError``;
- a response body that is closed before its end closes the connection, so
  the server sees the disconnect (cancellation reaches the upstream);
- a request on a reused connection that the server had already closed
  (no byte of an answer came back) is sent once more on a new connection.

Proxies configured in the environment still go through httpx's own
transports (httpx mounts them in front of this one).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

_Origin = tuple[str, str, int]
_MAX_HEAD = 64 * 1024


class _Connection:
    __slots__ = ("idle_since", "origin", "reader", "used", "writer")

    def __init__(
        self, origin: _Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.used = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Reused(Exception):
    """A reused connection failed before any byte of the answer: send again."""


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connection pool (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._open = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    # ------------------------------------------------------------------ pool

    async def _acquire(self, origin: _Origin, timeouts: dict[str, Any]) -> _Connection:
        """An idle connection to ``origin``, else a new one once the pool has room."""
        loop = asyncio.get_running_loop()
        until = None if timeouts.get("pool") is None else loop.time() + timeouts["pool"]
        while True:
            connection = self._reuse(origin)
            if connection is not None:
                return connection
            if self._open < self._max or self._close_one_idle():
                return await self._connect(origin, timeouts)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(until):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no connection available in time") from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_one_idle(self) -> bool:
        for connections in self._idle.values():
            if connections:
                self._discard(connections.pop(0))
                return True
        return False

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open -= 1
        self._wake()

    def _release(self, connection: _Connection) -> None:
        if self._closed:
            self._discard(connection)
            return
        connection.idle_since = time.monotonic()
        connection.used = True
        self._idle.setdefault(connection.origin, []).append(connection)
        self._wake()

    def _reuse(self, origin: _Origin) -> _Connection | None:
        connections = self._idle.get(origin)
        now = time.monotonic()
        while connections:
            connection = connections.pop()
            if now - connection.idle_since < self._expiry and not (
                connection.reader.at_eof() or connection.writer.is_closing()
            ):
                return connection
            self._discard(connection)
        return None

    async def _connect(self, origin: _Origin, timeouts: dict[str, Any]) -> _Connection:
        scheme, host, port = origin
        self._open += 1
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                if scheme == "https":
                    context = self._ssl or httpx.create_ssl_context()
                    self._ssl = context
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=context, server_hostname=host, limit=_MAX_HEAD
                    )
                else:
                    reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEAD)
        except TimeoutError:
            self._discard_slot()
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except (OSError, ssl.SSLError) as exc:
            self._discard_slot()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            self._discard_slot()
            raise
        return _Connection(origin, reader, writer)

    def _discard_slot(self) -> None:
        self._open -= 1
        self._wake()

    async def aclose(self) -> None:
        """Close every idle connection; busy ones close when their bodies do."""
        self._closed = True
        for connections in self._idle.values():
            while connections:
                self._discard(connections.pop())

    # ------------------------------------------------------------------ requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its answer, with the body still to read."""
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        body = await request.aread()
        head = _request_head(request)
        connection = await self._acquire(origin, timeouts)
        if connection.used:
            try:
                return await self._exchange(connection, request, head, body, timeouts, True)
            except _Reused:
                connection = await self._acquire(origin, timeouts)
        connection.used = True
        return await self._exchange(connection, request, head, body, timeouts, False)

    async def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        head: bytes,
        body: bytes,
        timeouts: dict[str, Any],
        reused: bool,
    ) -> httpx.Response:
        got_bytes = False
        try:
            writer = connection.writer
            try:
                async with asyncio.timeout(timeouts.get("write")):
                    writer.write(head + body if len(body) < 65536 else head)
                    if len(body) >= 65536:
                        writer.write(body)
                    await writer.drain()
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            except OSError as exc:
                if reused:
                    raise _Reused from exc
                raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
            reader = connection.reader
            try:
                async with asyncio.timeout(timeouts.get("read")):
                    while True:
                        raw = await reader.readuntil(b"\r\n\r\n")
                        got_bytes = True
                        status, reason, headers, version = _parse_head(raw)
                        if not 100 <= status < 200 or status == 101:
                            break
            except TimeoutError:
                raise httpx.ReadTimeout("timed out waiting for the answer") from None
            except (asyncio.IncompleteReadError, OSError) as exc:
                if reused and not got_bytes:
                    raise _Reused from exc
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response."
                ) from exc
            except asyncio.LimitOverrunError as exc:
                raise httpx.RemoteProtocolError("the answer's header is too large") from exc
        except BaseException:
            self._discard(connection)
            raise
        keep = version == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    self._discard(connection)
                    raise httpx.RemoteProtocolError("invalid Content-Length") from None
            elif lowered == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lowered == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep = False
                elif b"keep-alive" in tokens:
                    keep = True
        if request.method == "HEAD" or status in (204, 304):
            length, chunked = 0, False
        if not chunked and length is None:
            keep = False  # the body ends when the server closes the connection
        stream = _Body(self, connection, chunked, length, keep, timeouts.get("read"))
        if length == 0:
            stream.finish()
        return httpx.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": version, "reason_phrase": reason},
        )


class _Body(httpx.AsyncByteStream):
    def __init__(
        self,
        pool: KeepAliveTransport,
        connection: _Connection,
        chunked: bool,
        length: int | None,
        keep: bool,
        read_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._chunked = chunked
        self._length = length
        self._keep = keep
        self._timeout = read_timeout

    def finish(self) -> None:
        """The body was read to its end: the connection goes back to the pool."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._keep:
            self._pool._release(connection)
        else:
            self._pool._discard(connection)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        reader = connection.reader
        try:
            if self._chunked:
                while True:
                    line = await self._read(reader.readuntil(b"\r\n"))
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise httpx.RemoteProtocolError("invalid chunk size") from None
                    if size == 0:
                        while (await self._read(reader.readuntil(b"\r\n"))) != b"\r\n":
                            pass  # trailers
                        break
                    data = await self._read(reader.readexactly(size + 2))
                    yield data[:-2]
            elif self._length is not None:
                left = self._length
                while left:
                    data = await self._read(reader.read(min(left, 65536)))
                    if not data:
                        raise httpx.RemoteProtocolError(
                            "peer closed connection without sending complete message body"
                        )
                    left -= len(data)
                    yield data
            else:
                while data := await self._read(reader.read(65536)):
                    yield data
        except BaseException:
            self.abort()
            raise
        self.finish()

    async def _read(self, step: Any) -> Any:
        try:
            if self._timeout is None:  # the caller bounds the read (cheaper: no timer)
                return await step
            async with asyncio.timeout(self._timeout):
                return await step
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the answer") from None
        except asyncio.IncompleteReadError as exc:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            ) from exc
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("a chunk header is too long") from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    def abort(self) -> None:
        """Close the connection (the body was not read to its end)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._discard(connection)

    async def aclose(self) -> None:
        self.abort()


def _request_head(request: httpx.Request) -> bytes:
    url = request.url
    target = url.raw_path
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in request.headers.raw)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(raw: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    try:
        status = int(code)
    except ValueError:
        raise httpx.RemoteProtocolError(f"invalid status line {lines[0][:80]!r}") from None
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError(f"invalid header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return status, reason, headers, version


class LeanClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose plain requests skip the client layer.

    A ``POST`` with a body and headers (what the provider adapters send) is
    built as a bare ``httpx.Request`` and handed straight to the
    ``KeepAliveTransport``: no URL merging, cookie jar, auth flow, redirect
    handling or event hooks, which the provider path does not use and which
    cost as much as the transport itself. Anything else, and any URL that an
    environment proxy is mounted for, goes through httpx as usual.
    """

    def __init__(self, *, transport: KeepAliveTransport, **options: Any) -> None:
        super().__init__(transport=transport, **options)
        self._lean = transport
        self._default_headers = list(self.headers.multi_items())
        # Parsing a URL costs more than the rest of building a request; the
        # adapters send to a handful of URLs.
        self._urls: dict[str, httpx.URL] = {}

    def build_request(  # type: ignore[override]
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: bytes | None = None,
        headers: httpx.Headers | None = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
        **rest: Any,
    ) -> httpx.Request:
        if rest or not isinstance(content, bytes):
            return super().build_request(
                method, url, content=content, headers=headers, timeout=timeout, **rest
            )
        merged = httpx.Headers(self._default_headers)
        if headers is not None:
            merged.update(headers)
        chosen = self.timeout if timeout is httpx.USE_CLIENT_DEFAULT else timeout
        if isinstance(url, str):
            parsed = self._urls.get(url)
            if parsed is None:
                if len(self._urls) >= 1024:
                    self._urls.clear()
                parsed = self._urls[url] = httpx.URL(url)
            url = parsed
        return httpx.Request(
            method,
            url,
            content=content,
            headers=merged,
            extensions={"timeout": httpx.Timeout(chosen).as_dict()},
        )

    async def send(
        self, request: httpx.Request, *, stream: bool = False, **rest: Any
    ) -> httpx.Response:
        if rest or self._transport_for_url(request.url) is not self._lean:
            return await super().send(request, stream=stream, **rest)
        response = await self._lean.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response
