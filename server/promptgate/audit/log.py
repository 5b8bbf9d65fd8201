"""Reading the audit log: pages of a workspace's entries, newest first."""

from __future__ import annotations

from typing import Final

from sqlalchemy import ColumnElement, func, or_
from sqlmodel import col, select

from promptgate.audit.model import AuditEvent, AuditQuery
from promptgate.errors import InvalidArgument
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import AuditEventRow, as_utc

MAX_AUDIT_PAGE_SIZE: Final = 200
"""Entries per page at most (each carries up to two bounded JSON changes)."""
_TOKEN_KIND: Final = "audit-events"


class AuditLog:
    """Lists the audit entries of a workspace (written by ``promptgate.audit.record``)."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def list(
        self, workspace: str, query: AuditQuery, *, size: int, token: str
    ) -> tuple[list[AuditEvent], str]:
        """A page of the entries matching ``query``, newest first, and the next page's token.

        A token names the filters it was issued for: one sent with other
        filters is INVALID_ARGUMENT rather than a page of another listing.
        """
        limit = min(page_size(size), MAX_AUDIT_PAGE_SIZE)
        query.check()
        fingerprint = query.fingerprint()
        after = decode_token(_TOKEN_KIND, token, {"seq": int, "f": str})
        if after is not None and after["f"] != fingerprint:
            raise InvalidArgument.field(
                "page_token", "was issued for other filters; send the same filters as before"
            )
        seq = col(AuditEventRow.seq)
        statement = select(AuditEventRow).where(AuditEventRow.workspace_id == workspace)
        if query.action:
            statement = statement.where(_action_is(query.action))
        if query.resource:
            statement = statement.where(_resource_is(query.resource))
        if query.actor:
            statement = statement.where(AuditEventRow.actor == query.actor)
        if query.start is not None:
            statement = statement.where(col(AuditEventRow.created_at) >= query.start)
        if query.end is not None:
            statement = statement.where(col(AuditEventRow.created_at) < query.end)
        if after is not None:
            statement = statement.where(seq < after["seq"])
        statement = statement.order_by(seq.desc()).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.exec(statement)).all())
        page = rows[:limit]
        next_token = (
            encode_token(_TOKEN_KIND, {"seq": page[-1].seq, "f": fingerprint})
            if len(rows) > limit
            else ""
        )
        return [_event(row) for row in page], next_token


def _action_is(action: str) -> ColumnElement[bool]:
    """An action ("prompt.archive"), or with no dot, a kind: "prompt" is "prompt.*"."""
    column = col(AuditEventRow.action)
    if "." in action:
        return column == action
    return func.substr(column, 1, len(action) + 1) == action + "."


def _resource_is(resource: str) -> ColumnElement[bool]:
    """A resource and everything under it ("prompts/a" and "prompts/a/...").

    substr, not LIKE: LIKE ignores case on SQLite but not on PostgreSQL.
    """
    column = col(AuditEventRow.resource)
    return or_(column == resource, func.substr(column, 1, len(resource) + 1) == resource + "/")


def _event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        time=as_utc(row.created_at),
        actor=row.actor,
        action=row.action,
        resource=row.resource,
        before=row.before,
        after=row.after,
    )
