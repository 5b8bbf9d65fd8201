"""Scenario 4, hostile callers: how long other callers wait while attacks run.

For each attack class, an attacker process sends the attack in a closed loop
(``ATTACKERS`` callers, each calling again as soon as its answer arrives, every
call with a ``CALL_DEADLINE_S`` deadline) for a fixed window, while this
process probes the server every ``PROBE_INTERVAL_S`` with a
``grpc.health.v1.Health/Check`` and a normal ExecutePrompt of the stored bench
prompt, each on its own schedule (open loop: a server that stops answering
shows up as probes piling up to their deadline, never as fewer samples). The
same probe with no attack is the baseline, measured first in the same run.

Attacks (inline prompts on the built-in mock provider, model ``mock-1``):

1. ``regex``: a JSON-schema ``pattern`` ``^(a+)+$`` against 40 ``a`` and ``!``;
2. ``remote-ref``: a schema ``{"$ref": <a local HTTP server that answers after
   5 s>}``; the requests that server receives are counted (should be 0);
3. ``template-bomb``: ``{{ x|upper|upper...}}`` (250 filters);
4. ``amplify-concat`` / ``amplify-format``: templates whose values grow to
   ~8 MB by concatenation, or to 300 MB by ``%`` formatting;
5. ``huge-int``: ``{{ ((9**128)**128)**128 }}``;
6. ``deep-json``: a JSON-typed variable given as text nested 1,000 deep;
7. ``bogus-keys``: a random well-formed API key on every call;
8. ``watchers``: ``WATCHERS`` WatchBatch streams idling on a batch whose one
   item waits 60 s (the probe runs once they are all open).

Everything is bounded by the harness: attack calls by their deadline and by
the window (calls in flight at its end are cancelled), probes by their own
deadline (a probe that times out marks the server unresponsive), the attacker
process by read timeouts (it is killed and started again), and the whole
scenario by a time budget (attacks that no longer fit are reported as
skipped). After each attack the server must answer a Health/Check and an
ExecutePrompt within the probe deadline; if it does not, it is killed and a
fresh one is started for the next attack. A misbehaving server is reported,
never a reason for the suite to fail.

The attacker process is ``python -m bench.hostile attacker``: it reads one JSON
command a line on stdin and writes JSON events (``started``, ``done``) on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import queue
import random
import secrets
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.loadgen import FULFILLED, percentile

if TYPE_CHECKING:
    from bench.run import Report, Server

EXECUTE = "/promptgate.v1.ExecutionService/ExecutePrompt"
EXECUTE_BATCH = "/promptgate.v1.ExecutionService/ExecuteBatch"
WATCH_BATCH = "/promptgate.v1.ExecutionService/WatchBatch"
CANCEL_BATCH = "/promptgate.v1.ExecutionService/CancelBatch"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = 1  # grpc.health.v1.HealthCheckResponse.SERVING

ATTACKERS = 2  # closed-loop attack callers
WATCHERS = 300  # idle WatchBatch streams
CALL_DEADLINE_S = 10.0  # every attack call
PROBE_INTERVAL_S = 0.02  # each probe (Health/Check and ExecutePrompt) every 20 ms
TARGET_P99_MS = 50.0
SLOW_REF_S = 5.0  # the $ref server answers after this long
BATCH_ITEM_LATENCY_MS = 60_000  # the watched batch's item: nothing changes meanwhile


@dataclass(frozen=True)
class Attack:
    """One attack class."""

    key: str
    title: str
    concurrency: int = ATTACKERS


ATTACKS = (
    Attack("regex", "1. regex ^(a+)+$ in a JSON-schema pattern"),
    Attack("remote-ref", "2. remote $ref in a schema (5 s server)"),
    Attack("template-bomb", "3. template: 250 chained filters"),
    Attack("amplify-concat", "4a. template: 'x'*999999 doubled 3 times"),
    Attack("amplify-format", "4b. template: '%300000000s' % x"),
    Attack("huge-int", "5. template: ((9**128)**128)**128"),
    Attack("deep-json", "6. JSON input nested 1,000 deep"),
    Attack("bogus-keys", "7. random well-formed API keys"),
    Attack("watchers", f"8. {WATCHERS} idle WatchBatch streams", concurrency=WATCHERS),
)


@dataclass(frozen=True)
class Timing:
    """Durations of one run of the scenario."""

    window_s: float  # each attack (and the baseline) runs this long
    probe_timeout_s: float  # a probe slower than this marks the server unresponsive
    setup_s: float  # the attacker's setup (opening the watchers) at most
    budget_s: float  # the whole scenario at most


# ---------------------------------------------------------------------- attack requests


def _inline(
    prompt: str,
    *,
    text: str | None = None,
    schema: dict[str, Any] | None = None,
    json_inputs: dict[str, str] | None = None,
    inputs: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ExecutePromptRequest (as a dict) of an inline prompt on the mock provider."""
    inline: dict[str, Any] = {"provider": "mock", "model": "mock-1", "prompt": prompt}
    mock = dict(extra or {})
    if text is not None:
        mock["text"] = text
    if mock:
        inline["parameters"] = {"extra": {"mock": mock}}
    if schema is not None:
        inline["response_format"] = {
            "type": "TYPE_JSON_SCHEMA",
            "schema_name": "hostile",
            "json_schema": schema,
        }
    values = {**(inputs or {}), **(json_inputs or {})}
    if json_inputs:
        inline["input_variables"] = [
            {"name": name, "type": "INPUT_TYPE_STRING"} for name in inputs or {}
        ] + [{"name": name, "type": "INPUT_TYPE_JSON"} for name in json_inputs]
    return {
        "inline_prompt": inline,
        "inputs": [{"name": name, "string_value": value} for name, value in values.items()],
    }


def attack_request(key: str, ref_url: str) -> dict[str, Any]:
    """The ExecutePromptRequest (as a dict) that attack ``key`` sends."""
    if key == "regex":
        return _inline(
            "Answer with a string.",
            text=json.dumps("a" * 40 + "!"),
            schema={"type": "string", "pattern": "^(a+)+$"},
        )
    if key == "remote-ref":
        return _inline("Answer with a string.", text='"hi"', schema={"$ref": ref_url})
    if key == "template-bomb":
        return _inline("{{ x" + "|upper" * 250 + " }}", inputs={"x": "a"})
    if key == "amplify-concat":
        return _inline(
            "{% set a = 'x'*999999 %}{% set b = a ~ a %}{% set c = b ~ b %}"
            "{% set d = c ~ c %}{{ d|length }}"
        )
    if key == "amplify-format":
        return _inline("{{ ('%300000000s' % x)|length }}", inputs={"x": "a"})
    if key == "huge-int":
        return _inline("{{ ((9**128)**128)**128 }}")
    if key == "deep-json":
        return _inline("{{ x|length }}", json_inputs={"x": "[" * 1000 + "]" * 1000})
    if key == "bogus-keys":
        return {"prompt": "bench", "inputs": [{"name": "question", "string_value": "Hi?"}]}
    if key == "watchers":  # the batch the watchers watch
        return {
            "inline_prompt": _inline("Wait.", extra={"latency_ms": BATCH_ITEM_LATENCY_MS})[
                "inline_prompt"
            ],
            "items": [{"custom_id": "only"}],
            "display_name": "hostile-watchers",
        }
    raise ValueError(f"unknown attack {key!r}")


_URL_SAFE = string.ascii_letters + string.digits + "-_"


def bogus_key() -> str:
    """A random key of the real shape: ``pgk_<26 lowercase alnum>.<43 url-safe>``."""
    ident = "".join(random.choices(string.ascii_lowercase + string.digits, k=26))
    return f"pgk_{ident}." + "".join(secrets.choice(_URL_SAFE) for _ in range(43))


# ---------------------------------------------------------------------- the attacker process


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _outcome(answer: bytes) -> str:
    from promptgate.api.v1 import execution_service_pb2 as epb

    response = epb.ExecutePromptResponse.FromString(answer)
    if response.state == FULFILLED:
        return "OK/FULFILLED"
    return f"OK/REJECTED {response.error.code or response.state}"


async def _attack(cmd: dict[str, Any]) -> dict[str, Any]:
    """Run one attack command; emits ``started``, returns the ``done`` event."""
    import grpc
    from google.protobuf import json_format

    from promptgate.api.v1 import execution_service_pb2 as epb

    key: str = cmd["attack"]
    md = (("authorization", f"Bearer {cmd['key']}"),)
    deadline: float = cmd["deadline"]
    codes: Counter[str] = Counter()
    calls = 0
    async with grpc.aio.insecure_channel(cmd["target"]) as channel:
        if key == "watchers":
            return await _watchers(channel, cmd, md)
        request = json_format.ParseDict(
            attack_request(key, cmd.get("ref_url", "")), epb.ExecutePromptRequest()
        )
        body = request.SerializeToString()
        execute = channel.unary_unary(EXECUTE)

        async def caller() -> None:
            nonlocal calls
            while True:
                meta = (("authorization", f"Bearer {bogus_key()}"),) if key == "bogus-keys" else md
                calls += 1
                try:
                    answer = await execute(body, metadata=meta, timeout=deadline)
                    codes[_outcome(answer)] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # reported, never fatal
                    codes[f"client {type(exc).__name__}"] += 1

        _emit({"event": "started"})
        tasks = [asyncio.create_task(caller()) for _ in range(int(cmd["concurrency"]))]
        await asyncio.sleep(cmd["duration"])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    answered = sum(codes.values())
    return {"event": "done", "calls": calls, "codes": dict(codes), "in_flight": calls - answered}


async def _watchers(channel: Any, cmd: dict[str, Any], md: Any) -> dict[str, Any]:
    """Create a batch that does not change for a minute and idle-watch it."""
    import grpc
    from google.protobuf import json_format

    from promptgate.api.v1 import execution_service_pb2 as epb

    codes: Counter[str] = Counter()
    request = json_format.ParseDict(attack_request("watchers", ""), epb.ExecuteBatchRequest())
    try:
        answer = await channel.unary_unary(EXECUTE_BATCH)(
            request.SerializeToString(), metadata=md, timeout=cmd["deadline"]
        )
    except grpc.aio.AioRpcError as exc:
        codes[f"ExecuteBatch {exc.code().name}"] += 1
        _emit({"event": "started", "note": "the batch could not be created"})
        return {"event": "done", "calls": 1, "codes": dict(codes), "in_flight": 0}
    batch_id = epb.ExecuteBatchResponse.FromString(answer).batch.id
    watch = channel.unary_stream(WATCH_BATCH)
    body = epb.WatchBatchRequest(batch_id=batch_id).SerializeToString()
    count = int(cmd["concurrency"])
    opened = 0
    all_open = asyncio.Event()
    # A stream lives at most through setup, the window and a deadline's worth more.
    lifetime = cmd["setup"] + cmd["duration"] + cmd["deadline"]

    async def watcher() -> None:
        nonlocal opened
        first = True
        try:
            async for _ in watch(body, metadata=md, timeout=lifetime):
                if first:
                    first = False
                    opened += 1
                    if opened == count:
                        all_open.set()
            codes["OK (stream ended)"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1

    tasks = [asyncio.create_task(watcher()) for _ in range(count)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_open.wait(), cmd["setup"])
    _emit({"event": "started", "note": f"{opened} of {count} streams open"})
    await asyncio.sleep(cmd["duration"])
    still = sum(not task.done() for task in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    codes["open at end"] += still
    with contextlib.suppress(grpc.aio.AioRpcError):
        await channel.unary_unary(CANCEL_BATCH)(
            epb.CancelBatchRequest(batch_id=batch_id).SerializeToString(),
            metadata=md,
            timeout=cmd["deadline"],
        )
    return {"event": "done", "calls": count + 1, "codes": dict(codes), "in_flight": 0}


def attacker_main() -> int:
    """The attacker process: one JSON command a line, until stdin closes."""
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            _emit(asyncio.run(_attack(cmd)))
        except Exception as exc:  # the parent reports it
            _emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
    return 0


class Attacker:
    """The attacker process, seen from the suite."""

    def __init__(self, python: str, cwd: str) -> None:
        self._argv = [python, "-m", "bench.hostile", "attacker"]
        self._cwd = cwd
        self.tail: list[str] = []
        self._spawn()

    def _spawn(self) -> None:
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self._cwd,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(self.proc, self._events), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str], events: queue.Queue[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.put(json.loads(line))
                    continue
            self.tail = [*self.tail[-20:], line.rstrip()]

    def send(self, cmd: dict[str, Any]) -> None:
        """Send a command; an attacker that died is started again first."""
        line = json.dumps(cmd) + "\n"
        for attempt in (1, 2):
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
                return
            except OSError:
                if attempt == 2:
                    raise
                self.restart()

    def read(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._events.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def restart(self) -> None:
        """Kill a stuck attacker and start a fresh one."""
        self.close()
        self._spawn()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------- the slow $ref server


class SlowRefServer:
    """A local HTTP server that answers every request with a schema after ``SLOW_REF_S``."""

    def __init__(self) -> None:
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                time.sleep(SLOW_REF_S)
                body = b'{"type": "string"}'
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/s.json"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------- the probe


@dataclass
class ProbeResult:
    """Latencies (ms) and failures of the probe's two calls."""

    health: list[float] = field(default_factory=list)
    execute: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def timed_out(self) -> bool:
        return any(name.endswith("DEADLINE_EXCEEDED") for name in self.failures)


async def probe(server: Server, duration_s: float, timeout_s: float) -> ProbeResult:
    """Health/Check and ExecutePrompt, each every PROBE_INTERVAL_S for ``duration_s``."""
    import grpc
    from grpc_health.v1 import health_pb2

    from promptgate.api.v1 import execution_service_pb2 as epb

    result = ProbeResult()
    async with grpc.aio.insecure_channel(server.target) as channel:
        health = channel.unary_unary(HEALTH_CHECK)
        execute = channel.unary_unary(EXECUTE)

        async def check() -> None:
            started = time.perf_counter()
            try:
                answer = await health(b"", timeout=timeout_s)
                if health_pb2.HealthCheckResponse.FromString(answer).status != SERVING:
                    result.failures["Health not SERVING"] += 1
            except grpc.aio.AioRpcError as exc:
                result.failures[f"Health {exc.code().name}"] += 1
            result.health.append((time.perf_counter() - started) * 1000)

        async def call() -> None:
            started = time.perf_counter()
            try:
                answer = await execute(
                    server.execute_body, metadata=server.metadata, timeout=timeout_s
                )
                response = epb.ExecutePromptResponse.FromString(answer)
                if response.state != FULFILLED:
                    result.failures[f"ExecutePrompt REJECTED {response.error.code}"] += 1
            except grpc.aio.AioRpcError as exc:
                result.failures[f"ExecutePrompt {exc.code().name}"] += 1
            result.execute.append((time.perf_counter() - started) * 1000)

        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        tick = 0
        while (due := start + tick * PROBE_INTERVAL_S) < start + duration_s:
            await asyncio.sleep(max(due - time.monotonic(), 0.0))
            tasks += [asyncio.create_task(check()), asyncio.create_task(call())]
            tick += 1
        await asyncio.gather(*tasks)  # each bounded by timeout_s
    return result


async def responsive(server: Server, timeout_s: float) -> bool:
    """Whether the server answers a Health/Check and an ExecutePrompt within ``timeout_s``."""
    import grpc

    from promptgate.api.v1 import execution_service_pb2 as epb

    async with grpc.aio.insecure_channel(server.target) as channel:
        try:
            await channel.unary_unary(HEALTH_CHECK)(b"", timeout=timeout_s)
            answer = await channel.unary_unary(EXECUTE)(
                server.execute_body, metadata=server.metadata, timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(epb.ExecutePromptResponse.FromString(answer).state == FULFILLED)


# ---------------------------------------------------------------------- the scenario


def _codes(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _stop(server: Server, grace_s: float) -> None:
    proc = server.proc.proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Scenario:
    """Runs the baseline and every attack against a promptgate started by ``start``."""

    def __init__(
        self,
        report: Report,
        timing: Timing,
        start: Callable[[], Server],
        restart: Callable[[Server], Server],
        python: str,
        cwd: str,
    ) -> None:
        self.report = report
        self.t = timing
        self._start = start
        self._restart = restart
        self._python = python
        self._cwd = cwd
        self.server: Server | None = None
        self._restart_s = 10.0  # how long a restart takes, as last measured
        self.restarts = 0

    def run(self) -> None:
        began = time.monotonic()
        budget_end = began + self.t.budget_s
        refs = SlowRefServer()
        attacker = Attacker(self._python, self._cwd)
        self.report.commands.append("python -m bench.hostile attacker  # scenario 4's attacks")
        try:
            server = self.server = self._start()
            baseline = asyncio.run(probe(server, self.t.window_s, self.t.probe_timeout_s))
            self._add("none (baseline)", baseline, None, [])
            for attack in ATTACKS:
                # The window, the probes' drain, the check afterwards and a restart.
                worst = self.t.window_s + 2 * self.t.probe_timeout_s + self._restart_s
                if attack.key == "watchers":
                    worst += self.t.setup_s
                if time.monotonic() + worst > budget_end:
                    self._skip(attack, f"skipped: scenario time limit ({self.t.budget_s:.0f} s)")
                    continue
                if self.server is None:
                    self._skip(attack, "not run: promptgate did not start again")
                    continue
                self._one(attack, self.server, attacker, refs)
        finally:
            attacker.close()
            refs.close()
            if self.server is not None:
                _stop(self.server, 15)
            self.report.notes.append(
                f"hostile callers: {time.monotonic() - began:.0f} s, "
                f"promptgate restarted {self.restarts} time(s)"
            )

    def _one(self, attack: Attack, server: Server, attacker: Attacker, refs: SlowRefServer) -> None:
        notes: list[str] = []
        fetched = refs.requests
        attacker.send(
            {
                "attack": attack.key,
                "target": server.target,
                "key": server.key,
                "duration": self.t.window_s,
                "deadline": CALL_DEADLINE_S,
                "setup": self.t.setup_s,
                "concurrency": attack.concurrency,
                "ref_url": refs.url,
            }
        )
        started = attacker.read(self.t.setup_s + CALL_DEADLINE_S)
        if started is None or started.get("event") != "started":
            why = started.get("error") if started else "no answer"
            notes.append(f"attacker did not start ({why}); killed")
            attacker.restart()
            self._add(attack.title, None, None, notes)
            return
        if started.get("note"):
            notes.append(str(started["note"]))
        probed = asyncio.run(probe(server, self.t.window_s, self.t.probe_timeout_s))
        done = attacker.read(self.t.window_s + CALL_DEADLINE_S + 5)
        if done is None or done.get("event") != "done":
            notes.append(f"attacker did not finish ({done.get('error') if done else 'hung'})")
            attacker.restart()
            done = None
        if attack.key == "remote-ref":
            notes.append(f"$ref fetches: {refs.requests - fetched}")
        if probed.timed_out:
            notes.append(f"server unresponsive (probes > {self.t.probe_timeout_s:.1f} s)")
        if not asyncio.run(responsive(server, self.t.probe_timeout_s)):
            notes.append("server still unresponsive after the attack: killed, restarted")
            _stop(server, 0)
            began = time.monotonic()
            try:
                self.server = self._restart(server)
                self._restart_s = time.monotonic() - began
                self.restarts += 1
            except Exception as exc:  # reported on the attacks that follow
                self.server = None
                notes.append(f"restart failed: {exc}")
        self._add(attack.title, probed, done, notes)

    def _skip(self, attack: Attack, why: str) -> None:
        self._add(attack.title, None, None, [why])

    def _add(
        self,
        title: str,
        probed: ProbeResult | None,
        done: dict[str, Any] | None,
        notes: list[str],
    ) -> None:
        nan = float("nan")
        health = probed.health if probed else []
        execute = probed.execute if probed else []
        codes: dict[str, int] = dict(done["codes"]) if done else {}
        if done and done.get("in_flight"):
            codes["cut at window end"] = int(done["in_flight"])
        internal = codes.get("INTERNAL", 0)
        if internal:
            notes.insert(0, f"INTERNAL {internal} (must be 0)")
        met = (
            probed is not None
            and not probed.failures
            and max(percentile(health, 99), percentile(execute, 99)) < TARGET_P99_MS
        )
        self.report.add(
            "hostile",
            {
                "attack": title,
                "attack calls": done["calls"] if done else "-",
                "attack status codes": _codes(codes) if done else "-",
                "Health p50 ms": percentile(health, 50) if health else nan,
                "Health p99 ms": percentile(health, 99) if health else nan,
                "Health max ms": max(health) if health else nan,
                "Execute p50 ms": percentile(execute, 50) if execute else nan,
                "Execute p99 ms": percentile(execute, 99) if execute else nan,
                "Execute max ms": max(execute) if execute else nan,
                "probe failures": _codes(dict(probed.failures)) if probed else "-",
                "p99 < 50 ms": ("yes" if met else "NO") if probed else "-",
                "notes": "; ".join(notes) or "-",
            },
        )
        if internal or (probed and probed.timed_out):
            self.report.notes.append(f"hostile callers, {title}: " + "; ".join(notes))


if __name__ == "__main__":
    if sys.argv[1:] == ["attacker"]:
        sys.exit(attacker_main())
    sys.exit("usage: python -m bench.hostile attacker  (the suite runs it: python -m bench.run)")
