"""What pushing partial files would change on a server, and making those changes.

For each partial file the plan is one of

- ``create``: the partial does not exist; create it with the file's content
  as version 1 (and its description);
- ``version``: the content differs from the partial's latest version: it
  becomes the next version (with the file's ``version_description``);
- ``unchanged``: the content equals the latest version's (no version is made;
  descriptions alone make none).

Partials are pushed before prompts, so a prompt version made by the same
push pins the new partial versions; ``changes`` tells the prompt plan which
partials change. The server has no dry run for partials, so the plan checks
what it can before anything is written: a partial the server archived, a
content including a partial that is neither on the server nor in the folder,
or including itself (directly or through others). The server checks the
content again (as a template, with its bounds) when the version is made.
``apply_partials`` creates them in include order: a new partial before those
that include it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from promptgate_client._errors import NotFoundError
from promptgate_client._sync import Client
from promptgate_client.prompts_as_code.partial_files import PartialFile, includes
from promptgate_client.prompts_as_code.plan import (
    CREATE,
    NEW_VERSION,
    UNCHANGED,
    PartialChange,
    call,
)
from promptgate_client.v1 import prompt_service_pb2 as ppb


@dataclass
class PartialPlan:
    """What pushing one partial file does; ``errors`` stop the push."""

    file: PartialFile
    action: str = CREATE
    version: int = 1
    from_version: int = 0
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return self.action != UNCHANGED


class _Server:
    """The server's partials, each read once."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._partials: dict[str, ppb.Partial | None] = {}
        self._latest: dict[str, ppb.PartialVersion] = {}

    def partial(self, name: str) -> ppb.Partial | None:
        if name not in self._partials:
            try:
                request = ppb.GetPartialRequest(partial=name)
                self._partials[name] = call(self._client.prompts.GetPartial, request).partial
            except NotFoundError:
                self._partials[name] = None
        return self._partials[name]

    def latest(self, name: str) -> ppb.PartialVersion:
        if name not in self._latest:
            request = ppb.GetPartialVersionRequest(partial=name)
            self._latest[name] = call(self._client.prompts.GetPartialVersion, request).version
        return self._latest[name]


def plan_partials(client: Client, files: Sequence[PartialFile]) -> list[PartialPlan]:
    """The plan of every partial file, in order; writes nothing."""
    server = _Server(client)
    plans = [_plan(server, f) for f in files]
    by_name = {p.file.name: p for p in plans}
    for plan in plans:
        if plan.changes and not plan.errors:
            _check_includes(server, plan, by_name)
    return plans


def _plan(server: _Server, file: PartialFile) -> PartialPlan:
    partial = server.partial(file.name)
    if partial is None:
        return PartialPlan(file)
    plan = PartialPlan(file, action=UNCHANGED)
    if partial.archived:
        plan.action = NEW_VERSION
        plan.errors.append(
            "the partial is archived on the server: unarchive it (UnarchivePartial) "
            "or remove the file"
        )
        return plan
    latest = server.latest(file.name)
    plan.version = latest.version
    if latest.content != file.content:
        plan.action, plan.from_version, plan.version = (
            NEW_VERSION,
            latest.version,
            latest.version + 1,
        )
    if file.description is not None and file.description != partial.description:
        plan.notes.append(
            "description differs from the server's; it is set only when a partial is created"
        )
    return plan


def _check_includes(server: _Server, plan: PartialPlan, folder: dict[str, PartialPlan]) -> None:
    """The partials ``plan``'s content includes exist after the push, without a cycle."""
    where = plan.file.path.parent
    for name in includes(plan.file.content):
        if name == plan.file.name or name in folder:
            continue
        found = server.partial(name)
        if found is None:
            plan.errors.append(
                f"content: includes partial {name!r}, which is neither on the server "
                f"nor in {where}/"
            )
        elif found.archived:
            plan.errors.append(
                f"content: includes partial {name!r}, which is archived on the server"
            )
    cycle = _cycle(server, plan.file.name, folder)
    if cycle:
        plan.errors.append(f"content: includes itself ({' -> '.join(cycle)})")


def _after_push(server: _Server, name: str, folder: dict[str, PartialPlan]) -> list[str]:
    """What partial ``name`` includes once the push is done."""
    if name in folder:
        return includes(folder[name].file.content)
    found = server.partial(name)
    return list(server.latest(name).includes) if found is not None else []


def _cycle(server: _Server, start: str, folder: dict[str, PartialPlan]) -> list[str]:
    """A path of includes from ``start`` back to it, once the push is done; [] if none."""
    seen: set[str] = set()
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    while stack:
        name, path = stack.pop()
        for child in sorted(_after_push(server, name, folder), reverse=True):
            if child == start:
                return [*path, start]
            if child not in seen:
                seen.add(child)
                stack.append((child, [*path, child]))
    return []


def changes(plans: Sequence[PartialPlan]) -> dict[str, PartialChange]:
    """The partials ``plans`` create or give a new version, by name."""
    return {
        p.file.name: PartialChange(p.file.name, p.from_version, p.version)
        for p in plans
        if p.changes
    }


def push_order(plans: Sequence[PartialPlan]) -> list[PartialPlan]:
    """The plans that change something, each after those of the partials it includes."""
    changing = {p.file.name: p for p in plans if p.changes}
    ordered: list[PartialPlan] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done or name not in changing:
            return
        done.add(name)  # before the children: a cycle (refused by the plan) ends here
        for child in includes(changing[name].file.content):
            visit(child)
        ordered.append(changing[name])

    for name in sorted(changing):
        visit(name)
    return ordered


def apply_partials(client: Client, plans: Sequence[PartialPlan]) -> Iterator[str]:
    """Create the partials and versions of ``plans`` (which must have no errors), in
    include order, saying what was done, a line per change, as it is done."""
    stub = client.prompts
    for plan in push_order(plans):
        file = plan.file
        if plan.action == CREATE:
            created = call(
                stub.CreatePartial,
                ppb.CreatePartialRequest(
                    name=file.name,
                    description=file.description or "",
                    content=file.content,
                    version_description=file.version_description,
                ),
            )
            plan.version = created.version.version
            yield f"created partial {file.name} version {plan.version}"
        else:
            version = call(
                stub.CreatePartialVersion,
                ppb.CreatePartialVersionRequest(
                    partial=file.name,
                    content=file.content,
                    description=file.version_description,
                ),
            ).version
            plan.version = version.version
            yield f"created partial {file.name} version {plan.version}"
