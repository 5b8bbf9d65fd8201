"""PartialStore: partials and their immutable versions in the store.

A partial is a named template snippet, unique per workspace, that prompt
templates include with ``{% include "name" %}``. Its versions are numbered
1, 2, 3... without gaps, like a prompt's: the next number is claimed by a
conditional update of the partial's ``latest_version``. A version's content is
checked like any template and may include other partials, without a cycle
and within the bounds of ``promptgate.prompts.partial_sets``; the names it
includes are stored with it, so the sets prompts render with are resolved
(``promptgate.prompts.partial_resolver``) by reading rows, not by parsing.

Archived partials are hidden from ``list_partials``, get no new versions and
cannot be newly included; prompt versions that pinned one keep rendering it.
Each change has its audit entry (``partial.create``, ``partial.archive``,
``partial.unarchive``, ``partial_version.create``), committed with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.audit import record
from promptgate.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from promptgate.ids import new_id
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.prompts.partial_resolver import PartialResolver
from promptgate.prompts.partial_sets import PARTIAL_NAME
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import PartialRow, PartialVersionRow, as_utc, utcnow


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
    """Creates and reads the partials of a workspace and their versions."""

    def __init__(self, sessions: SessionFactory, resolver: PartialResolver) -> None:
        self._sessions = sessions
        self._resolver = resolver

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
        includes = await self._resolver.check_content(workspace, name, content)
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
                record(
                    session,
                    workspace=workspace,
                    action="partial.create",
                    resource=f"partials/{name}",
                    after={"id": row.id, "description": description},
                )
                _version_created(session, name, version)
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
            if row.archived != archived:
                record(
                    session,
                    workspace=workspace,
                    action="partial.archive" if archived else "partial.unarchive",
                    resource=f"partials/{row.name}",
                    before={"archived": row.archived},
                    after={"archived": archived},
                )
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
        includes = await self._resolver.check_content(workspace, name, content)
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
                _version_created(session, partial.name, row)
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


def _archived(name: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"partial {name!r} is archived", reason="PARTIAL_ARCHIVED", metadata={"partial": name}
    )


def _version_created(session: AsyncSession, name: str, row: PartialVersionRow) -> None:
    """The audit entry of a new version (its content is in ListPartialVersions)."""
    record(
        session,
        workspace=row.workspace_id,
        action="partial_version.create",
        resource=f"partials/{name}/versions/{row.version}",
        after={
            "version": row.version,
            "id": row.id,
            "description": row.description,
            "includes": list(row.includes),
        },
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
