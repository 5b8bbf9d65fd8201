"""Chains in prompts as code: ``promptgate prompts push|pull DIR`` with ``DIR/chains/``
against a real server (see ``tests/test_prompts_as_code.py`` for the command runner),
and CreateChainVersion's ``validate_only``, which the push plan uses."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import chain_service_pb2_grpc as cpb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.auth.model import Scope
from tests.conftest import Running, authed_channel, error_details
from tests.test_prompts_as_code import missing, prompt, run

FACTS = """\
tags: [production]
model: mock-1
variables:
  - {name: topic, type: string}
messages:
  - role: user
    template: "Facts about {{ topic }}"
response_format: {type: json_object}
parameters:
  extra: {mock: {text: '{"topic": "otters", "count": 3}'}}
"""

SUMMARY = """\
tags: [production]
model: mock-1
variables:
  - {name: facts, type: json}
messages:
  - role: user
    template: "Summarise {{ facts.count }} facts on {{ facts.topic }}"
"""

DIGEST = """\
description: Facts, then a summary
labels: {team: research}
tags: [production]
version_description: first cut
variables:
  - {name: topic, type: string}
steps:
  - {name: facts, prompt: facts, output_variable: facts}
  - name: summary
    prompt: summary
    release_tag: production
    output_variable: summary
    parameters: {temperature: 0.1}
  - name: polish
    inline_prompt:
      model: mock-1
      prompt: "Polish: {{ summary }}"
    output_variable: polished
"""

POLISHED = "Mock reply to: Polish: Mock reply to: Summarise 3 facts on otters"  # what the last step of DIGEST answers on the mock provider


def repo(root: Path, prompts: dict[str, str], chains: dict[str, str]) -> Path:
    """``root`` with ``prompts/<name>.yaml`` and ``chains/<name>.yaml`` files."""
    for folder, files in (("prompts", prompts), ("chains", chains)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / folder / f"{name}.yaml").write_text(text)
    return root


def chains_of(pg: Running) -> cpb_grpc.ChainServiceStub:
    return cpb_grpc.ChainServiceStub(pg.channel)


async def chain(pg: Running, name: str) -> cpb.Chain:
    return (await chains_of(pg).GetChain(cpb.GetChainRequest(chain=name))).chain


async def chain_tags(pg: Running, name: str) -> dict[str, int]:
    return {t.tag: t.version for t in (await chain(pg, name)).release_tags if not t.automatic}


async def chain_moves(pg: Running, name: str) -> int:
    request = cpb.ListChainReleaseTagHistoryRequest(chain=name, page_size=1000)
    return len((await chains_of(pg).ListChainReleaseTagHistory(request)).events)


async def no_chain(pg: Running, name: str) -> bool:
    try:
        await chain(pg, name)
    except grpc.aio.AioRpcError as err:
        return err.code() == grpc.StatusCode.NOT_FOUND
    return False


async def step_outputs(stub: cpb_grpc.ChainServiceStub, name: str) -> list[tuple[str, str]]:
    """(step, output text) of a run of chain ``name`` (production) on topic "otters"."""
    response = await stub.ExecuteChain(
        cpb.ExecuteChainRequest(
            chain=name, inputs=[pb.PromptInput(name="topic", string_value="otters")]
        )
    )
    execution = response.chain_execution
    assert execution.state == pb.EXECUTION_STATE_FULFILLED, execution.error
    return [(s.name, s.outputs[0].string_value or str(s.outputs[0])) for s in execution.steps]


# Push


async def test_push_creates_a_chain_whose_steps_name_prompts_of_the_same_folder(
    pg: Running, tmp_path: Path
) -> None:
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    assert "create     facts: new prompt, version 1" in planned.out
    assert "create     chain digest: new chain, version 1" in planned.out
    assert "tag        chain digest: production -> v1 (new tag)" in planned.out
    assert (
        "note       chain digest: steps name prompts facts, summary, which this push creates "
        "or changes: the server checks this version against them once they are pushed\n"
        in planned.out
    )
    assert "; chains: 1 to create, 0 new versions, 1 tag move, 0 up to date" in planned.out
    assert await no_chain(pg, "digest") and await missing(pg, "facts")

    result = await run(pg, "push", root)
    assert result.code == 0, result
    # Prompts first: the chain's steps name them.
    assert result.out.index("created summary version 1") < result.out.index(
        "created chain digest\n"
    )
    assert "created chain digest version 1" in result.out
    assert "moved chain digest production to version 1" in result.out
    stored = await chain(pg, "digest")
    assert (stored.latest_version, stored.description, dict(stored.labels)) == (
        1,
        "Facts, then a summary",
        {"team": "research"},
    )
    assert await chain_tags(pg, "digest") == {"production": 1}
    version = (
        await chains_of(pg).GetChainVersion(cpb.GetChainVersionRequest(chain="digest", version=1))
    ).version
    assert version.description == "first cut"
    assert [(s.name, s.prompt, s.release_tag) for s in version.steps] == [
        ("facts", "facts", ""),
        ("summary", "summary", "production"),
        ("polish", "", ""),
    ]
    assert version.steps[1].parameters.temperature == pytest.approx(0.1)
    assert [v.name for v in version.input_variables] == ["topic"]
    outputs = await step_outputs(chains_of(pg), "digest")
    assert outputs[1:] == [
        ("summary", "Mock reply to: Summarise 3 facts on otters"),
        ("polish", POLISHED),
    ]


async def test_re_push_of_unchanged_files_changes_nothing(pg: Running, tmp_path: Path) -> None:
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    assert (await run(pg, "push", root)).code == 0
    history = await chain_moves(pg, "digest")
    again = await run(pg, "push", root)
    assert again.code == 0, again
    assert "unchanged  chain digest: version 1" in again.out
    assert "note" not in again.out
    assert "; chains: 0 to create, 0 new versions, 0 tag moves, 1 up to date" in again.out
    assert "up to date: nothing to push" in again.out
    assert (await chain(pg, "digest")).latest_version == 1
    assert await chain_moves(pg, "digest") == history


async def test_an_edit_makes_a_new_chain_version_and_moves_its_tags(
    pg: Running, tmp_path: Path
) -> None:
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    assert (await run(pg, "push", root)).code == 0
    history = await chain_moves(pg, "digest")
    edited = DIGEST.replace("Polish: {{ summary }}", "Shorten: {{ summary }}").replace(
        "tags: [production]", "tags: [production, staging]"
    )
    repo(root, {}, {"digest": edited})
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    assert "version    chain digest: new version 2\n" in planned.out
    assert "tag        chain digest: production v1 -> v2" in planned.out
    assert "tag        chain digest: staging -> v2 (new tag)" in planned.out
    assert "unchanged  summary: version 1" in planned.out
    assert "note       chain digest" not in planned.out  # its prompts do not change
    assert "; chains: 0 to create, 1 new version, 2 tag moves, 0 up to date" in planned.out
    assert (await chain(pg, "digest")).latest_version == 1
    assert await chain_moves(pg, "digest") == history

    result = await run(pg, "push", root)
    assert result.code == 0, result
    assert "created chain digest version 2" in result.out
    assert "moved chain digest staging to version 2" in result.out
    assert await chain_tags(pg, "digest") == {"production": 2, "staging": 2}
    outputs = await step_outputs(chains_of(pg), "digest")
    assert outputs[-1] == (
        "polish",
        "Mock reply to: Shorten: Mock reply to: Summarise 3 facts on otters",
    )
    # A tag added to the file moves alone.
    repo(root, {}, {"digest": edited.replace("staging]", "staging, canary]")})
    added = await run(pg, "push", root)
    assert "unchanged  chain digest: version 2" in added.out
    assert "tag        chain digest: canary -> v2 (new tag)" in added.out
    assert "moved chain digest canary to version 2" in added.out
    assert (await chain(pg, "digest")).latest_version == 2
    assert await chain_tags(pg, "digest") == {"production": 2, "staging": 2, "canary": 2}


async def test_a_chain_is_checked_again_once_the_prompts_it_names_are_pushed(
    pg: Running, tmp_path: Path
) -> None:
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    assert (await run(pg, "push", root)).code == 0
    # summary's production starts to need "style", which no step yields; the chain
    # changes too. Against the stored summary the new chain version is fine.
    needs_style = SUMMARY.replace(
        "  - {name: facts, type: json}\n",
        "  - {name: facts, type: json}\n  - {name: style, type: string}\n",
    ).replace("on {{ facts.topic }}", "on {{ facts.topic }} in {{ style }}")
    edited = DIGEST.replace("first cut", "second cut")
    repo(root, {"summary": needs_style}, {"digest": edited})
    planned = await run(pg, "push", root, "--dry-run", "--allow-breaking-changes")
    assert planned.code == 0, planned
    assert "version    chain digest: new version 2" in planned.out
    assert (
        "note       chain digest: steps name prompt summary, which this push creates or "
        "changes: the server checks this version against it once it is pushed" in planned.out
    )
    result = await run(pg, "push", root, "--allow-breaking-changes")
    assert result.code == 1, result
    assert "created summary version 2" in result.out
    path = root / "chains" / "digest.yaml"
    assert f"error      chain digest ({path}): INVALID_ARGUMENT [INVALID_CHAIN]" in result.out
    assert "           steps[1]: needs 'style'" in result.out
    assert "the prompts and partials were pushed, no chain was: errors" in result.err
    assert (await chain(pg, "digest")).latest_version == 1
    assert (await prompt(pg, "summary")).latest_version == 2


async def test_a_step_naming_a_prompt_the_push_creates_in_an_existing_chain(
    pg: Running, tmp_path: Path
) -> None:
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    assert (await run(pg, "push", root)).code == 0
    title = SUMMARY.replace("Summarise", "Title for").replace("[production]", "[production]")
    more = DIGEST + "  - {name: title, prompt: title, output_variable: title}\n"
    repo(root, {"title": title}, {"digest": more})
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    # The server cannot check the title step before the prompt exists.
    assert "version    chain digest: new version 2" in planned.out
    assert (
        "note       chain digest: steps name prompt title, which this push creates or "
        "changes: the server checks this version against it once it is pushed (until then "
        "the file is compared as written)" in planned.out
    )
    assert await missing(pg, "title")
    result = await run(pg, "push", root)
    assert result.code == 0, result
    assert result.out.index("created title version 1") < result.out.index(
        "created chain digest version 2"
    )
    outputs = await step_outputs(chains_of(pg), "digest")
    assert outputs[-1] == ("title", "Mock reply to: Title for 3 facts on otters")


# Pull


async def test_pull_then_push_is_a_no_op(pg: Running, tmp_path: Path) -> None:
    source = repo(tmp_path / "source", {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    assert (await run(pg, "push", source)).code == 0
    pulled = tmp_path / "pulled"
    result = await run(pg, "pull", pulled)
    assert result.code == 0, result
    assert "pulled  chain digest version 1 -> " in result.out
    assert [p.name for p in (pulled / "chains").iterdir()] == ["digest.yaml"]
    text = (pulled / "chains" / "digest.yaml").read_text()
    assert text.startswith(
        "name: digest\ndescription: Facts, then a summary\nlabels:\n  team: research\n"
        "tags:\n  - production\nversion_description: first cut\nvariables:\n"
    )
    assert "  - name: facts\n    prompt: facts\n    output_variable: facts\n" in text
    assert "      messages:\n        - role: user\n          template: 'Polish: {{ summary }}'" in (
        text
    )
    history = await chain_moves(pg, "digest")
    again = await run(pg, "push", pulled)
    assert again.code == 0, again
    assert "unchanged  chain digest: version 1" in again.out
    assert "up to date: nothing to push" in again.out
    assert "note" not in again.out
    assert (await chain(pg, "digest")).latest_version == 1
    assert await chain_moves(pg, "digest") == history
    before = {p.name: p.read_bytes() for p in (pulled / "chains").iterdir()}
    assert (await run(pg, "pull", pulled)).code == 0
    assert {p.name: p.read_bytes() for p in (pulled / "chains").iterdir()} == before


async def test_a_pulled_chain_recreates_the_chain_in_another_workspace(
    pg: Running, tmp_path: Path
) -> None:
    source = repo(tmp_path / "source", {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    assert (await run(pg, "push", source)).code == 0
    repo(source, {}, {"digest": DIGEST.replace("Polish", "Tidy")})
    assert (await run(pg, "push", source)).code == 0
    pulled = tmp_path / "pulled"
    result = await run(pg, "pull", pulled, "--chain", "digest")
    assert result.code == 0, result
    # The chain, and the prompts its steps name (not the demo prompt).
    assert sorted(p.name for p in (pulled / "prompts").iterdir()) == ["facts.yaml", "summary.yaml"]
    assert "pulled  chain digest version 2" in result.out
    skipped = await run(pg, "pull", tmp_path / "none", "--chain", "digest", "--tag", "canary")
    assert "skipped chain digest: no release tag 'canary'" in skipped.out, skipped
    assert not (tmp_path / "none" / "chains").exists()

    assert await pg.server.keys.ensure_workspace("other")
    issued = await pg.server.keys.create(
        "other", name="other", scopes=[Scope.ADMIN], plan="unlimited"
    )
    pushed = await run(pg, "push", pulled, "--api-key", issued.secret)
    assert pushed.code == 0, pushed
    assert "create     chain digest: new chain, version 1" in pushed.out
    async with authed_channel(pg.address, issued.secret) as channel:
        other = cpb_grpc.ChainServiceStub(channel)
        here = await step_outputs(chains_of(pg), "digest")
        assert await step_outputs(other, "digest") == here
        assert here[-1] == ("polish", POLISHED.replace("Polish", "Tidy"))
    again = await run(pg, "push", pulled, "--api-key", issued.secret)
    assert "up to date: nothing to push" in again.out, again


# Errors


BAD_CHAINS = {
    # kind: (the file's text, words of the error)
    "yaml syntax": ("steps: [x\n", "invalid YAML: line"),
    "unknown key": (DIGEST + "stepz: []\n", "stepz: unknown key"),
    "proto name of a renamed key": (
        DIGEST.replace("variables:", "input_variables:"),
        "input_variables: unknown key (did you mean 'variables'?)",
    ),
    "unknown step key": (
        DIGEST.replace("prompt: facts,", "promt: facts,"),
        "steps[0].promt: unknown key",
    ),
    "prompt and inline prompt": (
        DIGEST.replace("    inline_prompt:", "    prompt: facts\n    inline_prompt:"),
        "steps[2]: set only one of: prompt, inline_prompt",
    ),
    "wrong scalar type": (
        DIGEST.replace("release_tag: production", "version: latest"),
        "steps[1].version: expected an integer",
    ),
    "inline prompt key": (
        DIGEST.replace("      model: mock-1", "      modle: mock-1"),
        "steps[2].inline_prompt.modle: unknown key",
    ),
    "no steps": ("tags: [production]\n", "steps: missing"),
    "name differs": ("name: other\n" + DIGEST, "name: 'other' differs from the file name"),
    "key twice": (DIGEST + "tags: [staging]\n", "found the key 'tags' twice"),
    "latest tag": (DIGEST.replace("tags: [production]", "tags: [latest]"), "tags:"),
    "output-only field": (DIGEST + "chain_id: chn_1\n", "chain_id: unknown key"),
}


@pytest.mark.parametrize("kind", list(BAD_CHAINS))
async def test_a_bad_chain_file_is_named_and_nothing_is_written(
    pg: Running, tmp_path: Path, kind: str
) -> None:
    text, words = BAD_CHAINS[kind]
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": text})
    for extra in (["--dry-run"], []):
        result = await run(pg, "push", root, *extra)
        assert result.code == 2, result
        assert f"{root / 'chains' / 'digest.yaml'}: " in result.err
        assert words in result.err, result.err
        assert "nothing was pushed" in result.err
    assert await missing(pg, "facts")


async def test_a_step_naming_an_unknown_prompt_is_an_error_in_the_plan(
    pg: Running, tmp_path: Path
) -> None:
    ghost = DIGEST.replace("prompt: summary", "prompt: ghost")
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": ghost})
    path = root / "chains" / "digest.yaml"
    for extra in (["--dry-run"], []):
        result = await run(pg, "push", root, *extra)
        assert result.code == 1, result
        assert (
            f"error      chain digest ({path}): INVALID_ARGUMENT [INVALID_CHAIN]: steps name "
            f"prompt 'ghost', which is neither on the server nor in {root / 'prompts'}/"
            in result.out
        )
        assert "           steps[1].prompt: prompt 'ghost' not found" in result.out
        assert "; chains: 0 to create, 0 new versions, 0 tag moves, 0 up to date, 1 error" in (
            result.out
        )
    assert "nothing was pushed: errors" in result.err
    assert await missing(pg, "facts") and await no_chain(pg, "digest")


async def test_a_chain_version_the_server_refuses_is_named(pg: Running, tmp_path: Path) -> None:
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    assert (await run(pg, "push", root)).code == 0
    # A step named twice, and an output named like a chain input.
    bad = DIGEST.replace("  - name: summary\n", "  - name: facts\n").replace(
        "output_variable: polished", "output_variable: topic"
    )
    repo(root, {}, {"digest": bad})
    path = root / "chains" / "digest.yaml"
    for extra in (["--dry-run"], []):
        result = await run(pg, "push", root, *extra)
        assert result.code == 1, result
        assert f"error      chain digest ({path}): INVALID_ARGUMENT [INVALID_CHAIN]" in result.out
        assert "           steps[1].name: step 'facts' is named twice\n" in result.out
        assert "           steps[2].output_variable: 'topic' is already a chain input" in (
            result.out
        )
    # A bad value the server finds in the file's variables is named by the file's key.
    repo(root, {}, {"digest": DIGEST.replace("{name: topic, type: string}", "{name: topic}")})
    result = await run(pg, "push", root, "--dry-run")
    assert "           variables[0].type: a type is required" in result.out, result
    assert (await chain(pg, "digest")).latest_version == 1


async def test_chain_files_in_the_folder_layout(pg: Running, tmp_path: Path) -> None:
    root = repo(tmp_path, {"facts": FACTS}, {})
    (root / "chains" / "team").mkdir()
    (root / "chains" / "team" / "nested.yaml").write_text(DIGEST)
    (root / "chain").mkdir()
    (root / "chain" / "typo.yaml").write_text(DIGEST)
    (root / "chains" / "-bad.yaml").write_text(DIGEST)
    result = await run(pg, "push", root)
    assert result.code == 2
    assert f"{root / 'chains' / 'team' / 'nested.yaml'}: nested folders" in result.err
    assert f"{root / 'chain'}: unknown folder of prompt, partial or chain files" in result.err
    assert f"{root / 'chains' / '-bad.yaml'}: the file name is not a chain name" in result.err


# validate_only on the server


async def test_create_chain_version_validate_only_checks_and_stores_nothing(
    pg: Running, tmp_path: Path
) -> None:
    root = repo(tmp_path, {"facts": FACTS, "summary": SUMMARY}, {"digest": DIGEST})
    assert (await run(pg, "push", root)).code == 0
    stub = chains_of(pg)
    stored = (
        await stub.GetChainVersion(cpb.GetChainVersionRequest(chain="digest", version=1))
    ).version
    body = cpb.ChainVersion(steps=stored.steps, input_variables=stored.input_variables)
    checked = await stub.CreateChainVersion(
        cpb.CreateChainVersionRequest(
            chain="digest", version=body, release_tags=["staging"], validate_only=True
        )
    )
    assert (checked.version.version, checked.version.id) == (2, "")
    assert not checked.version.HasField("create_time")
    assert checked.version.chain_id == (await chain(pg, "digest")).id
    assert list(checked.version.steps) == list(stored.steps)
    assert (await chain(pg, "digest")).latest_version == 1
    assert await chain_tags(pg, "digest") == {"production": 1}

    async def refused(request: cpb.CreateChainVersionRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateChainVersion(request)
        return caught.value.code(), error_details(caught.value)[0].reason

    # Content is checked before the chain is looked up: NOT_FOUND means it is valid.
    assert await refused(
        cpb.CreateChainVersionRequest(chain="new", version=body, validate_only=True)
    ) == (grpc.StatusCode.NOT_FOUND, "CHAIN_NOT_FOUND")
    ghost = cpb.ChainVersion()
    ghost.CopyFrom(body)
    ghost.steps[0].prompt = "ghost"
    assert await refused(
        cpb.CreateChainVersionRequest(chain="new", version=ghost, validate_only=True)
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHAIN")
    assert await refused(
        cpb.CreateChainVersionRequest(
            chain="digest", version=body, release_tags=["latest"], validate_only=True
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RELEASE_TAG")
    await stub.ArchiveChain(cpb.ArchiveChainRequest(chain="digest"))
    assert await refused(
        cpb.CreateChainVersionRequest(chain="digest", version=body, validate_only=True)
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "CHAIN_ARCHIVED")
    assert (await chain(pg, "digest")).latest_version == 1
