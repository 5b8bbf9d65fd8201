"""Partials in prompts as code: ``promptgate prompts push|pull DIR`` with
``DIR/partials/`` against a real server (see ``tests/test_prompts_as_code.py``
for the command runner)."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.api.v1 import prompt_service_pb2_grpc
from promptgate.auth.model import Scope
from tests.conftest import Running, authed_channel
from tests.test_prompts_as_code import missing, moves, prompt, run, tags, version

TONE = """\
description: House tone
version_description: first tone
content: |
  Answer kindly.
  Keep it short.
"""

TEAM = "content: The growth team\n"

SIGNATURE = "-- {% include 'team' %}\n"  # a .jinja file: the content alone

WELCOME = """\
tags: [production]
model: mock-1
variables:
  - {name: person, type: string}
messages:
  - role: system
    template: "{% include 'tone' %}"
  - role: user
    template: |
      Welcome {{ person }}.
      {% include 'signature' %}
"""

PLAIN = """\
tags: [production]
model: mock-1
variables:
  - {name: person, type: string}
messages:
  - role: user
    template: "Hi {{ person }}"
"""

PARTIALS = {"tone.yaml": TONE, "team.yaml": TEAM, "signature.jinja": SIGNATURE}


def repo(root: Path, prompts: dict[str, str], partials: dict[str, str]) -> Path:
    """``root`` with ``prompts/<name>.yaml`` and ``partials/<file>`` files."""
    for folder, files in (
        ("prompts", {f"{k}.yaml": v for k, v in prompts.items()}),
        ("partials", partials),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / folder / name).write_text(text)
    return root


async def partial_versions(stub: prompt_service_pb2_grpc.PromptServiceStub, name: str) -> list[str]:
    """The contents of a partial's versions, oldest first."""
    request = ppb.ListPartialVersionsRequest(partial=name, page_size=1000)
    return [v.content for v in reversed((await stub.ListPartialVersions(request)).versions)]


async def rendered(stub: prompt_service_pb2_grpc.PromptServiceStub, name: str) -> list[str]:
    request = ppb.RenderPromptRequest(
        prompt=name, inputs=[pb.PromptInput(name="person", string_value="Ada")]
    )
    return [m.content for m in (await stub.RenderPrompt(request)).messages]


# Push


async def test_push_creates_partials_before_the_prompts_that_include_them(
    pg: Running, tmp_path: Path
) -> None:
    root = repo(tmp_path, {"welcome": WELCOME, "plain": PLAIN}, PARTIALS)
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    assert "create     partial signature: new partial, version 1" in planned.out
    assert "create     partial tone: new partial, version 1" in planned.out
    assert "create     welcome: new prompt, version 1" in planned.out
    assert (
        "note       welcome: includes partials signature, tone, which this push creates: "
        "the server checks this version and its tag moves once they exist" in planned.out
    )
    assert "note       plain" not in planned.out
    assert "; partials: 3 to create, 0 new versions, 0 up to date" in planned.out
    assert await missing(pg, "welcome")
    assert (await pg.prompts.ListPartials(ppb.ListPartialsRequest())).partials == []

    result = await run(pg, "push", root)
    assert result.code == 0, result
    # signature includes team: team is created first, whatever the names' order.
    created = [line for line in result.out.splitlines() if line.startswith("created partial")]
    assert created == [
        "created partial team version 1",
        "created partial signature version 1",
        "created partial tone version 1",
    ]
    assert result.out.index("created partial") < result.out.index("created welcome version 1")
    tone = (await pg.prompts.GetPartial(ppb.GetPartialRequest(partial="tone"))).partial
    assert tone.description == "House tone"
    first = (
        await pg.prompts.GetPartialVersion(ppb.GetPartialVersionRequest(partial="tone"))
    ).version
    assert (first.content, first.description) == ("Answer kindly.\nKeep it short.\n", "first tone")
    # A .jinja file is its text without the final newline.
    assert await partial_versions(pg.prompts, "signature") == ["-- {% include 'team' %}"]
    assert dict((await version(pg, "welcome", 1)).partials) == {
        "signature": 1,
        "team": 1,
        "tone": 1,
    }
    assert await rendered(pg.prompts, "welcome") == [
        "Answer kindly.\nKeep it short.\n",
        "Welcome Ada.\n-- The growth team\n",
    ]


async def test_an_edited_partial_makes_new_versions_of_it_and_of_the_prompts_including_it(
    pg: Running, tmp_path: Path
) -> None:
    root = repo(tmp_path, {"welcome": WELCOME, "plain": PLAIN}, PARTIALS)
    assert (await run(pg, "push", root)).code == 0
    history = await moves(pg, "welcome")
    repo(root, {}, {"team.yaml": "content: The support team\n"})
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    assert "version    partial team: new version 2" in planned.out
    assert "unchanged  partial tone: version 1" in planned.out
    # welcome includes team through signature: the server's pins say so.
    assert (
        "version    welcome: new version 2 (partial team changes; compatible with production v1)"
        in planned.out
    )
    assert "tag        welcome: production v1 -> v2" in planned.out
    assert (
        "note       welcome: same content as version 1; newer partial versions: team v1 -> v2"
        in planned.out
    )
    assert "unchanged  plain: version 1" in planned.out
    assert (
        "plan: 0 to create, 1 new version, 1 tag move (0 breaking), 1 up to date; "
        "partials: 0 to create, 1 new version, 2 up to date" in planned.out
    )
    assert await partial_versions(pg.prompts, "team") == ["The growth team"]
    assert (await prompt(pg, "welcome")).latest_version == 1
    assert await moves(pg, "welcome") == history

    result = await run(pg, "push", root)
    assert result.code == 0, result
    assert "created partial team version 2" in result.out
    assert "created welcome version 2" in result.out
    assert await partial_versions(pg.prompts, "team") == ["The growth team", "The support team"]
    assert dict((await version(pg, "welcome", 2)).partials) == {
        "signature": 1,
        "team": 2,
        "tone": 1,
    }
    assert await tags(pg, "welcome") == {"production": 2}
    assert (await rendered(pg.prompts, "welcome"))[1] == "Welcome Ada.\n-- The support team\n"
    assert (await prompt(pg, "plain")).latest_version == 1

    # Pushing the same files again makes nothing.
    history = await moves(pg, "welcome")
    again = await run(pg, "push", root)
    assert again.code == 0, again
    assert "unchanged  partial team: version 2" in again.out
    assert "unchanged  welcome: version 2" in again.out
    assert "up to date: nothing to push" in again.out
    assert len(await partial_versions(pg.prompts, "team")) == 2
    assert (await prompt(pg, "welcome")).latest_version == 2
    assert await moves(pg, "welcome") == history


async def test_a_prompt_starting_to_include_a_new_partial(pg: Running, tmp_path: Path) -> None:
    root = repo(tmp_path, {"plain": PLAIN}, {})
    assert (await run(pg, "push", root)).code == 0
    with_footer = PLAIN.replace("Hi {{ person }}", "Hi {{ person }}. {% include 'footer' %}")
    repo(root, {"plain": with_footer}, {"footer.yaml": "content: Bye.\n"})
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    assert "version    plain: new version 2 (partial footer is new)" in planned.out
    assert (
        "tag        plain: production v1 -> v2 (checked once the partials are pushed)"
        in planned.out
    )
    assert "includes partial footer, which this push creates" in planned.out
    result = await run(pg, "push", root)
    assert result.code == 0, result
    assert dict((await version(pg, "plain", 2)).partials) == {"footer": 1}
    assert await rendered(pg.prompts, "plain") == ["Hi Ada. Bye."]
    assert "up to date: nothing to push" in (await run(pg, "push", root)).out


async def test_a_partial_the_prompts_cannot_take_is_pushed_but_no_prompt_is(
    pg: Running, tmp_path: Path
) -> None:
    root = repo(tmp_path, {"welcome": WELCOME, "plain": PLAIN}, PARTIALS)
    assert (await run(pg, "push", root)).code == 0
    # The new tone uses a variable welcome does not declare: only the server sees it,
    # once the partial version exists. A new prompt including it is refused too;
    # plain changes, and is not pushed either.
    repo(
        root,
        {"plain": PLAIN.replace("Hi", "Hello"), "fresh": WELCOME},
        {"tone.yaml": TONE.replace("Keep it short.", "Use a {{ mood }} tone.")},
    )
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    assert "version    welcome: new version 2 (partial tone changes" in planned.out
    assert "create     fresh: new prompt, version 1" in planned.out
    result = await run(pg, "push", root)
    assert result.code == 1, result
    assert "created partial tone version 2" in result.out
    assert "error      welcome" in result.out and "error      fresh" in result.out
    assert "partial 'tone' uses undeclared variable 'mood'" in result.out
    assert "the partials were pushed, no prompt was: errors" in result.err
    assert (await prompt(pg, "welcome")).latest_version == 1
    assert (await prompt(pg, "plain")).latest_version == 1
    assert await missing(pg, "fresh")
    assert len(await partial_versions(pg.prompts, "tone")) == 2


async def test_a_partial_description_differs_only_as_a_note(pg: Running, tmp_path: Path) -> None:
    root = repo(tmp_path, {}, {"tone.yaml": TONE})
    assert (await run(pg, "push", root)).code == 0
    repo(root, {}, {"tone.yaml": TONE.replace("House tone", "Our tone")})
    result = await run(pg, "push", root)
    assert result.code == 0, result
    assert "unchanged  partial tone: version 1" in result.out
    assert "note       partial tone: description differs from the server's" in result.out
    assert "up to date: nothing to push" in result.out


# Pull


async def test_pull_then_push_is_a_no_op(pg: Running, tmp_path: Path) -> None:
    source = repo(tmp_path / "source", {"welcome": WELCOME, "plain": PLAIN}, PARTIALS)
    assert (await run(pg, "push", source)).code == 0
    pulled = tmp_path / "pulled"
    result = await run(pg, "pull", pulled)
    assert result.code == 0, result
    assert "pulled  partial tone version 1" in result.out
    assert sorted(p.name for p in (pulled / "partials").iterdir()) == [
        "signature.yaml",
        "team.yaml",
        "tone.yaml",
    ]
    assert (pulled / "partials" / "tone.yaml").read_text() == (
        "name: tone\ndescription: House tone\nversion_description: first tone\n"
        "content: |\n  Answer kindly.\n  Keep it short.\n"
    )
    assert (pulled / "partials" / "signature.yaml").read_text() == (
        "name: signature\ncontent: -- {% include 'team' %}\n"
    )
    again = await run(pg, "push", pulled)
    assert again.code == 0, again
    assert "up to date: nothing to push" in again.out
    assert "note" not in again.out
    assert len(await partial_versions(pg.prompts, "tone")) == 1
    # Pulling into the pushed folder keeps its .jinja file (the content alone).
    assert (await run(pg, "pull", source)).code == 0
    assert sorted(p.name for p in (source / "partials").iterdir()) == [
        "signature.jinja",
        "team.yaml",
        "tone.yaml",
    ]
    assert (source / "partials" / "signature.jinja").read_text() == SIGNATURE
    assert (source / "partials" / "tone.yaml").read_text() == (
        pulled / "partials" / "tone.yaml"
    ).read_text()
    assert "up to date: nothing to push" in (await run(pg, "push", source)).out


async def test_pull_of_named_prompts_writes_the_partials_they_include(
    pg: Running, tmp_path: Path
) -> None:
    source = repo(
        tmp_path / "source",
        {"welcome": WELCOME, "plain": PLAIN},
        {**PARTIALS, "unused.yaml": "content: Not included.\n"},
    )
    assert (await run(pg, "push", source)).code == 0
    pulled = tmp_path / "pulled"
    assert (await run(pg, "pull", pulled, "--prompt", "welcome")).code == 0
    assert sorted(p.name for p in (pulled / "partials").iterdir()) == [
        "signature.yaml",
        "team.yaml",
        "tone.yaml",
    ]
    assert (await run(pg, "pull", tmp_path / "plain", "--prompt", "plain")).code == 0
    assert not (tmp_path / "plain" / "partials").exists()
    # An archived partial a pulled version pinned is not written (and said so).
    await pg.prompts.ArchivePartial(ppb.ArchivePartialRequest(partial="tone"))
    result = await run(pg, "pull", tmp_path / "archived", "--prompt", "welcome")
    assert result.code == 0, result
    assert "skipped partial tone: archived" in result.out
    assert sorted(p.name for p in (tmp_path / "archived" / "partials").iterdir()) == [
        "signature.yaml",
        "team.yaml",
    ]


async def test_a_pulled_folder_recreates_everything_in_another_workspace(
    pg: Running, tmp_path: Path
) -> None:
    source = repo(tmp_path / "source", {"welcome": WELCOME, "plain": PLAIN}, PARTIALS)
    assert (await run(pg, "push", source)).code == 0
    repo(source, {}, {"team.yaml": "content: The support team\n"})
    assert (await run(pg, "push", source)).code == 0
    pulled = tmp_path / "pulled"
    assert (await run(pg, "pull", pulled)).code == 0

    assert await pg.server.keys.ensure_workspace("other")
    issued = await pg.server.keys.create(
        "other", name="other", scopes=[Scope.ADMIN], plan="unlimited"
    )
    result = await run(pg, "push", pulled, "--api-key", issued.secret)
    assert result.code == 0, result
    assert "create     partial team: new partial, version 1" in result.out
    async with authed_channel(pg.address, issued.secret) as channel:
        other = prompt_service_pb2_grpc.PromptServiceStub(channel)
        for name in ("welcome", "plain"):
            assert await rendered(other, name) == await rendered(pg.prompts, name)
        assert (await rendered(other, "welcome"))[1] == "Welcome Ada.\n-- The support team\n"
        assert await partial_versions(other, "team") == ["The support team"]
    # And the pulled folder is up to date there too.
    again = await run(pg, "push", pulled, "--api-key", issued.secret)
    assert "up to date: nothing to push" in again.out, again


# Errors


BAD_PARTIALS = {
    # kind: (files in partials/, the file named, words of the error)
    "yaml syntax": ({"tone.yaml": "content: [x\n"}, "tone.yaml", "invalid YAML: line"),
    "unknown key": ({"tone.yaml": TONE + "template: x\n"}, "tone.yaml", "template: unknown key"),
    "no content": ({"tone.yaml": "description: x\n"}, "tone.yaml", "content: missing"),
    "empty content": ({"tone.yaml": 'content: ""\n'}, "tone.yaml", "content: empty"),
    "content not text": ({"tone.yaml": "content: 3\n"}, "tone.yaml", "content: expected a string"),
    "name differs": (
        {"tone.yaml": "name: voice\n" + TONE},
        "tone.yaml",
        "name: 'voice' differs from the file name 'tone'",
    ),
    "key twice": ({"tone.yaml": TONE + "content: x\n"}, "tone.yaml", "found the key 'content'"),
    "not a mapping": ({"tone.yaml": "- a\n"}, "tone.yaml", "expected a mapping"),
    "empty jinja": ({"tone.jinja": "\n"}, "tone.jinja", "the file is empty"),
    "two files": (
        {"tone.yaml": TONE, "tone.jinja": "Hi"},
        "tone.yaml",
        "partial 'tone' is also in",
    ),
    "bad name": ({"-tone.yaml": TONE}, "-tone.yaml", "not a partial name"),
    "nested": ({"sub/tone.yaml": TONE}, "sub/tone.yaml", "nested folders are not supported"),
}


@pytest.mark.parametrize("kind", list(BAD_PARTIALS))
async def test_a_bad_partial_file_is_named_and_nothing_is_written(
    pg: Running, tmp_path: Path, kind: str
) -> None:
    files, named, words = BAD_PARTIALS[kind]
    root = repo(tmp_path, {"plain": PLAIN}, {})
    for name, text in files.items():
        (root / "partials" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "partials" / name).write_text(text)
    for extra in ([], ["--dry-run"]):
        result = await run(pg, "push", root, *extra)
        assert result.code == 2, result
        assert f"{root / 'partials' / named}: " in result.err
        assert words in result.err, result.err
        assert "nothing was pushed" in result.err
    assert await missing(pg, "plain")


async def test_an_unknown_partial_is_an_error_in_the_plan(pg: Running, tmp_path: Path) -> None:
    welcome = WELCOME.replace("{% include 'signature' %}", "{% include 'signatur' %}")
    root = repo(tmp_path, {"welcome": welcome, "plain": PLAIN}, PARTIALS)
    for extra in (["--dry-run"], []):
        result = await run(pg, "push", root, *extra)
        assert result.code == 1, result
        assert (
            f"error      welcome ({root / 'prompts' / 'welcome.yaml'}): INVALID_ARGUMENT "
            f"[PARTIAL_NOT_FOUND]: includes partial 'signatur', which is neither on the "
            f"server nor in {root / 'partials'}/" in result.out
        )
        assert "includes unknown partial 'signatur'" in result.out  # the server's violation
    assert await missing(pg, "plain")
    assert (await pg.prompts.ListPartials(ppb.ListPartialsRequest())).partials == []
    # An existing prompt's edit is checked the same way.
    repo(root, {"welcome": WELCOME}, {})
    assert (await run(pg, "push", root)).code == 0
    repo(root, {"welcome": welcome}, {})
    result = await run(pg, "push", root, "--dry-run")
    assert result.code == 1, result
    assert "includes partial 'signatur', which is neither on the server nor in" in result.out


async def test_partial_files_are_checked_before_anything_is_written(
    pg: Running, tmp_path: Path
) -> None:
    for name in ("old", "gone"):
        await pg.prompts.CreatePartial(ppb.CreatePartialRequest(name=name, content="Old."))
        await pg.prompts.ArchivePartial(ppb.ArchivePartialRequest(partial=name))
    root = repo(
        tmp_path,
        {"plain": PLAIN},
        {
            "a.yaml": "content: \"{% include 'b' %}\"\n",
            "b.yaml": "content: \"{# {% include 'x' %} #}{% include 'a' %}\"\n",
            "c.jinja": "{% include 'nowhere' %} {% raw %}{% include 'y' %}{% endraw %}",
            "d.jinja": "{% include 'gone' %}",
            "old.yaml": "content: New.\n",
        },
    )
    for extra in (["--dry-run"], []):
        result = await run(pg, "push", root, *extra)
        assert result.code == 1, result
        partials = root / "partials"
        assert (
            f"error      partial a ({partials / 'a.yaml'}): content: includes itself (a -> b -> a)"
            in result.out
        )
        assert "includes itself (b -> a -> b)" in result.out
        assert (
            f"error      partial c ({partials / 'c.jinja'}): content: includes partial "
            f"'nowhere', which is neither on the server nor in {partials}/" in result.out
        )
        assert "'x'" not in result.out and "'y'" not in result.out  # a comment, a raw block
        assert (
            f"error      partial d ({partials / 'd.jinja'}): content: includes partial 'gone', "
            "which is archived on the server" in result.out
        )
        assert (
            f"error      partial old ({partials / 'old.yaml'}): the partial is archived on the "
            "server: unarchive it (UnarchivePartial) or remove the file" in result.out
        )
        assert "partials: 0 to create, 0 new versions, 0 up to date, 5 errors" in result.out
    assert await partial_versions(pg.prompts, "old") == ["Old."]
    assert await missing(pg, "plain")
