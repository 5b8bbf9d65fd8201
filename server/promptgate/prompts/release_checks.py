"""The breaking-change check of release tag moves, against the store.

A tag may only move to versions (one, or the versions of a traffic split)
whose input variables keep working for the callers of every version it serves
now (``promptgate.prompts.compatibility``), unless the request allows
breaking changes. ``served_versions`` is the one place that reads what a tag
serves: its version, or each version of its split.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.prompts.compatibility import CompatibilityReport, compare, refusal
from promptgate.prompts.model import PromptSpec, spec_from_json
from promptgate.prompts.split_store import load_split
from promptgate.store.tables import PromptVersionRow, ReleaseTagRow


async def served_versions(
    session: AsyncSession, prompt_id: str, tag: str
) -> list[tuple[int, PromptSpec]]:
    """The (version number, spec) pairs ``tag`` serves now; empty for a new tag."""
    split, rows = await load_split(session, prompt_id, tag)
    if split is None:
        tag_row = await session.get(ReleaseTagRow, (prompt_id, tag))
        row = await session.get(PromptVersionRow, tag_row.version_id) if tag_row else None
        rows = [row] if row is not None else []
    return [(r.version, spec_from_json(r.spec)) for r in rows]


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
    candidates: Sequence[tuple[int, PromptSpec]],
    allow_breaking: bool,
) -> None:
    """Raise FailedPrecondition (BREAKING_CHANGE) listing every breaking change of
    moving each of ``tags`` to the (version number, spec) ``candidates``."""
    if allow_breaking:
        return
    reports: list[tuple[int, CompatibilityReport]] = []
    for tag in tags:
        served = await served_versions(session, prompt_id, tag)
        if served:
            reports.extend((number, compare(tag, served, spec)) for number, spec in candidates)
    if any(not report.compatible for _, report in reports):
        raise refusal(reports)
