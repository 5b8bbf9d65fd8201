"""Secrets out of log lines.

``Redactor.redact`` runs over every formatted line (message, fields and
traceback alike, text or JSON) just before it is written, and replaces:

- the server's own secrets, given by value (provider API keys, the webhook
  secret), also in their JSON- and repr-escaped spellings;
- promptgate API keys (``pgk_<id>.<secret>``: the id stays, it is no secret),
  derived webhook signing secrets (``whsec_...``) and provider-style keys
  (``sk-...``, ``AIza...``), whoever's they are;
- credentials in headers and URLs: ``Bearer <token>``, ``authorization: ...``,
  ``x-api-key: ...`` (and ``api-key``, ``x-goog-api-key``), ``?key=...`` query
  parameters and ``user:password@`` in URLs.

Patterns rather than a list of known keys, because a caller's key, a bogus
key or a key a provider echoes back is just as secret as the server's own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["MASK", "Redactor"]

MASK = "[REDACTED]"

# Secrets shorter than this are not redacted by value: "x" would mask every x.
MIN_SECRET_CHARS = 6

# (cheap test, pattern, replacement): a pattern runs only on lines that pass its
# test (a substring check, of the lower-cased line for the case-insensitive
# ones), so a line without anything secret-looking costs a few substring checks.
_Test = tuple[str, bool]  # (substring, on the lower-cased line)
_PATTERNS: tuple[tuple[tuple[_Test, ...], re.Pattern[str], str], ...] = (
    # promptgate API keys: keep "pgk_<id>." (the id names the key, harmlessly).
    ((("pgk_", False),), re.compile(r"(pgk_[0-9A-Za-z]{0,64}\.)[A-Za-z0-9_-]+"), r"\1" + MASK),
    ((("whsec_", False),), re.compile(r"whsec_[0-9A-Za-z]+"), "whsec_" + MASK),
    ((("sk-", False),), re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{12,}"), "sk-" + MASK),
    ((("AIza", False),), re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{20,}"), MASK),
    (
        (("bearer", True),),
        re.compile(r"(?i)(\bbearer\s+)(?!\[REDACTED\])[^\s,;'\"\\]+"),
        r"\1" + MASK,
    ),
    (
        (("authoriz", True), ("api-key", True), ("api_key", True)),
        re.compile(
            r"(?i)(\b(?:authorization|proxy-authorization|x-api-key|api[-_]key|x-goog-api-key)"
            r"['\"]?\s*[:=]\s*['\"]?(?:(?:bearer|basic|digest|token|apikey)\s+)?+)"
            r"(?!\[REDACTED\])[^\s,;'\"\\&]+"
        ),
        r"\1" + MASK,
    ),
    (
        (("key=", True), ("access_token=", True)),
        re.compile(r"(?i)([?&](?:key|api_key|apikey|access_token)=)[^&\s'\"#]+"),
        r"\1" + MASK,
    ),
    ((("://", False),), re.compile(r"(://)[^/\s:@'\"]+:[^/\s@'\"]+@"), r"\1" + MASK + "@"),
)


class Redactor:
    """Replaces secrets in text; see the module docstring."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        literals: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < MIN_SECRET_CHARS:
                continue
            literals.add(secret)
            literals.add(json.dumps(secret, ensure_ascii=False)[1:-1])
            literals.add(json.dumps(secret)[1:-1])
            literals.add(repr(secret)[1:-1])
        # Longest first, so a secret that contains another is masked whole.
        self._literals = sorted(literals, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``[REDACTED]``."""
        for literal in self._literals:
            if literal in text:
                text = text.replace(literal, MASK)
        lower = text.lower()
        for tests, pattern, replacement in _PATTERNS:
            for needle, folded in tests:
                if needle in (lower if folded else text):
                    text = pattern.sub(replacement, text)
                    break
        return text
