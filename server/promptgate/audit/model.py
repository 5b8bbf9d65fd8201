"""Audit domain objects: an entry of the log and the filters of a listing."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from promptgate.errors import FieldViolation, InvalidArgument

MAX_FILTER_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One administrative change: who (``actor``), when, what and how."""

    id: str
    time: datetime
    actor: str
    action: str
    resource: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries a listing returns; an empty field does not filter.

    ``action``: with a dot, that action ("prompt.archive"); without, every
    action of that kind ("prompt" is "prompt.*", not "prompt_version.*").
    ``resource``: that resource and the ones under it ("prompts/a" is
    "prompts/a" and "prompts/a/...", not "prompts/ab"). ``actor``: an API key
    id, "cli" or "system". ``start`` inclusive, ``end`` exclusive.
    """

    action: str = ""
    resource: str = ""
    actor: str = ""
    start: datetime | None = None
    end: datetime | None = None

    def check(self) -> None:
        """INVALID_ARGUMENT (one violation per bad field) unless the filters are usable."""
        problems: list[FieldViolation] = []
        for field in ("action", "resource", "actor"):
            value: str = getattr(self, field)
            if len(value) > MAX_FILTER_CHARS or _CONTROL.search(value):
                problems.append(
                    FieldViolation(
                        field, f"at most {MAX_FILTER_CHARS} characters, no control characters"
                    )
                )
        if self.resource.endswith("/"):
            problems.append(FieldViolation("resource", "a resource name does not end with '/'"))
        if self.start is not None and self.end is not None and self.start >= self.end:
            problems.append(FieldViolation("start_time", "must be before end_time"))
        if problems:
            raise InvalidArgument.of(problems, reason="INVALID_PARAMETERS")

    def fingerprint(self) -> str:
        """A short digest of the filters: a page token is only good for the same ones."""
        filters = [
            self.action,
            self.resource,
            self.actor,
            self.start.isoformat() if self.start else "",
            self.end.isoformat() if self.end else "",
        ]
        return hashlib.sha256(json.dumps(filters).encode()).hexdigest()[:16]
