"""Writing audit entries: ``record`` adds one to the session that makes the change.

``before`` and ``after`` say what changed: the fields that changed, small,
never a secret (no key, no key hash). They are stored as JSON and bounded
whatever a caller put into the resource (a description of a megabyte, a
thousand labels): ``bounded`` keeps at most ``MAX_CHANGE_CHARS`` characters
of text in each, cuts longer strings with the ``TRUNCATED`` marker, replaces
the items of a list or object past the budget with one marker (``"…"``:
``"[N more]"`` in an object, ``"…[N more]"`` in a list) and nesting deeper
than ``MAX_DEPTH`` with the marker. Values that are not JSON (datetimes,
sets, enums) are stored as text or lists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, Final

from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.audit.actor import current_actor
from promptgate.ids import new_id
from promptgate.store.tables import AuditEventRow, utcnow

MAX_CHANGE_CHARS: Final = 4096
"""Characters of text (keys and values) kept in one ``before`` or ``after``."""
MAX_TEXT_CHARS: Final = 1024
"""Characters kept of any one string."""
MAX_KEY_CHARS: Final = 64
"""Characters of an object's key kept even once the budget is spent."""
MAX_DEPTH: Final = 6
"""Levels of nested objects and lists kept."""
TRUNCATED: Final = "…[truncated]"

ACTION: Final = re.compile(r"^[a-z][a-z_]{0,30}\.[a-z][a-z_]{0,30}$")
MAX_RESOURCE_CHARS: Final = 512
# JSON numbers are doubles in google.protobuf.Struct: larger integers become text.
_EXACT_INT: Final = 2**53


def record(
    session: AsyncSession,
    *,
    workspace: str,
    action: str,
    resource: str,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> None:
    """Add the entry of one change to ``session``; it commits or rolls back with the change.

    ``action`` reads ``<kind>.<verb>`` ("prompt.create", "release_tag.set");
    ``resource`` is the changed resource's name ("prompts/NAME/versions/3");
    ``before`` is None for a creation. The actor is ``current_actor()``.
    """
    if not ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} is not '<kind>.<verb>' in lower case")
    if not resource or len(resource) > MAX_RESOURCE_CHARS:
        raise ValueError(f"audit resource must be 1-{MAX_RESOURCE_CHARS} characters")
    session.add(
        AuditEventRow(
            id=new_id("aud"),
            workspace_id=workspace,
            actor=current_actor(),
            action=action,
            resource=resource,
            before=bounded(before),
            after=bounded(after),
            created_at=utcnow(),
        )
    )


def bounded(change: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``change`` as JSON-ready data within the bounds of the module docstring."""
    if change is None:
        return None
    result: dict[str, Any] = _bounded(change, _Budget(MAX_CHANGE_CHARS), 0)
    return result


class _Budget:
    def __init__(self, chars: int) -> None:
        self.left = chars


def _bounded(value: Any, budget: _Budget, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        budget.left -= 5
        return value
    if isinstance(value, int):
        if abs(value) >= _EXACT_INT:
            return _text(str(value), budget)
        budget.left -= 8
        return value
    if isinstance(value, float):
        budget.left -= 8
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _text(value, budget)
    if isinstance(value, datetime):
        return _text(value.isoformat(), budget)
    if isinstance(value, Mapping | Collection) and depth >= MAX_DEPTH:
        return _text(TRUNCATED, budget)
    if isinstance(value, Mapping):
        obj: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if budget.left <= 0:
                obj["…"] = f"[{len(value) - i} more]"
                break
            name = _text(str(key), budget, MAX_KEY_CHARS)
            obj[name] = _bounded(item, budget, depth + 1)
        return obj
    if isinstance(value, Collection) and not isinstance(value, bytes | bytearray):
        items: list[Any] = []
        for i, item in enumerate(value):
            if budget.left <= 0:
                items.append(f"…[{len(value) - i} more]")
                break
            items.append(_bounded(item, budget, depth + 1))
        return items
    return _text(str(value), budget)


def _text(text: str, budget: _Budget, at_least: int = 0) -> str:
    keep = min(MAX_TEXT_CHARS, max(budget.left, at_least))
    if len(text) <= keep:
        budget.left -= len(text)
        return text
    budget.left -= keep + len(TRUNCATED)
    return text[:keep] + TRUNCATED
