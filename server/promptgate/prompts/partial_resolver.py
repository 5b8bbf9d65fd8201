"""PartialResolver: the partial sets prompts render with, read from the store.

``latest`` resolves the partials a new prompt version or an inline prompt
includes: the latest version of each, nested ones too, one query per level
of includes. It refuses unknown partials (INVALID_ARGUMENT,
PARTIAL_NOT_FOUND, a field violation each), archived ones
(FAILED_PRECONDITION, PARTIAL_ARCHIVED), cycles (PARTIAL_CYCLE) and sets past
the bounds of ``promptgate.prompts.partial_sets``. ``pinned`` loads the exact
versions a stored prompt version pinned; versions never change, so loaded
ones are cached. ``check_content`` checks a new partial version the same way.

Partial contents are read here, before any template compiles or renders:
the template loader itself never does I/O.

A new partial version is checked against the latest versions of the others
outside its write transaction, so two concurrent versions could close a
cycle between them; every set is checked again when it is formed (for a
prompt version or an inline prompt), so no render ever meets a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping

from cachetools import LRUCache
from sqlalchemy import and_, or_
from sqlmodel import col, select

from promptgate.errors import FailedPrecondition, FieldViolation, InvalidArgument
from promptgate.prompts.model import PromptSpec
from promptgate.prompts.partial_sets import (
    EMPTY_PARTIALS,
    MAX_PARTIALS,
    PARTIAL_NAME,
    PartialSet,
    PinnedPartial,
    check_set,
    too_many,
)
from promptgate.prompts.templates import TemplateEngine
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import PartialRow, PartialVersionRow

PINNED_CACHE_SIZE = 4096


class PartialResolver:
    """Resolves the partial sets of a workspace's prompts (see the module docstring)."""

    def __init__(self, sessions: SessionFactory, templates: TemplateEngine) -> None:
        self._sessions = sessions
        self._templates = templates
        self._pinned: LRUCache[tuple[str, str, int], PinnedPartial] = LRUCache(PINNED_CACHE_SIZE)

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

    async def check_content(self, workspace: str, name: str, content: str) -> tuple[str, ...]:
        """Check the content of a new version of partial ``name``; return what it includes.

        The content is a template; the partials it includes (sorted) exist, are
        not archived, do not lead back to ``name`` and keep within the bounds.
        """
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


def _unknown(name: str, includer: str) -> str:
    if includer:
        return f"partial {includer!r} includes unknown partial {name!r}"
    return f"includes unknown partial {name!r}"
