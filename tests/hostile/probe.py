"""Responsiveness probe: while an attack runs, other callers must keep being answered.

``while_attacking(running, attack)`` runs ``attack`` (a coroutine) and, at the
same time, a Health/Check and a normal ExecutePrompt of the demo prompt every
``interval_s``. It returns the attack's result and the slowest answer each
probe got. Tests assert the slowest answer is well under what the attack alone
would hold the event loop for (e.g. ``< 1.0`` s while the attack would block
for many seconds): a margin that holds on a busy 2-core CI machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from grpc_health.v1 import health_pb2, health_pb2_grpc

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from tests.conftest import Running

T = TypeVar("T")

# What "still answering" means in these tests: far below the seconds an
# unbounded attack holds the loop, far above a busy CI machine's jitter.
RESPONSIVE_S = 1.0


@dataclass
class Probe:
    """The slowest answers seen while the attack ran."""

    health_s: list[float] = field(default_factory=list)
    execute_s: list[float] = field(default_factory=list)

    @property
    def slowest_s(self) -> float:
        return max([*self.health_s, *self.execute_s, 0.0])

    def assert_responsive(self, limit_s: float = RESPONSIVE_S) -> None:
        assert self.health_s and self.execute_s, "the probe got no answer at all"
        assert self.slowest_s < limit_s, (
            f"a caller waited {self.slowest_s:.2f} s while the attack ran "
            f"(health {max(self.health_s):.2f} s, execute {max(self.execute_s):.2f} s)"
        )


async def while_attacking(
    running: Running, attack: Awaitable[T], *, interval_s: float = 0.1, min_probes: int = 3
) -> tuple[T, Probe]:
    """Run ``attack`` while probing the server; return its result and the probe."""
    probe = Probe()
    health = health_pb2_grpc.HealthStub(running.channel)
    request = epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value="still there?")]
    )

    async def probing() -> None:
        while True:
            started = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            probe.health_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            answer = await running.executions.ExecutePrompt(request, timeout=30)
            probe.execute_s.append(time.perf_counter() - started)
            if len(probe.execute_s) >= min_probes:
                enough.set()
            assert answer.state == pb.EXECUTION_STATE_FULFILLED, answer.error
            await asyncio.sleep(interval_s)

    enough = asyncio.Event()

    async def counted() -> None:
        try:
            await probing()
        finally:
            enough.set()

    task = asyncio.create_task(counted())
    try:
        result = await attack
        # A quick attack still gets a few probes, so a stall right at its end shows.
        await enough.wait()
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return result, probe
