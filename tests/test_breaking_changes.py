"""The breaking-change check of release tag moves, through real gRPC calls.

A tag may not move to a version whose input variables break the callers of
the version it serves (a variable removed, a type changed, a variable newly
required) unless the request allows it; CreatePromptVersion reports
compatibility with production; validate_only checks and writes nothing.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running, error_details

STRING, NUMBER, CHAT = pb.INPUT_TYPE_STRING, pb.INPUT_TYPE_NUMBER, pb.INPUT_TYPE_CHAT_HISTORY
REMOVED = ppb.BREAKING_CHANGE_TYPE_VARIABLE_REMOVED
TYPE_CHANGED = ppb.BREAKING_CHANGE_TYPE_VARIABLE_TYPE_CHANGED
NOW_REQUIRED = ppb.BREAKING_CHANGE_TYPE_VARIABLE_NOW_REQUIRED

Var = tuple[str, int] | tuple[str, int, Any]


def variable(name: str, kind: int, *default: Any) -> pb.InputVariable:
    declared = pb.InputVariable(name=name, type=kind)  # type: ignore[arg-type]
    if default:
        declared.default_value.CopyFrom(json_format.ParseDict(default[0], struct_pb2.Value()))
    return declared


def version(*variables: Var, history: str = "") -> ppb.PromptVersion:
    """A version that uses every declared variable (chat history in its own block)."""
    declared = [variable(*v) for v in variables]
    used = " ".join(f"{{{{ {v.name} }}}}" for v in declared if v.type != CHAT)
    messages = [pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template=f"Say: {used}")]
    if history:
        messages.insert(0, pb.PromptTemplateMessage(chat_history_input=history))
    return ppb.PromptVersion(model="mock-1", messages=messages, input_variables=declared)


async def prompt_at(pg: Running, name: str, first: ppb.PromptVersion, *tags: str) -> None:
    """A prompt whose version 1 is ``first``, with ``tags`` pointing at it."""
    await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name=name))
    await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(prompt=name, version=first, release_tags=list(tags))
    )


async def add(pg: Running, name: str, next_version: ppb.PromptVersion, **fields: Any) -> Any:
    return await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(prompt=name, version=next_version, **fields)
    )


async def tags(pg: Running, name: str) -> dict[str, int]:
    response = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt=name))
    return {t.tag: t.version for t in response.release_tags}


async def history_length(pg: Running, name: str) -> int:
    request = ppb.ListReleaseTagHistoryRequest(prompt=name, page_size=1000)
    return len((await pg.prompts.ListReleaseTagHistory(request)).events)


async def audited(pg: Running, name: str) -> int:
    """How many audit log entries prompt ``name`` has."""
    request = apb.ListAuditEventsRequest(page_size=200, resource=f"prompts/{name}")
    response = await apb_grpc.AdminServiceStub(pg.channel).ListAuditEvents(request)
    assert not response.next_page_token
    return len(response.audit_events)


def preconditions(err: grpc.aio.AioRpcError) -> list[tuple[str, str, str]]:
    """The (type, subject, description) of each PreconditionFailure violation."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    found: list[tuple[str, str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            found.extend((v.type, v.subject, v.description) for v in failure.violations)
    return found


async def refused(call: Any) -> list[tuple[str, str, str]]:
    """Await ``call``: FAILED_PRECONDITION (BREAKING_CHANGE); its violations."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    info, _ = error_details(err)
    assert info.reason == "BREAKING_CHANGE"
    assert "allow_breaking_changes" in (err.details() or "")
    return preconditions(err)


# Each kind of breaking change: (version 1's variables, version 2's, the change).
BREAKING = {
    "variable removed": (
        [("q", STRING), ("topic", STRING)],
        [("q", STRING)],
        ("VARIABLE_REMOVED", "topic", "is removed"),
    ),
    "type changed": (
        [("q", STRING), ("n", STRING)],
        [("q", STRING), ("n", NUMBER)],
        ("VARIABLE_TYPE_CHANGED", "n", "from STRING to NUMBER"),
    ),
    "new required variable": (
        [("q", STRING)],
        [("q", STRING), ("lang", STRING)],
        ("VARIABLE_NOW_REQUIRED", "lang", "new variable 'lang' has no default"),
    ),
    "default removed": (
        [("q", STRING), ("tone", STRING, "calm")],
        [("q", STRING), ("tone", STRING)],
        ("VARIABLE_NOW_REQUIRED", "tone", "loses its default"),
    ),
}


@pytest.mark.parametrize("kind", list(BREAKING))
async def test_set_release_tag_refuses_each_breaking_change_unless_allowed(
    pg: Running, kind: str
) -> None:
    before, after, (change, subject, words) = BREAKING[kind]
    await prompt_at(pg, "p", version(*before), "production")
    await add(pg, "p", version(*after))
    moves, entries = await history_length(pg, "p"), await audited(pg, "p")
    move = ppb.SetReleaseTagRequest(prompt="p", tag="production", version=2)
    violations = await refused(pg.prompts.SetReleaseTag(move))
    assert len(violations) == 1, violations
    assert violations[0][:2] == (change, subject)
    assert words in violations[0][2] and "'production'" in violations[0][2]
    assert (await tags(pg, "p"))["production"] == 1
    assert await history_length(pg, "p") == moves
    assert entries > 0 and await audited(pg, "p") == entries, "a refused move has no entry"
    # A new tag has no callers to break; allowed, the move happens.
    staged = await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="p", tag="new", version=2)
    )
    assert staged.release_tag.version == 2
    move.allow_breaking_changes = True
    moved = await pg.prompts.SetReleaseTag(move)
    assert moved.release_tag.version == 2
    assert (await tags(pg, "p"))["production"] == 2


@pytest.mark.parametrize("kind", list(BREAKING))
async def test_create_version_with_release_tags_refuses_each_breaking_change_unless_allowed(
    pg: Running, kind: str
) -> None:
    before, after, (change, subject, _) = BREAKING[kind]
    await prompt_at(pg, "p", version(*before), "production", "staging")
    violations = await refused(
        add(pg, "p", version(*after), release_tags=["staging", "production"])
    )
    # One violation per change per tag, each naming its tag.
    assert sorted((t, s) for t, s, _ in violations) == [(change, subject)] * 2
    assert {d.split(":")[0] for _, _, d in violations} == {
        "release tag 'staging' to version 2",
        "release tag 'production' to version 2",
    }
    got = await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="p"))
    assert got.prompt.latest_version == 1, "a refused version is not created"
    created = await add(
        pg, "p", version(*after), release_tags=["production"], allow_breaking_changes=True
    )
    assert created.version.version == 2
    assert (await tags(pg, "p")) == {"production": 2, "staging": 1, "latest": 2}


async def test_one_violation_per_change(pg: Running) -> None:
    await prompt_at(
        pg, "p", version(("a", STRING), ("b", STRING), ("c", STRING, "x")), "production"
    )
    await add(pg, "p", version(("b", NUMBER), ("c", STRING), ("d", STRING)))
    violations = await refused(
        pg.prompts.SetReleaseTag(ppb.SetReleaseTagRequest(prompt="p", tag="production", version=2))
    )
    assert sorted((t, s) for t, s, _ in violations) == [
        ("VARIABLE_NOW_REQUIRED", "c"),
        ("VARIABLE_NOW_REQUIRED", "d"),
        ("VARIABLE_REMOVED", "a"),
        ("VARIABLE_TYPE_CHANGED", "b"),
    ]


async def test_chat_history_variables_count(pg: Running) -> None:
    await prompt_at(pg, "p", version(("q", STRING), ("h", CHAT), history="h"), "production")
    await add(pg, "p", version(("q", STRING)))
    await add(pg, "p", version(("q", STRING), ("h", STRING)))
    for number, change in ((2, "VARIABLE_REMOVED"), (3, "VARIABLE_TYPE_CHANGED")):
        request = ppb.SetReleaseTagRequest(prompt="p", tag="production", version=number)
        violations = await refused(pg.prompts.SetReleaseTag(request))
        assert [(t, s) for t, s, _ in violations] == [(change, "h")]


@pytest.mark.parametrize(
    "after",
    [
        [("q", STRING), ("tone", STRING, "calm")],  # a new variable with a default
        [("q", STRING, "hello")],  # a default added
        [("q", STRING), ("extra", NUMBER, 3), ("flag", pb.INPUT_TYPE_BOOLEAN, False)],
    ],
    ids=["optional variable added", "default added", "several optional variables"],
)
async def test_compatible_changes_move_the_tag(pg: Running, after: list[Var]) -> None:
    await prompt_at(pg, "p", version(("q", STRING)), "production")
    created = await add(pg, "p", version(*after), release_tags=["production"])
    assert created.version.version == 2
    assert created.compatibility.compatible
    assert list(created.compatibility.versions) == [1]
    assert (await tags(pg, "p"))["production"] == 2


async def test_default_change_and_template_change_are_compatible(pg: Running) -> None:
    await prompt_at(pg, "p", version(("q", STRING), ("tone", STRING, "calm")), "production")
    changed = version(("q", STRING), ("tone", STRING, "stern"))
    changed.messages[0].template = "Reply {{ tone }}ly to: {{ q }}"
    await add(pg, "p", changed)
    moved = await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="p", tag="production", version=2)
    )
    assert moved.release_tag.version == 2


async def test_create_version_reports_compatibility_with_production(pg: Running) -> None:
    await prompt_at(pg, "p", version(("q", STRING), ("topic", STRING)), "production")
    await add(pg, "p", version(("q", STRING), ("topic", STRING)), release_tags=["staging"])
    # production still serves version 1; the report is against it.
    created = await add(pg, "p", version(("q", NUMBER)))
    report = created.compatibility
    assert created.HasField("compatibility")
    assert (report.release_tag, list(report.versions), report.compatible) == (
        "production",
        [1],
        False,
    )
    assert sorted((c.type, c.variable, c.version) for c in report.breaking_changes) == [
        (REMOVED, "topic", 1),
        (TYPE_CHANGED, "q", 1),
    ]
    assert all(c.description for c in report.breaking_changes)
    # Moving production with the new version: the report is against what it
    # served before the call.
    moved = await add(
        pg, "p", version(("q", NUMBER)), release_tags=["production"], allow_breaking_changes=True
    )
    assert list(moved.compatibility.versions) == [1]
    assert not moved.compatibility.compatible
    # Now production serves version 4: the same variables are compatible.
    again = await add(pg, "p", version(("q", NUMBER)))
    assert list(again.compatibility.versions) == [4] and again.compatibility.compatible
    assert len(again.compatibility.breaking_changes) == 0


async def test_no_report_without_production(pg: Running) -> None:
    await prompt_at(pg, "p", version(("q", STRING)), "staging")
    created = await add(pg, "p", version(("x", STRING)))
    assert not created.HasField("compatibility")


async def test_create_version_validate_only_writes_nothing(pg: Running) -> None:
    await prompt_at(pg, "p", version(("q", STRING), ("topic", STRING)), "production")
    history, entries = await history_length(pg, "p"), await audited(pg, "p")
    candidate = version(("q", STRING), ("tone", STRING, "calm"))
    candidate.description = "adds a tone"
    checked = await add(pg, "p", candidate, validate_only=True)
    would_be = checked.version
    assert would_be.version == 2 and not would_be.id and not would_be.HasField("create_time")
    assert would_be.prompt_id and would_be.description == "adds a tone"
    assert [v.name for v in would_be.input_variables] == ["q", "tone"]
    assert [(c.type, c.variable) for c in checked.compatibility.breaking_changes] == [
        (REMOVED, "topic")
    ]
    # validate_only with a breaking tag move is refused like the real call.
    await refused(add(pg, "p", candidate, validate_only=True, release_tags=["production"]))
    allowed = await add(
        pg,
        "p",
        candidate,
        validate_only=True,
        release_tags=["production"],
        allow_breaking_changes=True,
    )
    assert allowed.version.version == 2
    # Invalid content is refused as by the real call.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await add(pg, "p", ppb.PromptVersion(model="mock-1"), validate_only=True)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    versions = await pg.prompts.ListPromptVersions(ppb.ListPromptVersionsRequest(prompt="p"))
    assert [v.version for v in versions.versions] == [1]
    assert await tags(pg, "p") == {"production": 1, "latest": 1}
    assert await history_length(pg, "p") == history
    assert await audited(pg, "p") == entries
    # The next real version still gets number 2.
    assert (await add(pg, "p", candidate)).version.version == 2


async def test_set_release_tag_validate_only_writes_nothing(pg: Running) -> None:
    await prompt_at(pg, "p", version(("q", STRING)), "production")
    await add(pg, "p", version(("q", STRING), ("lang", STRING)))
    await add(pg, "p", version(("q", STRING), ("lang", STRING, "en")))
    history, entries = await history_length(pg, "p"), await audited(pg, "p")
    request = ppb.SetReleaseTagRequest(prompt="p", tag="production", version=2, validate_only=True)
    violations = await refused(pg.prompts.SetReleaseTag(request))
    assert [(t, s) for t, s, _ in violations] == [("VARIABLE_NOW_REQUIRED", "lang")]
    request.version = 3
    checked = await pg.prompts.SetReleaseTag(request)
    assert (checked.release_tag.tag, checked.release_tag.version) == ("production", 3)
    new_tag = ppb.SetReleaseTagRequest(prompt="p", tag="canary", version=2, validate_only=True)
    assert (await pg.prompts.SetReleaseTag(new_tag)).release_tag.version == 2
    assert await tags(pg, "p") == {"production": 1, "latest": 3}
    assert await history_length(pg, "p") == history
    assert await audited(pg, "p") == entries


async def test_validate_only_checks_content_before_looking_the_prompt_up(pg: Running) -> None:
    """For a prompt that does not exist yet: INVALID_ARGUMENT is bad content,
    NOT_FOUND means the content (and tag names) would do."""
    good = version(("q", STRING))
    bad = version(("q", STRING))
    bad.messages[0].template = "{{ undeclared }}"
    cases = [
        (good, [], grpc.StatusCode.NOT_FOUND),
        (bad, [], grpc.StatusCode.INVALID_ARGUMENT),
        (good, ["latest"], grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for candidate, release_tags, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await add(pg, "not-yet", candidate, validate_only=True, release_tags=release_tags)
        assert caught.value.code() == code, caught.value.details()


async def test_many_breaking_changes_stay_within_the_trailer_budget(pg: Running) -> None:
    many = [(f"variable_with_a_long_name_{i:03d}", STRING) for i in range(120)]
    await prompt_at(pg, "p", version(*many), "production")
    await add(pg, "p", version(("q", STRING)))
    request = ppb.SetReleaseTagRequest(prompt="p", tag="production", version=2)
    violations = await refused(pg.prompts.SetReleaseTag(request))
    assert 1 < len(violations) < 121
    assert violations[-1][0] == "…" and "more violations not shown" in violations[-1][2]
    shown = len(violations) - 1
    assert violations[-1][2].startswith(f"{121 - shown} more")


def split(*pairs: tuple[int, float]) -> list[ppb.VersionWeight]:
    return [ppb.VersionWeight(version=v, weight=w) for v, w in pairs]


async def test_a_split_tag_is_checked_against_each_of_its_versions(pg: Running) -> None:
    await prompt_at(pg, "p", version(("q", STRING)), "production")
    await add(pg, "p", version(("q", STRING), ("extra", STRING, "x")))
    await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="p", tag="production", splits=split((1, 70), (2, 30)))
    )
    # Version 3 drops "extra": fine for callers of version 1, not of version 2.
    await add(pg, "p", version(("q", STRING)))
    request = ppb.SetReleaseTagRequest(prompt="p", tag="production", version=3)
    violations = await refused(pg.prompts.SetReleaseTag(request))
    assert [(t, s) for t, s, _ in violations] == [("VARIABLE_REMOVED", "extra")]
    assert "callers of version 2" in violations[0][2]
    # CreatePromptVersion reports against both versions production serves.
    created = await add(pg, "p", version(("q", STRING)))
    report = created.compatibility
    assert sorted(report.versions) == [1, 2] and not report.compatible
    assert [(c.type, c.variable, c.version) for c in report.breaking_changes] == [
        (REMOVED, "extra", 2)
    ]
    request.allow_breaking_changes = True
    assert (await pg.prompts.SetReleaseTag(request)).release_tag.version == 3


async def test_a_move_to_a_split_checks_each_of_its_versions(pg: Running) -> None:
    await prompt_at(pg, "p", version(("q", STRING)), "production")
    await add(pg, "p", version(("q", STRING), ("tone", STRING, "calm")))  # compatible
    await add(pg, "p", version(("q", STRING), ("lang", STRING)))  # breaking
    request = ppb.SetReleaseTagRequest(
        prompt="p", tag="production", splits=split((1, 50), (2, 25), (3, 25))
    )
    violations = await refused(pg.prompts.SetReleaseTag(request))
    assert [(t, s) for t, s, _ in violations] == [("VARIABLE_NOW_REQUIRED", "lang")]
    assert violations[0][2].startswith("release tag 'production' to version 3:")
    assert (await tags(pg, "p"))["production"] == 1
    fine = ppb.SetReleaseTagRequest(prompt="p", tag="production", splits=split((1, 50), (2, 50)))
    moved = await pg.prompts.SetReleaseTag(fine)
    assert moved.release_tag.HasField("split")
    request.allow_breaking_changes = True
    moved = await pg.prompts.SetReleaseTag(request)
    assert len(moved.release_tag.split.versions) == 3
