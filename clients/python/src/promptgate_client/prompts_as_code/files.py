"""Prompt files: one prompt per YAML file in ``DIR/prompts/``.

A prompt file holds the prompt (``name``, optional and equal to the file's
name when present; ``description``; ``labels``), ``tags``: the release tags
that should point at the file's version, and the version's content: every
PromptVersion field but the output-only ones, under its proto name, except
``variables`` (input_variables, each with ``default`` for default_value) and
``version_description`` (the version's description). See ``messages`` for
the value forms (enums by short name, durations as "1.5s"); ``folder`` for
the layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptgate_client.prompts_as_code.messages import Problems, read_message, write_message
from promptgate_client.prompts_as_code.yaml_text import (
    FolderError,
    dump,
    load_yaml,
    read_text,
    write_text,
)
from promptgate_client.v1 import prompt_service_pb2

PROMPTS = "prompts"
SUFFIXES = (".yaml", ".yml")
PROMPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Prompt and partial names: 1-128 letters, digits, '.', '_', '-', starting with a
letter or digit."""
LATEST = "latest"

SERVER_SET = frozenset({"id", "prompt_id", "version", "create_time"})
"""PromptVersion fields that differ between equal versions: cleared to compare."""

OUTPUT_ONLY = SERVER_SET | {"partials"}
"""PromptVersion fields a file never holds: the server sets them (``partials``,
the partial versions a version pins, is part of what versions compare)."""

PROMPT_KEYS = ("name", "description", "labels", "tags")
"""File keys about the prompt rather than its version, in the order written."""

FIRST_VERSION_KEYS = ("model", "provider", "version_description", "parameters", "variables")
"""Version keys written first; the others follow in field order."""


@dataclass
class PromptFile:
    """One prompt file: the prompt, its wanted tags and the version content."""

    path: Path
    name: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    version: prompt_service_pb2.PromptVersion = field(
        default_factory=prompt_service_pb2.PromptVersion
    )


def content(
    version: prompt_service_pb2.PromptVersion, *, pins: bool = True
) -> prompt_service_pb2.PromptVersion:
    """What versions compare: ``version`` without the fields the server sets for each
    (id, number, time), and without its partial pins unless ``pins``."""
    copy = prompt_service_pb2.PromptVersion()
    copy.CopyFrom(version)
    for name in SERVER_SET if pins else OUTPUT_ONLY:
        copy.ClearField(name)  # type: ignore[arg-type]
    return copy


# Reading


def read_prompt_file(path: Path) -> PromptFile:
    """One prompt file; FolderError names the file and every bad key."""
    data = load_yaml(path, read_text(path))
    problems = Problems()
    prompt = _prompt_file(path, data, problems)
    if problems:
        raise FolderError([f"{path}: {item}" for item in problems.items])
    return prompt


def _prompt_file(path: Path, data: Any, problems: Problems) -> PromptFile:
    prompt = PromptFile(path=path, name=path.stem)
    if not isinstance(data, Mapping):
        problems.add("", "expected a mapping of keys (name, model, messages, ...)")
        return prompt
    prompt.description, prompt.labels, prompt.tags = read_header(path, data, problems, "prompt")
    version = {k: v for k, v in data.items() if k not in PROMPT_KEYS}
    read_message(
        version,
        prompt.version,
        problems,
        skip=OUTPUT_ONLY,
        allowed_elsewhere=frozenset(PROMPT_KEYS),
    )
    return prompt


def read_header(
    path: Path, data: Mapping[Any, Any], problems: Problems, noun: str
) -> tuple[str, dict[str, str], tuple[str, ...]]:
    """The keys about the prompt (or chain, ``noun``) rather than its version: its
    description, labels and tags; ``name``, if given, must equal the file name."""
    name = path.stem
    if not PROMPT_NAME.fullmatch(name):
        problems.add(
            "", f"the file name is not a {noun} name (letters, digits, '.', '_', '-'; 1-128)"
        )
    given = data.get("name", name)
    if given != name:
        problems.add("name", f"{given!r} differs from the file name {name!r}")
    description = _string(data.get("description", ""), "description", problems)
    labels = data.get("labels", {})
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        problems.add("labels", "expected a mapping of strings to strings")
        labels = {}
    return description, dict(labels), _tags(data.get("tags", []), problems)


def _string(value: Any, key: str, problems: Problems) -> str:
    if isinstance(value, str):
        return value
    problems.add(key, "expected a string (quote it)")
    return ""


def _tags(value: Any, problems: Problems) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        problems.add("tags", "expected a list of release tag names")
        return ()
    if LATEST in value:
        problems.add("tags", '"latest" follows the newest version by itself; remove it')
    if len(set(value)) != len(value):
        problems.add("tags", "a tag is listed twice")
    return tuple(value)


# Writing


def prompt_document(
    prompt: prompt_service_pb2.Prompt,
    version: prompt_service_pb2.PromptVersion,
    tags: list[str],
) -> dict[str, Any]:
    """The file data of ``version`` of ``prompt``, with the ``tags`` that point at it."""
    data = header_document(prompt.name, prompt.description, prompt.labels, tags)
    body = content(version, pins=False)
    if body.parameters == body.parameters.__class__():
        body.ClearField("parameters")  # no parameters; the server stores them as empty
    fields = write_message(body, skip=OUTPUT_ONLY)
    data.update((k, fields.pop(k)) for k in FIRST_VERSION_KEYS if k in fields)
    data.update(fields)
    return data


def header_document(
    name: str, description: str, labels: Mapping[str, str], tags: list[str]
) -> dict[str, Any]:
    """The keys ``read_header`` reads, those that are set, in the order written."""
    data: dict[str, Any] = {"name": name}
    if description:
        data["description"] = description
    if labels:
        data["labels"] = {k: labels[k] for k in sorted(labels)}
    if tags:
        data["tags"] = sorted(tags)
    return data


def prompt_path(root: Path, name: str) -> Path:
    """Where the file of prompt ``name`` is: an existing ``.yml`` file, else ``.yaml``."""
    folder = root / PROMPTS
    existing = folder / f"{name}.yml"
    return existing if existing.is_file() else folder / f"{name}.yaml"


def write_prompt_file(root: Path, name: str, data: Mapping[str, Any]) -> Path:
    """Write (atomically) the file of prompt ``name`` under ``root``; its path."""
    return write_text(prompt_path(root, name), dump(data))
