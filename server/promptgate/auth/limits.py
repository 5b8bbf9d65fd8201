"""Rate limits and quotas per key: requests per minute, concurrent executions,
monthly tokens.

``MemoryLimiter`` keeps the counters in this process. ``RedisLimiter`` keeps
them in Redis with atomic scripts, so several replicas enforce one key's
limits jointly. Requests per minute use a fixed window per calendar minute;
monthly tokens count the real usage of every execution (streams and
cancelled ones included), starting from what the store has recorded this
month.

Concurrent executions are leases: ``begin`` hands out a ``Lease`` that
``end`` gives back. In Redis each key has a sorted set of lease ids scored
by their expiry (Redis server time, so replicas' clocks do not matter). A
replica renews the leases it holds every third of ``lease_ttl_s``, so a
long execution keeps its slot, while the leases of a replica that died
expire within ``lease_ttl_s`` whatever traffic the key keeps getting.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from promptgate.auth.model import ApiKey
from promptgate.errors import ResourceExhausted

log = logging.getLogger(__name__)

MonthUsage = Callable[[str, datetime], Awaitable[int]]
"""Tokens a key has used since the start of a month, from the store."""


@dataclass(frozen=True, slots=True)
class Window:
    """The state of a key's per-minute window after a request."""

    limit: int | None
    remaining: int | None
    reset_at: int
    """Unix seconds when the window resets."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One running execution's concurrency slot: from ``Limiter.begin``, back to ``end``."""

    key_id: str
    id: str


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

    async def begin(self, key: ApiKey) -> Lease:
        """Start an execution; raise on the concurrency limit or an exhausted token quota."""
        ...

    async def end(self, lease: Lease) -> None:
        """The execution that got ``lease`` from ``begin`` ended."""
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

    async def begin(self, key: ApiKey) -> Lease:
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
        return Lease(key.id, "")

    async def end(self, lease: Lease) -> None:
        self._running[lease.key_id] = max(self._running.get(lease.key_id, 1) - 1, 0)

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

# Leases: KEYS[1] = the key's sorted set of lease ids scored by expiry (Redis
# server time, ms). The set itself expires once all its leases could have, and
# never sooner: replicas may run with different lease ttls.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_EXTEND_SET = """
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
"""
# ARGV[1] = limit (-1: none), ARGV[2] = lease ttl ms, ARGV[3] = lease id.
# Returns 1, or -1 when the limit was reached.
_BEGIN_LEASE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[1])
if limit >= 0 and redis.call('ZCARD', KEYS[1]) >= limit then return -1 end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
"""
    + _EXTEND_SET
    + "return 1\n"
)
# ARGV[1] = lease ttl ms, ARGV[2...] = lease ids held by the caller. A lease
# swept while its replica stalled is added back: the execution still runs.
_RENEW_LEASES = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
"""
    + _EXTEND_SET
    + "return #ARGV - 1\n"
)
# The number of leases that have not expired.
_COUNT_LEASES = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')\n"


class RedisLimiter:
    """Counters and leases in Redis, shared by replicas (atomic Lua scripts).

    ``lease_ttl_s`` bounds how long the executions of a replica that died
    keep their slots; the leases of live executions are renewed every third
    of it (see the module docstring).
    """

    def __init__(
        self,
        url: str,
        month_usage: MonthUsage,
        *,
        prefix: str = "promptgate:limits:",
        lease_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from redis.asyncio import Redis

        self._redis: Any = Redis.from_url(url)
        self._incr_below = self._redis.register_script(_INCR_BELOW)
        self._begin_lease = self._redis.register_script(_BEGIN_LEASE)
        self._renew_leases = self._redis.register_script(_RENEW_LEASES)
        self._count_leases = self._redis.register_script(_COUNT_LEASES)
        self._month_usage = month_usage
        self._prefix = prefix
        self._lease_ttl_ms = max(int(lease_ttl_s * 1000), 1)
        self._clock = clock
        self._held: dict[str, Lease] = {}
        self._renewer: asyncio.Task[None] | None = None

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

    async def begin(self, key: ApiKey) -> Lease:
        tokens = key.limits.monthly_tokens
        if tokens is not None and await self._used(key) >= tokens:
            raise _quota(key, self._clock())
        limit = key.limits.concurrent_executions
        lease = Lease(key.id, uuid.uuid4().hex)
        began = int(
            await self._begin_lease(
                keys=[self._leases_key(key.id)],
                args=[-1 if limit is None else limit, self._lease_ttl_ms, lease.id],
            )
        )
        if began < 0:
            raise _too_many(key)
        self._held[lease.id] = lease
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_held())
        return lease

    async def end(self, lease: Lease) -> None:
        # Stop renewing first: if the removal below fails or is interrupted, the
        # lease still expires within the ttl.
        self._held.pop(lease.id, None)
        await self._redis.zrem(self._leases_key(lease.key_id), lease.id)

    def _leases_key(self, key_id: str) -> str:
        return f"{self._prefix}leases:{key_id}"

    async def _renew_held(self) -> None:
        """Renew this replica's leases every third of the ttl while it holds any."""
        while self._held:
            await asyncio.sleep(self._lease_ttl_ms / 3000)
            by_key: defaultdict[str, list[str]] = defaultdict(list)
            for lease in self._held.values():
                by_key[lease.key_id].append(lease.id)
            for key_id, lease_ids in by_key.items():
                try:
                    await self._renew_leases(
                        keys=[self._leases_key(key_id)], args=[self._lease_ttl_ms, *lease_ids]
                    )
                except Exception as exc:  # Redis may come back before the leases expire
                    log.warning("renewing execution leases failed: %s", exc)

    async def add_tokens(self, key_id: str, tokens: int) -> None:
        await self._used_by(key_id)
        await self._redis.incrby(self._tokens_key(key_id), tokens)

    async def usage(self, key: ApiKey) -> tuple[int, int, int]:
        minute = int(self._clock() // 60)
        requests = await self._redis.get(f"{self._prefix}rpm:{key.id}:{minute}")
        running = await self._count_leases(keys=[self._leases_key(key.id)])
        return (int(requests or 0), int(running or 0), await self._used(key))

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
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.wait({self._renewer})
        await self._redis.aclose()
