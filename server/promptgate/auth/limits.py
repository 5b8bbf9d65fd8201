"""Rate limits and quotas per key: requests per minute, concurrent executions,
monthly tokens.

``MemoryLimiter`` keeps the counters in this process. ``RedisLimiter`` keeps
them in Redis with atomic scripts, so several replicas enforce one key's
limits jointly. Requests per minute use a fixed window per calendar minute;
monthly tokens count the real usage of every execution (streams and
cancelled ones included), starting from what the store has recorded this
month.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from promptgate.auth.model import ApiKey
from promptgate.errors import ResourceExhausted

MonthUsage = Callable[[str, datetime], Awaitable[int]]
"""Tokens a key has used since the start of a month, from the store."""


@dataclass(frozen=True, slots=True)
class Window:
    """The state of a key's per-minute window after a request."""

    limit: int | None
    remaining: int | None
    reset_at: int
    """Unix seconds when the window resets."""


def month_start(now: float) -> datetime:
    """The first instant of the current UTC month."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(now: float) -> float:
    start = month_start(now)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month).timestamp()


class Limiter(Protocol):
    """Counts what keys use and refuses what their plans do not allow."""

    async def hit(self, key: ApiKey) -> Window:
        """Count a request; raise RESOURCE_EXHAUSTED (RATE_LIMIT_EXCEEDED) past the limit."""
        ...

    async def begin(self, key: ApiKey) -> None:
        """Start an execution; raise on the concurrency limit or an exhausted token quota."""
        ...

    async def end(self, key: ApiKey) -> None:
        """An execution started with ``begin`` ended."""
        ...

    async def add_tokens(self, key_id: str, tokens: int) -> None:
        """Count tokens an execution of key ``key_id`` used."""
        ...

    async def usage(self, key: ApiKey) -> tuple[int, int, int]:
        """(requests this minute, executions running, tokens this month)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _rate_limited(key: ApiKey, reset_at: int) -> ResourceExhausted:
    limit = key.limits.requests_per_minute
    return ResourceExhausted(
        f"API key {key.prefix} made more than {limit} requests this minute",
        reason="RATE_LIMIT_EXCEEDED",
        retry_after=max(reset_at - time.time(), 0.0),
        quota_subject=f"api_key:{key.id}",
        quota_description=f"{limit} requests per minute ({key.plan} plan)",
    )


def _too_many(key: ApiKey) -> ResourceExhausted:
    limit = key.limits.concurrent_executions
    return ResourceExhausted(
        f"API key {key.prefix} already runs {limit} executions at once",
        reason="CONCURRENT_LIMIT_EXCEEDED",
        retry_after=1.0,
        quota_subject=f"api_key:{key.id}",
        quota_description=f"{limit} concurrent executions ({key.plan} plan)",
    )


def _quota(key: ApiKey, now: float) -> ResourceExhausted:
    limit = key.limits.monthly_tokens
    return ResourceExhausted(
        f"API key {key.prefix} used its {limit} tokens for this month",
        reason="QUOTA_EXCEEDED",
        retry_after=max(_next_month(now) - now, 0.0),
        quota_subject=f"api_key:{key.id}",
        quota_description=f"{limit} tokens per month ({key.plan} plan)",
    )


class MemoryLimiter:
    """Counters in this process."""

    def __init__(self, month_usage: MonthUsage, clock: Callable[[], float] = time.time) -> None:
        self._month_usage = month_usage
        self._clock = clock
        self._minute: dict[str, tuple[int, int]] = {}
        self._running: dict[str, int] = {}
        self._tokens: dict[str, tuple[float, int]] = {}

    async def hit(self, key: ApiKey) -> Window:
        now = self._clock()
        minute = int(now // 60)
        reset_at = (minute + 1) * 60
        start, count = self._minute.get(key.id, (minute, 0))
        if start != minute:
            count = 0
        limit = key.limits.requests_per_minute
        if limit is not None and count >= limit:
            self._minute[key.id] = (minute, count)
            raise _rate_limited(key, reset_at)
        count += 1
        self._minute[key.id] = (minute, count)
        return Window(limit, None if limit is None else limit - count, reset_at)

    async def begin(self, key: ApiKey) -> None:
        tokens = key.limits.monthly_tokens
        if tokens is not None and await self._used(key) >= tokens:
            raise _quota(key, self._clock())
        # No await between reading and writing the count: concurrent begins
        # must not both see the same value.
        limit = key.limits.concurrent_executions
        running = self._running.get(key.id, 0)
        if limit is not None and running >= limit:
            raise _too_many(key)
        self._running[key.id] = running + 1

    async def end(self, key: ApiKey) -> None:
        self._running[key.id] = max(self._running.get(key.id, 1) - 1, 0)

    async def add_tokens(self, key_id: str, tokens: int) -> None:
        used = await self._used_by(key_id)
        month, _ = self._tokens[key_id]
        self._tokens[key_id] = (month, used + tokens)

    async def usage(self, key: ApiKey) -> tuple[int, int, int]:
        minute = int(self._clock() // 60)
        start, count = self._minute.get(key.id, (minute, 0))
        return (
            count if start == minute else 0,
            self._running.get(key.id, 0),
            await self._used(key),
        )

    async def _used(self, key: ApiKey) -> int:
        return await self._used_by(key.id)

    async def _used_by(self, key_id: str) -> int:
        month = month_start(self._clock()).timestamp()
        cached = self._tokens.get(key_id)
        if cached is None or cached[0] != month:
            used = await self._month_usage(key_id, month_start(self._clock()))
            cached = (month, used)
            self._tokens[key_id] = cached
        return cached[1]

    async def aclose(self) -> None:
        """Nothing to release."""


# KEYS[1] = counter; ARGV[1] = limit (-1: none), ARGV[2] = ttl ms.
# Returns the count after the increment, or -1 when the limit was reached.
_INCR_BELOW = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
if limit >= 0 and current >= limit then return -1 end
current = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return current
"""


class RedisLimiter:
    """Counters in Redis, shared by replicas (atomic Lua scripts)."""

    def __init__(
        self,
        url: str,
        month_usage: MonthUsage,
        *,
        prefix: str = "promptgate:limits:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        from redis.asyncio import Redis

        self._redis: Any = Redis.from_url(url)
        self._incr_below = self._redis.register_script(_INCR_BELOW)
        self._month_usage = month_usage
        self._prefix = prefix
        self._clock = clock

    async def hit(self, key: ApiKey) -> Window:
        now = self._clock()
        minute = int(now // 60)
        reset_at = (minute + 1) * 60
        limit = key.limits.requests_per_minute
        count = int(
            await self._incr_below(
                keys=[f"{self._prefix}rpm:{key.id}:{minute}"],
                args=[-1 if limit is None else limit, 120_000],
            )
        )
        if count < 0:
            raise _rate_limited(key, reset_at)
        return Window(limit, None if limit is None else limit - count, reset_at)

    async def begin(self, key: ApiKey) -> None:
        tokens = key.limits.monthly_tokens
        if tokens is not None and await self._used(key) >= tokens:
            raise _quota(key, self._clock())
        limit = key.limits.concurrent_executions
        count = int(
            await self._incr_below(
                keys=[f"{self._prefix}running:{key.id}"],
                # A replica that dies leaks its slots until the counter expires.
                args=[-1 if limit is None else limit, 3_600_000],
            )
        )
        if count < 0:
            raise _too_many(key)

    async def end(self, key: ApiKey) -> None:
        name = f"{self._prefix}running:{key.id}"
        if int(await self._redis.decr(name)) < 0:
            await self._redis.set(name, 0)

    async def add_tokens(self, key_id: str, tokens: int) -> None:
        await self._used_by(key_id)
        await self._redis.incrby(self._tokens_key(key_id), tokens)

    async def usage(self, key: ApiKey) -> tuple[int, int, int]:
        minute = int(self._clock() // 60)
        requests = await self._redis.get(f"{self._prefix}rpm:{key.id}:{minute}")
        running = await self._redis.get(f"{self._prefix}running:{key.id}")
        return (int(requests or 0), max(int(running or 0), 0), await self._used(key))

    def _tokens_key(self, key_id: str) -> str:
        return f"{self._prefix}tokens:{key_id}:{month_start(self._clock()):%Y%m}"

    async def _used(self, key: ApiKey) -> int:
        return await self._used_by(key.id)

    async def _used_by(self, key_id: str) -> int:
        name = self._tokens_key(key_id)
        value = await self._redis.get(name)
        if value is None:
            used = await self._month_usage(key_id, month_start(self._clock()))
            await self._redis.set(name, used, nx=True, ex=40 * 86_400)
            value = await self._redis.get(name)
        return int(value or 0)

    async def aclose(self) -> None:
        await self._redis.aclose()
