"""Auth domain objects: scopes, plans and keys."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Scope(enum.StrEnum):
    """What a key may do. ``admin.manage`` implies every other scope."""

    EXECUTE = "prompt.execute"
    TEMPLATES = "template.manage"
    ANALYTICS = "analytics.read"
    ADMIN = "admin.manage"


@dataclass(frozen=True, slots=True)
class Limits:
    """A plan's limits; None means unlimited."""

    requests_per_minute: int | None
    concurrent_executions: int | None
    monthly_tokens: int | None


# The tiers of the prompt execution API seed (004): requests per hour turned
# into requests per minute (rounded up), concurrency and monthly tokens as given.
PLANS: dict[str, Limits] = {
    "free": Limits(2, 2, 10_000),
    "developer": Limits(17, 5, 100_000),
    "professional": Limits(167, 20, 1_000_000),
    "enterprise": Limits(1_667, 100, 10_000_000),
    "unlimited": Limits(None, None, None),
}
DEFAULT_PLAN = "developer"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key (never its secret)."""

    id: str
    workspace_id: str
    name: str
    prefix: str
    scopes: frozenset[Scope]
    plan: str
    limits: Limits
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def allows(self, scope: Scope) -> bool:
        """Whether the key carries ``scope`` (admin.manage carries all)."""
        return scope in self.scopes or Scope.ADMIN in self.scopes


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key with its secret, shown once."""

    key: ApiKey
    secret: str
