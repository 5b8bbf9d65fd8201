"""Traffic splits: a release tag shared between versions by weight, for A/B tests.

SetReleaseTag with ``splits`` points a tag at 2 to 10 distinct versions, each
with a positive weight; the weights are normalised to shares that sum to 1
and the first version is the control (what the tag's ``version`` reports and
what GetPromptVersion by the tag returns). Moving the tag to one version ends
the split.

A split has an id. It is kept while the same versions, in the same order,
split the tag, so changing only the weights is the same test (ramping 90/10
to 50/50); another list of versions is a new split with a new id.

Assignment: each call through a split tag runs one of its versions. The
versions own consecutive intervals of [0, 1), in order, as long as their
shares. A call with a split key falls at the point given by the first 8 bytes
of sha256(split id, key) read as a fraction, so the same key always gets the
same version while the split keeps its id, and a weight change moves a key
only where an interval boundary passed it. A call without a key falls at a
random point.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.ids import new_id
from promptgate.prompts.model import ResolvedPrompt, TrafficSplit, VersionWeight

MAX_SPLIT_VERSIONS = 10
MAX_WEIGHT = 1_000_000.0
MAX_SPLIT_KEY = 256

_SPLIT: TypeAdapter[TrafficSplit] = TypeAdapter(TrafficSplit)


def check_target(version: int, version_id: str, entries: Sequence[VersionWeight]) -> None:
    """Raise InvalidArgument unless a tag move names one version or well-formed splits.

    Whether the versions exist and are distinct is checked against the store
    (split_store.split_versions).
    """
    if entries and (version or version_id):
        raise InvalidArgument.field(
            "splits", "give a version, a version_id or splits", reason="INVALID_SPLIT"
        )
    if not version and not version_id and not entries:
        raise InvalidArgument.field("version", "give a version number or a version_id")
    check_entries(entries)


def check_entries(entries: Sequence[VersionWeight], field: str = "splits") -> None:
    """Raise InvalidArgument (INVALID_SPLIT) listing every malformed entry."""
    problems: list[FieldViolation] = []
    if len(entries) > MAX_SPLIT_VERSIONS:
        problems.append(FieldViolation(field, f"at most {MAX_SPLIT_VERSIONS} versions"))
    for i, entry in enumerate(entries[: MAX_SPLIT_VERSIONS + 1]):
        where = f"{field}[{i}]"
        if not (math.isfinite(entry.weight) and 0 < entry.weight <= MAX_WEIGHT):
            problems.append(
                FieldViolation(f"{where}.weight", f"must be positive and at most {MAX_WEIGHT:g}")
            )
        if entry.version < 0:
            problems.append(FieldViolation(f"{where}.version", "must be positive"))
        elif not entry.version and not entry.version_id:
            problems.append(FieldViolation(where, "give a version or a version_id"))
    if problems:
        raise InvalidArgument.of(problems, reason="INVALID_SPLIT")


def next_split(
    current: TrafficSplit | None,
    versions: Sequence[tuple[int, str, float]],
    now: datetime,
) -> TrafficSplit:
    """The split of ``versions`` ((number, id, weight), in order), normalised.

    It keeps the id and start of ``current`` when that splits the same versions
    in the same order, and is a new split otherwise.
    """
    total = math.fsum(weight for _, _, weight in versions)
    shares = tuple(
        VersionWeight(version=number, version_id=version_id, weight=weight / total)
        for number, version_id, weight in versions
    )
    same = current is not None and [v.version_id for v in current.versions] == [
        v.version_id for v in shares
    ]
    if current is not None and same:
        return TrafficSplit(id=current.id, versions=shares, started_at=current.started_at)
    return TrafficSplit(id=new_id("spl"), versions=shares, started_at=now)


def stored_split(
    current: dict[str, Any] | None, versions: Sequence[tuple[int, str, float]], now: datetime
) -> dict[str, Any] | None:
    """The stored split after a move from ``current`` (stored) to ``versions``.

    None (no split) unless ``versions`` lists two or more.
    """
    if len(versions) < 2:
        return None
    return split_to_json(next_split(split_from_json(current), versions, now))


def split_to_json(split: TrafficSplit | None) -> dict[str, Any] | None:
    """How a split is stored (None: the tag points at one version)."""
    if split is None:
        return None
    data: dict[str, Any] = _SPLIT.dump_python(split, mode="json")
    return data


def split_from_json(data: dict[str, Any] | None) -> TrafficSplit | None:
    """A stored split (None or empty: none)."""
    if not data:
        return None
    return _SPLIT.validate_python(data)


def split_point(split_id: str, key: str) -> float:
    """Where ``key`` falls in [0, 1) for the split ``split_id``."""
    digest = hashlib.sha256(f"{split_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick(split: TrafficSplit, point: float) -> int:
    """The index of the version whose interval of [0, 1) holds ``point``."""
    edge = 0.0
    for index, entry in enumerate(split.versions):
        edge += entry.weight
        if point < edge:
            return index
    # Rounding can leave the shares' sum a hair under 1.
    return len(split.versions) - 1


def assign(resolved: ResolvedPrompt, key: str) -> ResolvedPrompt:
    """``resolved`` with the version its split gives ``key`` (random without a key).

    Unchanged when the tag does not split its traffic.
    """
    split = resolved.split
    if split is None or not resolved.variants:
        return resolved
    point = split_point(split.id, key) if key else random.random()
    return replace(resolved, version=resolved.variants[pick(split, point)])
