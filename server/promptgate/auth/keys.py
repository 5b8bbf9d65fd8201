"""KeyStore: workspaces and API keys.

A key reads ``pgk_<id>.<secret>``: the id finds the stored key, the secret is
checked against its SHA-256 in constant time. Only the hash is stored; the
whole key is shown once, when it is created.

Authentication is built to shrug off floods of bogus keys:

- a token that does not match ``KEY_PATTERN`` is refused before any hashing,
  cache or store work;
- keys whose secret checked out are cached (LRU + TTL, by key id) for
  ``cache_ttl_s``; only a right secret enters that cache, so bogus keys can
  never evict a valid one, and a wrong secret for a cached id costs no read;
- misses (no such id, wrong secret) go to a small cache of their own, so a
  repeated bogus key costs no store read and distinct ones only evict misses;
- store reads are batched: the ids awaiting a lookup are read in one query,
  one query at a time, so a flood costs the store one query per batch and
  holds at most one pool connection.

Revocations made on this server drop the key's cache entry at once; those
made on another replica take effect within ``cache_ttl_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import re
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from cachetools import TTLCache
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from promptgate.auth import audit_entries
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

KEY_CACHE_SIZE = 10_000
"""Keys with a checked secret kept in memory (least recently used go first)."""
MISS_CACHE_SIZE = 4_096
"""Refused well-formed tokens remembered, so that repeating one costs no store read."""
LOOKUP_BATCH = 256
"""Key ids read from the store in one query at most."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class _CheckedKey(NamedTuple):
    secret_sha256: str
    key: ApiKey


class _KeyRowReader:
    """Reads key rows by id; ids asked for while a query runs go together in the next.

    One query at a time, at most ``batch`` ids each: a flood of distinct ids
    costs the store one query per batch rather than one per id, and holds at
    most one pool connection, leaving the rest to the calls being served.
    """

    def __init__(self, sessions: SessionFactory, batch: int = LOOKUP_BATCH) -> None:
        self._sessions = sessions
        self._batch = batch
        self._waiting: dict[str, list[asyncio.Future[ApiKeyRow | None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def get(self, key_id: str) -> ApiKeyRow | None:
        """The row of ``key_id``, or None if there is none."""
        future: asyncio.Future[ApiKeyRow | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key_id, []).append(future)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_waiting())
        return await future

    async def _read_waiting(self) -> None:
        while self._waiting:
            batch = {
                key_id: self._waiting.pop(key_id)
                for key_id in list(itertools.islice(self._waiting, self._batch))
            }
            # A caller that gave up (cancelled) needs no read.
            batch = {k: fs for k, fs in batch.items() if not all(f.done() for f in fs)}
            if not batch:
                continue
            try:
                async with self._sessions() as session:
                    rows = await session.exec(
                        select(ApiKeyRow).where(col(ApiKeyRow.id).in_(list(batch)))
                    )
                    found = {row.id: row for row in rows.all()}
            except asyncio.CancelledError:
                for futures in (*batch.values(), *self._waiting.values()):
                    for future in futures:
                        future.cancel()
                self._waiting.clear()
                raise
            except Exception as exc:  # the waiters report it; the next batch may succeed
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for key_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(key_id))


class KeyStore:
    """Creates, lists, revokes and authenticates keys (see the module docstring)."""

    def __init__(self, sessions: SessionFactory, *, cache_ttl_s: float = 5.0) -> None:
        self._sessions = sessions
        self._rows = _KeyRowReader(sessions)
        self._checked: TTLCache[str, _CheckedKey] = TTLCache(KEY_CACHE_SIZE, cache_ttl_s)
        self._misses: TTLCache[tuple[str, str], bool] = TTLCache(MISS_CACHE_SIZE, cache_ttl_s)
        # Bumped by every revocation here: a lookup that overlapped one does not
        # cache what it read, which may predate the revocation.
        self._revocations = 0

    # Workspaces

    async def ensure_workspace(self, workspace: str, name: str = "") -> bool:
        """Create ``workspace`` if it does not exist; True if it was created."""
        _check_workspace(workspace)
        async with self._sessions.write() as session:
            if await session.get(WorkspaceRow, workspace) is not None:
                return False
            row = WorkspaceRow(id=workspace, name=name or workspace, created_at=utcnow())
            session.add(row)
            audit_entries.workspace_created(session, row)
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
            audit_entries.key_created(session, row)
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
                audit_entries.key_revoked(session, row)
                await session.commit()
        # Only this key's entry: the other keys stay cached.
        self._revocations += 1
        self._checked.pop(key_id, None)
        return _key(row)

    async def authenticate(self, token: str) -> ApiKey:
        """The live key ``token`` names; UNAUTHENTICATED (INVALID_API_KEY) otherwise."""
        match = KEY_PATTERN.fullmatch(token)
        if match is None:
            raise _invalid()
        key_id, secret = match.groups()
        digest = _hash(secret)
        checked = self._checked.get(key_id)
        if checked is not None:
            # Secrets never change: a different one is wrong without asking the store.
            if not hmac.compare_digest(checked.secret_sha256, digest):
                raise _invalid()
            return _live(checked.key)
        if (key_id, digest) in self._misses:
            raise _invalid()
        revocations = self._revocations
        row = await self._rows.get(key_id)
        stored = row.secret_sha256 if row is not None else digest
        matches = hmac.compare_digest(stored, digest)  # the same work whether the id exists
        if row is None or not matches:
            self._misses[(key_id, digest)] = True
            raise _invalid()
        key = _key(row)
        if revocations == self._revocations:
            self._checked[key_id] = _CheckedKey(row.secret_sha256, key)
        return _live(key)


def _live(key: ApiKey) -> ApiKey:
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= utcnow()):
        raise _invalid()
    return key


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
