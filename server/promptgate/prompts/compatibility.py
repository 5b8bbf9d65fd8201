"""Whether a prompt version's input variables still fit the callers of another.

Callers of a version send the inputs its declared variables ask for. A
candidate version breaks them when it

- removes a variable they may send (VARIABLE_REMOVED): the input becomes
  undeclared, and undeclared inputs are refused;
- changes a variable's type (VARIABLE_TYPE_CHANGED): their values no longer
  fit (even where one would be accepted, e.g. a NUMBER as JSON, it renders
  differently);
- requires a variable they may omit (VARIABLE_NOW_REQUIRED): a new variable
  without a default, or an existing one that lost its default.

Adding a variable with a default, adding or changing a default, or changing a
description breaks nobody. The declarations are the whole contract: a stored
version's templates cannot use an undeclared variable (validation refuses
it), and a chat-history block names a declared CHAT_HISTORY variable. A block
naming an undeclared variable (possible only for specs that skipped
validation) counts as a required CHAT_HISTORY variable.

A release tag split between several versions serves the callers of each, so a
candidate is compared with every served version and a change is reported per
version. Everything here is pure: the store-facing side is
``promptgate.prompts.release_checks``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from promptgate.errors import FailedPrecondition, PreconditionViolation
from promptgate.prompts.model import InputType, InputVariable, PromptSpec

PRODUCTION = "production"
"""The tag whose compatibility CreatePromptVersion reports."""


class BreakingChangeType(enum.StrEnum):
    """The kind of a breaking change (the PreconditionFailure violation type)."""

    VARIABLE_REMOVED = "VARIABLE_REMOVED"
    VARIABLE_TYPE_CHANGED = "VARIABLE_TYPE_CHANGED"
    VARIABLE_NOW_REQUIRED = "VARIABLE_NOW_REQUIRED"


@dataclass(frozen=True, slots=True)
class BreakingChange:
    """One change that breaks callers of ``version``."""

    type: BreakingChangeType
    variable: str
    description: str
    version: int


@dataclass(frozen=True, slots=True)
class CompatibilityReport:
    """A candidate compared with the versions ``release_tag`` serves."""

    release_tag: str
    versions: tuple[int, ...]
    changes: tuple[BreakingChange, ...]

    @property
    def compatible(self) -> bool:
        return not self.changes


def contract(spec: PromptSpec) -> dict[str, InputVariable]:
    """The variables callers of ``spec`` deal with, by name, in declaration order."""
    variables = {v.name: v for v in spec.input_variables}
    for message in spec.messages:
        name = message.chat_history_input
        if name and name not in variables:
            variables[name] = InputVariable(name, InputType.CHAT_HISTORY)
    return variables


def breaking_changes(
    current: PromptSpec, candidate: PromptSpec, version: int
) -> list[BreakingChange]:
    """The changes from ``current`` (version number ``version``) to ``candidate``
    that break callers of ``current``."""
    before, after = contract(current), contract(candidate)
    changes: list[BreakingChange] = []
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            changes.append(
                BreakingChange(
                    BreakingChangeType.VARIABLE_REMOVED,
                    name,
                    f"variable {name!r} is removed; callers of version {version} may send it",
                    version,
                )
            )
        elif new.type is not old.type:
            changes.append(
                BreakingChange(
                    BreakingChangeType.VARIABLE_TYPE_CHANGED,
                    name,
                    f"variable {name!r} changes type from {old.type.value} to "
                    f"{new.type.value}; callers of version {version} send {old.type.value}",
                    version,
                )
            )
        elif old.has_default and not new.has_default:
            changes.append(
                BreakingChange(
                    BreakingChangeType.VARIABLE_NOW_REQUIRED,
                    name,
                    f"variable {name!r} loses its default; callers of version {version} "
                    "may omit it",
                    version,
                )
            )
    for name, new in after.items():
        if name not in before and not new.has_default:
            changes.append(
                BreakingChange(
                    BreakingChangeType.VARIABLE_NOW_REQUIRED,
                    name,
                    f"new variable {name!r} has no default; callers of version {version} "
                    "do not send it",
                    version,
                )
            )
    return changes


def compare(
    release_tag: str, served: Sequence[tuple[int, PromptSpec]], candidate: PromptSpec
) -> CompatibilityReport:
    """``candidate`` against every (version number, spec) the tag serves."""
    changes = [c for number, spec in served for c in breaking_changes(spec, candidate, number)]
    return CompatibilityReport(
        release_tag=release_tag,
        versions=tuple(number for number, _ in served),
        changes=tuple(changes),
    )


def refusal(reports: Sequence[tuple[int, CompatibilityReport]]) -> FailedPrecondition:
    """The FAILED_PRECONDITION (BREAKING_CHANGE) refusing to move tags to versions, given
    (the version a tag would move to, its report) pairs: one violation per breaking
    change, naming the tag and the version."""
    broken = [(to, r) for to, r in reports if not r.compatible]
    tags = ", ".join(dict.fromkeys(repr(r.release_tag) for _, r in broken))
    versions = ", ".join(dict.fromkeys(str(to) for to, _ in broken))
    count = sum(len(r.changes) for _, r in broken)
    first = broken[0][1].changes[0].description if broken else ""
    more = f" (and {count - 1} more)" if count > 1 else ""
    return FailedPrecondition(
        f"moving release tag {tags} to version {versions} breaks its callers: "
        f"{first}{more}; set allow_breaking_changes to move it anyway",
        reason="BREAKING_CHANGE",
        metadata={
            "release_tags": ",".join(dict.fromkeys(r.release_tag for _, r in broken)),
            "versions": ",".join(dict.fromkeys(str(to) for to, _ in broken)),
        },
        preconditions=[
            PreconditionViolation(
                type=change.type.value,
                subject=change.variable,
                description=f"release tag {report.release_tag!r} to version {to}: "
                f"{change.description}",
            )
            for to, report in broken
            for change in report.changes
        ],
    )
