"""Scenario 5: the cost of metrics, the same unary load with /metrics on and off.

One promptgate process (SQLite, recording on) per run, the stored bench
prompt at a fixed concurrency, in rounds that alternate the order (off, on;
on, off; ...) so that the machine's drift hits both variants alike. Each run
reports throughput and the server's CPU time per answer; the verdict compares
the medians. With metrics on, a scrape after the load must count exactly the
answers the server gave (``grpc_server_handled_total`` of ExecutePrompt, OK).
"""

from __future__ import annotations

import math
import re
import statistics
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

METRICS_LINE = re.compile(r"promptgate metrics on (http://\S+)")
HANDLED_OK = re.compile(
    r'^grpc_server_handled_total\{(?=[^}]*grpc_code="OK")(?=[^}]*grpc_method="ExecutePrompt")'
    r"[^}]*\} (\S+)$",
    re.MULTILINE,
)


class _Proc(Protocol):
    lines: list[str]

    @property
    def pid(self) -> int: ...


class _Server(Protocol):
    proc: Any
    answered: int


@dataclass
class Run:
    """One load against one server."""

    metrics: bool
    rps: float
    cpu_ms_per_answer: float
    errors: int


def metrics_url(proc: _Proc, limit_s: float = 10.0) -> str:
    """The URL the server printed (after its listening line)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for line in list(proc.lines):
            found = METRICS_LINE.search(line)
            if found:
                return found.group(1).replace("localhost", "127.0.0.1")
        time.sleep(0.05)
    raise RuntimeError("the server printed no metrics URL:\n" + "\n".join(proc.lines[-20:]))


def handled_ok(url: str) -> int:
    """ExecutePrompt calls answered OK, from a scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = HANDLED_OK.search(text)
    return int(float(found.group(1))) if found else 0


def measure(
    rounds: int,
    start: Callable[[bool], Any],
    stop: Callable[[Any], None],
    load: Callable[[Any], Any],
    monitor: Callable[[int], Any],
    notes: list[str],
) -> tuple[list[Run], dict[str, Any]]:
    """Run the rounds; return every run and the summary row."""
    runs: list[Run] = []
    for index in range(rounds):
        order = (False, True) if index % 2 == 0 else (True, False)
        for on in order:
            server = start(on)
            try:
                started = time.monotonic()
                with monitor(server.proc.pid) as watched:
                    result = load(server)
                wall = time.monotonic() - started
                cpu_s = watched.cpu_cores * wall
                runs.append(Run(on, result.rps, 1000 * cpu_s / max(result.ok, 1), result.errors))
                if on:
                    counted = handled_ok(metrics_url(server.proc))
                    if counted != server.answered:
                        notes.append(
                            f"metrics: the scrape counted {counted} ExecutePrompt OK, "
                            f"the load generator {server.answered} answers"
                        )
            finally:
                stop(server)
    return runs, summary(runs)


def summary(runs: list[Run]) -> dict[str, Any]:
    """Medians of each variant and the cost of metrics."""

    def median(on: bool, field: str) -> float:
        values = [getattr(r, field) for r in runs if r.metrics is on]
        return statistics.median(values) if values else math.nan

    off_rps, on_rps = median(False, "rps"), median(True, "rps")
    off_cpu, on_cpu = median(False, "cpu_ms_per_answer"), median(True, "cpu_ms_per_answer")
    return {
        "runs each": len(runs) // 2,
        "rps off (median)": off_rps,
        "rps on (median)": on_rps,
        "throughput cost": 1 - on_rps / off_rps if off_rps else math.nan,
        "CPU ms/answer off": off_cpu,
        "CPU ms/answer on": on_cpu,
        "CPU cost": on_cpu / off_cpu - 1 if off_cpu else math.nan,
        "rps per run off": " / ".join(f"{r.rps:.0f}" for r in runs if not r.metrics),
        "rps per run on": " / ".join(f"{r.rps:.0f}" for r in runs if r.metrics),
        "errors": sum(r.errors for r in runs),
    }
