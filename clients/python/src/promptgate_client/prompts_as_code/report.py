"""The push plan as text: a line per action, and a summary line.

Each line starts with the action, padded (``create``, ``version``,
``unchanged``, ``tag``, ``BREAKING``, ``error``, ``note``), then what it is
about: a prompt by name, ``partial NAME`` or ``chain NAME``. Partials come
first and chains last, in the order they are pushed.
"""

from __future__ import annotations

from collections.abc import Sequence

from promptgate_client.prompts_as_code.chain_files import file_key
from promptgate_client.prompts_as_code.chain_plan import ChainPlan
from promptgate_client.prompts_as_code.partial_plan import PartialPlan
from promptgate_client.prompts_as_code.plan import CREATE, NEW_VERSION, PromptPlan, TagMove
from promptgate_client.v1 import prompt_service_pb2 as ppb

INDENT = " " * 11


def partial_lines(plans: Sequence[PartialPlan]) -> list[str]:
    """The partial plan, one line per action (and per error)."""
    lines: list[str] = []
    for plan in plans:
        name = f"partial {plan.file.name}"
        if plan.errors:
            lines.extend(f"{'error':<10} {name} ({plan.file.path}): {e}" for e in plan.errors)
            continue
        if plan.action == CREATE:
            lines.append(f"{'create':<10} {name}: new partial, version 1")
        elif plan.action == NEW_VERSION:
            lines.append(f"{'version':<10} {name}: new version {plan.version}")
        else:
            lines.append(f"{'unchanged':<10} {name}: version {plan.version}")
        lines.extend(f"{'note':<10} {name}: {note}" for note in plan.notes)
    return lines


def plan_lines(plans: Sequence[PromptPlan], *, allow_breaking_changes: bool) -> list[str]:
    """The prompt plan, one line per action, with indented lines per breaking change."""
    lines: list[str] = []
    for plan in plans:
        name = plan.file.name
        if plan.error is not None:
            lines.append(f"{'error':<10} {name} ({plan.file.path}): {plan.error!s}")
            lines.extend(f"{INDENT}{v.field}: {v.description}" for v in plan.error.violations)
            continue
        if plan.action == CREATE:
            lines.append(f"{'create':<10} {name}: new prompt, version 1")
        elif plan.action == NEW_VERSION:
            lines.append(f"{'version':<10} {name}: new version {plan.version}{_why(plan)}")
            report = plan.compatibility
            # Listed here unless a move of that tag lists them below.
            if report is not None and all(m.tag != report.release_tag for m in plan.moves):
                lines.extend(
                    f"{INDENT}{_short(c.type)} {c.variable}: {c.description}"
                    for c in report.breaking_changes
                )
        else:
            lines.append(f"{'unchanged':<10} {name}: version {plan.version}")
        for move in plan.moves:
            where = _where(move, plan.version)
            if move.ends_split:
                where += " (ends its A/B split)"
            if move.unchecked:
                where += " (checked once the partials are pushed)"
            if move.breaking and not allow_breaking_changes:
                lines.append(
                    f"{'BREAKING':<10} {name}: {where} refused "
                    "(--allow-breaking-changes to move it)"
                )
            elif move.breaking:
                lines.append(f"{'tag':<10} {name}: {where} (breaking changes allowed)")
            else:
                lines.append(f"{'tag':<10} {name}: {where}")
            lines.extend(f"{INDENT}{v.type} {v.subject}: {v.description}" for v in move.breaking)
        if plan.pending:
            lines.append(f"{'note':<10} {name}: {_pending(plan)}")
        lines.extend(f"{'note':<10} {name}: {note}" for note in plan.notes)
    return lines


def chain_lines(plans: Sequence[ChainPlan]) -> list[str]:
    """The chain plan, one line per action, with indented lines per refused key."""
    lines: list[str] = []
    for plan in plans:
        name = f"chain {plan.file.name}"
        if plan.error is not None:
            lines.append(f"{'error':<10} {name} ({plan.file.path}): {plan.error!s}")
            for violation in plan.error.violations:
                key = file_key(violation.field)
                lines.append(f"{INDENT}{key + ': ' if key else ''}{violation.description}")
            continue
        if plan.action == CREATE:
            lines.append(f"{'create':<10} {name}: new chain, version 1")
        elif plan.action == NEW_VERSION:
            lines.append(f"{'version':<10} {name}: new version {plan.version}")
        else:
            lines.append(f"{'unchanged':<10} {name}: version {plan.version}")
        lines.extend(f"{'tag':<10} {name}: {_where(m, plan.version)}" for m in plan.moves)
        if plan.pending:
            many = len(plan.pending) > 1
            lines.append(
                f"{'note':<10} {name}: steps name prompt{'s' if many else ''} "
                f"{', '.join(plan.pending)}, which this push creates or changes: the server "
                f"checks this version against {'them' if many else 'it'} once "
                f"{'they are' if many else 'it is'} pushed"
                + (" (until then the file is compared as written)" if plan.compared_locally else "")
            )
        lines.extend(f"{'note':<10} {name}: {note}" for note in plan.notes)
    return lines


def _where(move: TagMove, version: int) -> str:
    if move.from_version:
        return f"{move.tag} v{move.from_version} -> v{version}"
    return f"{move.tag} -> v{version} (new tag)"


def _pending(plan: PromptPlan) -> str:
    many = len(plan.pending) > 1
    names = ", ".join(plan.pending)
    checked = "this version and its tag moves" if plan.moves else "this version"
    return (
        f"includes partial{'s' if many else ''} {names}, which this push creates: "
        f"the server checks {checked} once {'they exist' if many else 'it exists'}"
    )


def _why(plan: PromptPlan) -> str:
    """Why a new version, in parentheses: changing partials, and the compatibility report."""
    reasons = []
    if plan.changing:
        reasons.append(
            ", ".join(
                f"partial {c.name} {'is new' if c.from_version == 0 else 'changes'}"
                for c in plan.changing
            )
        )
    report = _report(plan)
    if report:
        reasons.append(report)
    return f" ({'; '.join(reasons)})" if reasons else ""


def summary(
    plans: Sequence[PromptPlan],
    partials: Sequence[PartialPlan] = (),
    chains: Sequence[ChainPlan] = (),
) -> str:
    """One line of counts (of partials and chains too, when there are such files)."""
    count = {
        kind: sum(p.action == kind and p.error is None for p in plans)
        for kind in (CREATE, NEW_VERSION)
    }
    unchanged = sum(not p.changes and p.error is None for p in plans)
    moves = sum(len(p.moves) for p in plans if p.error is None)
    breaking = sum(bool(m.breaking) for p in plans if p.error is None for m in p.moves)
    errors = sum(p.error is not None for p in plans)
    parts = [
        f"{count[CREATE]} to create",
        _count(count[NEW_VERSION], "new version"),
        f"{_count(moves, 'tag move')} ({breaking} breaking)",
        f"{unchanged} up to date",
    ]
    if errors:
        parts.append(_count(errors, "error"))
    line = "plan: " + ", ".join(parts)
    if partials:
        line += "; partials: " + _partial_counts(partials)
    if chains:
        line += "; chains: " + _chain_counts(chains)
    return line


def _partial_counts(plans: Sequence[PartialPlan]) -> str:
    fine = [p for p in plans if not p.errors]
    parts = [
        f"{sum(p.action == CREATE for p in fine)} to create",
        _count(sum(p.action == NEW_VERSION for p in fine), "new version"),
        f"{sum(not p.changes for p in fine)} up to date",
    ]
    errors = len(plans) - len(fine)
    if errors:
        parts.append(_count(errors, "error"))
    return ", ".join(parts)


def _chain_counts(plans: Sequence[ChainPlan]) -> str:
    fine = [p for p in plans if p.error is None]
    parts = [
        f"{sum(p.action == CREATE for p in fine)} to create",
        _count(sum(p.action == NEW_VERSION for p in fine), "new version"),
        _count(sum(len(p.moves) for p in fine), "tag move"),
        f"{sum(not p.changes for p in fine)} up to date",
    ]
    errors = len(plans) - len(fine)
    if errors:
        parts.append(_count(errors, "error"))
    return ", ".join(parts)


def _report(plan: PromptPlan) -> str:
    report = plan.compatibility
    if report is None:
        return ""
    served = ", ".join(f"v{n}" for n in report.versions)
    if report.compatible:
        return f"compatible with {report.release_tag} {served}"
    count = _count(len(report.breaking_changes), "breaking change")
    return f"breaks callers of {report.release_tag} {served}: {count}"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _short(kind: ppb.BreakingChangeType.ValueType) -> str:
    return ppb.BreakingChangeType.Name(kind).removeprefix("BREAKING_CHANGE_TYPE_")
