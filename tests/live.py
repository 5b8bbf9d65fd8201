"""A real ``promptgate serve --dev --port 0`` subprocess for the client tests.

The generated clients (Python, TypeScript, Go) talk to it exactly as a user
following the README would: the address and the dev API key are read from what
the server prints at start-up.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

START_TIMEOUT_S = 30.0
LISTENING = re.compile(r"^promptgate listening on (\S+):(\d+)$")
DEV_KEY = re.compile(r"^dev API key \(admin, shown once\): (\S+)$")


@dataclass
class LiveServer:
    """A started server process: where it listens and its dev admin key."""

    process: subprocess.Popen[str]
    address: str
    key: str
    stderr: IO[str]
    output: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()


def start_live_server(data_dir: Path, env: dict[str, str] | None = None) -> LiveServer:
    """Start ``python -m promptgate serve --dev --port 0`` on SQLite in ``data_dir``
    (``env``: more environment variables)."""
    env = {
        **os.environ,
        "PROMPTGATE_GRACE_PERIOD_S": "1",
        # One provider call per target: a provider failure shows up at once.
        "PROMPTGATE_RETRY_MAX_ATTEMPTS": "1",
        "PROMPTGATE_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "promptgate",
        "serve",
        "--dev",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--database-url",
        f"sqlite+aiosqlite:///{data_dir / 'live.db'}",
    ]
    stderr = (data_dir / "server.stderr").open("w")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, bufsize=1
    )
    assert process.stdout is not None
    lines: list[str] = []
    address = key = ""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (address and key):
        line = process.stdout.readline()
        if not line:
            process.wait(5)
            stderr.close()
            raise RuntimeError(
                f"promptgate exited ({process.returncode}) before it was ready:\n"
                + "".join(lines)
                + (data_dir / "server.stderr").read_text()
            )
        lines.append(line)
        if match := LISTENING.match(line.strip()):
            address = f"{match.group(1)}:{match.group(2)}"
        elif match := DEV_KEY.match(line.strip()):
            key = match.group(1)
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            stderr.close()
            raise RuntimeError("promptgate did not print its address and key:\n" + "".join(lines))
    server = LiveServer(process, address, key, stderr, lines)
    threading.Thread(target=_drain, args=(process.stdout, server.output), daemon=True).start()
    return server


def _drain(stream: IO[str], into: list[str]) -> None:
    """Keep reading the server's stdout so it never blocks on a full pipe."""
    with stream:
        into.extend(stream)
