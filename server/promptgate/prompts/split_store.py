"""Traffic splits in the store: the versions a split names, and a tag's past splits.

A tag's current split is the ``split`` JSON of its ``release_tags`` row; every
move of the tag copies the split it set (or none) into its history event, so
a split that ended is still found there (see ``find_split``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.errors import InvalidArgument, NotFound
from promptgate.prompts.model import TrafficSplit, VersionWeight
from promptgate.prompts.splits import split_from_json
from promptgate.store.tables import PromptRow, PromptVersionRow, ReleaseTagEventRow, ReleaseTagRow

# How many of a tag's moves find_split reads, newest first, looking for a split.
MAX_EVENTS_SEARCHED = 10_000


@dataclass(frozen=True, slots=True)
class FoundSplit:
    """A split of a release tag, and whether the tag still splits that way."""

    prompt_id: str
    prompt_name: str
    tag: str
    split: TrafficSplit
    active: bool


async def split_versions(
    session: AsyncSession, prompt: PromptRow, entries: Sequence[VersionWeight]
) -> list[tuple[PromptVersionRow, float]]:
    """The version rows ``entries`` name, in order, with their weights.

    NOT_FOUND (VERSION_NOT_FOUND) for a version the prompt does not have;
    INVALID_ARGUMENT (INVALID_SPLIT) when a version is listed twice or an
    entry's number and id disagree.
    """
    numbers = [e.version for e in entries if e.version]
    ids = [e.version_id for e in entries if e.version_id]
    query = select(PromptVersionRow).where(
        PromptVersionRow.prompt_id == prompt.id,
        or_(col(PromptVersionRow.version).in_(numbers), col(PromptVersionRow.id).in_(ids)),
    )
    rows = list((await session.exec(query)).all())
    by_number = {r.version: r for r in rows}
    by_id = {r.id: r for r in rows}
    chosen: list[tuple[PromptVersionRow, float]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        row = by_id.get(entry.version_id) if entry.version_id else by_number.get(entry.version)
        if row is None:
            which = entry.version_id or str(entry.version)
            raise NotFound(
                f"prompt {prompt.name!r} has no version {which} (splits[{i}])",
                reason="VERSION_NOT_FOUND",
                metadata={"prompt": prompt.name, "version": which, "field": f"splits[{i}]"},
            )
        if entry.version and entry.version != row.version:
            raise InvalidArgument.field(
                f"splits[{i}]",
                f"version {entry.version} and version_id {entry.version_id!r} name different "
                "versions",
                reason="INVALID_SPLIT",
            )
        if row.id in seen:
            raise InvalidArgument.field(
                f"splits[{i}]",
                f"version {row.version} is also splits[{seen[row.id]}]",
                reason="INVALID_SPLIT",
            )
        seen[row.id] = i
        chosen.append((row, entry.weight))
    return chosen


async def load_split(
    session: AsyncSession, prompt_id: str, tag: str
) -> tuple[TrafficSplit | None, list[PromptVersionRow]]:
    """The current split of ``tag`` and its version rows in order; (None, []) without one."""
    tag_row = await session.get(ReleaseTagRow, (prompt_id, tag)) if tag else None
    split = split_from_json(tag_row.split) if tag_row is not None else None
    if split is None:
        return None, []
    ids = [v.version_id for v in split.versions]
    rows = (
        await session.exec(select(PromptVersionRow).where(col(PromptVersionRow.id).in_(ids)))
    ).all()
    by_id = {r.id: r for r in rows}
    if set(ids) - set(by_id):  # versions are never deleted; just in case
        return None, []
    return split, [by_id[i] for i in ids]


async def find_split(
    session: AsyncSession, prompt: PromptRow, tag: str, split_id: str = ""
) -> FoundSplit:
    """The split ``split_id`` of ``tag``; without an id the current one, else the latest.

    NOT_FOUND (SPLIT_NOT_FOUND) when the tag never split its traffic (that way).
    """
    current_row = await session.get(ReleaseTagRow, (prompt.id, tag))
    current = split_from_json(current_row.split) if current_row is not None else None
    found = current if current is not None and split_id in ("", current.id) else None
    if found is None:
        events = (
            select(ReleaseTagEventRow.split)
            .where(
                ReleaseTagEventRow.prompt_id == prompt.id,
                ReleaseTagEventRow.tag == tag,
                col(ReleaseTagEventRow.split).is_not(None),
            )
            .order_by(col(ReleaseTagEventRow.seq).desc())
            .limit(MAX_EVENTS_SEARCHED)
        )
        stream = await session.stream(events.execution_options(yield_per=100))
        async for (data,) in stream:
            split = split_from_json(data)
            if split is not None and split_id in ("", split.id):
                found = split
                break
        await stream.close()
    if found is None:
        what = f"split {split_id!r}" if split_id else "traffic split"
        raise NotFound(
            f"release tag {tag!r} of prompt {prompt.name!r} has no {what}",
            reason="SPLIT_NOT_FOUND",
            metadata={"prompt": prompt.name, "release_tag": tag, "split_id": split_id},
        )
    return FoundSplit(
        prompt_id=prompt.id,
        prompt_name=prompt.name,
        tag=tag,
        split=found,
        active=current is not None and current.id == found.id,
    )
