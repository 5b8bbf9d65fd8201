"""The response cache: exact-match answers for identical provider requests.

The key is a SHA-256 of the workspace, the provider and the exact provider
request body (canonical JSON), so only byte-identical requests share an
answer and workspaces never see each other's. Values are the provider's
answer (text, function calls, finish reason, model) without usage: a cached
execution is recorded with zero provider usage and zero cost.

Two stores: ``MemoryCache`` (an LRU with per-entry TTL in this process, the
default) and
``RedisCache`` (shared by replicas, entries expire by Redis TTL).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, NamedTuple, Protocol

from cachetools import TLRUCache
from pydantic import TypeAdapter

from promptgate.chat import FinishReason, FunctionCall

log = logging.getLogger(__name__)

_CALLS: TypeAdapter[list[FunctionCall]] = TypeAdapter(list[FunctionCall])


class CachedAnswer:
    """A provider answer as kept in the cache."""

    __slots__ = ("finish_reason", "function_calls", "model", "provider", "text")

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        text: str,
        function_calls: tuple[FunctionCall, ...],
        finish_reason: FinishReason,
    ) -> None:
        self.provider = provider
        self.model = model
        self.text = text
        self.function_calls = function_calls
        self.finish_reason = finish_reason

    def dumps(self) -> str:
        """JSON for storage."""
        return json.dumps(
            {
                "provider": self.provider,
                "model": self.model,
                "text": self.text,
                "function_calls": _CALLS.dump_python(list(self.function_calls), mode="json"),
                "finish_reason": self.finish_reason.value,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, data: str | bytes) -> CachedAnswer:
        """From storage."""
        value = json.loads(data)
        return cls(
            provider=value["provider"],
            model=value["model"],
            text=value["text"],
            function_calls=tuple(_CALLS.validate_python(value["function_calls"])),
            finish_reason=FinishReason(value["finish_reason"]),
        )


def cache_key(workspace: str, provider: str, payload: dict[str, Any]) -> str:
    """The cache key of a provider request."""
    canonical = json.dumps(
        [workspace, provider, payload], sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache(Protocol):
    """Where cached answers live."""

    name: str

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under ``key``, if any and not expired."""
        ...

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        """Store ``answer`` under ``key`` for ``ttl_s`` seconds."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class _Entry(NamedTuple):
    ttl_s: float
    data: str


def _expiry(_key: str, entry: _Entry, now: float) -> float:
    return now + entry.ttl_s


class MemoryCache:
    """At most ``max_entries`` answers in this process: each expires after its
    own TTL, and the least recently used go first when full."""

    name = "memory"

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: TLRUCache[str, _Entry] = TLRUCache(max_entries, _expiry)

    async def get(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        return None if entry is None else CachedAnswer.loads(entry.data)

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        self._entries[key] = _Entry(ttl_s, answer.dumps())

    async def aclose(self) -> None:
        self._entries.clear()


class RedisCache:
    """Answers in Redis under ``<prefix><key>`` with a TTL; failures count as misses."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "promptgate:cache:") -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url)
        self._prefix = prefix

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            data = await self._redis.get(self._prefix + key)
        except Exception as exc:  # an unreachable cache must not fail executions
            log.warning("redis cache read failed: %s", exc)
            return None
        return CachedAnswer.loads(data) if data else None

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        try:
            await self._redis.set(self._prefix + key, answer.dumps(), px=max(int(ttl_s * 1000), 1))
        except Exception as exc:
            log.warning("redis cache write failed: %s", exc)

    async def aclose(self) -> None:
        await self._redis.aclose()
