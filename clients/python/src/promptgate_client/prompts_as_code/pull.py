"""Pulling prompts from a server into prompt files.

Each prompt (all that are not archived, or those named) is written to
``DIR/prompts/<name>.yaml``: its latest version, or the version a given
release tag points at, with the tags that point at that version. Pushing the
files back changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from promptgate_client._errors import NotFoundError
from promptgate_client._sync import Client
from promptgate_client.prompts_as_code.files import prompt_document, write_prompt_file
from promptgate_client.prompts_as_code.plan import call
from promptgate_client.v1 import prompt_service_pb2 as ppb

PAGE_SIZE = 1000


@dataclass(frozen=True)
class Pulled:
    """One prompt pulled (``path`` set) or skipped (``skipped`` says why)."""

    name: str
    version: int = 0
    path: Path | None = None
    skipped: str = ""


def pull(client: Client, root: Path, *, names: Sequence[str] = (), tag: str = "") -> list[Pulled]:
    """Write the file of each prompt; what was written or skipped, by name."""
    prompts = (
        [call(client.prompts.GetPrompt, ppb.GetPromptRequest(prompt=n)).prompt for n in names]
        if names
        else list(_all_prompts(client))
    )
    results: list[Pulled] = []
    for prompt in sorted(prompts, key=lambda p: p.name):
        version = _version(client, prompt, tag)
        if version is None:
            why = f"no release tag {tag!r}" if tag else "no versions yet"
            results.append(Pulled(prompt.name, skipped=why))
            continue
        tags = [
            t.tag for t in prompt.release_tags if not t.automatic and t.version_id == version.id
        ]
        path = write_prompt_file(root, prompt.name, prompt_document(prompt, version, tags))
        results.append(Pulled(prompt.name, version.version, path))
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
