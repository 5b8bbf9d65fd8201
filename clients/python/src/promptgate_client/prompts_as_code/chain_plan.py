"""What pushing chain files would change on a server, and making those changes.

Chains are pushed last: their steps name stored prompts, which the same push
may create or change. For each chain file the plan is one of

- ``create``: the chain does not exist; create it with the file as version 1;
- ``version``: the file's content is none of the versions compared with (the
  latest, and those its tags point at): it becomes a new version;
- ``unchanged``: the content equals one of them (no version is made);

then a tag move for each of the file's tags not already at that version. As
for prompts, the server decides what "equal" means: the file goes to
CreateChainVersion with ``validate_only``, which checks it as a real create
would (steps, variables, the stored prompts the steps name, tag names), and
the version it would store is compared, output-only fields cleared, with the
stored ones. Chain tags have no breaking-change check on the server, so tag
moves are not checked beyond their names.

The server checks a chain against the prompts it has. A step naming a prompt
that the push creates, or changes where the step looks (the tag the step
follows moves, ``latest`` gets a new version, or the step's version number is
the one the push makes), cannot be checked before the prompts are pushed:
what the server says about that step and the steps after it is ``pending``
(such a refusal is compared locally, the file as written against the stored
versions), and ``recheck`` plans those chains again once the prompts are
pushed, before any chain is written. A step naming a prompt that is neither
on the server nor in the folder is an error.

Nothing is written while planning; ``apply_chains`` writes only plans with
no errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from promptgate_client._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    StatusError,
)
from promptgate_client._sync import Client
from promptgate_client.prompts_as_code.chain_files import ChainFile, content
from promptgate_client.prompts_as_code.files import LATEST, PROMPTS
from promptgate_client.prompts_as_code.plan import (
    CREATE,
    NEW_VERSION,
    UNCHANGED,
    PromptPlan,
    TagMove,
    call,
)
from promptgate_client.v1 import chain_service_pb2 as cpb
from promptgate_client.v1 import prompt_service_pb2 as ppb

_STEP = re.compile(r"^version\.steps\[(\d+)\](.*)$")


@dataclass(frozen=True)
class PromptChange:
    """What the push does to a prompt of the folder: creates it, makes version
    ``new_version`` (0: none), moves the tags ``moved``."""

    created: bool
    new_version: int
    moved: frozenset[str]

    def affects(self, step: cpb.ChainStep) -> bool:
        """Whether a step naming the prompt may run another version after the push."""
        if self.created:
            return True
        if step.version:
            return step.version == self.new_version
        if step.release_tag == LATEST:
            return self.new_version > 0
        if not step.release_tag:  # the server's default tag ("production" unless set)
            return bool(self.moved)
        return step.release_tag in self.moved


NO_CHANGES: dict[str, PromptChange] = {}


def prompt_changes(plans: Sequence[PromptPlan]) -> dict[str, PromptChange]:
    """What ``plans`` do to each prompt, by name."""
    return {
        p.file.name: PromptChange(
            created=p.action == CREATE,
            new_version=p.version if p.action != UNCHANGED else 0,
            moved=frozenset(m.tag for m in p.moves),
        )
        for p in plans
    }


@dataclass
class ChainPlan:
    """What pushing one chain file does."""

    file: ChainFile
    action: str = CREATE
    version: int = 1
    moves: list[TagMove] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: StatusError | None = None
    pending: list[str] = field(default_factory=list)
    """The prompts (of the folder) the push creates or changes where the steps look:
    the server checks the new version against them once they are pushed."""
    compared_locally: bool = False
    """The server refused the file only because of ``pending``: the file was compared
    as written."""

    @property
    def changes(self) -> bool:
        return self.action != UNCHANGED or bool(self.moves)


def plan_chains(
    client: Client, files: Sequence[ChainFile], changes: Mapping[str, PromptChange] = NO_CHANGES
) -> list[ChainPlan]:
    """The plan of every chain file, in order, given the prompt ``changes`` the push
    makes first (``prompt_changes``); writes nothing."""
    return [plan_chain(client, f, changes) for f in files]


def recheck(client: Client, plans: Sequence[ChainPlan]) -> list[ChainPlan]:
    """``plans`` with those that make a version planned again: call it once the
    prompts are pushed, so the server checks them against the pushed prompts."""
    return [
        plan_chain(client, p.file) if p.action != UNCHANGED or p.compared_locally else p
        for p in plans
    ]


def plan_chain(
    client: Client, file: ChainFile, changes: Mapping[str, PromptChange] = NO_CHANGES
) -> ChainPlan:
    """What pushing ``file`` does, after the prompt ``changes``."""
    plan = ChainPlan(file)
    stub = client.chains
    steps = file.version.steps
    affected = {
        i: name
        for i, name in file.prompts().items()
        if name in changes and changes[name].affects(steps[i])
    }
    request = cpb.CreateChainVersionRequest(
        chain=file.name, version=file.version, release_tags=file.tags, validate_only=True
    )
    try:
        chain = call(stub.GetChain, cpb.GetChainRequest(chain=file.name)).chain
    except NotFoundError:
        plan.moves = [TagMove(tag, 0) for tag in file.tags]
        plan.pending = sorted(set(affected.values()))
        try:
            call(stub.CreateChainVersion, request)  # content first: NOT_FOUND means valid
        except NotFoundError:
            pass
        except StatusError as exc:
            _refused(client, plan, exc, affected, changes)
            plan.compared_locally = False  # a new chain: nothing to compare with
        return plan
    if chain.description != file.description or dict(chain.labels) != file.labels:
        plan.notes.append(
            "description and labels differ from the server's; they are set only when a "
            "chain is created"
        )
    tags = {t.tag: t.version for t in chain.release_tags if not t.automatic}
    latest = [chain.latest_version] if chain.latest_version else []
    compared = list(dict.fromkeys(latest + [tags[t] for t in file.tags if t in tags]))
    try:
        checked = call(stub.CreateChainVersion, request).version
        candidate = content(checked)
    except StatusError as exc:
        if not _refused(client, plan, exc, affected, changes):
            plan.action, plan.version = NEW_VERSION, chain.latest_version + 1
            return plan
        candidate = content(file.version)  # compared as written until the server can check it
    else:
        if checked.id:  # a server without validate_only made the version
            raise FailedPreconditionError(
                f"the server stored chain {file.name} version {checked.version} while asked only "
                "to check it: it is too old for chain files (no validate_only on "
                "CreateChainVersion); upgrade it"
            )
    stored = {n: _content_of(client, file.name, n) for n in compared}
    same = next((n for n, v in stored.items() if v == candidate), 0)
    if same:
        plan.action, plan.version = UNCHANGED, same
    else:
        plan.action, plan.version = NEW_VERSION, chain.latest_version + 1
        plan.pending = sorted(set(affected.values()))
    plan.moves = [TagMove(t, tags.get(t, 0)) for t in file.tags if tags.get(t) != plan.version]
    return plan


def _refused(
    client: Client,
    plan: ChainPlan,
    exc: StatusError,
    affected: Mapping[int, str],
    changes: Mapping[str, PromptChange],
) -> bool:
    """Note why the server refused ``plan``'s file: True when only because of the
    ``affected`` steps (naming prompts the push changes) and the steps after them
    (``plan.pending``, ``plan.compared_locally``), else ``plan.error`` says why."""
    prompts = plan.file.prompts()
    first = min(affected, default=len(plan.file.version.steps))
    known: list[str] = []  # why, for steps the push does not change
    unknown: set[str] = set()
    for violation in exc.violations:
        match = _STEP.match(violation.field)
        index = int(match[1]) if match else -1
        on_prompt = match is not None and match[2] == ".prompt"
        if index >= first and (index in affected or not on_prompt):
            continue
        known.append(violation.field)
        name = prompts.get(index, "")
        if on_prompt and name and name not in changes:
            unknown.add(name)
    if isinstance(exc, InvalidArgumentError) and exc.violations and not known:
        plan.pending = sorted(set(affected.values()))
        plan.compared_locally = True
        return True
    missing = sorted(n for n in unknown if _missing(client, n))
    if missing:
        names = ", ".join(repr(n) for n in missing)
        folder = plan.file.path.parent.parent / PROMPTS
        exc = InvalidArgumentError(
            f"steps name prompt{'s' if len(missing) > 1 else ''} {names}, which "
            f"{'are' if len(missing) > 1 else 'is'} neither on the server nor in {folder}/",
            reason=exc.reason,
            domain=exc.domain,
            metadata=exc.metadata,
            violations=exc.violations,
        )
    plan.error = exc
    return False


def _missing(client: Client, prompt: str) -> bool:
    try:
        call(client.prompts.GetPrompt, ppb.GetPromptRequest(prompt=prompt))
    except NotFoundError:
        return True
    return False


def _content_of(client: Client, name: str, number: int) -> cpb.ChainVersion:
    request = cpb.GetChainVersionRequest(chain=name, version=number)
    return content(call(client.chains.GetChainVersion, request).version)


def apply_chains(client: Client, plans: Sequence[ChainPlan]) -> Iterator[str]:
    """Make the changes of ``plans`` (which must have no errors), saying what was done,
    a line per change, as it is done. A refusal raises the server's StatusError with
    the file named."""
    for plan in plans:
        try:
            yield from _apply(client, plan)
        except StatusError as exc:
            exc.message = f"chain {plan.file.name} ({plan.file.path}): {exc.message}"
            raise


def _apply(client: Client, plan: ChainPlan) -> Iterator[str]:
    stub, file = client.chains, plan.file
    tags = [move.tag for move in plan.moves]
    if plan.action == CREATE:
        call(
            stub.CreateChain,
            cpb.CreateChainRequest(
                name=file.name, description=file.description, labels=file.labels
            ),
        )
        yield f"created chain {file.name}"
    if plan.action in (CREATE, NEW_VERSION):
        request = cpb.CreateChainVersionRequest(
            chain=file.name, version=file.version, release_tags=tags
        )
        plan.version = call(stub.CreateChainVersion, request).version.version
        yield f"created chain {file.name} version {plan.version}"
    else:
        for tag in tags:
            move = cpb.SetChainReleaseTagRequest(chain=file.name, tag=tag, version=plan.version)
            call(stub.SetChainReleaseTag, move)
    yield from (f"moved chain {file.name} {tag} to version {plan.version}" for tag in tags)
