"""An OTLP/gRPC trace receiver that counts what it gets, for measuring tracing's cost.

    python -m bench.otlp_sink --port 4317      # prints "otlp sink on 127.0.0.1:PORT"
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 python -m bench.run --only unary

Every 5 s (and at exit) it prints the spans received so far. It decodes each
export as a collector would, and keeps nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts exported spans."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.exports += 1
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans += len(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(host: str, port: int) -> None:
    sink = Sink()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"otlp sink on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 5)
        except TimeoutError:
            print(f"{sink.spans} spans in {sink.exports} exports", flush=True)
    await server.stop(0)
    print(f"{sink.spans} spans in {sink.exports} exports", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4317)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
