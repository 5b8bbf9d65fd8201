"""The benchmark suite: promptgate against its floor and its upstream, in one run.

    python -m bench.run                 # everything, about 5 minutes; writes bench/RESULTS.md
    python -m bench.run --quick         # a few-seconds smoke of every scenario

Processes, all on loopback: the upstream (``bench.upstream``, an
OpenAI-compatible server), promptgate (``promptgate serve``, with a stored
prompt on the openai adapter, an ``unlimited``-plan key, in-process limits),
the floor (``bench.echo_server``, a bare grpc.aio server answering
ExecutePrompt with a fixed answer of the real size) and the load generator
(``bench.loadgen``). Scenarios:

1. Unary ExecutePrompt: max RPS vs the floor (1 and 2 server processes);
   latency at concurrency 1 and at half the max load vs calling the upstream
   directly with the same body.
2. Streaming (32 chunks): time to the first delta and to the last event vs the
   upstream directly; 2,000 concurrent streams paced 50 ms (errors, RSS, CPU).
3. Recording on and off, on SQLite and PostgreSQL; rows counted afterwards
   must equal the successful answers.
4. Hostile callers (``bench.hostile``): while each attack class runs (regex
   and remote ``$ref`` in schemas, template bombs, huge integers, deep JSON,
   bogus keys, idle watchers), the latency of a Health/Check and of a normal
   ExecutePrompt probing every 20 ms, against the same probe with no attack.
5. Metrics (``bench.metrics_cost``): the same unary load with /metrics on and
   off, in alternating rounds: throughput and server CPU per answer.

Servers inherit the environment: ``PROMPTGATE_METRICS_PORT=0 python -m
bench.run`` runs every scenario with metrics on (scenario 5 sets it per run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shlex
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loadgen, metrics_cost
from bench.hostile import Scenario, Timing
from bench.loadgen import LoadResult, LoadSpec

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PROMPTGATE = str(Path(sys.executable).parent / "promptgate")
PG_ADMIN_DSN = os.environ.get("PROMPTGATE_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
EXECUTE = "/promptgate.v1.ExecutionService/ExecutePrompt"
EXECUTE_STREAM = "/promptgate.v1.ExecutionService/ExecutePromptStream"
UNARY_MODEL = "bench-l0-c32-i0"  # 0 ms latency, 32 chunks, no pacing
PACED_MODEL = "bench-l50-c32-i50"  # 50 ms latency, 32 chunks 50 ms apart
FULFILLED_ROWS = "select count(*) from executions where state = 'FULFILLED'"
QUESTION = "What does promptgate add to the latency of an LLM call? Answer briefly."


@dataclass
class Profile:
    """Durations and sizes of one run."""

    duration_s: float
    warmup_s: float
    ladder: tuple[int, ...]
    streams: int
    streams_duration_s: float
    load_processes: int
    workers: tuple[int, ...]
    try_uvloop: bool
    hostile: Timing
    metrics_rounds: int


FULL = Profile(5.0, 1.0, (16, 64), 2000, 8.0, 2, (1, 2), True, Timing(4.0, 5.0, 10.0, 240.0), 3)
QUICK = Profile(0.8, 0.2, (8,), 50, 1.5, 1, (1,), False, Timing(0.3, 1.0, 5.0, 60.0), 1)


@dataclass
class Report:
    """Everything measured, for RESULTS.md and --json."""

    started: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    recording: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.sections.setdefault(section, []).append(row)
        print(f"[{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)


# ---------------------------------------------------------------------- processes


class Proc:
    """A child process whose stdout is watched for a readiness line."""

    def __init__(self, report: Report, argv: list[str], env: dict[str, str], ready: str) -> None:
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        command = (shown + " " if shown else "") + shlex.join(_short(argv))
        if command not in report.commands:
            report.commands.append(command)
        self.argv, self.env, self.ready = argv, env, ready
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        self._pattern = re.compile(ready)
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(60):
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start:\n" + "\n".join(self.lines[-30:]))
        self.port = int(self._match.group(1)) if self._match and self._match.groups() else 0

    def _pump(self) -> None:
        self._match: re.Match[str] | None = None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if not self._ready.is_set():
                found = self._pattern.search(line)
                if found:
                    self._match = found
                    self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _short(argv: list[str]) -> list[str]:
    return [
        a.replace(str(ROOT) + "/", "").replace(
            str(Path(PYTHON).parent) + "/", ".venv/bin/" if ".venv" in PYTHON else ""
        )
        for a in argv
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TreeMonitor:
    """Samples RSS (summed over a process and its children) and CPU time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._stop = threading.Event()
        self._cpu0 = 0.0
        self._t0 = 0.0
        self.cpu_cores = math.nan

    def __enter__(self) -> TreeMonitor:
        self._cpu0, self._t0 = self._cpu(), time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_cores = (self._cpu() - self._cpu0) / max(time.monotonic() - self._t0, 1e-9)

    def _tree(self) -> list[int]:
        parents: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(parents.get(pid, []))
        return tree

    def _cpu(self) -> float:
        total = 0.0
        for pid in self._tree():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def rss(self) -> int:
        total = 0
        for pid in self._tree():
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            self.peak_rss = max(self.peak_rss, self.rss())


# ---------------------------------------------------------------------- promptgate


@dataclass
class Server:
    """A running promptgate and what was learned while setting it up."""

    proc: Proc
    port: int
    key: str
    database_url: str
    recording: bool
    execute_body: bytes = b""
    stream_body: bytes = b""
    paced_body: bytes = b""
    answer: bytes = b""
    payload: dict[str, Any] = field(default_factory=dict)
    answered: int = 0  # successful answers, counted by the load generator

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),)


def start_promptgate(
    report: Report,
    upstream_port: int,
    database_url: str,
    *,
    recording: bool,
    workers: int,
    loop: str = "asyncio",
    metrics: bool | None = None,
) -> Server:
    """Create the key, start the server, store the prompts; return it.

    ``metrics``: /metrics on a free port, or off; None: as the environment says.
    """
    created = subprocess.run(
        [
            PROMPTGATE,
            "keys",
            "create",
            "--workspace",
            "bench",
            "--scope",
            "prompt.execute",
            "--scope",
            "template.manage",
            "--plan",
            "unlimited",
            "--database-url",
            database_url,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    key = created.stdout.strip().splitlines()[-1]
    env = {
        "PROMPTGATE_RECORD_EXECUTIONS": "true" if recording else "false",
        "PROMPTGATE_HTTP_MAX_CONNECTIONS": "4096",
        "PROMPTGATE_LOG_LEVEL": "WARNING",
    }
    if loop != "asyncio":
        env["PROMPTGATE_EVENT_LOOP"] = loop
    if metrics is not None:
        env["PROMPTGATE_METRICS_PORT"] = "0" if metrics else ""
    argv = [
        PROMPTGATE,
        "serve",
        "--port",
        str(free_port()),
        "--database-url",
        database_url,
        "--openai-base-url",
        f"http://127.0.0.1:{upstream_port}/v1",
        "--workers",
        str(workers),
    ]
    ready = (
        r"promptgate listening on [^:]+:(\d+)"
        if workers == 1
        else r"promptgate workers ready: \d+ listening on [^:]+:(\d+)"
    )
    proc = Proc(report, argv, env, ready)
    server = Server(proc, proc.port, key, database_url, recording)
    try:
        asyncio.run(_prepare(server))
    except BaseException:
        proc.stop()
        raise
    return server


async def _prepare(server: Server) -> None:
    import grpc
    from google.protobuf import json_format

    from promptgate.api.v1 import common_pb2 as cpb
    from promptgate.api.v1 import execution_service_pb2 as epb
    from promptgate.api.v1 import prompt_service_pb2 as ppb
    from promptgate.api.v1 import prompt_service_pb2_grpc as ppb_grpc

    async with grpc.aio.insecure_channel(server.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        prompts = ppb_grpc.PromptServiceStub(channel)
        md = server.metadata
        for name, model in (("bench", UNARY_MODEL), ("bench-paced", PACED_MODEL)):
            await prompts.CreatePrompt(ppb.CreatePromptRequest(name=name), metadata=md)
            version = json_format.ParseDict(
                {
                    "provider": "openai",
                    "model": model,
                    "messages": [
                        {
                            "role": "MESSAGE_ROLE_SYSTEM",
                            "template": "You answer questions about {{ product }} in one sentence.",
                        },
                        {"role": "MESSAGE_ROLE_USER", "template": "{{ question }}"},
                    ],
                    "input_variables": [
                        {
                            "name": "product",
                            "type": "INPUT_TYPE_STRING",
                            "default_value": "promptgate",
                        },
                        {"name": "question", "type": "INPUT_TYPE_STRING"},
                    ],
                    "parameters": {"temperature": 0.2, "max_tokens": 200},
                },
                ppb.PromptVersion(),
            )
            await prompts.CreatePromptVersion(
                ppb.CreatePromptVersionRequest(
                    prompt=name, version=version, release_tags=["production"]
                ),
                metadata=md,
            )
        inputs = [cpb.PromptInput(name="question", string_value=QUESTION)]
        server.execute_body = epb.ExecutePromptRequest(
            prompt="bench", inputs=inputs
        ).SerializeToString()
        server.stream_body = server.execute_body
        server.paced_body = epb.ExecutePromptRequest(
            prompt="bench-paced", inputs=inputs
        ).SerializeToString()
        rendered = await prompts.RenderPrompt(
            ppb.RenderPromptRequest(prompt="bench", inputs=inputs), metadata=md
        )
        server.payload = json_format.MessageToDict(rendered.provider_payload)
        answer = await channel.unary_unary(EXECUTE)(server.execute_body, metadata=md)
        state = epb.ExecutePromptResponse.FromString(answer).state
        if state != loadgen.FULFILLED:
            raise RuntimeError(f"the bench prompt did not execute: {answer!r}")
        server.answer = answer
        server.answered += 1


def restart_promptgate(report: Report, server: Server) -> Server:
    """Start ``server``'s process again (after it was killed): same port, database and key."""
    old = server.proc
    proc = Proc(report, old.argv, old.env, old.ready)
    return replace(server, proc=proc, port=proc.port)


def stop_and_count(server: Server) -> int:
    """Stop ``server`` (it flushes its records) and count the execution rows."""
    code = server.proc.stop()
    if code != 0:
        output = "\n".join(server.proc.lines)
        raise RuntimeError(f"promptgate exited with {code}:\n{output}")
    url = server.database_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return int(conn.execute(FULFILLED_ROWS).fetchone()[0])
    return asyncio.run(_pg_count(url))


async def _pg_count(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval(FULFILLED_ROWS))
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_postgres() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    import asyncpg

    name = f"pg_bench_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ---------------------------------------------------------------------- scenarios


class Bench:
    """Runs the scenarios and fills the report."""

    def __init__(self, profile: Profile, workdir: Path, report: Report) -> None:
        self.p = profile
        self.workdir = workdir
        self.report = report
        self.upstream: Proc | None = None

    def load(self, server: Server | None, **kwargs: Any) -> LoadResult:
        spec = LoadSpec(
            **{
                "duration_s": self.p.duration_s,
                "warmup_s": self.p.warmup_s,
                "processes": self.p.load_processes,
                **kwargs,
            }
        )
        result = loadgen.run(spec)
        if server is not None and spec.kind.startswith("grpc"):
            server.answered += result.ok
        return result

    def max_rps(self, server: Server | None, target: str, body: bytes, md: Any) -> LoadResult:
        """The best throughput over the concurrency ladder with errors < 0.1%."""
        best: LoadResult | None = None
        for concurrency in self.p.ladder:
            result = self.load(
                server,
                kind="grpc-unary",
                target=target,
                path=EXECUTE,
                body=body,
                metadata=md,
                concurrency=concurrency,
            )
            if result.error_rate < 0.001 and (best is None or result.rps > best.rps):
                best = result
            elif best is None:
                best = result
        assert best is not None
        return best

    def sqlite_url(self, name: str) -> str:
        return f"sqlite+aiosqlite:///{self.workdir / name}.db"

    def run(self) -> None:
        self.upstream = Proc(
            self.report,
            [PYTHON, "-m", "bench.upstream", "--port", "0", *_uvloop_flag()],
            {},
            r"upstream listening on [^:]+:(\d+)",
        )
        try:
            self.unary_and_streams()
            self.recording()
            self.hostile()
            self.metrics()
        finally:
            self.upstream.stop()

    def floor(self, answer: bytes, body: bytes, workers: int, loop: str) -> LoadResult:
        path = self.workdir / "answer.bin"
        path.write_bytes(answer)
        echo = Proc(
            self.report,
            [
                PYTHON,
                "-m",
                "bench.echo_server",
                "--port",
                str(free_port()),
                "--response",
                str(path),
                "--workers",
                str(workers),
                *(["--uvloop"] if loop == "uvloop" else []),
            ],
            {},
            r"echo listening on [^:]+:(\d+)",
        )
        try:
            time.sleep(0.3 * workers)  # the other workers bind
            return self.max_rps(None, f"127.0.0.1:{echo.port}", body, ())
        finally:
            echo.stop()

    def unary_and_streams(self) -> None:
        assert self.upstream is not None
        up = self.upstream.port
        variants = [(w, "asyncio") for w in self.p.workers]
        if self.p.try_uvloop and _uvloop_flag():
            variants.insert(1, (1, "uvloop"))
        for workers, loop in variants:
            server = start_promptgate(
                self.report,
                up,
                self.sqlite_url(f"unary-w{workers}-{loop}"),
                recording=True,
                workers=workers,
                loop=loop,
            )
            try:
                floor = self.floor(server.answer, server.execute_body, workers, loop)
                best = self.max_rps(server, server.target, server.execute_body, server.metadata)
                self.report.add(
                    "unary_max",
                    {
                        "server processes": workers,
                        "event loop": loop,
                        "floor rps": floor.rps,
                        "floor concurrency": floor.spec.concurrency,
                        "promptgate rps": best.rps,
                        "promptgate concurrency": best.spec.concurrency,
                        "ratio": best.rps / floor.rps if floor.rps else math.nan,
                        "errors": best.errors,
                        "error rate": best.error_rate,
                        "p50 ms": best.p50_ms,
                        "p99 ms": best.p99_ms,
                    },
                )
                if workers == 1 and loop == "asyncio":
                    self.latency(server, best.rps)
                    self.streams(server)
            finally:
                rows = stop_and_count(server)
            self.report.recording.append(
                {
                    "run": f"scenarios 1-2, {workers} process(es), {loop}",
                    "store": "SQLite",
                    "recording": "on",
                    "answers": server.answered,
                    "rows": rows,
                }
            )

    def latency(self, server: Server, max_rps: float) -> None:
        assert self.upstream is not None
        direct_target = f"127.0.0.1:{self.upstream.port}"
        direct_body = json.dumps(server.payload, separators=(",", ":")).encode()
        rate = max(max_rps / 2, 1.0)
        for label, extra in (("c=1", {"concurrency": 1, "processes": 1}), ("half", {"rate": rate})):
            direct = self.load(
                None,
                kind="http-unary",
                target=direct_target,
                path="/v1/chat/completions",
                body=direct_body,
                **extra,
            )
            via = self.load(
                server,
                kind="grpc-unary",
                target=server.target,
                path=EXECUTE,
                body=server.execute_body,
                metadata=server.metadata,
                **extra,
            )
            self.report.add(
                "unary_latency",
                {
                    "load": label if label == "c=1" else f"{rate:.0f} rps (half of max)",
                    "direct p50 ms": direct.p50_ms,
                    "direct p99 ms": direct.p99_ms,
                    "promptgate p50 ms": via.p50_ms,
                    "promptgate p99 ms": via.p99_ms,
                    "added p50 ms": via.p50_ms - direct.p50_ms,
                    "added p99 ms": via.p99_ms - direct.p99_ms,
                    "errors": via.errors + direct.errors,
                },
            )

    def streams(self, server: Server) -> None:
        assert self.upstream is not None
        payload = {**server.payload, "stream": True, "stream_options": {"include_usage": True}}
        direct = self.load(
            None,
            kind="http-stream",
            target=f"127.0.0.1:{self.upstream.port}",
            path="/v1/chat/completions",
            body=json.dumps(payload, separators=(",", ":")).encode(),
            concurrency=1,
            processes=1,
        )
        via = self.load(
            server,
            kind="grpc-stream",
            target=server.target,
            path=EXECUTE_STREAM,
            body=server.stream_body,
            metadata=server.metadata,
            concurrency=1,
            processes=1,
        )
        self.report.add(
            "stream_latency",
            {
                "direct first p50 ms": direct.first_p50_ms,
                "promptgate first p50 ms": via.first_p50_ms,
                "added first p50 ms": via.first_p50_ms - direct.first_p50_ms,
                "added first p99 ms": via.first_p99_ms - direct.first_p99_ms,
                "direct last p50 ms": direct.p50_ms,
                "promptgate last p50 ms": via.p50_ms,
                "added last p50 ms": via.p50_ms - direct.p50_ms,
                "added last p99 ms": via.p99_ms - direct.p99_ms,
                "errors": via.errors + direct.errors,
            },
        )
        idle_rss = TreeMonitor(server.proc.pid).rss()
        with TreeMonitor(server.proc.pid) as monitor:
            many = self.load(
                server,
                kind="grpc-stream",
                target=server.target,
                path=EXECUTE_STREAM,
                body=server.paced_body,
                metadata=server.metadata,
                concurrency=self.p.streams,
                duration_s=self.p.streams_duration_s,
                warmup_s=0.0,
            )
        self.report.add(
            "stream_load",
            {
                "concurrent streams": self.p.streams,
                "completed": many.ok,
                "errors": many.errors,
                "first delta p50 ms": many.first_p50_ms,
                "first delta p99 ms": many.first_p99_ms,
                "last event p50 ms": many.p50_ms,
                "last event p99 ms": many.p99_ms,
                "idle RSS MiB": idle_rss / 2**20,
                "peak RSS MiB": monitor.peak_rss / 2**20,
                "server CPU cores": monitor.cpu_cores,
            },
        )
        if many.error_samples:
            self.report.notes.append(f"stream load errors: {many.error_samples}")

    def recording(self) -> None:
        assert self.upstream is not None
        concurrency = self.p.ladder[-1]
        stores: list[tuple[str, Any]] = [
            ("SQLite", lambda on: contextlib.nullcontext(self.sqlite_url(f"rec-{on}")))
        ]
        stores.append(("PostgreSQL", lambda on: scratch_postgres()))
        for store, database in stores:
            figures: dict[bool, LoadResult] = {}
            for on in (True, False):
                with database(on) as url:
                    server = start_promptgate(
                        self.report, self.upstream.port, url, recording=on, workers=1
                    )
                    try:
                        figures[on] = self.load(
                            server,
                            kind="grpc-unary",
                            target=server.target,
                            path=EXECUTE,
                            body=server.execute_body,
                            metadata=server.metadata,
                            concurrency=concurrency,
                        )
                    finally:
                        rows = stop_and_count(server)
                    self.report.recording.append(
                        {
                            "run": f"scenario 3, recording {'on' if on else 'off'}",
                            "store": store,
                            "recording": "on" if on else "off",
                            "answers": server.answered,
                            "rows": rows,
                        }
                    )
            on_rps, off_rps = figures[True].rps, figures[False].rps
            self.report.add(
                "recording",
                {
                    "store": store,
                    "concurrency": concurrency,
                    "rps recording on": on_rps,
                    "rps recording off": off_rps,
                    "cost of recording": 1 - on_rps / off_rps if off_rps else math.nan,
                    "p50 ms on": figures[True].p50_ms,
                    "p50 ms off": figures[False].p50_ms,
                    "errors": figures[True].errors + figures[False].errors,
                },
            )

    def hostile(self) -> None:
        """Scenario 4: probe latency while each attack runs (see bench.hostile)."""
        assert self.upstream is not None
        upstream_port = self.upstream.port

        def start() -> Server:
            url = self.sqlite_url("hostile")
            return start_promptgate(self.report, upstream_port, url, recording=True, workers=1)

        def restart(server: Server) -> Server:
            return restart_promptgate(self.report, server)

        Scenario(self.report, self.p.hostile, start, restart, PYTHON, str(ROOT)).run()

    def metrics(self) -> None:
        """Scenario 5: the cost of metrics (see bench.metrics_cost)."""
        assert self.upstream is not None
        upstream_port = self.upstream.port
        concurrency = self.p.ladder[-1]

        def start(on: bool) -> Server:
            url = self.sqlite_url(f"metrics-{'on' if on else 'off'}-{uuid.uuid4().hex[:6]}")
            return start_promptgate(
                self.report, upstream_port, url, recording=True, workers=1, metrics=on
            )

        def load(server: Server) -> LoadResult:
            return self.load(
                server,
                kind="grpc-unary",
                target=server.target,
                path=EXECUTE,
                body=server.execute_body,
                metadata=server.metadata,
                concurrency=concurrency,
            )

        def stop(server: Server) -> None:
            rows = stop_and_count(server)
            self.report.recording.append(
                {
                    "run": "scenario 5, metrics",
                    "store": "SQLite",
                    "recording": "on",
                    "answers": server.answered,
                    "rows": rows,
                }
            )

        _runs, row = metrics_cost.measure(
            self.p.metrics_rounds, start, stop, load, TreeMonitor, self.report.notes
        )
        self.report.add("metrics", {"concurrency": concurrency, **row})


def _uvloop_flag() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return []
    return ["--uvloop"]


# ---------------------------------------------------------------------- output


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    commit = _git("rev-parse", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    import grpc

    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory GiB": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "kernel": platform.release(),
        "commit": commit,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) < 1 and value != 0 and not value.is_integer():
            return f"{value:.3f}"
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(not run)\n"
    heads = list(rows[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(_fmt(row.get(h)) for h in heads) + " |" for row in rows]
    return "\n".join(lines) + "\n"


TITLES = {
    "unary_max": "1a. Unary ExecutePrompt: max throughput vs the floor (errors < 0.1%)",
    "unary_latency": "1b. Unary latency added to a direct upstream call (0 ms upstream)",
    "stream_latency": "2a. Streaming (32 chunks, no pacing): time to first delta / last event",
    "stream_load": "2b. Concurrent streams (32 chunks, 50 ms latency, 50 ms apart)",
    "recording": "3. Recording on vs off (same load, 1 server process)",
    "hostile": "4. Hostile callers: probe latency (Health/Check and ExecutePrompt, each every "
    "20 ms) while each attack runs",
    "metrics": "5. Metrics on vs off (same unary load, 1 server process, alternating rounds)",
}


TARGETS = {
    "unary_max": "Target: ratio >= 0.40 with the same number of server processes.",
    "unary_latency": "Target at c=1: added p50 <= 1.0 ms, added p99 <= 5 ms.",
    "stream_latency": "Target: added time to first delta p50 <= 1 ms.",
    "stream_load": "Target: 0 errors, server RSS < 1 GiB.",
    "recording": "Target: cost of recording < 10% on both stores; nothing lost (3b).",
    "hostile": "Target: probe p99 < 50 ms for both calls during every attack, no probe failure, "
    "no INTERNAL among the attack's codes, 0 $ref fetches. Attack calls: 2 callers in a closed "
    "loop (10 s deadline each), in-flight calls cut at the window's end; the server is "
    "restarted after an attack it does not recover from.",
    "metrics": "Target: throughput cost of metrics <= 3%; a scrape counts every answer.",
}


def render(report: Report, argv: list[str]) -> str:
    out = [
        "# promptgate benchmark results",
        "",
        f"Generated by `{' '.join(['make bench'] if not argv else ['python -m bench.run', *argv])}`"
        f" at {report.started}. Every ratio compares figures measured in this same run.",
        "",
        "## Machine",
        "",
        _table([report.machine]),
        "## Scenarios",
        "",
    ]
    for key, title in TITLES.items():
        out += [f"### {title}", "", TARGETS[key], "", _table(report.sections.get(key, []))]
    out += [
        "### 3b. Nothing lost: execution rows after each server stopped vs successful answers",
        "",
        _table(report.recording),
    ]
    if report.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    out += [
        "## Commands",
        "",
        "Processes started by the run (load: `bench.loadgen`, in-process, "
        "multi-process grpc.aio client):",
        "",
        "```sh",
        *report.commands,
        "```",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="promptgate benchmark suite")
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--only",
        choices=["unary", "recording", "hostile", "metrics"],
        help="run one part of the suite",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    report = Report(started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    report.machine = machine()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="promptgate-bench-") as workdir:
        bench = Bench(profile, Path(workdir), report)
        parts = ("unary_and_streams", "recording", "hostile", "metrics")
        wanted = {"unary": "unary_and_streams"}.get(args.only or "", args.only)
        for part in parts:
            if wanted and part != wanted:
                setattr(bench, part, lambda: None)
        bench.run()
    report.notes.append(f"suite time: {time.monotonic() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(report, sys.argv[1:] if argv is None else argv))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
    lost = [r for r in report.recording if r["recording"] == "on" and r["rows"] != r["answers"]]
    print(f"wrote {args.out}", flush=True)
    if lost:
        print(f"LOST RECORDS: {lost}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
