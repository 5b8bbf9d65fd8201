"""Prompt files: the folder layout, and one prompt per YAML file.

    DIR/prompts/<name>.yaml    a prompt (``.yml`` works too)
    DIR/partials/<name>.yaml   reserved for partials: not pushed by this version
    DIR/chains/<name>.yaml     reserved for chains: not pushed by this version

The folder names the kind of every file in it. Other files in DIR (a README)
and hidden folders (.git, .github) are ignored; YAML files directly in DIR, in
another folder (a typo such as ``prompt/``) or in a folder below ``prompts/``
are errors, as are files in the reserved folders.

A prompt file holds the prompt (``name``, optional and equal to the file's
name when present; ``description``; ``labels``), ``tags``: the release tags
that should point at the file's version, and the version's content: every
PromptVersion field but the output-only ones, under its proto name, except
``variables`` (input_variables, each with ``default`` for default_value) and
``version_description`` (the version's description). See ``messages`` for
the value forms (enums by short name, durations as "1.5s").
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from promptgate_client.prompts_as_code.messages import Problems, read_message, write_message
from promptgate_client.v1 import prompt_service_pb2

PROMPTS = "prompts"
RESERVED = {
    "partials": "partials are not pushed by this version of promptgate prompts",
    "chains": "chains are not pushed by this version of promptgate prompts",
}
SUFFIXES = (".yaml", ".yml")
PROMPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
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


class FolderError(Exception):
    """Files that cannot be read; ``problems`` are ``file: key: what is wrong`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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


def read_folder(root: Path) -> list[PromptFile]:
    """Every prompt file under ``root``, by name; FolderError lists every problem."""
    if not root.is_dir():
        raise FolderError([f"{root}: not a folder"])
    problems: list[str] = []
    files: dict[str, PromptFile] = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in SUFFIXES:
            problems.append(
                f"{path}: prompt files go in {root / PROMPTS}/ (one file per prompt, "
                "named after it)"
            )
        elif path.is_dir() and path.name in RESERVED:
            problems.extend(f"{p}: {RESERVED[path.name]}" for p in _yaml_files(path))
        elif path.is_dir() and path.name != PROMPTS and not path.name.startswith("."):
            if _yaml_files(path):
                problems.append(
                    f"{path}: unknown folder of YAML files; prompt files go in "
                    f"{root / PROMPTS}/ ({' and '.join(f'{k}/' for k in RESERVED)} are reserved)"
                )
    folder = root / PROMPTS
    for path in _yaml_files(folder) if folder.is_dir() else []:
        if path.parent != folder:
            problems.append(f"{path}: nested folders are not supported; move it to {folder}/")
            continue
        try:
            prompt = read_prompt_file(path)
        except FolderError as exc:
            problems.extend(exc.problems)
            continue
        if prompt.name in files:
            problems.append(f"{path}: prompt {prompt.name!r} is also in {files[prompt.name].path}")
        files[prompt.name] = prompt
    if problems:
        raise FolderError(problems)
    return [files[name] for name in sorted(files)]


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith(".")
    )


def read_prompt_file(path: Path) -> PromptFile:
    """One prompt file; FolderError names the file and every bad key."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError:
        raise FolderError([f"{path}: not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        raise FolderError([f"{path}: invalid YAML: {_describe(exc)}"]) from None
    problems = Problems()
    prompt = _prompt_file(path, data, problems)
    if problems:
        raise FolderError([f"{path}: {item}" for item in problems.items])
    return prompt


def _prompt_file(path: Path, data: Any, problems: Problems) -> PromptFile:
    name = path.stem
    prompt = PromptFile(path=path, name=name)
    if not isinstance(data, Mapping):
        problems.add("", "expected a mapping of keys (name, model, messages, ...)")
        return prompt
    if not PROMPT_NAME.fullmatch(name):
        problems.add(
            "", "the file name is not a prompt name (letters, digits, '.', '_', '-'; 1-128)"
        )
    given = data.get("name", name)
    if given != name:
        problems.add("name", f"{given!r} differs from the file name {name!r}")
    prompt.description = _string(data.get("description", ""), "description", problems)
    labels = data.get("labels", {})
    if isinstance(labels, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        prompt.labels = dict(labels)
    else:
        problems.add("labels", "expected a mapping of strings to strings")
    prompt.tags = _tags(data.get("tags", []), problems)
    version = {k: v for k, v in data.items() if k not in PROMPT_KEYS}
    read_message(
        version,
        prompt.version,
        problems,
        skip=OUTPUT_ONLY,
        allowed_elsewhere=frozenset(PROMPT_KEYS),
    )
    return prompt


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


def _describe(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


# Writing


def prompt_document(
    prompt: prompt_service_pb2.Prompt,
    version: prompt_service_pb2.PromptVersion,
    tags: list[str],
) -> dict[str, Any]:
    """The file data of ``version`` of ``prompt``, with the ``tags`` that point at it."""
    data: dict[str, Any] = {"name": prompt.name}
    if prompt.description:
        data["description"] = prompt.description
    if prompt.labels:
        data["labels"] = {k: prompt.labels[k] for k in sorted(prompt.labels)}
    if tags:
        data["tags"] = sorted(tags)
    body = content(version, pins=False)
    if body.parameters == body.parameters.__class__():
        body.ClearField("parameters")  # no parameters; the server stores them as empty
    fields = write_message(body, skip=OUTPUT_ONLY)
    data.update((k, fields.pop(k)) for k in FIRST_VERSION_KEYS if k in fields)
    data.update(fields)
    return data


def dump(data: Mapping[str, Any]) -> str:
    """YAML text: keys in the given order, multi-line strings as literal blocks."""
    return yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class _Dumper(yaml.SafeDumper):
    """safe_dump with literal blocks for multi-line text and indented lists."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def prompt_path(root: Path, name: str) -> Path:
    """Where the file of prompt ``name`` is: an existing ``.yml`` file, else ``.yaml``."""
    folder = root / PROMPTS
    existing = folder / f"{name}.yml"
    return existing if existing.is_file() else folder / f"{name}.yaml"


def write_prompt_file(root: Path, name: str, data: Mapping[str, Any]) -> Path:
    """Write (atomically) the file of prompt ``name`` under ``root``; its path."""
    path = prompt_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dump(data)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
