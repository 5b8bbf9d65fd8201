"""The names of versioned resources (prompts, chains, partials) and of release tags.

A resource name is 1-128 letters, digits, '.', '_' or '-', starting with a
letter or digit, unique in its workspace. A release tag is the same in 1-64
characters; "latest" is kept for the tag that follows the newest version and
cannot be set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from promptgate.errors import InvalidArgument

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LATEST = "latest"


def check_tag(tag: str, field: str) -> None:
    """INVALID_ARGUMENT unless ``tag`` is a settable release tag name."""
    if tag == LATEST:
        raise InvalidArgument.field(
            field,
            '"latest" follows the newest version and cannot be set',
            reason="INVALID_RELEASE_TAG",
        )
    if not TAG_NAME.fullmatch(tag):
        raise InvalidArgument.field(
            field,
            "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            reason="INVALID_RELEASE_TAG",
        )


def check_release_tags(release_tags: Sequence[str]) -> None:
    """INVALID_ARGUMENT unless ``release_tags`` (of a new version) are settable and distinct."""
    for i, tag in enumerate(release_tags):
        check_tag(tag, f"release_tags[{i}]")
    if len(set(release_tags)) != len(release_tags):
        raise InvalidArgument.field("release_tags", "a tag is listed twice")
