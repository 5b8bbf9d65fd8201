"""Webhook signatures: the body, the workspace's secret, ``sign`` and ``verify``.

The body is compact JSON with sorted keys (``encode_body``). It is signed with
the batch's workspace's secret (``workspace_secret``, derived from the
server's): the ``X-Promptgate-Signature`` header is
``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``. Receivers
check it with ``verify`` (or its few lines in their language), which also
refuses timestamps more than ``tolerance_s`` away from now, so a captured
request cannot be replayed later. The sender signs every attempt afresh.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from typing import Any, Final

__all__ = ["SIGNATURE_HEADER", "encode_body", "sign", "verify", "workspace_secret"]

SIGNATURE_HEADER: Final = "X-Promptgate-Signature"

_SIGNATURE_TIMESTAMP: Final = re.compile(r"^[0-9]{1,15}$")
_SIGNATURE_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


def encode_body(payload: dict[str, Any]) -> bytes:
    """The request body for ``payload``: compact UTF-8 JSON with sorted keys.

    Raises ``TypeError``/``ValueError`` if ``payload`` is not JSON (NaN and
    infinities included: they are not JSON).
    """
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode("ascii") + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def workspace_secret(server_secret: str, workspace: str) -> str:
    """The signing secret of one workspace's webhooks, derived from the server's.

    Each workspace verifies with its own secret (AdminService.GetWebhookSecret),
    so a receiver of one workspace cannot forge callbacks for another.
    """
    mac = hmac.new(
        server_secret.encode("utf-8"), b"promptgate-webhook/" + workspace.encode(), hashlib.sha256
    )
    return "whsec_" + mac.hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Promptgate-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256>``.

    The MAC is over ``f"{timestamp}."`` followed by the exact body bytes.
    """
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance_s: float = 300) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made at most ``tolerance_s`` ago.

    Timestamps further than ``tolerance_s`` from ``now`` (in the past or the
    future) are refused. Several ``v1=`` entries are allowed (any one may
    match: secret rotation). A malformed header is False, never an exception.
    The MAC is compared in constant time.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if timestamp is not None or not _SIGNATURE_TIMESTAMP.match(value):
                return False
            timestamp = int(value)
        elif key == "v1" and _SIGNATURE_HEX.match(value):
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if not math.isfinite(now) or abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body).encode("ascii")
    matched = False
    for candidate in candidates:  # no early exit: every candidate costs the same
        matched |= hmac.compare_digest(expected, candidate.encode("ascii"))
    return matched
