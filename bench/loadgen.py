"""A multi-process load generator for gRPC (grpc.aio) and, as a reference, plain HTTP/1.1.

Each of ``processes`` worker processes runs its share of the load on its own
event loop: closed loop (``concurrency`` callers, each calling again as soon
as its answer arrives) or open loop (``rate`` calls a second in all, started
on a fixed schedule). Calls run for ``warmup_s + duration_s``; figures come
from the calls that finish inside the ``duration_s`` window after the
warm-up, while ``ok`` and ``errors`` count every call (calls still running at
the end are waited for, never cut), so that ``ok`` equals the number of
answers the server gave.

gRPC calls send and receive raw bytes (no protobuf work in the client except
checking the answer's final state), so the client stays cheap. Kinds:

- ``grpc-unary``: an ExecutePrompt-shaped call; an answer whose
  ``state`` is not FULFILLED counts as an error.
- ``grpc-stream``: an ExecutePromptStream-shaped call; the second message is
  the first delta (``first``), the last one must be ``fulfilled``.
- ``http-unary`` / ``http-stream``: ``POST`` of the same JSON body straight to
  the upstream, over keep-alive connections (the reference without promptgate);
  ``first`` is the first SSE content event, the end is ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import resource
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

FULFILLED = 2  # promptgate.v1.ExecutionState.EXECUTION_STATE_FULFILLED


@dataclass(frozen=True)
class LoadSpec:
    """What to run."""

    kind: str  # grpc-unary | grpc-stream | http-unary | http-stream
    target: str  # host:port
    path: str  # gRPC method path or HTTP path
    body: bytes
    metadata: tuple[tuple[str, str], ...] = ()
    concurrency: int = 1
    rate: float | None = None  # open loop: calls per second in all
    duration_s: float = 5.0
    warmup_s: float = 1.0
    processes: int = 1
    timeout_s: float = 60.0
    uvloop: bool = False


@dataclass
class LoadResult:
    """What came out: counts, throughput and latency percentiles (milliseconds)."""

    spec: LoadSpec
    ok: int = 0
    errors: int = 0
    window_ok: int = 0
    rps: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    first_p50_ms: float = math.nan
    first_p99_ms: float = math.nan
    error_samples: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        """Errors over all calls."""
        total = self.ok + self.errors
        return self.errors / total if total else 0.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


def run(spec: LoadSpec) -> LoadResult:
    """Run ``spec`` in its worker processes and merge their figures."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    results: Any = ctx.Queue()
    workers = []
    for index in range(spec.processes):
        share = _share(spec.concurrency, spec.processes, index)
        rate = spec.rate / spec.processes if spec.rate else None
        if not share and rate is None:
            continue
        process = ctx.Process(target=_worker, args=(spec, share, rate, go, results), daemon=True)
        process.start()
        workers.append(process)
    ready = 0
    while ready < len(workers):
        message = results.get(timeout=60)
        if message != "ready":
            raise RuntimeError(f"load worker failed to start: {message}")
        ready += 1
    go.set()
    merged = LoadResult(spec)
    latencies: list[float] = []
    firsts: list[float] = []
    for _ in workers:
        part = results.get(timeout=spec.warmup_s + spec.duration_s + spec.timeout_s + 60)
        if isinstance(part, str):
            raise RuntimeError(f"load worker failed: {part}")
        merged.ok += part["ok"]
        merged.errors += part["errors"]
        merged.error_samples.extend(part["samples"])
        latencies.extend(array("d", part["latencies"]))
        firsts.extend(array("d", part["firsts"]))
    for process in workers:
        process.join(10)
    merged.window_ok = len(latencies)
    merged.rps = len(latencies) / spec.duration_s
    merged.p50_ms = percentile(latencies, 50)
    merged.p99_ms = percentile(latencies, 99)
    merged.first_p50_ms = percentile(firsts, 50)
    merged.first_p99_ms = percentile(firsts, 99)
    merged.error_samples = merged.error_samples[:5]
    return merged


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


# ---------------------------------------------------------------------- worker


def _worker(spec: LoadSpec, concurrency: int, rate: float | None, go: Any, results: Any) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        if spec.uvloop:
            import uvloop

            part = uvloop.run(_drive(spec, concurrency, rate, go, results))
        else:
            part = asyncio.run(_drive(spec, concurrency, rate, go, results))
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        raise
    results.put(part)


class _Stats:
    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.ok = 0
        self.errors = 0
        self.samples: list[str] = []
        self.latencies = array("d")
        self.firsts = array("d")

    def done(self, began: float, first: float | None) -> None:
        now = time.monotonic()
        self.ok += 1
        if self.start <= now <= self.end:
            self.latencies.append((now - began) * 1000)
            if first is not None:
                self.firsts.append((first - began) * 1000)

    def failed(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what)


async def _drive(
    spec: LoadSpec, concurrency: int, rate: float | None, go: Any, results: Any
) -> dict[str, Any]:
    caller = await _caller(spec)
    try:
        results.put("ready")
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        began = time.monotonic()
        stats = _Stats(began + spec.warmup_s, began + spec.warmup_s + spec.duration_s)
        stop_at = stats.end
        if rate is None:

            async def loop() -> None:
                while time.monotonic() < stop_at:
                    await caller.call(stats)

            await asyncio.gather(*(loop() for _ in range(concurrency)))
        else:
            interval = 1 / rate
            tasks: set[asyncio.Task[None]] = set()
            at = time.monotonic()
            while at < stop_at:
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.get_running_loop().create_task(caller.call(stats))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                at += interval
            while tasks:
                await asyncio.gather(*list(tasks))
    finally:
        await caller.close()
    return {
        "ok": stats.ok,
        "errors": stats.errors,
        "samples": stats.samples,
        "latencies": stats.latencies.tobytes(),
        "firsts": stats.firsts.tobytes(),
    }


async def _caller(spec: LoadSpec) -> _GrpcCaller | _HttpCaller:
    if spec.kind.startswith("grpc-"):
        caller: _GrpcCaller | _HttpCaller = _GrpcCaller(spec)
    else:
        caller = _HttpCaller(spec)
    await caller.open()
    return caller


class _GrpcCaller:
    def __init__(self, spec: LoadSpec) -> None:
        import grpc

        from promptgate.api.v1 import execution_service_pb2 as epb

        self._grpc = grpc
        self._epb = epb
        self._spec = spec
        self._channel = grpc.aio.insecure_channel(
            spec.target, options=[("grpc.max_concurrent_streams", 100_000)]
        )
        if spec.kind == "grpc-unary":
            self._unary = self._channel.unary_unary(spec.path)
        else:
            self._stream = self._channel.unary_stream(spec.path)

    async def open(self) -> None:
        await asyncio.wait_for(self._channel.channel_ready(), 30)

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, stats: _Stats) -> None:
        spec = self._spec
        began = time.monotonic()
        try:
            if spec.kind == "grpc-unary":
                answer = await self._unary(
                    spec.body, metadata=spec.metadata, timeout=spec.timeout_s
                )
                state = self._epb.ExecutePromptResponse.FromString(answer).state
                if state != FULFILLED:
                    stats.failed(f"state {state}")
                    return
                stats.done(began, None)
                return
            first: float | None = None
            last = b""
            count = 0
            async for message in self._stream(
                spec.body, metadata=spec.metadata, timeout=spec.timeout_s
            ):
                count += 1
                if count == 2:
                    first = time.monotonic()
                last = message
            final = self._epb.ExecutePromptStreamResponse.FromString(last)
            if final.WhichOneof("event") != "fulfilled":
                stats.failed(f"last event {final.WhichOneof('event')}")
                return
            stats.done(began, first)
        except self._grpc.aio.AioRpcError as exc:
            stats.failed(f"{exc.code().name}: {exc.details()}")


class _HttpCaller:
    """HTTP/1.1 keep-alive client on raw asyncio streams: a pool of connections."""

    def __init__(self, spec: LoadSpec) -> None:
        self._spec = spec
        host, _, port = spec.target.rpartition(":")
        self._host, self._port = host, int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._head = (
            f"POST {spec.path} HTTP/1.1\r\nhost: {spec.target}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(spec.body)}\r\n\r\n"
        ).encode() + spec.body

    async def open(self) -> None:
        self._idle.append(await asyncio.open_connection(self._host, self._port))

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def call(self, stats: _Stats) -> None:
        began = time.monotonic()
        try:
            async with asyncio.timeout(self._spec.timeout_s):
                if self._idle:
                    reader, writer = self._idle.pop()
                else:
                    reader, writer = await asyncio.open_connection(self._host, self._port)
                writer.write(self._head)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    stats.failed(head.split(b"\r\n", 1)[0].decode())
                    writer.close()
                    return
                first: float | None = None
                if b"transfer-encoding: chunked" in head.lower():
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        piece = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        if first is None and b'"content"' in piece:
                            first = time.monotonic()
                else:
                    length = 0
                    for line in head.lower().split(b"\r\n"):
                        if line.startswith(b"content-length:"):
                            length = int(line.partition(b":")[2])
                    await reader.readexactly(length)
                self._idle.append((reader, writer))
                stats.done(began, first)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            stats.failed(f"{type(exc).__name__}: {exc}")
