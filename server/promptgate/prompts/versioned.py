"""VersionedStore: named resources with immutable numbered versions and release tags.

Prompts and chains are managed alike: a resource has a name unique in its
workspace, can be archived, and holds versions numbered 1, 2, 3, ... without
gaps; release tags ("production", "staging", any name) point at a version and
every move is appended to the tag's history; "latest" follows the newest
version and cannot be set. This module does that on the store for any kind
whose four tables have the shape of ``prompts``, ``prompt_versions``,
``release_tags`` and ``release_tag_events`` (a ``VersionedKind`` names them).
Versions' content is an opaque JSON ``spec``: checking it is the caller's job.

The next version number is claimed by a conditional update of the resource's
``latest_version``, so concurrent creators get different numbers on SQLite
and PostgreSQL; tag moves write the resource row first, which serialises them
per resource (a row lock on PostgreSQL, the write lock on SQLite).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from promptgate.ids import new_id
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.prompts import versioned_audit
from promptgate.prompts.model import ReleaseTag, ReleaseTagEvent
from promptgate.prompts.names import LATEST, NAME, check_release_tags, check_tag
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import as_utc, utcnow

CLAIM_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class VersionedKind:
    """One kind of versioned resource: its noun, id prefixes and tables.

    ``key`` is the column of the version, tag and tag-event tables that holds
    the resource's id (``prompt_id``, ``chain_id``).
    """

    noun: str
    id_prefix: str
    version_prefix: str
    resource: Any
    version: Any
    tag: Any
    event: Any
    key: str

    @property
    def upper(self) -> str:
        """The noun in error reasons: PROMPT_NOT_FOUND, CHAIN_ARCHIVED, ..."""
        return self.noun.upper()


class VersionedStore:
    """Rows of one versioned kind, scoped to a workspace. See the module docstring."""

    def __init__(self, sessions: SessionFactory, kind: VersionedKind) -> None:
        self._sessions = sessions
        self.kind = kind

    # Resources

    async def create(
        self, workspace: str, name: str, description: str, labels: dict[str, str]
    ) -> Any:
        """A new resource row; its name must be valid and new in the workspace."""
        kind = self.kind
        if not NAME.fullmatch(name):
            raise InvalidArgument.field(
                "name",
                "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
                reason=f"INVALID_{kind.upper}_NAME",
            )
        now = utcnow()
        row = kind.resource(
            id=new_id(kind.id_prefix),
            workspace_id=workspace,
            name=name,
            description=description,
            labels=dict(labels),
            created_at=now,
            updated_at=now,
        )
        async with self._sessions.write() as session:
            session.add(row)
            versioned_audit.created(session, kind.noun, row)
            try:
                await session.commit()
            except IntegrityError:
                raise AlreadyExists(
                    f"a {kind.noun} named {name!r} already exists",
                    reason=f"{kind.upper}_ALREADY_EXISTS",
                    metadata={kind.noun: name},
                ) from None
        return row

    async def get(self, workspace: str, ref: str) -> tuple[Any, list[ReleaseTag]]:
        """A resource by id or name, with its tags."""
        async with self._sessions() as session:
            row = await self.resource(session, workspace, ref)
            return row, await self.tags_of(session, row)

    async def list_resources(
        self, workspace: str, *, size: int, token: str, show_archived: bool, name_prefix: str
    ) -> tuple[list[tuple[Any, list[ReleaseTag]]], str]:
        """A page of resources by name, with their tags, and the next page's token."""
        resource = self.kind.resource
        token_kind = f"{self.kind.noun}s"
        limit = page_size(size)
        after = decode_token(token_kind, token, {"name": str})
        query = select(resource).where(resource.workspace_id == workspace)
        if not show_archived:
            query = query.where(col(resource.archived).is_(False))
        if name_prefix:
            # substr, not LIKE: LIKE ignores case on SQLite but not on PostgreSQL.
            query = query.where(func.substr(col(resource.name), 1, len(name_prefix)) == name_prefix)
        if after:
            query = query.where(col(resource.name) > str(after.get("name", "")))
        query = query.order_by(col(resource.name)).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.exec(query)).all())
            page = [(r, await self.tags_of(session, r)) for r in rows[:limit]]
        next_token = (
            encode_token(token_kind, {"name": page[-1][0].name}) if len(rows) > limit else ""
        )
        return page, next_token

    async def set_archived(
        self, workspace: str, ref: str, archived: bool
    ) -> tuple[Any, list[ReleaseTag]]:
        """Archive or restore a resource."""
        async with self._sessions.write() as session:
            row = await self.resource(session, workspace, ref)
            versioned_audit.archive_set(session, self.kind.noun, row, archived)
            row.archived = archived
            row.updated_at = utcnow()
            session.add(row)
            await session.commit()
            return row, await self.tags_of(session, row)

    # Versions

    async def add_version(
        self,
        workspace: str,
        ref: str,
        spec: dict[str, Any],
        description: str,
        release_tags: Sequence[str],
    ) -> Any:
        """Store ``spec`` as the resource's next version and move ``release_tags`` to it."""
        kind = self.kind
        check_release_tags(release_tags)
        for _attempt in range(CLAIM_ATTEMPTS):
            async with self._sessions.write() as session:
                resource = await self.resource(session, workspace, ref)
                if resource.archived:
                    raise self.archived(resource.name)
                number = resource.latest_version + 1
                now = utcnow()
                claimed = await session.exec(
                    update(kind.resource)
                    .where(
                        and_(
                            col(kind.resource.id) == resource.id,
                            col(kind.resource.latest_version) == resource.latest_version,
                        )
                    )
                    .values(latest_version=number, updated_at=now)
                )
                if claimed.rowcount != 1:
                    await session.rollback()
                    continue
                row = kind.version(
                    id=new_id(kind.version_prefix),
                    workspace_id=workspace,
                    version=number,
                    spec=spec,
                    description=description,
                    created_at=now,
                    **{kind.key: resource.id},
                )
                session.add(row)
                versioned_audit.version_created(session, kind.noun, resource, row)
                for tag in release_tags:
                    await self.move_tag(session, resource, tag, row, now)
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    continue
                return row
        raise FailedPrecondition("too many concurrent versions; retry", reason="VERSION_CONFLICT")

    async def get_version(
        self, workspace: str, ref: str, *, version: int = 0, version_id: str = "", tag: str = ""
    ) -> Any:
        """One version row by number, id or tag."""
        async with self._sessions() as session:
            resource = await self.resource(session, workspace, ref)
            row, _ = await self.select_version(
                session, resource, version=version, version_id=version_id, tag=tag
            )
            return row

    async def list_versions(
        self, workspace: str, ref: str, *, size: int, token: str
    ) -> tuple[list[Any], str]:
        """A page of version rows, newest first."""
        table = self.kind.version
        limit = page_size(size)
        after = decode_token("versions", token, {"v": int})
        async with self._sessions() as session:
            resource = await self.resource(session, workspace, ref)
            query = select(table).where(getattr(table, self.kind.key) == resource.id)
            if after:
                query = query.where(col(table.version) < int(after.get("v", 0)))
            query = query.order_by(col(table.version).desc()).limit(limit + 1)
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = encode_token("versions", {"v": page[-1].version}) if len(rows) > limit else ""
        return page, next_token

    async def resolve(
        self, workspace: str, ref: str, *, tag: str, version: int, field: str
    ) -> tuple[Any, Any, str]:
        """(resource, version row, tag used) that a run of ``ref`` uses: by number, else by tag.

        An archived resource cannot run: FAILED_PRECONDITION.
        """
        async with self._sessions() as session:
            resource = await self.resource(session, workspace, ref, field=field)
            if resource.archived:
                raise self.archived(resource.name)
            row, used_tag = await self.select_version(session, resource, version=version, tag=tag)
            return resource, row, used_tag

    # Release tags

    async def set_tag(
        self, workspace: str, ref: str, tag: str, *, version: int = 0, version_id: str = ""
    ) -> ReleaseTag:
        """Point ``tag`` at a version and record the move."""
        check_tag(tag, "tag")
        if not version and not version_id:
            raise InvalidArgument.field("version", "give a version number or a version_id")
        kind = self.kind
        async with self._sessions.write() as session:
            resource = await self.resource(session, workspace, ref)
            row, _ = await self.select_version(
                session, resource, version=version, version_id=version_id
            )
            now = utcnow()
            # Writing the resource row first serialises tag moves per resource, so
            # the tag row read next is current and the history chain stays unbroken.
            await session.exec(
                update(kind.resource)
                .where(col(kind.resource.id) == resource.id)
                .values(updated_at=now)
            )
            tag_row = await self.move_tag(session, resource, tag, row, now)
            await session.commit()
            return tag_of(tag_row)

    async def tags(self, workspace: str, ref: str) -> list[ReleaseTag]:
        """The resource's tags by name, with "latest"."""
        async with self._sessions() as session:
            return await self.tags_of(session, await self.resource(session, workspace, ref))

    async def tag_history(
        self, workspace: str, ref: str, *, tag: str, size: int, token: str
    ) -> tuple[list[ReleaseTagEvent], str]:
        """A page of tag moves, newest first."""
        rows, next_token = await self.tag_history_rows(
            workspace, ref, tag=tag, size=size, token=token
        )
        return [event_of(r) for r in rows], next_token

    async def tag_history_rows(
        self, workspace: str, ref: str, *, tag: str, size: int, token: str
    ) -> tuple[list[Any], str]:
        """A page of tag-event rows, newest first, and the next page's token."""
        table = self.kind.event
        limit = page_size(size)
        after = decode_token("tag-history", token, {"seq": int})
        async with self._sessions() as session:
            resource = await self.resource(session, workspace, ref)
            query = select(table).where(getattr(table, self.kind.key) == resource.id)
            if tag:
                query = query.where(table.tag == tag)
            if after:
                query = query.where(col(table.seq) < int(after.get("seq", 0)))
            query = query.order_by(col(table.seq).desc()).limit(limit + 1)
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = encode_token("tag-history", {"seq": page[-1].seq}) if len(rows) > limit else ""
        return page, next_token

    # Building blocks (also for callers that hold their own session)

    async def resource(
        self, session: AsyncSession, workspace: str, ref: str, field: str | None = None
    ) -> Any:
        """The resource row named by id or name; NOT_FOUND if the workspace has none."""
        kind = self.kind
        if not ref:
            raise InvalidArgument.field(
                field or kind.noun,
                f"a {kind.noun} id or name is required",
                reason=f"INVALID_{kind.upper}",
            )
        table = kind.resource
        query = select(table).where(
            table.workspace_id == workspace, or_(col(table.id) == ref, col(table.name) == ref)
        )
        rows = list((await session.exec(query)).all())
        if not rows:
            raise NotFound(
                f"{kind.noun} {ref!r} not found",
                reason=f"{kind.upper}_NOT_FOUND",
                metadata={kind.noun: ref},
            )
        return next((r for r in rows if r.id == ref), rows[0])

    async def select_version(
        self,
        session: AsyncSession,
        resource: Any,
        *,
        version: int = 0,
        version_id: str = "",
        tag: str = "",
    ) -> tuple[Any, str]:
        """(version row, tag used) by id, number or tag; NOT_FOUND if there is none."""
        kind = self.kind
        table = kind.version
        query = select(table).where(getattr(table, kind.key) == resource.id)
        used_tag = ""
        if version_id:
            query = query.where(table.id == version_id)
        elif version:
            if version < 0:
                raise InvalidArgument.field("version", "must be positive")
            query = query.where(table.version == version)
        else:
            if not tag:
                raise InvalidArgument.field(
                    "release_tag", "give a release tag, a version number or a version_id"
                )
            used_tag = tag
            if tag == LATEST:
                query = query.where(table.version == resource.latest_version)
            else:
                tag_row = await session.get(kind.tag, (resource.id, tag))
                if tag_row is None:
                    raise NotFound(
                        f"{kind.noun} {resource.name!r} has no release tag {tag!r}",
                        reason="RELEASE_TAG_NOT_FOUND",
                        metadata={kind.noun: resource.name, "release_tag": tag},
                    )
                query = query.where(table.id == tag_row.version_id)
        row = (await session.exec(query)).first()
        if row is None:
            if used_tag == LATEST:
                raise NotFound(
                    f"{kind.noun} {resource.name!r} has no versions yet",
                    reason="VERSION_NOT_FOUND",
                    metadata={kind.noun: resource.name},
                )
            which = version_id or str(version)
            raise NotFound(
                f"{kind.noun} {resource.name!r} has no version {which}",
                reason="VERSION_NOT_FOUND",
                metadata={kind.noun: resource.name, "version": which},
            )
        return row, used_tag

    async def move_tag(
        self, session: AsyncSession, resource: Any, tag: str, version: Any, now: datetime
    ) -> Any:
        """Point ``tag`` at ``version`` and append the move to the history (not committed)."""
        kind = self.kind
        resource_id = resource.id
        current = await session.get(kind.tag, (resource_id, tag))
        previous = current.version if current else 0
        if current is None:
            current = kind.tag(
                tag=tag,
                version_id=version.id,
                version=version.version,
                updated_at=now,
                **{kind.key: resource_id},
            )
        else:
            current.version_id = version.id
            current.version = version.version
            current.updated_at = now
        session.add(current)
        versioned_audit.tag_moved(session, kind.noun, resource, tag, version, previous)
        session.add(
            kind.event(
                tag=tag,
                version_id=version.id,
                version=version.version,
                previous_version=previous,
                created_at=now,
                **{kind.key: resource_id},
            )
        )
        return current

    async def tags_of(
        self,
        session: AsyncSession,
        resource: Any,
        convert: Callable[[Any], ReleaseTag] | None = None,
    ) -> list[ReleaseTag]:
        """The resource's tags by name (tag rows made ReleaseTags by ``convert``, default
        ``tag_of``), with "latest" when a version exists."""
        kind = self.kind
        rows = (
            await session.exec(select(kind.tag).where(getattr(kind.tag, kind.key) == resource.id))
        ).all()
        tags = [(convert or tag_of)(r) for r in rows]
        if resource.latest_version:
            latest = (
                await session.exec(
                    select(kind.version).where(
                        getattr(kind.version, kind.key) == resource.id,
                        kind.version.version == resource.latest_version,
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

    def archived(self, name: str) -> FailedPrecondition:
        """The error for running an archived resource."""
        noun = self.kind.noun
        return FailedPrecondition(
            f"{noun} {name!r} is archived",
            reason=f"{self.kind.upper}_ARCHIVED",
            metadata={noun: name},
        )


def event_of(row: Any) -> ReleaseTagEvent:
    """A tag-event row as a ReleaseTagEvent."""
    return ReleaseTagEvent(
        seq=row.seq or 0,
        tag=row.tag,
        version=row.version,
        version_id=row.version_id,
        previous_version=row.previous_version,
        time=as_utc(row.created_at),
    )


def tag_of(row: Any) -> ReleaseTag:
    """A tag row as a ReleaseTag."""
    return ReleaseTag(
        tag=row.tag,
        version=row.version,
        version_id=row.version_id,
        updated_at=as_utc(row.updated_at),
    )


def resource_fields(row: Any, tags: Sequence[ReleaseTag]) -> dict[str, Any]:
    """The fields a resource row and its tags give its domain object (Prompt, Chain)."""
    return {
        "id": row.id,
        "workspace_id": row.workspace_id,
        "name": row.name,
        "description": row.description,
        "labels": dict(row.labels or {}),
        "archived": row.archived,
        "latest_version": row.latest_version,
        "release_tags": tuple(tags),
        "created_at": as_utc(row.created_at),
        "updated_at": as_utc(row.updated_at),
    }
