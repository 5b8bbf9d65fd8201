"""The audit entries of VersionedStore's writes (chains; prompts write their own).

Actions are ``{noun}.create``, ``{noun}.archive`` / ``{noun}.unarchive``,
``{noun}_version.create`` and ``{noun}_release_tag.set``; resources
``{noun}s/{name}``, ``{noun}s/{name}/versions/{number}`` and
``{noun}s/{name}/releaseTags/{tag}``. A version's entry holds its number, id
and description, not its content (the versions RPCs have that).
"""

from __future__ import annotations

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.audit import record


def created(session: AsyncSession, noun: str, row: Any) -> None:
    """A new resource."""
    record(
        session,
        workspace=row.workspace_id,
        action=f"{noun}.create",
        resource=f"{noun}s/{row.name}",
        after={"id": row.id, "description": row.description, "labels": row.labels},
    )


def archive_set(session: AsyncSession, noun: str, row: Any, archived: bool) -> None:
    """Archive / unarchive, called before ``row`` changes; nothing if it would not."""
    if row.archived == archived:
        return
    record(
        session,
        workspace=row.workspace_id,
        action=f"{noun}.archive" if archived else f"{noun}.unarchive",
        resource=f"{noun}s/{row.name}",
        before={"archived": row.archived},
        after={"archived": archived},
    )


def version_created(session: AsyncSession, noun: str, resource: Any, row: Any) -> None:
    """A new version (the tags it moves have entries of their own)."""
    record(
        session,
        workspace=row.workspace_id,
        action=f"{noun}_version.create",
        resource=f"{noun}s/{resource.name}/versions/{row.version}",
        after={"version": row.version, "id": row.id, "description": row.description},
    )


def tag_moved(
    session: AsyncSession, noun: str, resource: Any, tag: str, row: Any, previous: int
) -> None:
    """A release tag now points at version ``row``; ``previous`` is 0 for a new tag."""
    record(
        session,
        workspace=row.workspace_id,
        action=f"{noun}_release_tag.set",
        resource=f"{noun}s/{resource.name}/releaseTags/{tag}",
        before={"version": previous} if previous else None,
        after={"version": row.version, "version_id": row.id},
    )
