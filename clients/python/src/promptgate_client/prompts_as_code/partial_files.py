"""Partial files: one partial per file in ``DIR/partials/``.

    DIR/partials/<name>.yaml    name, description, version_description, content
    DIR/partials/<name>.jinja   the content only (the file's text)

A YAML file holds the partial (``name``, optional and equal to the file's
name when present; ``description``, set when the partial is created) and
the content of its latest version (``content``, required; and
``version_description``, the description a new version gets). A ``.jinja``
file is the content alone, for snippets without descriptions: its text
without one final newline (as Jinja reads template files), so an editor's
final newline is not part of the partial.

``includes`` finds the partials a content includes, for ordering and
checking a push before the server sees it; the server parses them itself
when the versions are created.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptgate_client.prompts_as_code.files import PROMPT_NAME
from promptgate_client.prompts_as_code.messages import Problems
from promptgate_client.prompts_as_code.yaml_text import (
    FolderError,
    dump,
    load_yaml,
    read_text,
    write_text,
)
from promptgate_client.v1 import prompt_service_pb2 as ppb

PARTIALS = "partials"
YAML_SUFFIXES = (".yaml", ".yml")
JINJA = ".jinja"
SUFFIXES = (*YAML_SUFFIXES, JINJA)
KEYS = ("name", "description", "version_description", "content")


@dataclass
class PartialFile:
    """One partial file: the partial and the content its latest version should have.

    ``description`` is None for a ``.jinja`` file (which does not say)."""

    path: Path
    name: str
    content: str = ""
    description: str | None = ""
    version_description: str = ""


def read_partial_file(path: Path) -> PartialFile:
    """One partial file; FolderError names the file and every bad key."""
    text = read_text(path)
    problems = Problems()
    name = path.stem
    if not PROMPT_NAME.fullmatch(name):
        problems.add(
            "", "the file name is not a partial name (letters, digits, '.', '_', '-'; 1-128)"
        )
    if path.suffix == JINJA:
        partial = PartialFile(path, name, text.removesuffix("\n"), description=None)
        if not partial.content:
            problems.add("", "the file is empty; a partial needs content")
    else:
        partial = _from_yaml(path, name, load_yaml(path, text), problems)
    if problems:
        raise FolderError([f"{path}: {item}" for item in problems.items])
    return partial


def _from_yaml(path: Path, name: str, data: Any, problems: Problems) -> PartialFile:
    partial = PartialFile(path, name)
    if not isinstance(data, Mapping):
        problems.add("", "expected a mapping of keys (name, description, content)")
        return partial
    for key in data:
        if key not in KEYS:
            problems.add(str(key), f"unknown key; expected one of: {', '.join(KEYS)}")
    given = data.get("name", name)
    if given != name:
        problems.add("name", f"{given!r} differs from the file name {name!r}")
    partial.description = _string(data, "description", problems)
    partial.version_description = _string(data, "version_description", problems)
    partial.content = _string(data, "content", problems)
    if "content" not in data:
        problems.add("content", "missing; a partial needs content (the template text)")
    elif isinstance(data["content"], str) and not partial.content:
        problems.add("content", "empty; a partial needs content")
    return partial


def _string(data: Mapping[Any, Any], key: str, problems: Problems) -> str:
    value = data.get(key, "")
    if isinstance(value, str):
        return value
    problems.add(key, "expected a string (quote it, or use a | block)")
    return ""


# The partials a content includes


_SCAN = re.compile(
    r"""
      (?P<raw>\{%[-+]?\s*raw\s*[-+]?%\}.*?\{%[-+]?\s*endraw\s*[-+]?%\})
    | \{%[-+]?\s*include\s+(?:"(?P<double>[^"\\]*)"|'(?P<single>[^'\\]*)')
    | (?P<comment>\{\#.*?\#\})
    | (?P<expression>\{\{.*?\}\})
    | (?P<statement>\{%.*?%\})
    """,
    re.DOTALL | re.VERBOSE,
)


def includes(content: str) -> list[str]:
    """The partial names ``content`` includes with ``{% include "name" %}``, sorted.

    Raw blocks, comments, and strings inside other tags are skipped, as Jinja
    reads them."""
    found = set()
    for match in _SCAN.finditer(content):
        name = match.group("double") if match.group("double") is not None else match["single"]
        if name is not None:
            found.add(name)
    return sorted(found)


# Writing


def partial_document(partial: ppb.Partial, version: ppb.PartialVersion) -> dict[str, Any]:
    """The YAML file data of ``version`` of ``partial``."""
    data: dict[str, Any] = {"name": partial.name}
    if partial.description:
        data["description"] = partial.description
    if version.description:
        data["version_description"] = version.description
    data["content"] = version.content
    return data


def partial_path(root: Path, name: str) -> Path:
    """Where the file of partial ``name`` is: an existing ``.jinja`` or ``.yml`` file,
    else ``.yaml``."""
    folder = root / PARTIALS
    for suffix in (JINJA, ".yml"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return folder / f"{name}.yaml"


def write_partial_file(root: Path, partial: ppb.Partial, version: ppb.PartialVersion) -> Path:
    """Write (atomically) the file of ``partial`` at ``version`` under ``root``; its path.

    An existing ``.jinja`` file gets the content only."""
    path = partial_path(root, partial.name)
    if path.suffix == JINJA:
        text = version.content + "\n"
    else:
        text = dump(partial_document(partial, version))
    return write_text(path, text)
