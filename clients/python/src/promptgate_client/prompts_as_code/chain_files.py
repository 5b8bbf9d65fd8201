"""Chain files: one stored chain per YAML file in ``DIR/chains/``.

A chain file holds the chain (``name``, optional and equal to the file's
name when present; ``description``; ``labels``), ``tags``: the release tags
that should point at the file's version, and the version's content: the
ChainVersion fields but the output-only ones, under their proto names,
except ``variables`` (input_variables) and ``version_description`` (the
version's description)::

    name: support
    description: Triage, then reply
    tags: [production]
    version_description: reply in the ticket's language
    variables:
      - {name: ticket, type: string}
    steps:
      - {name: classify, prompt: classify, output_variable: classification}
      - name: reply
        prompt: support-reply
        release_tag: staging
        output_variable: answer
        parameters: {temperature: 0.2}
      - name: polish
        inline_prompt: {model: mock-1, prompt: "Polish: {{ answer }}"}
        output_variable: polished

Steps are ChainStep messages (``prompt`` with ``release_tag`` or ``version``,
or ``inline_prompt``, whose ``input_variables`` are ``variables`` too); see
``messages`` for the value forms, ``folder`` for the layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptgate_client.prompts_as_code.files import header_document, read_header
from promptgate_client.prompts_as_code.messages import (
    Problems,
    file_path,
    read_message,
    write_message,
)
from promptgate_client.prompts_as_code.yaml_text import (
    FolderError,
    dump,
    load_yaml,
    read_text,
    write_text,
)
from promptgate_client.v1 import chain_service_pb2 as cpb

CHAINS = "chains"
SUFFIXES = (".yaml", ".yml")

OUTPUT_ONLY = frozenset({"id", "chain_id", "version", "create_time"})
"""ChainVersion fields a file never holds; cleared to compare versions."""

CHAIN_KEYS = ("name", "description", "labels", "tags")
"""File keys about the chain rather than its version, in the order written."""

VERSION_KEYS = ("version_description", "variables", "steps")
"""The version's keys, in the order written."""


@dataclass
class ChainFile:
    """One chain file: the chain, its wanted tags and the version content."""

    path: Path
    name: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    version: cpb.ChainVersion = field(default_factory=cpb.ChainVersion)

    def prompts(self) -> dict[int, str]:
        """The stored prompts the steps name (id or name), by step index."""
        return {
            i: step.prompt
            for i, step in enumerate(self.version.steps)
            if step.WhichOneof("target") == "prompt"
        }


def content(version: cpb.ChainVersion) -> cpb.ChainVersion:
    """What versions compare: ``version`` without the fields the server sets for each."""
    copy = cpb.ChainVersion()
    copy.CopyFrom(version)
    for name in OUTPUT_ONLY:
        copy.ClearField(name)  # type: ignore[arg-type]
    return copy


def file_key(server_field: str) -> str:
    """A field path of a CreateChainVersion violation (``version.input_variables[0]``)
    as the file's key (``variables[0]``)."""
    path = server_field.removeprefix("version.")
    if path == "version":
        return ""
    return file_path(cpb.ChainVersion.DESCRIPTOR, path)


# Reading


def read_chain_file(path: Path) -> ChainFile:
    """One chain file; FolderError names the file and every bad key."""
    data = load_yaml(path, read_text(path))
    problems = Problems()
    chain = ChainFile(path=path, name=path.stem)
    if not isinstance(data, Mapping):
        problems.add("", "expected a mapping of keys (name, tags, variables, steps, ...)")
    else:
        chain.description, chain.labels, chain.tags = read_header(path, data, problems, "chain")
        version = {k: v for k, v in data.items() if k not in CHAIN_KEYS}
        read_message(
            version,
            chain.version,
            problems,
            skip=OUTPUT_ONLY,
            allowed_elsewhere=frozenset(CHAIN_KEYS),
        )
        if "steps" not in data:
            problems.add("steps", "missing; a chain needs at least one step")
    if problems:
        raise FolderError([f"{path}: {item}" for item in problems.items])
    return chain


# Writing


def chain_document(chain: cpb.Chain, version: cpb.ChainVersion, tags: list[str]) -> dict[str, Any]:
    """The file data of ``version`` of ``chain``, with the ``tags`` that point at it."""
    data = header_document(chain.name, chain.description, chain.labels, tags)
    body = content(version)
    for step in body.steps:
        inline = step.inline_prompt
        if step.HasField("inline_prompt") and inline.parameters == inline.parameters.__class__():
            inline.ClearField("parameters")  # none; the server stores them as empty
    fields = write_message(body, skip=OUTPUT_ONLY)
    data.update((k, fields[k]) for k in VERSION_KEYS if k in fields)
    return data


def chain_path(root: Path, name: str) -> Path:
    """Where the file of chain ``name`` is: an existing ``.yml`` file, else ``.yaml``."""
    folder = root / CHAINS
    existing = folder / f"{name}.yml"
    return existing if existing.is_file() else folder / f"{name}.yaml"


def write_chain_file(root: Path, name: str, data: Mapping[str, Any]) -> Path:
    """Write (atomically) the file of chain ``name`` under ``root``; its path."""
    return write_text(chain_path(root, name), dump(data))
