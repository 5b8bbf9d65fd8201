"""A TCP proxy for outage tests: cut a dependency off and bring it back, inside one test.

    async with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql+asyncpg://root@127.0.0.1:{proxy.port}/db"
        ...                      # the server under test talks to PostgreSQL through the proxy
        await proxy.cut()        # every open connection is dropped, new ones are refused
        ...
        await proxy.restore()    # connections are accepted (and forwarded) again

A cut looks to the client like the dependency restarting: established
connections break (reset) and connecting fails with "connection refused" as
the port stops listening, until ``restore()`` listens on the same port again.
The real service is never touched, so other tests on the machine are not
disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream_host:upstream_port``; see the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int, *, chunk: int = 65536) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0
        self._chunk = chunk
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def cut_off(self) -> bool:
        """Whether the proxy is refusing connections."""
        return self._server is None

    async def start(self) -> int:
        """Listen (on a free port the first time, the same port afterwards); return the port."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def cut(self) -> None:
        """Stop listening and drop every open connection (both sides reset)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for pump in list(self._pumps):
            pump.cancel()
        if self._pumps:
            await asyncio.wait(list(self._pumps))
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Accept and forward connections again, on the same port."""
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        """Cut for good."""
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_writer))
        loop = asyncio.get_running_loop()
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = loop.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(self._chunk):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other too, as a real connection would.
            self._writers.discard(sink)
            with contextlib.suppress(Exception):
                sink.close()
