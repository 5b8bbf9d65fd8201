"""A cheap OpenAI-compatible Chat Completions server for benchmarks.

    python -m bench.upstream --port 0 --latency-ms 0 --chunks 32 --chunk-interval-ms 0

Raw asyncio streams and hand-written HTTP/1.1 with keep-alive, so that it
never limits a measurement. ``POST .../chat/completions`` answers after
``--latency-ms``: one JSON document, or with ``"stream": true`` server-sent
events (``--chunks`` content deltas ``--chunk-interval-ms`` apart, a usage
chunk when ``stream_options.include_usage`` is set, then ``data: [DONE]``).
The body is only scanned for ``"stream":true``, ``include_usage`` and the
model; the answer's words are fixed. A model named like ``bench-l50-c32-i50``
overrides the latency (``l``, ms), the chunk count (``c``) and the chunk
interval (``i``, ms) for its requests, so one upstream serves every scenario. Prints ``upstream listening on 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys

_STREAM = re.compile(rb'"stream"\s*:\s*true')
_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"]{1,200})"')
_KNOBS = re.compile(r"-([lci])(\d+)")
CONTENT = "promptgate benchmark answer"


def completion(model: str, words: int) -> bytes:
    """The unary JSON answer."""
    text = " ".join([CONTENT] * max(words // 3, 1))
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": words, "total_tokens": 12 + words},
        },
        separators=(",", ":"),
    ).encode()


def _event(payload: dict[str, object]) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    return b"%x\r\ndata: %s\n\n\r\n" % (len(data) + 8, data)


def stream_chunks(model: str, chunks: int, usage: bool) -> list[bytes]:
    """HTTP/1.1 chunked-encoding pieces of the SSE answer (each one event)."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000}
    out = []
    for index in range(chunks):
        delta: dict[str, object] = {"content": f"w{index} "}
        if index == 0:
            delta["role"] = "assistant"
        out.append(
            _event(
                {
                    **base,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
            )
        )
    out.append(
        _event(
            {
                **base,
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        )
    )
    if usage:
        out.append(
            _event(
                {
                    **base,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 12,
                        "completion_tokens": chunks,
                        "total_tokens": 12 + chunks,
                    },
                }
            )
        )
    done = b"data: [DONE]\n\n"
    out.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return out


class Upstream:
    """The server: fixed latency, fixed chunk count and pacing."""

    def __init__(self, latency_s: float, chunks: int, interval_s: float, words: int) -> None:
        self.latency_s = latency_s
        self.chunks = chunks
        self.interval_s = interval_s
        self.words = words
        self.requests = 0
        self._unary: dict[str, bytes] = {}
        self._streams: dict[tuple[str, bool], list[bytes]] = {}
        self._by_model: dict[str, tuple[float, int, float]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one keep-alive connection."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                close = False
                lines = head.split(b"\r\n")
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    lowered = name.strip().lower()
                    if lowered == b"content-length":
                        length = int(value.strip())
                    elif lowered == b"connection" and value.strip().lower() == b"close":
                        close = True
                body = await reader.readexactly(length) if length else b""
                self.requests += 1
                if not lines[0].startswith(b"POST ") or b"/chat/completions" not in lines[0]:
                    writer.write(
                        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                        b"content-length: 2\r\n\r\n{}"
                    )
                    await writer.drain()
                    continue
                found = _MODEL.search(body)
                model = found.group(1).decode() if found else "bench"
                knobs = self._knobs(model)
                if knobs[0]:
                    await asyncio.sleep(knobs[0])
                if _STREAM.search(body):
                    await self._stream(writer, model, bool(_USAGE.search(body)), knobs)
                else:
                    answer = self._unary.get(model)
                    if answer is None:
                        answer = self._unary[model] = completion(model, self.words)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(answer), answer)
                    )
                    await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _knobs(self, model: str) -> tuple[float, int, float]:
        """(latency s, chunks, interval s) for ``model``."""
        knobs = self._by_model.get(model)
        if knobs is None:
            found = {k: int(v) for k, v in _KNOBS.findall(model)}
            knobs = self._by_model[model] = (
                found["l"] / 1000 if "l" in found else self.latency_s,
                found.get("c", self.chunks),
                found["i"] / 1000 if "i" in found else self.interval_s,
            )
        return knobs

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        model: str,
        usage: bool,
        knobs: tuple[float, int, float],
    ) -> None:
        _, chunks, interval = knobs
        pieces = self._streams.get((model, usage))
        if pieces is None:
            pieces = self._streams[(model, usage)] = stream_chunks(model, chunks, usage)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        if not interval:
            writer.write(b"".join(pieces))
            await writer.drain()
            return
        for index, piece in enumerate(pieces):
            if 0 < index < chunks:
                await asyncio.sleep(interval)
            writer.write(piece)
            await writer.drain()


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM/SIGINT."""
    upstream = Upstream(args.latency_ms / 1000, args.chunks, args.chunk_interval_ms / 1000, 30)
    server = await asyncio.start_server(
        upstream.handle, args.host, args.port, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(f"upstream listening on {args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--chunk-interval-ms", type=float, default=0.0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop if installed")
    args = parser.parse_args()
    if args.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.run(serve(args))
            return
    asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
