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

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # promptgate API keys: keep "pgk_<id>." (the id names the key, harmlessly).
    (re.compile(r"(pgk_[0-9A-Za-z]{0,64}\.)[A-Za-z0-9_-]+"), r"\1" + MASK),
    (re.compile(r"whsec_[0-9A-Za-z]+"), "whsec_" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{12,}"), "sk-" + MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), MASK),
    (re.compile(r"(?i)(\bbearer\s+)(?!\[REDACTED\])[^\s,;'\"\\]+"), r"\1" + MASK),
    (
        re.compile(
            r"(?i)(\b(?:authorization|proxy-authorization|x-api-key|api[-_]key|x-goog-api-key)"
            r"['\"]?\s*[:=]\s*['\"]?(?:(?:bearer|basic|digest|token|apikey)\s+)?+)"
            r"(?!\[REDACTED\])[^\s,;'\"\\&]+"
        ),
        r"\1" + MASK,
    ),
    (re.compile(r"(?i)([?&](?:key|api_key|apikey|access_token)=)[^&\s'\"#]+"), r"\1" + MASK),
    (re.compile(r"(://)[^/\s:@'\"]+:[^/\s@'\"]+@"), r"\1" + MASK + "@"),
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
        ordered = sorted(literals, key=len, reverse=True)
        self._literals = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``[REDACTED]``."""
        if self._literals is not None:
            text = self._literals.sub(MASK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text
