"""What pushing prompt files would change on a server, and making those changes.

For each file the plan is one of

- ``create``: the prompt does not exist; create it with the file as version 1;
- ``version``: the file's content is none of the versions compared with (the
  latest, and those its tags point at): it becomes a new version. The partial
  versions a version pins count: when the partials it includes have newer
  versions, the same file makes a new version that pins them (a note says so);
- ``unchanged``: the content equals one of them (no version is made);

and a prompt including a partial that the same push creates or gives a new
version (``partial_plan``) gets a new version too, pinning it: ``changing``
names those partials. The server checks files against the partials it has,
so a prompt including a partial the push creates cannot be checked before it
exists (``pending``): ``recheck`` plans such prompts again once the
partials are pushed, before any prompt is written. A prompt including a
partial that is neither on the server nor in the folder is an error.

then a tag move for each of the file's tags not already at that version. The
server decides what "equal" means: the file is sent with ``validate_only``
and the version it would store is compared, output-only fields cleared, with
the stored ones. Tag moves are checked the same way (``validate_only``), so a
breaking change shows up in the plan with the server's own violations, and the
plan reports the new version's compatibility with production.

Nothing is written while planning; ``apply`` writes only a plan with no
errors and no refused breaking changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from promptgate_client._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionViolation,
    StatusError,
    from_rpc_error,
)
from promptgate_client._sync import Client
from promptgate_client.prompts_as_code.files import PromptFile, content
from promptgate_client.prompts_as_code.partial_files import PARTIALS
from promptgate_client.v1 import prompt_service_pb2 as ppb

CREATE, NEW_VERSION, UNCHANGED = "create", "version", "unchanged"
T = TypeVar("T")


@dataclass(frozen=True)
class PartialChange:
    """A partial the push creates (``from_version`` 0) or gives a new version."""

    name: str
    from_version: int
    to_version: int


NO_CHANGES: dict[str, PartialChange] = {}


@dataclass
class TagMove:
    """Point ``tag`` at the plan's version; ``breaking`` lists the changes that break
    the callers of ``from_version`` (0: a new tag); ``ends_split``: the tag splits
    its traffic now (an A/B test, ``from_version`` its control) and the move ends it;
    ``unchecked``: the server checks it only once the partials are pushed."""

    tag: str
    from_version: int
    breaking: list[PreconditionViolation] = field(default_factory=list)
    ends_split: bool = False
    unchecked: bool = False


@dataclass
class PromptPlan:
    """What pushing one file does."""

    file: PromptFile
    action: str = CREATE
    version: int = 1
    moves: list[TagMove] = field(default_factory=list)
    compatibility: ppb.CompatibilityReport | None = None
    notes: list[str] = field(default_factory=list)
    error: StatusError | None = None
    changing: list[PartialChange] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def breaking(self) -> bool:
        return any(move.breaking for move in self.moves)

    @property
    def changes(self) -> bool:
        return self.action != UNCHANGED or bool(self.moves)


def call(method: Callable[..., T], request: Any) -> T:
    """Call a stub method; a failure raises the client's typed StatusError."""
    try:
        return method(request)
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err


def plan_push(
    client: Client,
    files: Sequence[PromptFile],
    changes: Mapping[str, PartialChange] = NO_CHANGES,
) -> list[PromptPlan]:
    """The plan of every file, in order, given the partial ``changes`` the push makes
    first; writes nothing."""
    return [plan_prompt(client, f, changes) for f in files]


def recheck(client: Client, plans: Sequence[PromptPlan]) -> list[PromptPlan]:
    """``plans`` with those that make a version planned again: call it once the partials
    are pushed, so the server checks them with the new partial versions (a new
    prompt's plan does not say which partials it includes)."""
    return [
        plan_prompt(client, p.file) if p.changing or p.action != UNCHANGED else p for p in plans
    ]


def plan_prompt(
    client: Client, file: PromptFile, changes: Mapping[str, PartialChange] = NO_CHANGES
) -> PromptPlan:
    """What pushing ``file`` does, after the partial ``changes``."""
    plan = PromptPlan(file)
    stub = client.prompts
    try:
        prompt = call(stub.GetPrompt, ppb.GetPromptRequest(prompt=file.name)).prompt
    except NotFoundError:
        plan.moves = [TagMove(tag, 0) for tag in file.tags]
        # The server checks the content and tags before it looks the prompt up.
        request = ppb.CreatePromptVersionRequest(
            prompt=file.name, version=file.version, release_tags=file.tags, validate_only=True
        )
        try:
            call(stub.CreatePromptVersion, request)
        except NotFoundError:
            pass  # valid; the prompt does not exist yet
        except StatusError as exc:
            _refused(plan, exc, changes)
        return plan
    if prompt.description != file.description or dict(prompt.labels) != file.labels:
        plan.notes.append(
            "description and labels differ from the server's; they are set only when a "
            "prompt is created"
        )
    tags = {t.tag: t.version for t in prompt.release_tags if not t.automatic}
    split = {t.tag for t in prompt.release_tags if t.HasField("split")}
    try:
        checked = call(
            stub.CreatePromptVersion,
            ppb.CreatePromptVersionRequest(
                prompt=file.name, version=file.version, validate_only=True
            ),
        )
    except StatusError as exc:
        plan.action, plan.version = NEW_VERSION, prompt.latest_version + 1
        if _refused(plan, exc, changes):
            plan.moves = [
                TagMove(t, tags.get(t, 0), ends_split=t in split, unchecked=True) for t in file.tags
            ]
        return plan
    candidate = content(checked.version)
    plan.changing = [changes[n] for n in sorted(candidate.partials) if n in changes]
    latest = [prompt.latest_version] if prompt.latest_version else []
    compared = list(dict.fromkeys(latest + [tags[t] for t in file.tags if t in tags]))
    stored = {n: _content_of(client, file.name, n) for n in compared}
    same = next((n for n, v in stored.items() if v == candidate), 0)
    if same and not plan.changing:
        plan.action, plan.version = UNCHANGED, same
    else:
        plan.action, plan.version = NEW_VERSION, checked.version.version
        if checked.HasField("compatibility"):
            plan.compatibility = checked.compatibility
        for change in plan.changing:
            candidate.partials[change.name] = change.to_version
        plan.notes.extend(_repinned(stored, candidate))
    plan.moves = [
        TagMove(t, tags.get(t, 0), ends_split=t in split)
        for t in file.tags
        if tags.get(t) != plan.version
    ]
    try:
        for move in plan.moves:
            move.breaking = _breaking(client, plan, move.tag)
    except StatusError as exc:
        plan.error = exc
    return plan


def _refused(plan: PromptPlan, exc: StatusError, changes: Mapping[str, PartialChange]) -> bool:
    """Note why the server refused ``plan``'s file: True when only because it includes
    partials the push creates (``plan.pending``), else ``plan.error`` says why."""
    missing = _missing_partials(exc)
    if missing and all(name in changes for name in missing):
        plan.pending = missing
        plan.changing = [changes[name] for name in missing]
        return True
    unknown = [name for name in missing if name not in changes]
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        folder = plan.file.path.parent.parent / PARTIALS
        exc = InvalidArgumentError(
            f"includes partial{'s' if len(unknown) > 1 else ''} {names}, which "
            f"{'are' if len(unknown) > 1 else 'is'} neither on the server nor in {folder}/",
            reason=exc.reason,
            domain=exc.domain,
            metadata=exc.metadata,
            violations=exc.violations,
        )
    plan.error = exc
    return False


def _missing_partials(exc: StatusError) -> list[str]:
    """The partials a PARTIAL_NOT_FOUND error names (the server lists them in its
    ErrorInfo metadata, comma-separated: names have no commas)."""
    if exc.reason != "PARTIAL_NOT_FOUND":
        return []
    return sorted({n for n in exc.metadata.get("partial", "").split(", ") if n})


def _repinned(stored: dict[int, ppb.PromptVersion], candidate: ppb.PromptVersion) -> list[str]:
    """A note when ``candidate`` differs from a stored version only in partial pins."""
    bare = content(candidate, pins=False)
    for number, version in stored.items():
        if content(version, pins=False) == bare:
            old, new = version.partials, candidate.partials
            changed = ", ".join(
                f"{name} v{old.get(name, 0)} -> v{new.get(name, 0)}"
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
            )
            return [f"same content as version {number}; newer partial versions: {changed}"]
    return []


def _content_of(client: Client, name: str, number: int) -> ppb.PromptVersion:
    request = ppb.GetPromptVersionRequest(prompt=name, version=number)
    return content(call(client.prompts.GetPromptVersion, request).version)


def _breaking(client: Client, plan: PromptPlan, tag: str) -> list[PreconditionViolation]:
    """The server's breaking changes of moving ``tag`` to the plan's version."""
    stub, name = client.prompts, plan.file.name
    try:
        if plan.action == UNCHANGED:
            call(
                stub.SetReleaseTag,
                ppb.SetReleaseTagRequest(
                    prompt=name, tag=tag, version=plan.version, validate_only=True
                ),
            )
        else:
            call(
                stub.CreatePromptVersion,
                ppb.CreatePromptVersionRequest(
                    prompt=name, version=plan.file.version, release_tags=[tag], validate_only=True
                ),
            )
    except FailedPreconditionError as exc:
        if exc.reason != "BREAKING_CHANGE":
            raise
        return exc.preconditions or [PreconditionViolation("BREAKING_CHANGE", tag, exc.message)]
    return []


def apply_push(
    client: Client, plans: Sequence[PromptPlan], *, allow_breaking_changes: bool
) -> Iterator[str]:
    """Make the changes of ``plans`` (which must have no errors), saying what was done,
    a line per change, as it is done."""
    stub = client.prompts
    for plan in plans:
        file = plan.file
        tags = [move.tag for move in plan.moves]
        if plan.action == CREATE:
            call(
                stub.CreatePrompt,
                ppb.CreatePromptRequest(
                    name=file.name, description=file.description, labels=file.labels
                ),
            )
            yield f"created prompt {file.name}"
        if plan.action in (CREATE, NEW_VERSION):
            created = call(
                stub.CreatePromptVersion,
                ppb.CreatePromptVersionRequest(
                    prompt=file.name,
                    version=file.version,
                    release_tags=tags,
                    allow_breaking_changes=allow_breaking_changes,
                ),
            ).version
            plan.version = created.version
            yield f"created {file.name} version {created.version}"
            yield from (f"moved {file.name} {tag} to version {plan.version}" for tag in tags)
            continue
        for tag in tags:
            call(
                stub.SetReleaseTag,
                ppb.SetReleaseTagRequest(
                    prompt=file.name,
                    tag=tag,
                    version=plan.version,
                    allow_breaking_changes=allow_breaking_changes,
                ),
            )
            yield f"moved {file.name} {tag} to version {plan.version}"
