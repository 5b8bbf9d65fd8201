"""PartialStore: partials, their immutable versions, and the sets prompts render with.

A partial is a named template snippet, unique per workspace, that prompt
templates include with ``{% include "name" %}``. Its versions are numbered
1, 2, 3... without gaps, like a prompt's: the next number is claimed by a
conditional update of the partial's ``latest_version``. A version's content is
checked like any template and may include other partials; the store keeps
the names it includes, so sets are resolved by reading rows, not by parsing.

``latest`` resolves the partials a new prompt version or an inline prompt
includes (the latest version of each, nested ones too) and refuses unknown
or archived partials, cycles and sets past the bounds of
``promptgate.prompts.partial_sets``; ``pinned`` loads the exact versions a
stored prompt version pinned. Versions never change, so loaded ones are cached.

Archived partials are hidden from ``list_partials``, get no new versions and
cannot be newly included; prompt versions that pinned one keep rendering it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cachetools import LRUCache
from sqlalchemy import and_, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from promptgate.ids import new_id
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.prompts.model import PromptSpec
from promptgate.prompts.partial_sets import (
    EMPTY_PARTIALS,
    MAX_PARTIALS,
    PartialSet,
    PinnedPartial,
    check_set,
    too_many,
)
from promptgate.prompts.templates import TemplateEngine
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import PartialRow, PartialVersionRow, as_utc, utcnow

PARTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PINNED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Partial:
    """A named partial."""

    id: str
    workspace_id: str
    name: str
    description: str
    archived: bool
    latest_version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PartialVersion:
    """An immutable version of a partial."""

    id: str
    partial_id: str
    name: str
    version: int
    content: str
    includes: tuple[str, ...]
    description: str
    created_at: datetime


class PartialStore:
    """Creates and reads partials of a workspace, and resolves the sets prompts include."""

    def __init__(self, sessions: SessionFactory, templates: TemplateEngine) -> None:
        self._sessions = sessions
        self._templates = templates
        self._pinned: LRUCache[tuple[str, str, int], PinnedPartial] = LRUCache(PINNED_CACHE_SIZE)

    # Partials

    async def create_partial(
        self, workspace: str, name: str, description: str, content: str, version_description: str
    ) -> tuple[Partial, PartialVersion]:
        """Create a partial named ``name`` (new in the workspace) with version 1."""
        if not PARTIAL_NAME.fullmatch(name):
            raise InvalidArgument.field(
                "name",
                "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
                reason="INVALID_PARTIAL_NAME",
            )
        includes = await self._check_content(workspace, name, content)
        now = utcnow()
        row = PartialRow(
            id=new_id("prt"),
            workspace_id=workspace,
            name=name,
            description=description,
            latest_version=1,
            created_at=now,
            updated_at=now,
        )
        version = _new_version(row, 1, content, includes, version_description, now)
        async with self._sessions.write() as session:
            try:
                session.add(row)
                await session.flush()  # the partial first: the version's foreign key needs it
                session.add(version)
                await session.commit()
            except IntegrityError:
                raise AlreadyExists(
                    f"a partial named {name!r} already exists",
                    reason="PARTIAL_ALREADY_EXISTS",
                    metadata={"partial": name},
                ) from None
        return _partial(row), _version(version, name)

    async def get_partial(self, workspace: str, ref: str) -> Partial:
        """A partial by id or name."""
        async with self._sessions() as session:
            return _partial(await self._partial_row(session, workspace, ref))

    async def list_partials(
        self, workspace: str, *, size: int, token: str, show_archived: bool, name_prefix: str
    ) -> tuple[list[Partial], str]:
        """A page of partials by name, and the next page's token."""
        limit = page_size(size)
        after = decode_token("partials", token, {"name": str})
        query = select(PartialRow).where(PartialRow.workspace_id == workspace)
        if not show_archived:
            query = query.where(col(PartialRow.archived).is_(False))
        if name_prefix:
            # substr, not LIKE: LIKE ignores case on SQLite but not on PostgreSQL.
            query = query.where(
                func.substr(col(PartialRow.name), 1, len(name_prefix)) == name_prefix
            )
        if after:
            query = query.where(col(PartialRow.name) > str(after.get("name", "")))
        query = query.order_by(col(PartialRow.name)).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = encode_token("partials", {"name": page[-1].name}) if len(rows) > limit else ""
        return [_partial(r) for r in page], next_token

    async def set_archived(self, workspace: str, ref: str, archived: bool) -> Partial:
        """Archive or restore a partial."""
        async with self._sessions.write() as session:
            row = await self._partial_row(session, workspace, ref)
            row.archived = archived
            row.updated_at = utcnow()
            session.add(row)
            await session.commit()
            return _partial(row)

    # Versions

    async def create_version(
        self, workspace: str, ref: str, content: str, description: str
    ) -> PartialVersion:
        """Store ``content`` as the partial's next version."""
        async with self._sessions() as session:
            name = (await self._partial_row(session, workspace, ref)).name
        includes = await self._check_content(workspace, name, content)
        for _attempt in range(20):
            async with self._sessions.write() as session:
                partial = await self._partial_row(session, workspace, ref)
                if partial.archived:
                    raise _archived(partial.name)
                number = partial.latest_version + 1
                now = utcnow()
                claimed = await session.exec(
                    update(PartialRow)
                    .where(
                        and_(
                            col(PartialRow.id) == partial.id,
                            col(PartialRow.latest_version) == partial.latest_version,
                        )
                    )
                    .values(latest_version=number, updated_at=now)
                )
                if claimed.rowcount != 1:
                    await session.rollback()
                    continue
                row = _new_version(partial, number, content, includes, description, now)
                session.add(row)
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    continue
                return _version(row, partial.name)
        raise FailedPrecondition("too many concurrent versions; retry", reason="VERSION_CONFLICT")

    async def get_version(self, workspace: str, ref: str, *, version: int = 0) -> PartialVersion:
        """One version by number; the latest when ``version`` is 0."""
        if version < 0:
            raise InvalidArgument.field("version", "must be positive")
        async with self._sessions() as session:
            partial = await self._partial_row(session, workspace, ref)
            number = version or partial.latest_version
            row = (
                await session.exec(
                    select(PartialVersionRow).where(
                        PartialVersionRow.partial_id == partial.id,
                        PartialVersionRow.version == number,
                    )
                )
            ).first()
        if row is None:
            raise NotFound(
                f"partial {partial.name!r} has no version {number}",
                reason="PARTIAL_VERSION_NOT_FOUND",
                metadata={"partial": partial.name, "version": str(number)},
            )
        return _version(row, partial.name)

    async def list_versions(
        self, workspace: str, ref: str, *, size: int, token: str
    ) -> tuple[list[PartialVersion], str]:
        """A page of versions, newest first."""
        limit = page_size(size)
        after = decode_token("partial-versions", token, {"v": int})
        async with self._sessions() as session:
            partial = await self._partial_row(session, workspace, ref)
            query = select(PartialVersionRow).where(PartialVersionRow.partial_id == partial.id)
            if after:
                query = query.where(col(PartialVersionRow.version) < int(after.get("v", 0)))
            query = query.order_by(col(PartialVersionRow.version).desc()).limit(limit + 1)
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = (
            encode_token("partial-versions", {"v": page[-1].version}) if len(rows) > limit else ""
        )
        return [_version(r, partial.name) for r in page], next_token

    # Sets

    async def for_spec(self, workspace: str, spec: PromptSpec, field: str) -> PartialSet:
        """The latest versions of the partials ``spec``'s templates include (see ``latest``).

        Templates that do not compile are skipped: validating the spec reports them.
        """
        roots: dict[str, str] = {}
        for i, message in enumerate(spec.messages):
            if message.chat_history_input:
                continue
            path = f"{field}.messages[{i}].template"
            try:
                names = self._templates.names(message.template, path)
            except InvalidArgument:
                continue
            for name in sorted(names.includes):
                roots.setdefault(name, path)
        return await self.latest(workspace, roots)

    async def latest(self, workspace: str, roots: Mapping[str, str]) -> PartialSet:
        """The latest versions of the partials ``roots`` name, and of those they include.

        ``roots`` maps each partial a template includes to the template's field.
        Unknown partials are INVALID_ARGUMENT (PARTIAL_NOT_FOUND, a violation
        each), archived ones FAILED_PRECONDITION (PARTIAL_ARCHIVED); a cycle
        is PARTIAL_CYCLE and a set past its bounds INVALID_PROMPT.
        """
        if not roots:
            return EMPTY_PARTIALS
        found = await self._walk(workspace, roots)
        check_set(roots, found)
        partials = PartialSet.of(found.values())
        # Compiled off the event loop, so checks and renders hit the cache.
        await self._templates.prepare(partials.sources.values())
        return partials

    async def pinned(self, workspace: str, pins: Mapping[str, int]) -> PartialSet:
        """The partial versions a stored prompt version pinned."""
        if not pins:
            return EMPTY_PARTIALS
        found = {
            name: hit
            for name, number in pins.items()
            if (hit := self._pinned.get((workspace, name, number))) is not None
        }
        missing = {name: number for name, number in pins.items() if name not in found}
        if missing:
            query = (
                select(PartialRow.name, PartialVersionRow)
                .join(PartialVersionRow, col(PartialVersionRow.partial_id) == col(PartialRow.id))
                .where(
                    PartialRow.workspace_id == workspace,
                    or_(
                        *(
                            and_(col(PartialRow.name) == n, col(PartialVersionRow.version) == v)
                            for n, v in missing.items()
                        )
                    ),
                )
            )
            async with self._sessions() as session:
                for name, row in (await session.exec(query)).all():
                    found[name] = self._remember(workspace, name, row)
        lost = sorted(set(pins) - set(found))
        if lost:
            raise FailedPrecondition(
                f"partial {lost[0]!r} version {pins[lost[0]]}, which this prompt version "
                "includes, is missing from the store",
                reason="PARTIAL_VERSION_MISSING",
                metadata={"partial": lost[0]},
            )
        return PartialSet.of(found.values())

    # Internals

    async def _check_content(self, workspace: str, name: str, content: str) -> tuple[str, ...]:
        """Validate a version's content; return the partials it includes, sorted."""
        if not content:
            raise InvalidArgument.field(
                "content", "a partial needs content", reason="INVALID_PROMPT"
            )
        await self._templates.prepare([content])
        includes = tuple(sorted(self._templates.names(content, "content").includes))
        if name in includes:
            raise InvalidArgument.field(
                "content", f"partial {name!r} cannot include itself", reason="PARTIAL_CYCLE"
            )
        if includes:
            this = PinnedPartial(name, 0, content, includes)
            found = await self._walk(workspace, dict.fromkeys(includes, "content"), this)
            check_set({name: "content"}, {**found, name: this})
        return includes

    async def _walk(
        self,
        workspace: str,
        roots: Mapping[str, str],
        creating: PinnedPartial | None = None,
    ) -> dict[str, PinnedPartial]:
        """Every partial reachable from ``roots``, at its latest version; one query per level.

        ``creating`` (a version being made) stands for its partial, which is not
        read; reaching it means a cycle, which ``check_set`` reports.
        """
        via = {name: (where, "") for name, where in roots.items()}  # field, includer
        found: dict[str, PinnedPartial] = {}
        unknown: list[FieldViolation] = []
        unknown_names: list[str] = []
        archived: list[str] = []
        frontier = sorted(roots)
        while frontier:
            if len(via) > MAX_PARTIALS:
                raise too_many(len(via), next(iter(roots.values())))
            if creating is not None and creating.name in frontier:
                found[creating.name] = creating
                frontier.remove(creating.name)
            rows = await self._latest_rows(workspace, frontier)
            following: list[str] = []
            for name in frontier:
                where, includer = via[name]
                if name not in rows:
                    unknown.append(FieldViolation(where, _unknown(name, includer)))
                    unknown_names.append(name)
                    continue
                pinned, is_archived = rows[name]
                if is_archived:
                    archived.append(name)
                found[name] = pinned
                for child in pinned.includes:
                    if child not in via:
                        via[child] = (where, name)
                        following.append(child)
            frontier = following
        if unknown:
            message = "; ".join(f"{v.field}: {v.description}" for v in unknown)
            raise InvalidArgument(
                message,
                reason="PARTIAL_NOT_FOUND",
                violations=unknown,
                metadata={"partial": ", ".join(unknown_names)},
            )
        if archived:
            raise FailedPrecondition(
                f"partial {archived[0]!r} is archived and cannot be newly included",
                reason="PARTIAL_ARCHIVED",
                metadata={"partial": archived[0]},
            )
        return found

    async def _latest_rows(
        self, workspace: str, names: list[str]
    ) -> dict[str, tuple[PinnedPartial, bool]]:
        """The latest version of each partial of ``names`` that exists, and whether it is archived."""
        wanted = [n for n in names if PARTIAL_NAME.fullmatch(n)]
        if not wanted:
            return {}
        query = (
            select(PartialRow, PartialVersionRow)
            .join(
                PartialVersionRow,
                and_(
                    col(PartialVersionRow.partial_id) == col(PartialRow.id),
                    col(PartialVersionRow.version) == col(PartialRow.latest_version),
                ),
            )
            .where(PartialRow.workspace_id == workspace, col(PartialRow.name).in_(wanted))
        )
        async with self._sessions() as session:
            rows = (await session.exec(query)).all()
        return {
            partial.name: (self._remember(workspace, partial.name, version), partial.archived)
            for partial, version in rows
        }

    def _remember(self, workspace: str, name: str, row: PartialVersionRow) -> PinnedPartial:
        key = (workspace, name, row.version)
        pinned = self._pinned.get(key)
        if pinned is None:
            pinned = PinnedPartial(name, row.version, row.content, tuple(row.includes or ()))
            self._pinned[key] = pinned
        return pinned

    async def _partial_row(self, session: AsyncSession, workspace: str, ref: str) -> PartialRow:
        if not ref:
            raise InvalidArgument.field(
                "partial", "a partial id or name is required", reason="INVALID_PARTIAL_NAME"
            )
        query = select(PartialRow).where(
            PartialRow.workspace_id == workspace,
            or_(col(PartialRow.id) == ref, col(PartialRow.name) == ref),
        )
        rows = list((await session.exec(query)).all())
        if not rows:
            raise NotFound(
                f"partial {ref!r} not found", reason="PARTIAL_NOT_FOUND", metadata={"partial": ref}
            )
        return next((r for r in rows if r.id == ref), rows[0])


def _unknown(name: str, includer: str) -> str:
    if includer:
        return f"partial {includer!r} includes unknown partial {name!r}"
    return f"includes unknown partial {name!r}"


def _archived(name: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"partial {name!r} is archived", reason="PARTIAL_ARCHIVED", metadata={"partial": name}
    )


def _new_version(
    partial: PartialRow,
    number: int,
    content: str,
    includes: tuple[str, ...],
    description: str,
    now: datetime,
) -> PartialVersionRow:
    return PartialVersionRow(
        id=new_id("prv"),
        partial_id=partial.id,
        workspace_id=partial.workspace_id,
        version=number,
        content=content,
        includes=list(includes),
        description=description,
        created_at=now,
    )


def _partial(row: PartialRow) -> Partial:
    return Partial(
        id=row.id,
        workspace_id=row.workspace_id,
        name=row.name,
        description=row.description,
        archived=row.archived,
        latest_version=row.latest_version,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def _version(row: PartialVersionRow, name: str) -> PartialVersion:
    return PartialVersion(
        id=row.id,
        partial_id=row.partial_id,
        name=name,
        version=row.version,
        content=row.content,
        includes=tuple(row.includes or ()),
        description=row.description,
        created_at=as_utc(row.created_at),
    )
