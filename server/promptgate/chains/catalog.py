"""ChainCatalog: stored chains, their immutable versions and release tags.

Chains are versioned exactly as prompts are (``prompts.versioned``): numbered
versions without gaps, release tags with history, "latest" following the
newest version. A version is checked by the ChainPlanner before it is stored:
its steps' stored prompts must exist and every variable a step needs must be
declared by the chain or yielded by an earlier step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptgate.chains.model import (
    Chain,
    ChainSpec,
    ChainVersion,
    ResolvedChain,
    spec_from_json,
    spec_to_json,
)
from promptgate.chains.planning import ChainPlanner
from promptgate.prompts.model import ReleaseTag, ReleaseTagEvent
from promptgate.prompts.names import check_release_tags
from promptgate.prompts.versioned import (
    VersionedKind,
    VersionedStore,
    resource_fields,
)
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import (
    ChainReleaseTagEventRow,
    ChainReleaseTagRow,
    ChainRow,
    ChainVersionRow,
    as_utc,
    utcnow,
)

CHAINS = VersionedKind(
    noun="chain",
    id_prefix="chn",
    version_prefix="cvr",
    resource=ChainRow,
    version=ChainVersionRow,
    tag=ChainReleaseTagRow,
    event=ChainReleaseTagEventRow,
    key="chain_id",
)


class ChainCatalog:
    """Creates, reads and tags chains and their versions within a workspace."""

    def __init__(self, sessions: SessionFactory, planner: ChainPlanner) -> None:
        self._rows = VersionedStore(sessions, CHAINS)
        self._planner = planner

    async def create_chain(
        self, workspace: str, name: str, description: str, labels: dict[str, str]
    ) -> Chain:
        """Create an empty chain; its name must be new in the workspace."""
        return _chain(await self._rows.create(workspace, name, description, labels), [])

    async def get_chain(self, workspace: str, ref: str) -> Chain:
        """A chain by id or name, with its tags."""
        return _chain(*await self._rows.get(workspace, ref))

    async def list_chains(
        self, workspace: str, *, size: int, token: str, show_archived: bool, name_prefix: str
    ) -> tuple[list[Chain], str]:
        """A page of chains by name, and the next page's token."""
        page, next_token = await self._rows.list_resources(
            workspace, size=size, token=token, show_archived=show_archived, name_prefix=name_prefix
        )
        return [_chain(row, tags) for row, tags in page], next_token

    async def set_archived(self, workspace: str, ref: str, archived: bool) -> Chain:
        """Archive or restore a chain."""
        return _chain(*await self._rows.set_archived(workspace, ref, archived))

    async def create_version(
        self,
        workspace: str,
        ref: str,
        spec: ChainSpec,
        description: str,
        release_tags: Sequence[str],
        *,
        validate_only: bool = False,
    ) -> ChainVersion:
        """Check ``spec`` and store it as the chain's next version; move tags to it.

        ``validate_only`` checks it all, then stores nothing: the result is the
        version as it would be stored, without an id. It checks the content and
        tag names before it looks the chain up (NOT_FOUND then means the
        content is valid); a real create looks the chain up first.
        """
        if validate_only:
            return await self._validate_version(workspace, ref, spec, description, release_tags)
        await self._rows.get(workspace, ref)  # an unknown chain is NOT_FOUND before spec problems
        await self._planner.check(workspace, spec, field="version", inputs=None)
        row = await self._rows.add_version(
            workspace, ref, spec_to_json(spec), description, release_tags
        )
        return _version(row)

    async def _validate_version(
        self,
        workspace: str,
        ref: str,
        spec: ChainSpec,
        description: str,
        release_tags: Sequence[str],
    ) -> ChainVersion:
        check_release_tags(release_tags)
        await self._planner.check(workspace, spec, field="version", inputs=None)
        row, _ = await self._rows.get(workspace, ref)
        if row.archived:
            raise self._rows.archived(row.name)
        return ChainVersion(
            id="",
            chain_id=row.id,
            version=row.latest_version + 1,
            spec=spec_from_json(spec_to_json(spec)),  # as stored
            description=description,
            created_at=utcnow(),
        )

    async def get_version(
        self, workspace: str, ref: str, *, version: int = 0, version_id: str = "", tag: str = ""
    ) -> ChainVersion:
        """One version by number, id or tag."""
        return _version(
            await self._rows.get_version(
                workspace, ref, version=version, version_id=version_id, tag=tag
            )
        )

    async def list_versions(
        self, workspace: str, ref: str, *, size: int, token: str
    ) -> tuple[list[ChainVersion], str]:
        """A page of versions, newest first."""
        rows, next_token = await self._rows.list_versions(workspace, ref, size=size, token=token)
        return [_version(r) for r in rows], next_token

    async def resolve(self, workspace: str, ref: str, *, tag: str, version: int) -> ResolvedChain:
        """The version a run of ``ref`` uses: by number if given, else by tag."""
        chain, row, used_tag = await self._rows.resolve(
            workspace, ref, tag=tag, version=version, field="chain"
        )
        return ResolvedChain(chain=_chain(chain, []), version=_version(row), release_tag=used_tag)

    async def set_release_tag(
        self, workspace: str, ref: str, tag: str, *, version: int = 0, version_id: str = ""
    ) -> ReleaseTag:
        """Point ``tag`` at a version and record the move."""
        return await self._rows.set_tag(workspace, ref, tag, version=version, version_id=version_id)

    async def list_release_tags(self, workspace: str, ref: str) -> list[ReleaseTag]:
        """The chain's tags by name, with "latest"."""
        return await self._rows.tags(workspace, ref)

    async def tag_history(
        self, workspace: str, ref: str, *, tag: str, size: int, token: str
    ) -> tuple[list[ReleaseTagEvent], str]:
        """A page of tag moves, newest first."""
        return await self._rows.tag_history(workspace, ref, tag=tag, size=size, token=token)


def _chain(row: Any, tags: list[ReleaseTag]) -> Chain:
    return Chain(**resource_fields(row, tags))


def _version(row: Any) -> ChainVersion:
    return ChainVersion(
        id=row.id,
        chain_id=row.chain_id,
        version=row.version,
        spec=spec_from_json(row.spec),
        description=row.description,
        created_at=as_utc(row.created_at),
    )
