"""Router: which provider target serves an execution, with retries and fallbacks.

An execution has one or more candidates (a provider adapter, a model and the
provider request for it). The router orders them by the strategy (first
only, in order, or weighted at random with the rest as fallbacks), moves
targets that are cooling down to the back, and calls them:

- a failure that may pass (429, 5xx, timeouts, connection errors) is retried
  on the same target up to its ``max_attempts``, after an exponential backoff
  with full jitter, or the provider's Retry-After when that is longer;
- any failure, once retries are used up, moves on to the next target;
- a backoff that would pass the execution's deadline is not waited for;
- a target that fails ``cooldown_failures`` times in a row (across
  executions) is skipped for ``cooldown_s`` unless no other target is left;
- a stream falls back only before its first delta: after that, a failure
  ends the execution.

Every call is logged in ``RouteRun.attempts``; ``RouteRun.served`` is the
candidate that answered. Every call is also a span (``telemetry.Attempt``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from promptgate.backoff import full_jitter
from promptgate.errors import ProviderError, ProviderTimeout
from promptgate.execution import telemetry
from promptgate.execution.model import Attempt, ExecutionFailure
from promptgate.observability import tracing
from promptgate.prompts.model import Strategy
from promptgate.providers.base import (
    Provider,
    ProviderRequest,
    ProviderResponse,
    StreamDone,
    StreamEvent,
    TextDelta,
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A target ready to call."""

    index: int
    provider_name: str
    provider: Provider
    request: ProviderRequest
    weight: float = 1.0

    @property
    def key(self) -> tuple[str, str]:
        """The target's identity for cooldowns."""
        return (self.provider_name, self.request.model)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """The effective routing of one execution (defaults filled in)."""

    strategy: Strategy = Strategy.SINGLE
    max_attempts: int = 2
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    attempt_timeout_s: float | None = None


@dataclass(slots=True)
class RouteRun:
    """What happened while routing one execution."""

    attempts: list[Attempt] = field(default_factory=list)
    served: Candidate | None = None
    # The call under way: (provider, model, monotonic start); None between calls.
    in_flight: tuple[str, str, float] | None = None


@dataclass(frozen=True, slots=True)
class CooldownSettings:
    """When a failing target is set aside."""

    failures: int = 3
    seconds: float = 30.0


class TargetHealth:
    """Consecutive retryable failures per target, and cooldowns (this process)."""

    def __init__(
        self, settings: CooldownSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._failures: dict[tuple[str, str], int] = {}
        self._until: dict[tuple[str, str], float] = {}

    def cooling(self, key: tuple[str, str]) -> bool:
        """Whether ``key`` is cooling down now."""
        until = self._until.get(key)
        if until is None:
            return False
        if self._clock() >= until:
            del self._until[key]
            return False
        return True

    def succeeded(self, key: tuple[str, str]) -> None:
        """A call to ``key`` served."""
        self._failures.pop(key, None)
        self._until.pop(key, None)

    def failed(self, key: tuple[str, str]) -> None:
        """A call to ``key`` failed in a way that may pass."""
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        if count >= self._settings.failures:
            self._until[key] = self._clock() + self._settings.seconds
            self._failures[key] = 0


class Router:
    """Calls candidates by a policy. See the module docstring."""

    def __init__(
        self,
        health: TargetHealth,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        scrub: Callable[[str], str] | None = None,
    ) -> None:
        self._health = health
        self._sleep = sleep
        self._rng = rng or random.Random()
        # Provider error messages quote the provider's answer, and some providers
        # echo the credential they were sent: it must not reach the caller, the
        # stored execution or the attempt log.
        self._scrub = scrub

    def _scrubbed(self, exc: ProviderError) -> None:
        if self._scrub is not None:
            exc.message = self._scrub(exc.message)
            exc.args = (exc.message,)

    def order(self, candidates: Sequence[Candidate], strategy: Strategy) -> list[Candidate]:
        """The order to try ``candidates`` in; cooling targets go last."""
        if strategy is Strategy.SINGLE:
            ordered = list(candidates[:1])
        elif strategy is Strategy.WEIGHTED:
            ordered = self._weighted(list(candidates))
        else:
            ordered = list(candidates)
        ready = [c for c in ordered if not self._health.cooling(c.key)]
        return ready + [c for c in ordered if c not in ready]

    def _weighted(self, pool: list[Candidate]) -> list[Candidate]:
        ordered: list[Candidate] = []
        while pool:
            total = sum(max(c.weight, 0.0) for c in pool)
            if total <= 0:
                ordered.extend(pool)
                break
            point = self._rng.uniform(0, total)
            for candidate in pool:
                point -= max(candidate.weight, 0.0)
                if point <= 0:
                    break
            ordered.append(candidate)
            pool.remove(candidate)
        return ordered

    async def complete(
        self,
        candidates: Sequence[Candidate],
        policy: RoutePolicy,
        deadline: float,
        run: RouteRun,
    ) -> ProviderResponse:
        """The first answer of the candidates; raises the last failure if none answers."""
        last: ProviderError | None = None
        for candidate in self.order(candidates, policy.strategy):
            for attempt in range(1, max(policy.max_attempts, 1) + 1):
                started = time.monotonic()
                run.in_flight = (candidate.provider_name, candidate.request.model, started)
                traced = telemetry.attempt(candidate, len(run.attempts) + 1)
                try:
                    with tracing.use(traced.span):
                        response = await self._call(candidate, policy, deadline)
                except ProviderError as exc:
                    self._scrubbed(exc)
                    traced.failed(exc)
                    last = exc
                    self._log_failure(run, candidate, started, exc)
                    if not await self._retry(exc, attempt, policy, deadline):
                        break
                    continue
                except BaseException as exc:
                    traced.aborted(exc)
                    raise
                traced.answered(response)
                self._succeeded(run, candidate, started)
                run.served = candidate
                return response
        assert last is not None
        raise last

    async def stream(
        self,
        candidates: Sequence[Candidate],
        policy: RoutePolicy,
        deadline: float,
        run: RouteRun,
    ) -> AsyncGenerator[StreamEvent, None]:
        """The events of the first candidate that streams; fallback only before a delta."""
        last: ProviderError | None = None
        for candidate in self.order(candidates, policy.strategy):
            for attempt in range(1, max(policy.max_attempts, 1) + 1):
                started = time.monotonic()
                run.in_flight = (candidate.provider_name, candidate.request.model, started)
                sent = False
                events = candidate.provider.stream(candidate.request)
                # Not current: the attempt lives across yields.
                traced = telemetry.attempt(candidate, len(run.attempts) + 1)
                try:
                    async with _closing(events):
                        first = await self._first(events, policy, deadline)
                        run.served = candidate
                        if first and isinstance(first[-1], StreamDone):
                            traced.answered(first[-1].response)
                        for event in first:
                            sent = sent or isinstance(event, TextDelta)
                            yield event
                        if first and not isinstance(first[-1], TextDelta):
                            self._succeeded(run, candidate, started)
                            return
                        async for event in events:
                            if isinstance(event, TextDelta):
                                sent = True
                                yield event
                            else:
                                self._succeeded(run, candidate, started)
                                traced.answered(event.response)
                                yield event
                                return
                        raise ProviderError(
                            "the provider's stream ended without a final event",
                            code="STREAM_INTERRUPTED",
                            retryable=True,
                        )
                except ProviderError as exc:
                    self._scrubbed(exc)
                    traced.failed(exc)
                    last = exc
                    self._log_failure(run, candidate, started, exc)
                    if sent:
                        raise
                    run.served = None
                    if not await self._retry(exc, attempt, policy, deadline):
                        break
                except BaseException as exc:  # cancelled, closed, or out of time
                    traced.aborted(exc)
                    raise
        assert last is not None
        raise last

    async def _first(
        self,
        events: AsyncGenerator[StreamEvent, None],
        policy: RoutePolicy,
        deadline: float,
    ) -> list[StreamEvent]:
        """The stream's first event, within the attempt timeout."""
        limit = self._limit(policy, deadline)
        if limit is None:
            return [await anext(events)]
        try:
            async with asyncio.timeout(limit) as scope:
                return [await anext(events)]
        except TimeoutError:
            if scope.expired() and limit < deadline - asyncio.get_running_loop().time():
                raise ProviderTimeout("the provider did not start its stream in time") from None
            raise
        except StopAsyncIteration:
            return []

    async def _call(
        self, candidate: Candidate, policy: RoutePolicy, deadline: float
    ) -> ProviderResponse:
        limit = self._limit(policy, deadline)
        if limit is None:
            return await candidate.provider.complete(candidate.request)
        try:
            async with asyncio.timeout(limit) as scope:
                return await candidate.provider.complete(candidate.request)
        except TimeoutError:
            # Our own attempt limit expired: a retryable failure. The execution's
            # deadline expiring is not ours to handle.
            if scope.expired() and limit < deadline - asyncio.get_running_loop().time():
                raise ProviderTimeout("the provider call exceeded its attempt timeout") from None
            raise

    def _limit(self, policy: RoutePolicy, deadline: float) -> float | None:
        if policy.attempt_timeout_s is None:
            return None
        remaining = deadline - asyncio.get_running_loop().time()
        return max(min(policy.attempt_timeout_s, remaining), 0.0)

    async def _retry(
        self, exc: ProviderError, attempt: int, policy: RoutePolicy, deadline: float
    ) -> bool:
        """Wait before retrying the same target; False when it should not be retried."""
        if not exc.retryable or attempt >= policy.max_attempts:
            return False
        delay = full_jitter(
            attempt, base_s=policy.initial_backoff_s, cap_s=policy.max_backoff_s, rng=self._rng
        )
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        if asyncio.get_running_loop().time() + delay >= deadline:
            return False  # the wait would outlast the execution: try the next target
        if delay > 0:
            await self._sleep(delay)
        return True

    def _log_failure(
        self, run: RouteRun, candidate: Candidate, started: float, exc: ProviderError
    ) -> None:
        if exc.retryable:
            self._health.failed(candidate.key)
        run.in_flight = None
        run.attempts.append(
            Attempt(
                len(run.attempts) + 1,
                candidate.provider_name,
                candidate.request.model,
                time.monotonic() - started,
                ExecutionFailure(exc.code, exc.message, exc.status, exc.retry_after),
            )
        )

    def _succeeded(self, run: RouteRun, candidate: Candidate, started: float) -> None:
        self._health.succeeded(candidate.key)
        run.in_flight = None
        run.attempts.append(
            Attempt(
                len(run.attempts) + 1,
                candidate.provider_name,
                candidate.request.model,
                time.monotonic() - started,
            )
        )


class _closing:
    """``contextlib.aclosing`` for an async generator typed as such."""

    def __init__(self, events: AsyncGenerator[StreamEvent, None]) -> None:
        self._events = events

    async def __aenter__(self) -> AsyncGenerator[StreamEvent, None]:
        return self._events

    async def __aexit__(self, *exc_info: object) -> None:
        await self._events.aclose()
