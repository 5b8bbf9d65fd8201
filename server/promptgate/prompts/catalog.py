"""PromptCatalog: prompts, versions and release tags in the store.

Versions are numbered per prompt without gaps: the next number is claimed by
a conditional update of the prompt's ``latest_version``, so two concurrent
CreatePromptVersion calls get different numbers on SQLite and PostgreSQL.
Every move of a release tag is appended to its history.

A version pins the partial versions its templates include (the latest of
each when it is created, see ``promptgate.prompts.partial_resolver``);
resolving it loads exactly those.

Executions resolve (prompt, tag or version) to a version on every call, so
resolutions are cached for ``resolve_ttl_s``. Writes through this catalog clear
the cache at once; the TTL bounds how long another replica's tag move or
archive can go unseen.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy import and_, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from promptgate.ids import new_id
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.prompts import audit_entries
from promptgate.prompts.compatibility import PRODUCTION, CompatibilityReport
from promptgate.prompts.model import (
    Prompt,
    PromptSpec,
    PromptVersion,
    ReleaseTag,
    ReleaseTagEvent,
    ResolvedPrompt,
    VersionWeight,
    spec_from_json,
    spec_to_json,
)
from promptgate.prompts.partial_resolver import PartialResolver
from promptgate.prompts.partials import PartialStore
from promptgate.prompts.release_checks import check_tag_moves, tag_report
from promptgate.prompts.split_store import FoundSplit, find_split, load_split, split_versions
from promptgate.prompts.splits import check_target, split_from_json, stored_split
from promptgate.prompts.templates import TemplateEngine
from promptgate.prompts.validation import ModelCheck, validate_spec
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import (
    PromptRow,
    PromptVersionRow,
    ReleaseTagEventRow,
    ReleaseTagRow,
    as_utc,
    utcnow,
)

PROMPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LATEST = "latest"
RESOLVE_CACHE_MAX = 10_000


class PromptCatalog:
    """Creates, reads and tags prompts and their versions within a workspace."""

    def __init__(
        self,
        sessions: SessionFactory,
        templates: TemplateEngine,
        check_model: ModelCheck,
        *,
        resolve_ttl_s: float = 1.0,
    ) -> None:
        self._sessions = sessions
        self._templates = templates
        self._check_model = check_model
        self._resolve_ttl = resolve_ttl_s
        self._resolved: dict[tuple[str, str, str, int], tuple[float, ResolvedPrompt]] = {}
        self._resolving: dict[tuple[str, str, str, int], asyncio.Future[ResolvedPrompt]] = {}
        # The partials templates include; a version pins the ones it was created with.
        self.partial_sets = PartialResolver(sessions, templates)
        self.partials = PartialStore(sessions, self.partial_sets)

    # Prompts

    async def create_prompt(
        self, workspace: str, name: str, description: str, labels: dict[str, str]
    ) -> Prompt:
        """Create an empty prompt; its name must be new in the workspace."""
        if not PROMPT_NAME.fullmatch(name):
            raise InvalidArgument.field(
                "name",
                "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
                reason="INVALID_PROMPT_NAME",
            )
        now = utcnow()
        row = PromptRow(
            id=new_id("prm"),
            workspace_id=workspace,
            name=name,
            description=description,
            labels=dict(labels),
            created_at=now,
            updated_at=now,
        )
        async with self._sessions.write() as session:
            session.add(row)
            audit_entries.prompt_created(session, row)
            try:
                await session.commit()
            except IntegrityError:
                raise AlreadyExists(
                    f"a prompt named {name!r} already exists",
                    reason="PROMPT_ALREADY_EXISTS",
                    metadata={"prompt": name},
                ) from None
        return _prompt(row, [])

    async def get_prompt(self, workspace: str, ref: str) -> Prompt:
        """A prompt by id or name, with its tags."""
        async with self._sessions() as session:
            row = await self._prompt_row(session, workspace, ref)
            return _prompt(row, await self._tags(session, row))

    async def list_prompts(
        self, workspace: str, *, size: int, token: str, show_archived: bool, name_prefix: str
    ) -> tuple[list[Prompt], str]:
        """A page of prompts by name, and the next page's token."""
        limit = page_size(size)
        after = decode_token("prompts", token, {"name": str})
        query = select(PromptRow).where(PromptRow.workspace_id == workspace)
        if not show_archived:
            query = query.where(col(PromptRow.archived).is_(False))
        if name_prefix:
            # substr, not LIKE: LIKE ignores case on SQLite but not on PostgreSQL.
            query = query.where(
                func.substr(col(PromptRow.name), 1, len(name_prefix)) == name_prefix
            )
        if after:
            query = query.where(col(PromptRow.name) > str(after.get("name", "")))
        query = query.order_by(col(PromptRow.name)).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.exec(query)).all())
            page = rows[:limit]
            prompts = [_prompt(r, await self._tags(session, r)) for r in page]
        next_token = encode_token("prompts", {"name": page[-1].name}) if len(rows) > limit else ""
        return prompts, next_token

    async def set_archived(self, workspace: str, ref: str, archived: bool) -> Prompt:
        """Archive or restore a prompt."""
        async with self._sessions.write() as session:
            row = await self._prompt_row(session, workspace, ref)
            audit_entries.archive_set(session, row, archived)
            row.archived = archived
            row.updated_at = utcnow()
            session.add(row)
            await session.commit()
            self._resolved.clear()
            return _prompt(row, await self._tags(session, row))

    # Versions

    async def create_version(
        self,
        workspace: str,
        ref: str,
        spec: PromptSpec,
        description: str,
        release_tags: Sequence[str],
        *,
        allow_breaking: bool = False,
        validate_only: bool = False,
    ) -> PromptVersion:
        """Validate ``spec`` and store it as the prompt's next version; move tags to it.

        A tag move that breaks the tag's callers is refused unless allowed
        (``release_checks``). ``validate_only`` does it all, then rolls back:
        the result is the version as it would be stored, without an id.
        """
        # Compiled off the event loop, so validation below hits the cache.
        await self._templates.prepare(m.template for m in spec.messages)
        partials = await self.partial_sets.for_spec(workspace, spec, "version")
        validate_spec(
            spec, self._templates, field="version", check_model=self._check_model, partials=partials
        )
        spec = replace(spec, partials=dict(partials.pins))
        for i, tag in enumerate(release_tags):
            _check_tag(tag, f"release_tags[{i}]")
        if len(set(release_tags)) != len(release_tags):
            raise InvalidArgument.field("release_tags", "a tag is listed twice")
        data = spec_to_json(spec)
        for _attempt in range(20):
            async with self._sessions.write() as session:
                prompt = await self._prompt_row(session, workspace, ref)
                if prompt.archived:
                    raise _archived(prompt.name)
                number = prompt.latest_version + 1
                now = utcnow()
                claimed = await session.exec(
                    update(PromptRow)
                    .where(
                        and_(
                            col(PromptRow.id) == prompt.id,
                            col(PromptRow.latest_version) == prompt.latest_version,
                        )
                    )
                    .values(latest_version=number, updated_at=now)
                )
                if claimed.rowcount != 1:
                    await session.rollback()
                    continue
                row = PromptVersionRow(
                    id=new_id("ver"),
                    prompt_id=prompt.id,
                    workspace_id=workspace,
                    version=number,
                    spec=data,
                    description=description,
                    created_at=now,
                )
                session.add(row)
                await check_tag_moves(
                    session, prompt.id, release_tags, [(number, spec)], allow_breaking
                )
                if validate_only:
                    would_be = replace(_version(row), id="")
                    await session.rollback()
                    return would_be
                audit_entries.version_created(session, prompt, row)
                for tag in release_tags:
                    await self._move_tag(session, prompt.id, tag, row, now)
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    continue
                self._resolved.clear()
                return _version(row)
        raise FailedPrecondition("too many concurrent versions; retry", reason="VERSION_CONFLICT")

    async def get_version(
        self, workspace: str, ref: str, *, version: int = 0, version_id: str = "", tag: str = ""
    ) -> PromptVersion:
        """One version by number, id or tag."""
        async with self._sessions() as session:
            prompt = await self._prompt_row(session, workspace, ref)
            row, _ = await self._select_version(
                session, prompt, version=version, version_id=version_id, tag=tag
            )
            return _version(row)

    async def list_versions(
        self, workspace: str, ref: str, *, size: int, token: str
    ) -> tuple[list[PromptVersion], str]:
        """A page of versions, newest first."""
        limit = page_size(size)
        after = decode_token("versions", token, {"v": int})
        async with self._sessions() as session:
            prompt = await self._prompt_row(session, workspace, ref)
            query = select(PromptVersionRow).where(PromptVersionRow.prompt_id == prompt.id)
            if after:
                query = query.where(col(PromptVersionRow.version) < int(after.get("v", 0)))
            query = query.order_by(col(PromptVersionRow.version).desc()).limit(limit + 1)
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = encode_token("versions", {"v": page[-1].version}) if len(rows) > limit else ""
        return [_version(r) for r in page], next_token

    async def resolve(self, workspace: str, ref: str, *, tag: str, version: int) -> ResolvedPrompt:
        """The version an execution of ``ref`` runs: by number if given, else by tag."""
        key = (workspace, ref, "" if version else tag, version)
        cached = self._resolved.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        # One lookup per key at a time: concurrent callers share it.
        pending = self._resolving.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve(key, workspace, ref, tag, version))
            self._resolving[key] = pending
            pending.add_done_callback(lambda _f: self._resolving.pop(key, None))
        return await asyncio.shield(pending)

    async def _resolve(
        self, key: tuple[str, str, str, int], workspace: str, ref: str, tag: str, version: int
    ) -> ResolvedPrompt:
        now = time.monotonic()
        async with self._sessions() as session:
            prompt_row = await self._prompt_row(session, workspace, ref, field="prompt")
            if prompt_row.archived:
                raise _archived(prompt_row.name)
            row, used_tag = await self._select_version(
                session, prompt_row, version=version, tag=tag
            )
            prompt = _prompt(prompt_row, [])
            split, variants = await load_split(session, prompt_row.id, used_tag)
        chosen = _version(row)
        others = tuple(_version(v) for v in variants)
        # With a split, callers pick a variant per call (splits.assign).
        resolved = ResolvedPrompt(
            prompt=prompt,
            version=chosen,
            release_tag=used_tag,
            split=split,
            variants=others,
            partials={
                v.id: await self.partial_sets.pinned(workspace, v.spec.partials)
                for v in (chosen, *others)
            },
        )
        if self._resolve_ttl > 0:
            if len(self._resolved) >= RESOLVE_CACHE_MAX:
                self._resolved.clear()
            self._resolved[key] = (now + self._resolve_ttl, resolved)
        return resolved

    # Release tags

    async def set_release_tag(
        self,
        workspace: str,
        ref: str,
        tag: str,
        *,
        version: int = 0,
        version_id: str = "",
        splits: Sequence[VersionWeight] = (),
        allow_breaking: bool = False,
        validate_only: bool = False,
    ) -> ReleaseTag:
        """Point ``tag`` at a version, or split it between versions; record the move
        (``validate_only``: only check it). A move that breaks the callers of what the
        tag serves is refused unless allowed."""
        _check_tag(tag, "tag")
        check_target(version, version_id, splits)
        async with self._sessions.write() as session:
            prompt = await self._prompt_row(session, workspace, ref)
            weighted = await split_versions(session, prompt, splits) if splits else []
            if weighted:
                row = weighted[0][0]
            else:
                row, _ = await self._select_version(
                    session, prompt, version=version, version_id=version_id
                )
            now = utcnow()
            # Writing the prompt row first serialises tag moves per prompt (a row
            # lock on PostgreSQL, the write lock on SQLite), so the tag row read
            # next is current and the history chain stays unbroken.
            await session.exec(
                update(PromptRow).where(col(PromptRow.id) == prompt.id).values(updated_at=now)
            )
            targets = [r for r, _ in weighted] or [row]
            candidates = [(r.version, spec_from_json(r.spec)) for r in targets]
            await check_tag_moves(session, prompt.id, [tag], candidates, allow_breaking)
            tag_row = await self._move_tag(
                session, prompt.id, tag, row, now, [(r.version, r.id, w) for r, w in weighted]
            )
            if validate_only:
                would_be = _tag(tag_row)
                await session.rollback()
                return would_be
            await session.commit()
            self._resolved.clear()
            return _tag(tag_row)

    async def compatibility(
        self, workspace: str, ref: str, spec: PromptSpec, tag: str = PRODUCTION
    ) -> CompatibilityReport | None:
        """``spec`` against what ``tag`` of prompt ``ref`` serves; None if either is missing."""
        async with self._sessions() as session:
            try:
                prompt = await self._prompt_row(session, workspace, ref)
            except (NotFound, InvalidArgument):
                return None
            return await tag_report(session, prompt.id, tag, spec)

    async def list_release_tags(self, workspace: str, ref: str) -> list[ReleaseTag]:
        """The prompt's tags by name, with "latest"."""
        async with self._sessions() as session:
            prompt = await self._prompt_row(session, workspace, ref)
            return await self._tags(session, prompt)

    async def find_split(self, workspace: str, ref: str, tag: str, split_id: str) -> FoundSplit:
        """A traffic split of ``tag``: ``split_id``, else the current one, else the latest."""
        async with self._sessions() as session:
            prompt = await self._prompt_row(session, workspace, ref)
            return await find_split(session, prompt, tag, split_id)

    async def tag_history(
        self, workspace: str, ref: str, *, tag: str, size: int, token: str
    ) -> tuple[list[ReleaseTagEvent], str]:
        """A page of tag moves, newest first."""
        limit = page_size(size)
        after = decode_token("tag-history", token, {"seq": int})
        async with self._sessions() as session:
            prompt = await self._prompt_row(session, workspace, ref)
            query = select(ReleaseTagEventRow).where(ReleaseTagEventRow.prompt_id == prompt.id)
            if tag:
                query = query.where(ReleaseTagEventRow.tag == tag)
            if after:
                query = query.where(col(ReleaseTagEventRow.seq) < int(after.get("seq", 0)))
            query = query.order_by(col(ReleaseTagEventRow.seq).desc()).limit(limit + 1)
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = encode_token("tag-history", {"seq": page[-1].seq}) if len(rows) > limit else ""
        return [
            ReleaseTagEvent(
                seq=r.seq or 0,
                tag=r.tag,
                version=r.version,
                version_id=r.version_id,
                previous_version=r.previous_version,
                time=as_utc(r.created_at),
                split=split_from_json(r.split),
            )
            for r in page
        ], next_token

    # Internals

    async def _prompt_row(
        self, session: AsyncSession, workspace: str, ref: str, field: str = "prompt"
    ) -> PromptRow:
        if not ref:
            raise InvalidArgument.field(
                field, "a prompt id or name is required", reason="INVALID_PROMPT"
            )
        query = select(PromptRow).where(
            PromptRow.workspace_id == workspace,
            or_(col(PromptRow.id) == ref, col(PromptRow.name) == ref),
        )
        rows = list((await session.exec(query)).all())
        if not rows:
            raise NotFound(
                f"prompt {ref!r} not found", reason="PROMPT_NOT_FOUND", metadata={"prompt": ref}
            )
        return next((r for r in rows if r.id == ref), rows[0])

    async def _select_version(
        self,
        session: AsyncSession,
        prompt: PromptRow,
        *,
        version: int = 0,
        version_id: str = "",
        tag: str = "",
    ) -> tuple[PromptVersionRow, str]:
        query = select(PromptVersionRow).where(PromptVersionRow.prompt_id == prompt.id)
        used_tag = ""
        if version_id:
            query = query.where(PromptVersionRow.id == version_id)
        elif version:
            if version < 0:
                raise InvalidArgument.field("version", "must be positive")
            query = query.where(PromptVersionRow.version == version)
        else:
            if not tag:
                raise InvalidArgument.field(
                    "release_tag", "give a release tag, a version number or a version_id"
                )
            used_tag = tag
            if tag == LATEST:
                query = query.where(PromptVersionRow.version == prompt.latest_version)
            else:
                tag_row = await session.get(ReleaseTagRow, (prompt.id, tag))
                if tag_row is None:
                    raise NotFound(
                        f"prompt {prompt.name!r} has no release tag {tag!r}",
                        reason="RELEASE_TAG_NOT_FOUND",
                        metadata={"prompt": prompt.name, "release_tag": tag},
                    )
                query = query.where(PromptVersionRow.id == tag_row.version_id)
        row = (await session.exec(query)).first()
        if row is None:
            if used_tag == LATEST:
                raise NotFound(
                    f"prompt {prompt.name!r} has no versions yet",
                    reason="VERSION_NOT_FOUND",
                    metadata={"prompt": prompt.name},
                )
            which = version_id or str(version)
            raise NotFound(
                f"prompt {prompt.name!r} has no version {which}",
                reason="VERSION_NOT_FOUND",
                metadata={"prompt": prompt.name, "version": which},
            )
        return row, used_tag

    async def _move_tag(
        self,
        session: AsyncSession,
        prompt_id: str,
        tag: str,
        version: PromptVersionRow,
        now: datetime,
        weighted: Sequence[tuple[int, str, float]] = (),
    ) -> ReleaseTagRow:
        """Move ``tag`` to ``version``, or to a split of 2+ ``weighted`` versions."""
        current = await session.get(ReleaseTagRow, (prompt_id, tag))
        previous = current.version if current else 0
        split_before = current.split if current else None
        split = stored_split(split_before, weighted, now)
        if current is None:
            current = ReleaseTagRow(
                prompt_id=prompt_id,
                tag=tag,
                version_id=version.id,
                version=version.version,
                updated_at=now,
                split=split,
            )
        else:
            current.version_id = version.id
            current.version = version.version
            current.updated_at = now
            current.split = split
        session.add(current)
        session.add(
            ReleaseTagEventRow(
                prompt_id=prompt_id,
                tag=tag,
                version_id=version.id,
                version=version.version,
                previous_version=previous,
                created_at=now,
                split=split,
            )
        )
        await audit_entries.tag_moved(
            session, version, tag, previous, split_before=split_before, split_after=split
        )
        return current

    async def _tags(self, session: AsyncSession, prompt: PromptRow) -> list[ReleaseTag]:
        rows = (
            await session.exec(select(ReleaseTagRow).where(ReleaseTagRow.prompt_id == prompt.id))
        ).all()
        tags = [_tag(r) for r in rows]
        if prompt.latest_version:
            latest = (
                await session.exec(
                    select(PromptVersionRow).where(
                        PromptVersionRow.prompt_id == prompt.id,
                        PromptVersionRow.version == prompt.latest_version,
                    )
                )
            ).first()
            if latest is not None:
                tags.append(
                    ReleaseTag(
                        tag=LATEST,
                        version=latest.version,
                        version_id=latest.id,
                        updated_at=as_utc(latest.created_at),
                        automatic=True,
                    )
                )
        return sorted(tags, key=lambda t: t.tag)


def _check_tag(tag: str, field: str) -> None:
    if tag == LATEST:
        raise InvalidArgument.field(
            field,
            '"latest" follows the newest version and cannot be set',
            reason="INVALID_RELEASE_TAG",
        )
    if not TAG_NAME.fullmatch(tag):
        raise InvalidArgument.field(
            field,
            "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            reason="INVALID_RELEASE_TAG",
        )


def _archived(name: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"prompt {name!r} is archived", reason="PROMPT_ARCHIVED", metadata={"prompt": name}
    )


def _prompt(row: PromptRow, tags: list[ReleaseTag]) -> Prompt:
    return Prompt(
        id=row.id,
        workspace_id=row.workspace_id,
        name=row.name,
        description=row.description,
        labels=dict(row.labels or {}),
        archived=row.archived,
        latest_version=row.latest_version,
        release_tags=tuple(tags),
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def _version(row: PromptVersionRow) -> PromptVersion:
    return PromptVersion(
        id=row.id,
        prompt_id=row.prompt_id,
        version=row.version,
        spec=spec_from_json(row.spec),
        description=row.description,
        created_at=as_utc(row.created_at),
    )


def _tag(row: ReleaseTagRow) -> ReleaseTag:
    return ReleaseTag(
        tag=row.tag,
        version=row.version,
        version_id=row.version_id,
        updated_at=as_utc(row.updated_at),
        split=split_from_json(row.split),
    )
