"""``promptgate serve --workers 2`` with metrics: one multiprocess directory, and
whichever worker answers a scrape serves the whole server's totals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.mmap_dict import MmapedDict

from tests.test_metrics import Scrape, grpc_labels

PROMPTGATE = str(Path(sys.executable).parent / "promptgate")


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) == parent:
                    pids.append(int(entry))
    return pids


def _multiproc_dir(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return entry.split(b"=", 1)[1].decode()
    return ""


def _checks_per_worker(directory: str) -> dict[str, float]:
    """Health/Check calls handled OK, per worker file (counter_<pid>.db)."""
    counts: dict[str, float] = {}
    for path in Path(directory).glob("counter_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if (
                name == "grpc_server_handled_total"
                and labels.get("grpc_method") == "Check"
                and labels.get("grpc_code") == "OK"
            ):
                counts[path.name] = counts.get(path.name, 0.0) + value
    return counts


def test_workers_serve_the_whole_servers_numbers(tmp_path: Path) -> None:
    env = {**os.environ, "PROMPTGATE_DRAIN_NOTICE_S": "0"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [
            PROMPTGATE,
            "serve",
            "--dev",
            "--port",
            "0",
            "--workers",
            "2",
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
            "--grace-period-s",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        while len(seen) < 100:
            seen.append(proc.stdout.readline())
            if "promptgate workers ready:" in seen[-1] or not seen[-1]:
                break
        assert "promptgate workers ready: 2 listening on 127.0.0.1:" in seen[-1], seen
        port = int(seen[-1].rsplit(":", 1)[1])
        urls = [line.split()[-1] for line in seen if line.startswith("promptgate metrics on ")]
        assert len(urls) == 1 and urls[0].endswith("/metrics"), seen  # --dev prints the URL
        workers = _worker_pids(proc.pid)
        directories = {_multiproc_dir(pid) for pid in workers} - {""}
        assert len(directories) == 1, (workers, directories)
        directory = directories.pop()
        calls = 24
        for _ in range(calls):  # a new connection each: the kernel spreads them over workers
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
        check = grpc_labels("Check", service="grpc.health.v1.Health")
        for _ in range(6):  # scrapes land on either worker: every one shows the total
            with httpx.Client() as client:
                text = client.get(urls[0], timeout=10).text
            assert Scrape(text).value("grpc_server_handled_total", **check, grpc_code="OK") == calls
        per_worker = _checks_per_worker(directory)
        assert sum(per_worker.values()) == calls
        assert len([v for v in per_worker.values() if v > 0]) == 2, per_worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not Path(directory).exists(), "the parent removes the directory it made"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
