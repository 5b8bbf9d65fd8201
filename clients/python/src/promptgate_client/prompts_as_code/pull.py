"""Pulling prompts and partials from a server into files.

Each prompt (all that are not archived, or those named) is written to
``DIR/prompts/<name>.yaml``: its latest version, or the version a given
release tag points at, with the tags that point at that version. Partials
are written to ``DIR/partials/<name>.yaml`` at their latest version: every
partial that is not archived, or, when prompts are named, those the pulled
versions include and those these partials include in turn. Pushing the
files back changes nothing (unless a pulled prompt version pinned an older
partial version than the latest: pushing it makes a version that pins the
latest, as the plan says).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from promptgate_client._errors import NotFoundError
from promptgate_client._sync import Client
from promptgate_client.prompts_as_code.files import prompt_document, write_prompt_file
from promptgate_client.prompts_as_code.partial_files import write_partial_file
from promptgate_client.prompts_as_code.plan import call
from promptgate_client.v1 import prompt_service_pb2 as ppb

PAGE_SIZE = 1000
PROMPT, PARTIAL = "prompt", "partial"


@dataclass(frozen=True)
class Pulled:
    """One prompt or partial (``kind``) pulled (``path`` set) or skipped (``skipped``
    says why)."""

    name: str
    version: int = 0
    path: Path | None = None
    skipped: str = ""
    kind: str = PROMPT


def pull(client: Client, root: Path, *, names: Sequence[str] = (), tag: str = "") -> list[Pulled]:
    """Write the file of each prompt, then of the partials; what was written or
    skipped, prompts by name, then partials by name."""
    prompts = (
        [call(client.prompts.GetPrompt, ppb.GetPromptRequest(prompt=n)).prompt for n in names]
        if names
        else list(_all_prompts(client))
    )
    results: list[Pulled] = []
    included: set[str] = set()
    for prompt in sorted(prompts, key=lambda p: p.name):
        version = _version(client, prompt, tag)
        if version is None:
            why = f"no release tag {tag!r}" if tag else "no versions yet"
            results.append(Pulled(prompt.name, skipped=why))
            continue
        included.update(version.partials)
        tags = [
            t.tag for t in prompt.release_tags if not t.automatic and t.version_id == version.id
        ]
        path = write_prompt_file(root, prompt.name, prompt_document(prompt, version, tags))
        results.append(Pulled(prompt.name, version.version, path))
    if names:
        partials, archived = _needed(client, included)
    else:
        partials, archived = [(p, _latest(client, p.name)) for p in _all_partials(client)], []
    for partial, latest in sorted(partials, key=lambda pair: pair[0].name):
        path = write_partial_file(root, partial, latest)
        results.append(Pulled(partial.name, latest.version, path, kind=PARTIAL))
    results.extend(Pulled(name, skipped="archived", kind=PARTIAL) for name in archived)
    return results


def _all_prompts(client: Client) -> Iterator[ppb.Prompt]:
    token = ""
    while True:
        request = ppb.ListPromptsRequest(page_size=PAGE_SIZE, page_token=token)
        page = call(client.prompts.ListPrompts, request)
        yield from page.prompts
        token = page.next_page_token
        if not token:
            return


def _all_partials(client: Client) -> Iterator[ppb.Partial]:
    token = ""
    while True:
        request = ppb.ListPartialsRequest(page_size=PAGE_SIZE, page_token=token)
        page = call(client.prompts.ListPartials, request)
        yield from page.partials
        token = page.next_page_token
        if not token:
            return


def _needed(
    client: Client, names: Iterable[str]
) -> tuple[list[tuple[ppb.Partial, ppb.PartialVersion]], list[str]]:
    """The partials ``names`` and those their latest versions include, nested ones too,
    at their latest versions; and the names of archived ones, left out (a push cannot
    give them new versions)."""
    found: dict[str, tuple[ppb.Partial, ppb.PartialVersion]] = {}
    archived: list[str] = []
    frontier = sorted(set(names))
    seen = set(frontier)
    while frontier:
        following: list[str] = []
        for name in frontier:
            partial = call(client.prompts.GetPartial, ppb.GetPartialRequest(partial=name)).partial
            if partial.archived:
                archived.append(name)
                continue
            latest = _latest(client, name)
            found[name] = (partial, latest)
            for child in latest.includes:
                if child not in seen:
                    seen.add(child)
                    following.append(child)
        frontier = following
    return list(found.values()), sorted(archived)


def _latest(client: Client, name: str) -> ppb.PartialVersion:
    request = ppb.GetPartialVersionRequest(partial=name)
    return call(client.prompts.GetPartialVersion, request).version


def _version(client: Client, prompt: ppb.Prompt, tag: str) -> ppb.PromptVersion | None:
    request = ppb.GetPromptVersionRequest(prompt=prompt.name)
    if tag:
        request.release_tag = tag
    elif prompt.latest_version:
        request.version = prompt.latest_version
    else:
        return None
    try:
        return call(client.prompts.GetPromptVersion, request).version
    except NotFoundError:
        return None
