"""The breaking-change check of release tag moves, against the store.

A tag may only move to a version whose input variables keep working for the
callers of the version(s) it serves now (``promptgate.prompts.compatibility``),
unless the request allows breaking changes. ``served_versions`` is the one
place that reads what a tag serves.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.prompts.compatibility import CompatibilityReport, compare, refusal
from promptgate.prompts.model import PromptSpec, spec_from_json
from promptgate.store.tables import PromptVersionRow, ReleaseTagRow


async def served_versions(
    session: AsyncSession, prompt_id: str, tag: str
) -> list[tuple[int, PromptSpec]]:
    """The (version number, spec) pairs ``tag`` serves now; empty for a new tag."""
    tag_row = await session.get(ReleaseTagRow, (prompt_id, tag))
    if tag_row is None:
        return []
    row = await session.get(PromptVersionRow, tag_row.version_id)
    return [] if row is None else [(row.version, spec_from_json(row.spec))]


async def tag_report(
    session: AsyncSession, prompt_id: str, tag: str, candidate: PromptSpec
) -> CompatibilityReport | None:
    """``candidate`` compared with what ``tag`` serves; None when the tag does not exist."""
    served = await served_versions(session, prompt_id, tag)
    return compare(tag, served, candidate) if served else None


async def check_tag_moves(
    session: AsyncSession,
    prompt_id: str,
    tags: Sequence[str],
    candidate: PromptSpec,
    to_version: int,
    allow_breaking: bool,
) -> None:
    """Raise FailedPrecondition (BREAKING_CHANGE) listing every breaking change, over
    all ``tags``, of moving them to ``candidate`` (version ``to_version``)."""
    if allow_breaking:
        return
    reports = [await tag_report(session, prompt_id, tag, candidate) for tag in tags]
    if any(r is not None and not r.compatible for r in reports):
        raise refusal([r for r in reports if r is not None], to_version)
