"""Three ``promptgate serve`` processes started at the same moment on an empty database.

Each migrates at start; they must take turns: exactly one creates the schema,
the others find it at head, and all three serve. To make "the same moment"
exact rather than likely, the test holds the lock the servers migrate under
until all three are waiting for it (PostgreSQL: the advisory lock, seen in
pg_locks), or until all three have the database file open (SQLite: the file's
write lock, taken with BEGIN IMMEDIATE), then lets them all go at once.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from promptgate.store.migrations.baseline import ALEMBIC_MANAGED_VERSION
from promptgate.store.migrations.runner import MIGRATION_LOCK_ID, head_revision
from tests.legacy_db import model_differences, scalar

LISTENING = re.compile(r"^promptgate listening on (\S+):(\d+)$")
START_TIMEOUT_S = 90.0
MIGRATED = "migrating the schema from an empty database"
SERVERS = 3


class ServerProcess:
    """``promptgate serve`` on port 0; its stdout lines go to a queue, its stderr to a file."""

    def __init__(self, url: str, log: Path) -> None:
        self.log = log
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "promptgate", "serve"),
                *("--host", "127.0.0.1", "--port", "0", "--database-url", url),
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PROMPTGATE_LOG_LEVEL": "INFO", "PROMPTGATE_GRACE_PERIOD_S": "1"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def address(self, deadline: float) -> str:
        """Wait for "promptgate listening on HOST:PORT"; return HOST:PORT."""
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"server did not start in time; its log:\n{self.log.read_text()}")
            if line is None:
                self.process.wait(10)
                pytest.fail(
                    f"server exited ({self.process.returncode}); its log:\n{self.log.read_text()}"
                )
            match = LISTENING.match(line)
            if match:
                return f"{match.group(1)}:{match.group(2)}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._stderr.close()


@pytest.fixture
def start_servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=30
        )
    return int(response.status)


def assert_all_came_up_and_migrated_once(servers: list[ServerProcess], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    addresses = [server.address(deadline) for server in servers]
    assert len(set(addresses)) == SERVERS
    assert [health(a) for a in addresses] == [health_pb2.HealthCheckResponse.SERVING] * SERVERS
    logs = [server.log.read_text() for server in servers]
    assert sum(log.count(MIGRATED) for log in logs) == 1, "\n".join(logs)
    for log in logs:
        assert " ERROR " not in log and "Traceback" not in log, log
    assert asyncio.run(scalar(url, "SELECT count(*) FROM alembic_version")) == 1
    assert asyncio.run(scalar(url, "SELECT version_num FROM alembic_version")) == head_revision()
    assert asyncio.run(scalar(url, "SELECT version FROM schema_version")) == ALEMBIC_MANAGED_VERSION
    assert asyncio.run(model_differences(url)) == []


async def _waiting_for_lock(conn: asyncpg.Connection, database: str) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = $1",
        database,
    )
    return int(count)


@pytest.mark.postgres
def test_three_servers_on_an_empty_postgres_database_all_come_up(
    postgres_url: str, start_servers: list[ServerProcess], tmp_path: Path
) -> None:
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    database = dsn.rsplit("/", 1)[1]

    async def hold_lock_until_all_wait() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
            for index in range(SERVERS):
                start_servers.append(ServerProcess(postgres_url, tmp_path / f"server{index}.log"))
            deadline = time.monotonic() + START_TIMEOUT_S
            while await _waiting_for_lock(conn, database) < SERVERS:
                for server in start_servers:
                    assert server.process.poll() is None, server.log.read_text()
                assert time.monotonic() < deadline, "the servers did not wait for the lock"
                await asyncio.sleep(0.1)
        finally:
            await conn.close()  # lets all three go at once

    asyncio.run(hold_lock_until_all_wait())
    assert_all_came_up_and_migrated_once(start_servers, postgres_url)
    for server in start_servers:
        assert "waiting for another promptgate to finish migrating" in server.log.read_text()


def _has_open(pid: int, path: Path) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


def test_three_servers_on_an_empty_sqlite_file_all_come_up(
    start_servers: list[ServerProcess], tmp_path: Path
) -> None:
    path = tmp_path / "promptgate.db"
    url = f"sqlite+aiosqlite:///{path}"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
        for index in range(SERVERS):
            start_servers.append(ServerProcess(url, tmp_path / f"server{index}.log"))
        # Each server waits up to 30 s for the write lock: let them all go once all
        # three wait, or well before the first one gives up.
        deadline = time.monotonic() + START_TIMEOUT_S
        first_waiting: float | None = None
        while time.monotonic() < deadline:
            waiting = [_has_open(server.process.pid, path) for server in start_servers]
            if all(waiting):
                break
            if any(waiting):
                first_waiting = first_waiting or time.monotonic()
                if time.monotonic() - first_waiting > 10:
                    break
            for server in start_servers:
                assert server.process.poll() is None, server.log.read_text()
            time.sleep(0.05)
        time.sleep(0.2)
        holder.execute("COMMIT")
    finally:
        holder.close()
    assert_all_came_up_and_migrated_once(start_servers, url)
