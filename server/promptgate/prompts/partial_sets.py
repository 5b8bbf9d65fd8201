"""Partial sets: the partial versions one prompt renders with, and their bounds.

A template includes a partial by name (``{% include "tone" %}``) and a
partial may include others. The partials one prompt version (or one inline
prompt) renders with form a ``PartialSet``: every partial reachable from its
templates, each at one version. A stored version pins its set when it is
created (the spec's ``partials``, name -> version) and renders with exactly
that set ever after; an inline prompt takes the latest versions at call time.

Partials are no way around the template limits. A partial's content is a
template with the limits of ``promptgate.prompts.source_limits``; what a
render builds is bounded by ``max_chars`` whatever it includes; and a set
holds at most ``MAX_PARTIALS`` partials of at most ``MAX_SET_CHARS``
characters in all, whose includes nest at most ``MAX_INCLUDE_DEPTH`` deep
(a template including a partial is depth 1) and never form a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from promptgate.errors import InvalidArgument
from promptgate.prompts.names import NAME
from promptgate.prompts.source_limits import MAX_TEMPLATE_CHARS

# A partial's name: the same rule as a prompt's.
PARTIAL_NAME = NAME
MAX_PARTIALS = 32
MAX_INCLUDE_DEPTH = 8
MAX_SET_CHARS = MAX_TEMPLATE_CHARS


@dataclass(frozen=True, slots=True)
class PinnedPartial:
    """One version of a partial, as templates include it."""

    name: str
    version: int
    content: str
    includes: tuple[str, ...]  # the partials its content includes


@dataclass(frozen=True, slots=True)
class PartialSet:
    """Partial versions by name: what the templates of one prompt may include."""

    partials: Mapping[str, PinnedPartial] = field(default_factory=lambda: MappingProxyType({}))
    pins: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, partials: Iterable[PinnedPartial]) -> PartialSet:
        """The set of ``partials`` (one version per name)."""
        by_name = {p.name: p for p in partials}
        return cls(
            MappingProxyType(by_name),
            MappingProxyType({n: p.version for n, p in by_name.items()}),
            MappingProxyType({n: p.content for n, p in by_name.items()}),
        )

    def reachable(self, roots: Iterable[str]) -> list[str]:
        """The partials of this set that ``roots`` include, directly or through others."""
        seen: list[str] = []
        stack = [r for r in roots if r in self.partials]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.append(name)
            stack.extend(i for i in self.partials[name].includes if i in self.partials)
        return seen


EMPTY_PARTIALS = PartialSet()


def check_set(roots: Mapping[str, str], partials: Mapping[str, PinnedPartial]) -> None:
    """Refuse a set past the bounds of the module docstring.

    ``roots`` maps each partial that a template includes to the template's
    field, which the refusal names; ``partials`` are every partial reachable
    from them.
    """
    first_field = next(iter(roots.values()), "")
    if len(partials) > MAX_PARTIALS:
        raise too_many(len(partials), first_field)
    chars = sum(len(p.content) for p in partials.values())
    if chars > MAX_SET_CHARS:
        raise InvalidArgument.field(
            first_field,
            f"includes partials of {chars} characters in all, more than the limit "
            f"of {MAX_SET_CHARS}",
            reason="INVALID_PROMPT",
        )
    graph = {name: p.includes for name, p in partials.items()}
    depths: dict[str, int] = {}
    for name, where in roots.items():
        depth = _depth(name, graph, [], depths, where)
        if depth > MAX_INCLUDE_DEPTH:
            raise InvalidArgument.field(
                where,
                f"includes partials nested {depth} deep (through {name!r}), more than "
                f"the limit of {MAX_INCLUDE_DEPTH}",
                reason="INVALID_PROMPT",
            )


def too_many(count: int, where: str) -> InvalidArgument:
    """The refusal of a set of ``count`` partials, more than ``MAX_PARTIALS``."""
    return InvalidArgument.field(
        where,
        f"includes {count} partials or more (directly or through other partials), "
        f"more than the limit of {MAX_PARTIALS}",
        reason="INVALID_PROMPT",
    )


def _depth(
    name: str,
    graph: Mapping[str, Sequence[str]],
    path: list[str],
    depths: dict[str, int],
    where: str,
) -> int:
    """The longest chain of includes from ``name`` (itself included); refuses a cycle.

    Recursion is bounded by the set's size (``MAX_PARTIALS``, checked first).
    """
    if name in path:
        cycle = " -> ".join([*path[path.index(name) :], name])
        error = InvalidArgument.field(
            where, f"partials include each other in a cycle: {cycle}", reason="PARTIAL_CYCLE"
        )
        error.metadata["cycle"] = cycle
        raise error
    known = depths.get(name)
    if known is not None:
        return known
    path.append(name)
    deepest = max(
        (
            _depth(child, graph, path, depths, where)
            for child in graph.get(name, ())
            if child in graph
        ),
        default=0,
    )
    path.pop()
    depths[name] = deepest + 1
    return deepest + 1
