"""``promptgate serve --workers 2``: two processes share one port and stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PROMPTGATE = str(Path(sys.executable).parent / "promptgate")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_two_workers_share_the_port_and_drain_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            PROMPTGATE,
            "serve",
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
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PROMPTGATE_DRAIN_NOTICE_S": "0"},
    )
    try:
        assert proc.stdout is not None
        seen = []
        while len(seen) < 50:  # worker logs, then the line saying all are ready
            seen.append(proc.stdout.readline())
            if "promptgate workers ready:" in seen[-1] or not seen[-1]:
                break
        assert "promptgate workers ready: 2 listening on 127.0.0.1:" in seen[-1], seen
        port = int(seen[-1].rsplit(":", 1)[1])
        assert len(_children(proc.pid)) >= 2  # the workers (and multiprocessing's tracker)
        for _ in range(8):  # new connections land on either worker; all are served
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert code == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
