"""The floor: a bare grpc.aio server answering ExecutePrompt with a fixed answer.

    python -m bench.echo_server --port P --response FILE [--workers N] [--uvloop]

It parses each request as an ``ExecutePromptRequest`` (as promptgate does)
and answers with the bytes in ``FILE`` (a real ExecutePromptResponse captured
from promptgate, so the messages have the same sizes); no auth, no work. With
``--workers N`` it runs N processes sharing the port (SO_REUSEPORT), like
``promptgate serve --workers N``. Prints ``echo listening on 127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import signal
import sys
from pathlib import Path
from typing import Any

METHOD = "ExecutePrompt"
SERVICE = "promptgate.v1.ExecutionService"


async def _serve(port: int, answer: bytes, reuse_port: bool, announce: bool) -> None:
    import grpc

    from promptgate.api.v1 import execution_service_pb2 as epb

    async def execute(request: Any, context: Any) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_unary_rpc_method_handler(
                execute, request_deserializer=epb.ExecutePromptRequest.FromString
            )
        },
    )
    server = grpc.aio.server(
        handlers=[handler],
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_concurrent_streams", 10_000),
        ],
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if announce:
        print(f"echo listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def _run(port: int, answer: bytes, reuse_port: bool, announce: bool, use_uvloop: bool) -> None:
    coroutine = _serve(port, answer, reuse_port, announce)
    if use_uvloop:
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    answer = args.response.read_bytes()
    if args.workers == 1:
        _run(args.port, answer, False, True, args.uvloop)
        return 0
    ctx = mp.get_context("spawn")
    children = [
        ctx.Process(target=_run, args=(args.port, answer, True, i == 0, args.uvloop))
        for i in range(args.workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                child.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
