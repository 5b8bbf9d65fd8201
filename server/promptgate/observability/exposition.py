"""What ``/metrics`` serves: one process's metrics, or the sum over worker processes.

A single server serves its own registry. With ``--workers N`` the workers run
in prometheus-client's multiprocess mode: the parent creates an empty
directory and hands it to every worker in ``PROMETHEUS_MULTIPROC_DIR`` (set
before a worker starts, as prometheus-client requires), each worker writes its
values there, and whichever worker answers a scrape (they share the metrics
port) reads every worker's files, so ``/metrics`` shows the whole server's
numbers. Gauges are summed over live workers (``livesum``); the parent tells
prometheus-client when a worker is gone. A ``PROMETHEUS_MULTIPROC_DIR`` set by
the operator is used as it is (it must be empty at start); otherwise the
parent removes its directory at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from promptgate.observability.metrics import MULTIPROC_ENV, Metrics

METRICS_PATH = "/metrics"


def served_collector(metrics: Metrics) -> Collector:
    """The registry ``/metrics`` renders: this process's, or every worker's files."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return metrics.registry
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    return registry


def metrics_handler(collector: Collector) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler answering with ``collector``'s metrics.

    Prometheus text, or OpenMetrics when the scraper asks for it; gzip when
    accepted. Rendering (and, in multiprocess mode, reading the workers' files)
    runs on a worker thread, off the event loop.
    """

    async def handle(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, collector)
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    return handle


def add_metrics_route(app: web.Application, metrics: Metrics) -> None:
    """Serve ``metrics`` (or the workers' sum) at ``/metrics`` of ``app``."""
    app.router.add_get(METRICS_PATH, metrics_handler(served_collector(metrics)))


class WorkerMetricsDir:
    """The multiprocess directory of ``--workers`` (see the module docstring)."""

    def __init__(self) -> None:
        self.path = os.environ.get(MULTIPROC_ENV, "")
        self._owned = not self.path
        if self._owned:
            self.path = tempfile.mkdtemp(prefix="promptgate-metrics-")
            os.environ[MULTIPROC_ENV] = self.path

    def worker_exited(self, pid: int) -> None:
        """Drop a stopped worker's gauges (its counters stay in the sums)."""
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Remove the directory if this process made it."""
        if self._owned:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(self.path, ignore_errors=True)
