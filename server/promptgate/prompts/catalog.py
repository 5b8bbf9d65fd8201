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
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy import and_, func, update
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
from promptgate.prompts.names import NAME, check_release_tags, check_tag
from promptgate.prompts.partial_resolver import PartialResolver
from promptgate.prompts.partials import PartialStore
from promptgate.prompts.release_checks import check_tag_moves, tag_report
from promptgate.prompts.split_store import FoundSplit, find_split, load_split, split_versions
from promptgate.prompts.splits import check_target, split_from_json, stored_split
from promptgate.prompts.templates import TemplateEngine
from promptgate.prompts.validation import ModelCheck, validate_spec
from promptgate.prompts.versioned import (
    VersionedKind,
    VersionedStore,
    event_of,
    resource_fields,
    tag_of,
)
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import (
    PromptRow,
    PromptVersionRow,
    ReleaseTagEventRow,
    ReleaseTagRow,
    as_utc,
    utcnow,
)

RESOLVE_CACHE_MAX = 10_000
# Prompts are versioned and tagged like chains; splits and audit entries are theirs.
PROMPTS = VersionedKind(
    noun="prompt",
    id_prefix="prm",
    version_prefix="ver",
    resource=PromptRow,
    version=PromptVersionRow,
    tag=ReleaseTagRow,
    event=ReleaseTagEventRow,
    key="prompt_id",
)


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
        self._rows = VersionedStore(sessions, PROMPTS)
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
        if not NAME.fullmatch(name):
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
        check_release_tags(release_tags)
        data = spec_to_json(spec)
        for _attempt in range(20):
            async with self._sessions.write() as session:
                prompt = await self._prompt_row(session, workspace, ref)
                if prompt.archived:
                    raise self._rows.archived(prompt.name)
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
        rows, next_token = await self._rows.list_versions(workspace, ref, size=size, token=token)
        return [_version(r) for r in rows], next_token

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
                raise self._rows.archived(prompt_row.name)
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
        check_tag(tag, "tag")
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
        rows, next_token = await self._rows.tag_history_rows(
            workspace, ref, tag=tag, size=size, token=token
        )
        return [replace(event_of(r), split=split_from_json(r.split)) for r in rows], next_token

    # Internals

    async def _prompt_row(
        self, session: AsyncSession, workspace: str, ref: str, field: str = "prompt"
    ) -> PromptRow:
        row: PromptRow = await self._rows.resource(session, workspace, ref, field)
        return row

    async def _select_version(
        self,
        session: AsyncSession,
        prompt: PromptRow,
        *,
        version: int = 0,
        version_id: str = "",
        tag: str = "",
    ) -> tuple[PromptVersionRow, str]:
        return await self._rows.select_version(
            session, prompt, version=version, version_id=version_id, tag=tag
        )

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
        return await self._rows.tags_of(session, prompt, _tag)


def _prompt(row: PromptRow, tags: list[ReleaseTag]) -> Prompt:
    return Prompt(**resource_fields(row, tags))


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
    return replace(tag_of(row), split=split_from_json(row.split))
