"""An OpenAI-wire upstream whose kept-alive connections die under their second request.

    async with DyingUpstream() as upstream:
        ...                              # POST to f"{upstream.base_url}/chat/completions"
        upstream.requests, upstream.connections

Each connection answers its first request with a fixed chat completion
(``Content-Length``, kept alive); its second request is read whole, counted,
and the connection is closed without a word: what a client sees when a
kept-alive connection dies just as it sends. A client that sent that request
again on a new connection would show as one more request and one more
connection.
"""

from __future__ import annotations

import asyncio
import json

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
).encode()


class DyingUpstream:
    """An OpenAI-wire server that answers the first request of each connection,
    and on a connection's second request reads it whole, then closes the
    connection without a word (a kept-alive connection dying under a request).
    """

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DyingUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            for served in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if served:
                    break  # the request was accepted; the connection dies unanswered
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(COMPLETION), COMPLETION)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
