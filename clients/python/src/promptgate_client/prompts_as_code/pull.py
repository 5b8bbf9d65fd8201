"""Pulling prompts, partials and chains from a server into files.

Each prompt (all that are not archived, or those named) is written to
``DIR/prompts/<name>.yaml``: its latest version, or the version a given
release tag points at, with the tags that point at that version. Partials
are written to ``DIR/partials/<name>.yaml`` at their latest version: every
partial that is not archived, or, when prompts are named, those the pulled
versions include and those these partials include in turn. Chains (all that
are not archived, or those named) are written to ``DIR/chains/<name>.yaml``
like prompts (latest version, or the tag's, with its tags); naming chains
pulls the prompts their steps name too (those not archived). Pushing the
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
from promptgate_client.prompts_as_code.chain_files import chain_document, write_chain_file
from promptgate_client.prompts_as_code.files import prompt_document, write_prompt_file
from promptgate_client.prompts_as_code.partial_files import write_partial_file
from promptgate_client.prompts_as_code.plan import call
from promptgate_client.v1 import chain_service_pb2 as cpb
from promptgate_client.v1 import prompt_service_pb2 as ppb

PAGE_SIZE = 1000
PROMPT, PARTIAL, CHAIN = "prompt", "partial", "chain"


@dataclass(frozen=True)
class Pulled:
    """One prompt, partial or chain (``kind``) pulled (``path`` set) or skipped
    (``skipped`` says why)."""

    name: str
    version: int = 0
    path: Path | None = None
    skipped: str = ""
    kind: str = PROMPT


def pull(
    client: Client,
    root: Path,
    *,
    names: Sequence[str] = (),
    chains: Sequence[str] = (),
    tag: str = "",
) -> list[Pulled]:
    """Write the file of each prompt, then of the partials, then of the chains; what
    was written or skipped, prompts by name, then partials, then chains."""
    everything = not names and not chains
    if chains:
        found = [call(client.chains.GetChain, cpb.GetChainRequest(chain=n)).chain for n in chains]
    else:
        found = list(_all_chains(client)) if everything else []
    pulled_chains = [(c, _chain_version(client, c, tag)) for c in sorted(found, key=_name)]
    results: list[Pulled] = []
    if everything:
        prompts = list(_all_prompts(client))
    else:
        needed = [s.prompt for _, v in pulled_chains if v for s in v.steps if s.prompt]
        prompts, archived = _prompts(client, names, needed)
        results.extend(Pulled(n, skipped="archived (a chain step names it)") for n in archived)
    included: set[str] = set()
    for prompt in sorted(prompts, key=_name):
        version = _version(client, prompt, tag)
        if version is None:
            results.append(Pulled(prompt.name, skipped=_why(tag)))
            continue
        included.update(version.partials)
        tags = _tags_at(prompt.release_tags, version.id)
        path = write_prompt_file(root, prompt.name, prompt_document(prompt, version, tags))
        results.append(Pulled(prompt.name, version.version, path))
    if everything:
        partials = [(p, _latest(client, p.name)) for p in _all_partials(client)]
        skipped: list[str] = []
    else:
        partials, skipped = _needed(client, included)
    for partial, latest in sorted(partials, key=lambda pair: pair[0].name):
        path = write_partial_file(root, partial, latest)
        results.append(Pulled(partial.name, latest.version, path, kind=PARTIAL))
    results.extend(Pulled(name, skipped="archived", kind=PARTIAL) for name in skipped)
    for chain, chain_version in pulled_chains:
        if chain_version is None:
            results.append(Pulled(chain.name, skipped=_why(tag), kind=CHAIN))
            continue
        tags = _tags_at(chain.release_tags, chain_version.id)
        path = write_chain_file(root, chain.name, chain_document(chain, chain_version, tags))
        results.append(Pulled(chain.name, chain_version.version, path, kind=CHAIN))
    return results


def _name(resource: ppb.Prompt | cpb.Chain) -> str:
    return resource.name


def _why(tag: str) -> str:
    return f"no release tag {tag!r}" if tag else "no versions yet"


def _tags_at(tags: Iterable[ppb.ReleaseTag | cpb.ChainReleaseTag], version_id: str) -> list[str]:
    """The tags (not "latest") that point at the version ``version_id``."""
    return [t.tag for t in tags if not t.automatic and t.version_id == version_id]


def _prompts(
    client: Client, names: Sequence[str], needed: Sequence[str]
) -> tuple[list[ppb.Prompt], list[str]]:
    """The prompts ``names`` and those chain steps name (``needed``, by id or name),
    once each; and the names of the archived ones among ``needed``, left out."""
    found: dict[str, ppb.Prompt] = {}
    archived: list[str] = []
    for ref in names:
        prompt = call(client.prompts.GetPrompt, ppb.GetPromptRequest(prompt=ref)).prompt
        found[prompt.name] = prompt
    for ref in dict.fromkeys(needed):
        prompt = call(client.prompts.GetPrompt, ppb.GetPromptRequest(prompt=ref)).prompt
        if prompt.name in found:
            continue
        if prompt.archived:
            archived.append(prompt.name)
        else:
            found[prompt.name] = prompt
    return list(found.values()), sorted(set(archived))


def _all_prompts(client: Client) -> Iterator[ppb.Prompt]:
    token = ""
    while True:
        request = ppb.ListPromptsRequest(page_size=PAGE_SIZE, page_token=token)
        page = call(client.prompts.ListPrompts, request)
        yield from page.prompts
        token = page.next_page_token
        if not token:
            return


def _all_chains(client: Client) -> Iterator[cpb.Chain]:
    token = ""
    while True:
        request = cpb.ListChainsRequest(page_size=PAGE_SIZE, page_token=token)
        page = call(client.chains.ListChains, request)
        yield from page.chains
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


def _chain_version(client: Client, chain: cpb.Chain, tag: str) -> cpb.ChainVersion | None:
    request = cpb.GetChainVersionRequest(chain=chain.name)
    if tag:
        request.release_tag = tag
    elif chain.latest_version:
        request.version = chain.latest_version
    else:
        return None
    try:
        return call(client.chains.GetChainVersion, request).version
    except NotFoundError:
        return None
