"""``serve --workers N``: server processes sharing one port, supervised by the parent.

Each worker is a whole promptgate server (``promptgate.server.serve``) in a
spawned process; the port is shared with SO_REUSEPORT. Only process
supervision lives here: starting, signal forwarding, readiness, exit codes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

from promptgate.config import Settings
from promptgate.observability.exposition import WorkerMetricsDir
from promptgate.observability.logging import configure_logging, settings_secrets
from promptgate.server import run_loop, serve

log = logging.getLogger(__name__)


def run_workers(settings: Settings) -> int:
    """Run ``settings.workers`` server processes sharing one port (SO_REUSEPORT).

    The first worker starts alone (it creates the schema and, in dev mode, the
    key and demo prompt, and prints the address); the others start once it
    serves, and ``promptgate workers ready: N listening on HOST:PORT`` is
    printed once all of them do. SIGTERM/SIGINT are passed on to every worker, each of which drains
    and exits as a single server does. If a worker dies, the others are
    stopped. Returns 0 when every worker exited 0.

    With metrics on, the workers share the metrics port too and count into one
    multiprocess directory, so any of them serves the whole server's numbers
    (see ``observability.exposition``).
    """
    port = settings.port or _free_port(settings.host)
    metrics_port = settings.metrics_listen_port
    if metrics_port == 0:
        metrics_port = _free_port(settings.host)
    common = {"port": port, "workers": 1, "reuse_port": True, "metrics_port": metrics_port}
    metrics_dir = WorkerMetricsDir() if metrics_port is not None else None
    try:
        return _supervise(settings, common, metrics_dir)
    finally:
        if metrics_dir is not None:
            metrics_dir.close()


def _supervise(
    settings: Settings, common: dict[str, Any], metrics_dir: WorkerMetricsDir | None
) -> int:
    port = common["port"]
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    first = ctx.Process(
        target=_worker_main,
        args=(settings.model_copy(update=common), True, ready),
        name="promptgate-worker-0",
    )
    children = [first]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    first.start()
    while not ready.wait(0.1):
        if first.exitcode is not None or stopping:
            first.join()
            return first.exitcode or 0
    readies = []
    for index in range(1, settings.workers):
        started = ctx.Event()
        child = ctx.Process(
            target=_worker_main,
            args=(settings.model_copy(update={**common, "dev": False}), False, started),
            name=f"promptgate-worker-{index}",
        )
        children.append(child)
        readies.append(started)
        child.start()
    announced = False
    while any(child.exitcode is None for child in children):
        if not announced and all(ready.is_set() for ready in readies):
            announced = True
            print(
                f"promptgate workers ready: {settings.workers} listening on {settings.host}:{port}",
                flush=True,
            )
        if not stopping and any(child.exitcode not in (None, 0) for child in children):
            log.error("a worker exited unexpectedly; stopping the others")
            forward(signal.SIGTERM, None)
        time.sleep(0.1)
    if metrics_dir is not None:
        for child in children:
            metrics_dir.worker_exited(child.pid or 0)
    # A worker stopped by the signal before it could install its handlers had
    # nothing in flight: that is a clean stop too.
    clean = (0, -signal.SIGTERM) if stopping else (0,)
    return 0 if all(child.exitcode in clean for child in children) else 1


def _worker_main(settings: Settings, announce: bool, ready: Any) -> None:
    configure_logging(
        settings.log_level, fmt=settings.log_format, secrets=settings_secrets(settings)
    )
    code = run_loop(
        serve(settings, announce=announce, on_ready=ready.set if ready else None),
        settings.event_loop,
    )
    sys.exit(code)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])
