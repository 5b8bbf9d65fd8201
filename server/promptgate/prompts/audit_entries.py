"""The audit entries of the catalog's changes: one call per change in PromptCatalog.

Resource names: ``prompts/{name}``, ``prompts/{name}/versions/{number}``,
``prompts/{name}/releaseTags/{tag}`` (names are unique in a workspace and
never change). A version's entry holds its number, id, description, model
and provider, not its templates (ListPromptVersions has those).
"""

from __future__ import annotations

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.audit import record
from promptgate.store.tables import PromptRow, PromptVersionRow


def prompt_created(session: AsyncSession, row: PromptRow) -> None:
    """CreatePrompt."""
    record(
        session,
        workspace=row.workspace_id,
        action="prompt.create",
        resource=f"prompts/{row.name}",
        after={"id": row.id, "description": row.description, "labels": row.labels},
    )


def archive_set(session: AsyncSession, row: PromptRow, archived: bool) -> None:
    """ArchivePrompt / UnarchivePrompt, called before ``row`` changes; nothing if it would not."""
    if row.archived == archived:
        return
    record(
        session,
        workspace=row.workspace_id,
        action="prompt.archive" if archived else "prompt.unarchive",
        resource=f"prompts/{row.name}",
        before={"archived": row.archived},
        after={"archived": archived},
    )


def version_created(session: AsyncSession, prompt: PromptRow, row: PromptVersionRow) -> None:
    """CreatePromptVersion (the tags it moves have entries of their own)."""
    record(
        session,
        workspace=row.workspace_id,
        action="prompt_version.create",
        resource=f"prompts/{prompt.name}/versions/{row.version}",
        after={
            "version": row.version,
            "id": row.id,
            "description": row.description,
            "model": row.spec.get("model", ""),
            "provider": row.spec.get("provider", ""),
        },
    )


async def tag_moved(
    session: AsyncSession,
    version: PromptVersionRow,
    tag: str,
    previous: int,
    *,
    split_before: dict[str, Any] | None = None,
    split_after: dict[str, Any] | None = None,
) -> None:
    """A release tag now points at ``version``; ``previous`` is 0 for a new tag.

    A tag that splits its traffic (A/B test) also has its split, as stored, in
    ``before`` / ``after``; ``version`` is then the split's control.
    """
    # Already in the session's identity map (the caller read it): no query.
    prompt = await session.get(PromptRow, version.prompt_id)
    name = prompt.name if prompt is not None else version.prompt_id
    before: dict[str, Any] | None = {"version": previous} if previous else None
    if before is not None and split_before:
        before["split"] = split_before
    after: dict[str, Any] = {"version": version.version, "version_id": version.id}
    if split_after:
        after["split"] = split_after
    record(
        session,
        workspace=version.workspace_id,
        action="release_tag.set",
        resource=f"prompts/{name}/releaseTags/{tag}",
        before=before,
        after=after,
    )
