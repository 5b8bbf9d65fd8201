"""The folder layout: which file is what.

    DIR/prompts/<name>.yaml    a prompt (``.yml`` works too; see ``files``)
    DIR/partials/<name>.yaml   a partial (``.yml``, or ``.jinja`` for the content
                               alone; see ``partial_files``)
    DIR/chains/<name>.yaml     a stored chain (``.yml`` works too; see ``chain_files``)

The folder names the kind of every file in it. Other files in DIR (a README)
and hidden folders (.git, .github) are ignored; YAML files directly in DIR, in
another folder (a typo such as ``prompt/``) or in a folder below ``prompts/``,
``partials/`` or ``chains/`` are errors, as are two files for one name
(``tone.yaml`` and ``tone.jinja``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from promptgate_client.prompts_as_code.chain_files import CHAINS, ChainFile, read_chain_file
from promptgate_client.prompts_as_code.files import PROMPTS, PromptFile, read_prompt_file
from promptgate_client.prompts_as_code.partial_files import (
    PARTIALS,
    PartialFile,
    read_partial_file,
)
from promptgate_client.prompts_as_code.partial_files import SUFFIXES as PARTIAL_SUFFIXES
from promptgate_client.prompts_as_code.yaml_text import FolderError

YAML_SUFFIXES = (".yaml", ".yml")
KNOWN_SUFFIXES = (*YAML_SUFFIXES, *PARTIAL_SUFFIXES)
KNOWN = (PROMPTS, PARTIALS, CHAINS)
T = TypeVar("T", PromptFile, PartialFile, ChainFile)


@dataclass
class Folder:
    """The files of a folder, each list by name."""

    prompts: list[PromptFile] = field(default_factory=list)
    partials: list[PartialFile] = field(default_factory=list)
    chains: list[ChainFile] = field(default_factory=list)


def read_folder(root: Path) -> Folder:
    """Every prompt, partial and chain file under ``root``; FolderError lists every problem."""
    if not root.is_dir():
        raise FolderError([f"{root}: not a folder"])
    problems: list[str] = []
    where = (
        f"prompt files go in {root / PROMPTS}/, partial files in {root / PARTIALS}/, "
        f"chain files in {root / CHAINS}/"
    )
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in KNOWN_SUFFIXES:
            problems.append(f"{path}: {where} (one file each, named after it)")
        elif path.is_dir() and path.name not in KNOWN and not path.name.startswith("."):
            if _files(path, KNOWN_SUFFIXES):
                problems.append(
                    f"{path}: unknown folder of prompt, partial or chain files; {where}"
                )
    folder = Folder(
        prompts=_read(root / PROMPTS, YAML_SUFFIXES, read_prompt_file, "prompt", problems),
        partials=_read(root / PARTIALS, PARTIAL_SUFFIXES, read_partial_file, "partial", problems),
        chains=_read(root / CHAINS, YAML_SUFFIXES, read_chain_file, "chain", problems),
    )
    if problems:
        raise FolderError(problems)
    return folder


def _read(
    folder: Path,
    suffixes: tuple[str, ...],
    read: Callable[[Path], T],
    kind: str,
    problems: list[str],
) -> list[T]:
    found: dict[str, T] = {}
    for path in _files(folder, suffixes) if folder.is_dir() else []:
        if path.parent != folder:
            problems.append(f"{path}: nested folders are not supported; move it to {folder}/")
            continue
        try:
            item = read(path)
        except FolderError as exc:
            problems.extend(exc.problems)
            continue
        if item.name in found:
            problems.append(f"{path}: {kind} {item.name!r} is also in {found[item.name].path}")
        found[item.name] = item
    return [found[name] for name in sorted(found)]


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in suffixes and not p.name.startswith(".")
    )
