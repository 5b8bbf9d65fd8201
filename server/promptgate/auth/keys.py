"""KeyStore: workspaces and API keys.

A key reads ``pgk_<id>.<secret>``: the id finds the stored key, the secret is
checked against its SHA-256 in constant time. Only the hash is stored; the
whole key is shown once, when it is created. Authenticated keys are cached
for a few seconds so the hot path does not read the store on every call;
revocations made on this server clear the cache at once, those made on
another replica take effect within ``cache_ttl_s``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from promptgate.auth.model import DEFAULT_PLAN, PLANS, ApiKey, IssuedKey, Limits, Scope
from promptgate.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from promptgate.ids import new_id
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import ApiKeyRow, WorkspaceRow, as_utc, utcnow

KEY_PATTERN = re.compile(r"^pgk_([0-9a-z]{26})\.([A-Za-z0-9_-]{20,128})$")
WORKSPACE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LIMIT_FIELDS = ("requests_per_minute", "concurrent_executions", "monthly_tokens")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Creates, lists, revokes and authenticates keys."""

    def __init__(self, sessions: SessionFactory, *, cache_ttl_s: float = 5.0) -> None:
        self._sessions = sessions
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    # Workspaces

    async def ensure_workspace(self, workspace: str, name: str = "") -> bool:
        """Create ``workspace`` if it does not exist; True if it was created."""
        _check_workspace(workspace)
        async with self._sessions.write() as session:
            if await session.get(WorkspaceRow, workspace) is not None:
                return False
            session.add(WorkspaceRow(id=workspace, name=name or workspace, created_at=utcnow()))
            try:
                await session.commit()
            except IntegrityError:
                return False
            return True

    async def has_keys(self, workspace: str) -> bool:
        """Whether ``workspace`` has any key (revoked ones included)."""
        async with self._sessions() as session:
            row = (
                await session.exec(select(ApiKeyRow.id).where(ApiKeyRow.workspace_id == workspace))
            ).first()
            return row is not None

    # Keys

    async def create(
        self,
        workspace: str,
        *,
        name: str,
        scopes: Iterable[Scope],
        plan: str = DEFAULT_PLAN,
        overrides: dict[str, int | None] | None = None,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        """Issue a key in an existing workspace."""
        scope_set = frozenset(scopes)
        problems: list[FieldViolation] = []
        if not scope_set:
            problems.append(FieldViolation("scopes", "a key needs at least one scope"))
        if plan not in PLANS:
            problems.append(
                FieldViolation("plan", f"unknown plan {plan!r} (plans: {', '.join(PLANS)})")
            )
        for field, value in (overrides or {}).items():
            if field not in LIMIT_FIELDS:
                problems.append(FieldViolation(f"limits.{field}", "not a limit"))
            elif value is not None and value < 0:
                problems.append(FieldViolation(f"limits.{field}", "must not be negative"))
        if expires_at is not None and expires_at <= utcnow():
            problems.append(FieldViolation("expire_time", "must be in the future"))
        if len(name) > 200:
            problems.append(FieldViolation("name", "at most 200 characters"))
        if problems:
            raise InvalidArgument.of(problems, reason="INVALID_PARAMETERS")
        key_id = new_id("key").removeprefix("key_")
        secret = secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=key_id,
            workspace_id=workspace,
            name=name,
            secret_sha256=_hash(secret),
            scopes=sorted(s.value for s in scope_set),
            plan=plan,
            limit_overrides={k: v for k, v in (overrides or {}).items() if v is not None},
            created_at=utcnow(),
            expires_at=expires_at,
        )
        async with self._sessions.write() as session:
            if await session.get(WorkspaceRow, workspace) is None:
                raise NotFound(f"workspace {workspace!r} not found", reason="WORKSPACE_NOT_FOUND")
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                raise AlreadyExists("key id collision; retry", reason="KEY_EXISTS") from None
        return IssuedKey(key=_key(row), secret=f"pgk_{key_id}.{secret}")

    async def list(self, workspace: str) -> list[ApiKey]:
        """The workspace's keys, newest first."""
        async with self._sessions() as session:
            rows = await session.exec(
                select(ApiKeyRow)
                .where(ApiKeyRow.workspace_id == workspace)
                .order_by(col(ApiKeyRow.created_at).desc(), col(ApiKeyRow.id).desc())
            )
            return [_key(r) for r in rows.all()]

    async def revoke(self, workspace: str, key_id: str) -> ApiKey:
        """Revoke a key of the workspace (idempotent)."""
        async with self._sessions.write() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is None or row.workspace_id != workspace:
                raise NotFound(f"API key {key_id!r} not found", reason="API_KEY_NOT_FOUND")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                session.add(row)
                await session.commit()
        self._cache.clear()
        return _key(row)

    async def authenticate(self, token: str) -> ApiKey:
        """The live key ``token`` names; UNAUTHENTICATED (INVALID_API_KEY) otherwise."""
        now = time.monotonic()
        digest = _hash(token)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            key = cached[1]
        else:
            key = await self._lookup(token)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self._ttl, key)
        if key is None:
            raise _invalid()
        if key.revoked_at is not None or (
            key.expires_at is not None and key.expires_at <= utcnow()
        ):
            raise _invalid()
        return key

    async def _lookup(self, token: str) -> ApiKey | None:
        match = KEY_PATTERN.match(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        async with self._sessions() as session:
            row = await session.get(ApiKeyRow, key_id)
        if row is None:
            hmac.compare_digest(_hash(secret), _hash(secret))  # same work either way
            return None
        if not hmac.compare_digest(row.secret_sha256, _hash(secret)):
            return None
        return _key(row)


def _invalid() -> Unauthenticated:
    return Unauthenticated(
        "the API key is not valid (unknown, revoked or expired)", reason="INVALID_API_KEY"
    )


def _check_workspace(workspace: str) -> None:
    if not WORKSPACE_PATTERN.fullmatch(workspace):
        raise InvalidArgument.field(
            "workspace",
            "1-64 lower-case letters, digits, '-' or '_', starting with a letter or digit",
        )


def _key(row: ApiKeyRow) -> ApiKey:
    base = PLANS.get(row.plan, PLANS[DEFAULT_PLAN])
    overrides: dict[str, Any] = row.limit_overrides or {}
    limits = Limits(
        requests_per_minute=overrides.get("requests_per_minute", base.requests_per_minute),
        concurrent_executions=overrides.get("concurrent_executions", base.concurrent_executions),
        monthly_tokens=overrides.get("monthly_tokens", base.monthly_tokens),
    )
    return ApiKey(
        id=row.id,
        workspace_id=row.workspace_id,
        name=row.name,
        prefix=f"pgk_{row.id}",
        scopes=frozenset(Scope(s) for s in row.scopes),
        plan=row.plan,
        limits=limits,
        created_at=as_utc(row.created_at),
        expires_at=as_utc(row.expires_at) if row.expires_at else None,
        revoked_at=as_utc(row.revoked_at) if row.revoked_at else None,
    )
