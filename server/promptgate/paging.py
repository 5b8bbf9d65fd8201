"""Opaque page tokens for keyset pagination."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from promptgate.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE) -> int:
    """The page size to use; negative sizes are INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or default, MAX_PAGE_SIZE)


def encode_token(kind: str, position: dict[str, Any]) -> str:
    """A token for the page after ``position`` of a listing of ``kind``."""
    raw = json.dumps({"k": kind, **position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(kind: str, token: str, fields: dict[str, type]) -> dict[str, Any] | None:
    """The position in ``token``, None for an empty token; INVALID_ARGUMENT if malformed.

    ``fields`` names the position's keys and their types; a token missing one,
    or with a value of another type, is rejected.
    """
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or data.pop("k", None) != kind:
        raise InvalidArgument.field("page_token", "is not a token from this listing")
    for name, kind_of in fields.items():
        value = data.get(name)
        if not isinstance(value, kind_of) or isinstance(value, bool):
            raise InvalidArgument.field("page_token", "is not a token from this listing")
    return data
