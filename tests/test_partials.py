"""Partials through real gRPC: versions, includes, pinning, bounds, workspaces, scopes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from promptgate.api.v1 import admin_service_pb2 as apb
from promptgate.api.v1 import admin_service_pb2_grpc as apb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.api.v1 import prompt_service_pb2_grpc
from promptgate.auth.model import Scope
from promptgate.prompts.partial_sets import MAX_INCLUDE_DEPTH, MAX_PARTIALS
from promptgate.prompts.source_limits import MAX_TEMPLATE_CHARS
from tests.conftest import Running, authed_channel
from tests.hostile.probe import RESPONSIVE_S
from tests.test_prompts import collect_pages, rpc_error, string_var, user, violation

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION

StartServer = Callable[..., Awaitable[Running]]


# Helpers


async def new_partial(
    running: Running, name: str, content: str, **fields: Any
) -> ppb.CreatePartialResponse:
    response: ppb.CreatePartialResponse = await running.prompts.CreatePartial(
        ppb.CreatePartialRequest(name=name, content=content, **fields)
    )
    return response


async def edit_partial(running: Running, name: str, content: str, **fields: Any) -> int:
    response = await running.prompts.CreatePartialVersion(
        ppb.CreatePartialVersionRequest(partial=name, content=content, **fields)
    )
    return int(response.version.version)


def version_body(*templates: str, variables: tuple[str, ...] = ("q",)) -> ppb.PromptVersion:
    return ppb.PromptVersion(
        model="mock-1",
        messages=[user(t) for t in templates],
        input_variables=[string_var(v) for v in variables],
    )


async def new_version(
    running: Running,
    prompt: str,
    *templates: str,
    tags: tuple[str, ...] = (),
    variables: tuple[str, ...] = ("q",),
) -> ppb.PromptVersion:
    response = await running.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(
            prompt=prompt,
            version=version_body(*templates, variables=variables),
            release_tags=list(tags),
        )
    )
    return response.version


async def prompt_with(
    running: Running, name: str, *templates: str, tags: tuple[str, ...] = ("production",)
) -> ppb.PromptVersion:
    await running.prompts.CreatePrompt(ppb.CreatePromptRequest(name=name))
    return await new_version(running, name, *templates, tags=tags)


def q(text: str) -> list[pb.PromptInput]:
    return [pb.PromptInput(name="q", string_value=text)]


async def rendered(running: Running, prompt: str, text: str = "hi", **selector: Any) -> str:
    response = await running.prompts.RenderPrompt(
        ppb.RenderPromptRequest(prompt=prompt, inputs=q(text), **selector)
    )
    return str(response.messages[-1].content)


async def executed(running: Running, prompt: str, text: str = "hi", **selector: Any) -> str:
    response = await running.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt=prompt, inputs=q(text), **selector)
    )
    assert response.state == pb.EXECUTION_STATE_FULFILLED, response.error
    return str(response.outputs[0].string_value)


def render_inline(template: str, text: str = "hi") -> ppb.RenderPromptRequest:
    return ppb.RenderPromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt=template), inputs=q(text)
    )


async def other_workspace(running: Running, *scopes: Scope) -> grpc.aio.Channel:
    assert await running.server.keys.ensure_workspace("other")
    issued = await running.server.keys.create(
        "other", name="other", scopes=list(scopes or [Scope.ADMIN]), plan="unlimited"
    )
    return authed_channel(running.address, issued.secret)


# Partials and their versions


async def test_create_get_and_list_partials_by_name_with_paging(pg: Running) -> None:
    created = await new_partial(
        pg, "tone.formal", "Answer formally.", description="Tone", version_description="first"
    )
    partial, first = created.partial, created.version
    assert partial.id.startswith("prt_") and partial.name == "tone.formal"
    assert (partial.description, partial.latest_version, partial.archived) == ("Tone", 1, False)
    assert partial.create_time.seconds > 0
    assert first.id.startswith("prv_") and first.partial_id == partial.id
    assert (first.partial, first.version, first.content, first.description) == (
        "tone.formal",
        1,
        "Answer formally.",
        "first",
    )
    for ref in (partial.id, "tone.formal"):
        got = (await pg.prompts.GetPartial(ppb.GetPartialRequest(partial=ref))).partial
        assert got == partial

    names = [f"list-{i:02d}" for i in range(7)]
    for name in reversed(names):
        await new_partial(pg, name, f"text of {name}")

    async def page(token: str) -> Any:
        return await pg.prompts.ListPartials(
            ppb.ListPartialsRequest(page_size=3, page_token=token, name_prefix="list-")
        )

    listed, sizes = await collect_pages(page, "partials")
    assert [p.name for p in listed] == names
    assert sizes == [3, 3, 1]
    everything = await pg.prompts.ListPartials(ppb.ListPartialsRequest())
    assert [p.name for p in everything.partials] == [*names, "tone.formal"]


async def test_partial_names_are_unique_and_checked(pg: Running) -> None:
    await new_partial(pg, "dup", "one")
    info, _ = await rpc_error(
        pg.prompts.CreatePartial(ppb.CreatePartialRequest(name="dup", content="two")),
        grpc.StatusCode.ALREADY_EXISTS,
        "PARTIAL_ALREADY_EXISTS",
    )
    assert info.metadata["partial"] == "dup"
    kept = await pg.prompts.GetPartialVersion(ppb.GetPartialVersionRequest(partial="dup"))
    assert kept.version.content == "one"
    for bad in ("", "has space", "-dash", "x" * 129, "slash/name"):
        _, details = await rpc_error(
            pg.prompts.CreatePartial(ppb.CreatePartialRequest(name=bad, content="x")),
            INVALID,
            "INVALID_PARTIAL_NAME",
        )
        violation(details, "name")
    _, details = await rpc_error(
        pg.prompts.CreatePartial(ppb.CreatePartialRequest(name="empty", content="")),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "content")
    _, details = await rpc_error(
        pg.prompts.CreatePartial(ppb.CreatePartialRequest(name="nul", content="a\x00b")),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "content", "NUL")
    await rpc_error(
        pg.prompts.GetPartial(ppb.GetPartialRequest(partial="missing")),
        NOT_FOUND,
        "PARTIAL_NOT_FOUND",
    )


async def test_versions_are_numbered_readable_and_listed_newest_first(pg: Running) -> None:
    await new_partial(pg, "sig", "v1")
    for n in range(2, 6):
        assert await edit_partial(pg, "sig", f"v{n}", description=f"change {n}") == n
    latest = await pg.prompts.GetPartialVersion(ppb.GetPartialVersionRequest(partial="sig"))
    assert (latest.version.version, latest.version.content) == (5, "v5")
    third = await pg.prompts.GetPartialVersion(
        ppb.GetPartialVersionRequest(partial="sig", version=3)
    )
    assert (third.version.content, third.version.description) == ("v3", "change 3")
    partial = (await pg.prompts.GetPartial(ppb.GetPartialRequest(partial="sig"))).partial
    assert partial.latest_version == 5

    async def page(token: str) -> Any:
        return await pg.prompts.ListPartialVersions(
            ppb.ListPartialVersionsRequest(partial=partial.id, page_size=2, page_token=token)
        )

    versions, sizes = await collect_pages(page, "versions")
    assert [v.version for v in versions] == [5, 4, 3, 2, 1]
    assert sizes == [2, 2, 1]
    await rpc_error(
        pg.prompts.GetPartialVersion(ppb.GetPartialVersionRequest(partial="sig", version=6)),
        NOT_FOUND,
        "PARTIAL_VERSION_NOT_FOUND",
    )
    await rpc_error(
        pg.prompts.CreatePartialVersion(
            ppb.CreatePartialVersionRequest(partial="nope", content="x")
        ),
        NOT_FOUND,
        "PARTIAL_NOT_FOUND",
    )
    # A bad template is refused and takes no number.
    _, details = await rpc_error(
        pg.prompts.CreatePartialVersion(
            ppb.CreatePartialVersionRequest(partial="sig", content="{% if %}")
        ),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "content", "syntax")
    assert await edit_partial(pg, "sig", "v6") == 6


async def test_concurrent_partial_versions_get_distinct_numbers(pg: Running) -> None:
    await new_partial(pg, "busy", "v1")
    numbers = await asyncio.gather(*(edit_partial(pg, "busy", f"c{i}") for i in range(8)))
    assert sorted(numbers) == list(range(2, 10))


# Including partials


async def test_render_and_execute_show_the_expanded_partial(pg: Running) -> None:
    await new_partial(pg, "tone", "Be brief.")
    version = await prompt_with(pg, "brief", '{% include "tone" %} Q: {{ q }}')
    assert dict(version.partials) == {"tone": 1}
    # Pins are output only: what a caller sends is ignored.
    body = version_body('{% include "tone" %} {{ q }}')
    body.partials.update({"tone": 7, "bogus": 1})
    sent = await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(prompt="brief", version=body)
    )
    assert dict(sent.version.partials) == {"tone": 1}
    read = await pg.prompts.GetPromptVersion(ppb.GetPromptVersionRequest(prompt="brief", version=1))
    assert dict(read.version.partials) == {"tone": 1}
    response = await pg.prompts.RenderPrompt(
        ppb.RenderPromptRequest(prompt="brief", inputs=q("why?"))
    )
    assert response.messages[0].content == "Be brief. Q: why?"
    assert dict(response.partials) == {"tone": 1}
    assert response.provider_payload["messages"][0]["content"] == "Be brief. Q: why?"
    assert await executed(pg, "brief", "why?") == "Mock reply to: Be brief. Q: why?"


async def test_a_partial_edited_after_release_does_not_change_the_released_prompt(
    start_server: StartServer,
) -> None:
    # No resolution cache: every call reads the version (and its pins) afresh.
    pg = await start_server(resolve_cache_ttl_s=0)
    await new_partial(pg, "policy", "Refunds within 30 days.")
    template = '{% include "policy" %} {{ q }}'
    released = await prompt_with(pg, "support", template)
    assert await rendered(pg, "support") == "Refunds within 30 days. hi"
    assert await executed(pg, "support") == "Mock reply to: Refunds within 30 days. hi"

    assert await edit_partial(pg, "policy", "Refunds within 14 days.") == 2
    # The released version renders and runs exactly as before.
    assert await rendered(pg, "support") == "Refunds within 30 days. hi"
    assert await executed(pg, "support") == "Mock reply to: Refunds within 30 days. hi"
    assert await rendered(pg, "support", version=1) == "Refunds within 30 days. hi"
    read = await pg.prompts.GetPromptVersion(
        ppb.GetPromptVersionRequest(prompt="support", release_tag="production")
    )
    assert (read.version.id, dict(read.version.partials)) == (released.id, {"policy": 1})

    # A new version of the prompt, with the very same template, picks up version 2,
    # while the released one keeps version 1 in the same process.
    second = await new_version(pg, "support", template, tags=("staging",))
    assert dict(second.partials) == {"policy": 2}
    assert await rendered(pg, "support", release_tag="staging") == "Refunds within 14 days. hi"
    assert (
        await executed(pg, "support", release_tag="staging")
        == "Mock reply to: Refunds within 14 days. hi"
    )
    assert await rendered(pg, "support") == "Refunds within 30 days. hi"
    assert await executed(pg, "support") == "Mock reply to: Refunds within 30 days. hi"


async def test_nested_partials_are_pinned_at_every_level(start_server: StartServer) -> None:
    pg = await start_server(resolve_cache_ttl_s=0)
    await new_partial(pg, "leaf", "[leaf v1]")
    await new_partial(pg, "middle", '<{% include "leaf" %}>')
    top = await new_partial(pg, "top", '{% include "middle" %}{% include "leaf" %}')
    assert list(top.version.includes) == ["leaf", "middle"]
    version = await prompt_with(pg, "nested", '{% include "top" %} {{ q }}')
    assert dict(version.partials) == {"top": 1, "middle": 1, "leaf": 1}
    assert await rendered(pg, "nested") == "<[leaf v1]>[leaf v1] hi"

    await edit_partial(pg, "leaf", "[leaf v2]")
    assert await rendered(pg, "nested") == "<[leaf v1]>[leaf v1] hi"
    newer = await new_version(pg, "nested", '{% include "top" %} {{ q }}')
    assert dict(newer.partials) == {"top": 1, "middle": 1, "leaf": 2}
    assert await rendered(pg, "nested", version=2) == "<[leaf v2]>[leaf v2] hi"


async def test_each_version_of_an_ab_split_renders_with_its_own_partials(
    start_server: StartServer,
) -> None:
    pg = await start_server(resolve_cache_ttl_s=0)
    await new_partial(pg, "offer", "Offer A.")
    template = '{% include "offer" %} {{ q }}'
    await prompt_with(pg, "promo", template, tags=())
    await edit_partial(pg, "offer", "Offer B.")
    await new_version(pg, "promo", template)
    await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(
            prompt="promo",
            tag="production",
            splits=[ppb.VersionWeight(version=1, weight=1), ppb.VersionWeight(version=2, weight=1)],
        )
    )
    seen: dict[int, set[str]] = {1: set(), 2: set()}
    for i in range(64):
        response = await pg.prompts.RenderPrompt(
            ppb.RenderPromptRequest(prompt="promo", inputs=q("hi"), split_key=f"user-{i}")
        )
        seen[response.prompt_version].add(response.messages[0].content)
        assert dict(response.partials) == {"offer": response.prompt_version}
    assert seen == {1: {"Offer A. hi"}, 2: {"Offer B. hi"}}


async def test_inline_prompts_include_the_latest_partial_versions(pg: Running) -> None:
    await new_partial(pg, "greeting", "Hello")
    request = render_inline('{% include "greeting" %}, {{ q }}!', "Ada")
    first = await pg.prompts.RenderPrompt(request)
    assert (first.messages[0].content, dict(first.partials)) == ("Hello, Ada!", {"greeting": 1})
    await edit_partial(pg, "greeting", "Good morning")
    second = await pg.prompts.RenderPrompt(request)
    assert (second.messages[0].content, dict(second.partials)) == (
        "Good morning, Ada!",
        {"greeting": 2},
    )
    response = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(inline_prompt=request.inline_prompt, inputs=request.inputs)
    )
    assert response.outputs[0].string_value == "Mock reply to: Good morning, Ada!"


async def test_an_unknown_partial_is_invalid_argument_naming_it(pg: Running) -> None:
    await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="broken"))
    await new_partial(pg, "known", "ok")
    info, details = await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="broken",
                version=version_body(
                    '{% include "known" %}{{ q }}', '{% include "nowhere" %}{% include "gone" %}'
                ),
            )
        ),
        INVALID,
        "PARTIAL_NOT_FOUND",
    )
    violation(details, "version.messages[1].template", "'nowhere'")
    violation(details, "version.messages[1].template", "'gone'")
    assert info.metadata["partial"] == "gone, nowhere"
    assert len(details.field_violations) == 2  # type: ignore[union-attr]
    got = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="broken"))).prompt
    assert got.latest_version == 0
    # A partial cannot include an unknown partial either, nor can an inline prompt.
    _, details = await rpc_error(
        pg.prompts.CreatePartial(
            ppb.CreatePartialRequest(name="needs", content='{% include "nowhere" %}')
        ),
        INVALID,
        "PARTIAL_NOT_FOUND",
    )
    violation(details, "content", "'nowhere'")
    _, details = await rpc_error(
        pg.prompts.RenderPrompt(render_inline('{% include "nowhere" %}')),
        INVALID,
        "PARTIAL_NOT_FOUND",
    )
    violation(details, "inline_prompt.messages[0].template", "'nowhere'")


async def test_only_includes_by_constant_name_are_accepted(pg: Running) -> None:
    await new_partial(pg, "lib", "{% macro m() %}x{% endmacro %}")
    for template in (
        "{% include q %}",
        '{% include ["lib"] %}',
        '{% import "lib" as lib %}{{ lib.m() }}',
        '{% from "lib" import m %}{{ m() }}',
        '{% extends "lib" %}',
    ):
        _, details = await rpc_error(
            pg.prompts.RenderPrompt(render_inline(template)), INVALID, "INVALID_PROMPT"
        )
        violation(details, "inline_prompt.messages[0].template")


async def test_variables_a_partial_uses_must_be_declared_or_set(pg: Running) -> None:
    await new_partial(pg, "customer", "Customer: {{ customer }}.")
    await new_partial(pg, "row", "- {{ item }}\n")
    await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="vars"))
    _, details = await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="vars", version=version_body('{% include "customer" %} {{ q }}')
            )
        ),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "version.messages[0].template", "'customer'")
    await new_version(
        pg, "vars", '{% include "customer" %} {{ q }}', variables=("q", "customer"), tags=("a",)
    )
    response = await pg.prompts.RenderPrompt(
        ppb.RenderPromptRequest(
            prompt="vars",
            release_tag="a",
            inputs=[*q("hi"), pb.PromptInput(name="customer", string_value="Ada")],
        )
    )
    assert response.messages[0].content == "Customer: Ada. hi"
    # A variable the including template sets (a loop target here) needs no declaration.
    await new_version(
        pg,
        "vars",
        '{% for item in q.split(",") %}{% include "row" %}{% endfor %}',
        tags=("b",),
    )
    assert await rendered(pg, "vars", "x,y", release_tag="b") == "- x\n- y\n"


# Cycles and bounds


async def test_include_cycles_are_refused(pg: Running) -> None:
    _, details = await rpc_error(
        pg.prompts.CreatePartial(
            ppb.CreatePartialRequest(name="self", content='{% include "self" %}')
        ),
        INVALID,
        "PARTIAL_CYCLE",
    )
    violation(details, "content", "itself")
    await new_partial(pg, "a", "a")
    await new_partial(pg, "b", '{% include "a" %}')
    await new_partial(pg, "c", '{% include "b" %}')
    info, details = await rpc_error(
        pg.prompts.CreatePartialVersion(
            ppb.CreatePartialVersionRequest(partial="a", content='A{% include "c" %}')
        ),
        INVALID,
        "PARTIAL_CYCLE",
    )
    assert info.metadata["cycle"] == "a -> c -> b -> a"
    violation(details, "content", "cycle")
    latest = await pg.prompts.GetPartialVersion(ppb.GetPartialVersionRequest(partial="a"))
    assert (latest.version.version, latest.version.content) == (1, "a")
    # A diamond is no cycle.
    await new_partial(pg, "d", '{% include "b" %}{% include "a" %}')
    assert await edit_partial(pg, "a", "A") == 2


async def test_include_depth_is_bounded(pg: Running) -> None:
    await new_partial(pg, "level-1", "1")
    for level in range(2, MAX_INCLUDE_DEPTH + 1):
        await new_partial(pg, f"level-{level}", f'{{% include "level-{level - 1}" %}}{level}')
    deepest = f"level-{MAX_INCLUDE_DEPTH}"
    released = await prompt_with(pg, "deep", f'{{% include "{deepest}" %}} {{{{ q }}}}')
    expected = "".join(str(n) for n in range(1, MAX_INCLUDE_DEPTH + 1)) + " hi"
    assert await rendered(pg, "deep") == expected
    assert len(released.partials) == MAX_INCLUDE_DEPTH
    # One level more is refused when the partial is made...
    _, details = await rpc_error(
        pg.prompts.CreatePartial(
            ppb.CreatePartialRequest(name="too-deep", content=f'{{% include "{deepest}" %}}')
        ),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "content", f"limit of {MAX_INCLUDE_DEPTH}")
    # ...and when a chain grows from below, by the next prompt version that includes it.
    await new_partial(pg, "level-0", "0")
    await edit_partial(pg, "level-1", '{% include "level-0" %}1')
    _, details = await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="deep", version=version_body(f'{{% include "{deepest}" %}} {{{{ q }}}}')
            )
        ),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "version.messages[0].template", f"nested {MAX_INCLUDE_DEPTH + 1} deep")
    assert await rendered(pg, "deep") == expected  # the released version keeps its set


async def test_the_number_and_size_of_included_partials_are_bounded(pg: Running) -> None:
    names = [f"many-{i:02d}" for i in range(MAX_PARTIALS + 1)]
    for name in names:
        await new_partial(pg, name, name)
    allowed = "".join(f'{{% include "{n}" %}}' for n in names[:MAX_PARTIALS])
    version = await prompt_with(pg, "many", allowed + "{{ q }}")
    assert len(version.partials) == MAX_PARTIALS
    _, details = await rpc_error(
        pg.prompts.RenderPrompt(render_inline(allowed + f'{{% include "{names[-1]}" %}}')),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "inline_prompt.messages[0].template", f"limit of {MAX_PARTIALS}")

    # A partial is a template: the template size limit holds for it, and for all
    # the partials one prompt includes together.
    _, details = await rpc_error(
        pg.prompts.CreatePartial(
            ppb.CreatePartialRequest(name="huge", content="x" * (MAX_TEMPLATE_CHARS + 1))
        ),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "content", "size")
    half = MAX_TEMPLATE_CHARS // 2 + 1
    await new_partial(pg, "half-1", "y" * half)
    await new_partial(pg, "half-2", "z" * half)
    _, details = await rpc_error(
        pg.prompts.RenderPrompt(render_inline('{% include "half-1" %}{% include "half-2" %}')),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(details, "inline_prompt.messages[0].template", f"limit of {MAX_TEMPLATE_CHARS}")


async def test_the_expanded_text_is_bounded_by_max_prompt_chars(start_server: StartServer) -> None:
    running = await start_server(max_prompt_chars=1000)
    await new_partial(running, "block", "b" * 400)
    ok = await running.prompts.RenderPrompt(render_inline('{% include "block" %}{{ q }}'))
    assert len(ok.messages[0].content) == 402
    for template in (
        '{% include "block" %}{% include "block" %}{% include "block" %}',
        '{% for i in range(100) %}{% include "block" %}{% endfor %}',
    ):
        _, details = await rpc_error(
            running.prompts.RenderPrompt(render_inline(template)), INVALID, "INVALID_PROMPT"
        )
        violation(details, "inline_prompt.messages[0].template", "limit of 1000")


async def test_a_runaway_partial_is_stopped_and_the_server_keeps_answering(
    start_server: StartServer,
) -> None:
    running = await start_server(template_timeout_s=0.5)
    loops = (
        "{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% if i == j == -1 %}x{% endif %}{% endfor %}{% endfor %}"
    )
    await new_partial(running, "spin", loops)
    slow = asyncio.create_task(
        rpc_error(
            running.prompts.RenderPrompt(render_inline('{% include "spin" %}'), timeout=30),
            INVALID,
            "INVALID_PROMPT",
        )
    )
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    answered = await running.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            prompt="demo", inputs=[pb.PromptInput(name="question", string_value="there?")]
        )
    )
    responsive_s = time.perf_counter() - started
    assert answered.state == pb.EXECUTION_STATE_FULFILLED
    _, details = await slow
    violation(details, "inline_prompt.messages[0].template", "took longer than 0.5 s")
    assert responsive_s < RESPONSIVE_S, responsive_s


# Archive, workspaces, scopes


async def test_archived_partials_are_hidden_frozen_and_not_newly_included(pg: Running) -> None:
    await new_partial(pg, "old-rule", "Old rule.")
    await prompt_with(pg, "uses-old", '{% include "old-rule" %} {{ q }}')
    archived = await pg.prompts.ArchivePartial(ppb.ArchivePartialRequest(partial="old-rule"))
    assert archived.partial.archived
    listed = await pg.prompts.ListPartials(ppb.ListPartialsRequest())
    assert "old-rule" not in [p.name for p in listed.partials]
    shown = await pg.prompts.ListPartials(ppb.ListPartialsRequest(show_archived=True))
    assert "old-rule" in [p.name for p in shown.partials]
    await rpc_error(
        pg.prompts.CreatePartialVersion(
            ppb.CreatePartialVersionRequest(partial="old-rule", content="x")
        ),
        FAILED,
        "PARTIAL_ARCHIVED",
    )
    info, _ = await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="uses-old", version=version_body('{% include "old-rule" %}{{ q }}')
            )
        ),
        FAILED,
        "PARTIAL_ARCHIVED",
    )
    assert info.metadata["partial"] == "old-rule"
    # The released version keeps rendering it.
    assert await rendered(pg, "uses-old") == "Old rule. hi"
    await pg.prompts.UnarchivePartial(ppb.UnarchivePartialRequest(partial="old-rule"))
    assert await edit_partial(pg, "old-rule", "New rule.") == 2


async def test_another_workspaces_partials_are_invisible(pg: Running) -> None:
    await new_partial(pg, "shared", "Default text.")
    await new_partial(pg, "mine-only", "Mine.")
    async with await other_workspace(pg) as channel:
        other = prompt_service_pb2_grpc.PromptServiceStub(channel)
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: other.GetPartial(ppb.GetPartialRequest(partial="mine-only")),
            lambda: other.GetPartialVersion(ppb.GetPartialVersionRequest(partial="mine-only")),
            lambda: other.ListPartialVersions(ppb.ListPartialVersionsRequest(partial="mine-only")),
            lambda: other.CreatePartialVersion(
                ppb.CreatePartialVersionRequest(partial="mine-only", content="taken")
            ),
            lambda: other.ArchivePartial(ppb.ArchivePartialRequest(partial="mine-only")),
        ]
        for call in calls:
            await rpc_error(call(), NOT_FOUND, "PARTIAL_NOT_FOUND")
        assert list((await other.ListPartials(ppb.ListPartialsRequest())).partials) == []
        await rpc_error(
            other.RenderPrompt(render_inline('{% include "mine-only" %}')),
            INVALID,
            "PARTIAL_NOT_FOUND",
        )
        # The same name lives independently in each workspace.
        await other.CreatePartial(ppb.CreatePartialRequest(name="shared", content="Other text."))
        await other.CreatePrompt(ppb.CreatePromptRequest(name="p"))
        await other.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="p",
                version=version_body('{% include "shared" %} {{ q }}'),
                release_tags=["production"],
            )
        )
        theirs = await other.RenderPrompt(ppb.RenderPromptRequest(prompt="p", inputs=q("hi")))
        assert theirs.messages[0].content == "Other text. hi"
    await prompt_with(pg, "p", '{% include "shared" %} {{ q }}')
    assert await rendered(pg, "p") == "Default text. hi"
    mine = await pg.prompts.GetPartialVersion(ppb.GetPartialVersionRequest(partial="mine-only"))
    assert (mine.version.version, mine.version.content) == (1, "Mine.")


def partial_writes(
    stub: prompt_service_pb2_grpc.PromptServiceStub, new_name: str
) -> list[Callable[[], Awaitable[Any]]]:
    """Each write RPC on partials, as a call to make (in order, one at a time)."""
    return [
        lambda: stub.CreatePartial(ppb.CreatePartialRequest(name=new_name, content="w")),
        lambda: stub.CreatePartialVersion(
            ppb.CreatePartialVersionRequest(partial="scoped", content="w")
        ),
        lambda: stub.ArchivePartial(ppb.ArchivePartialRequest(partial="scoped")),
        lambda: stub.UnarchivePartial(ppb.UnarchivePartialRequest(partial="scoped")),
    ]


async def test_scopes_reads_with_execute_writes_with_template_manage(pg: Running) -> None:
    await new_partial(pg, "scoped", "s")
    for scope, can_write in ((Scope.EXECUTE, False), (Scope.TEMPLATES, True)):
        issued = await pg.server.keys.create("default", name="k", scopes=[scope], plan="unlimited")
        async with authed_channel(pg.address, issued.secret) as channel:
            stub = prompt_service_pb2_grpc.PromptServiceStub(channel)
            got = await stub.GetPartial(ppb.GetPartialRequest(partial="scoped"))
            assert got.partial.name == "scoped"
            await stub.ListPartials(ppb.ListPartialsRequest())
            await stub.GetPartialVersion(ppb.GetPartialVersionRequest(partial="scoped"))
            await stub.ListPartialVersions(ppb.ListPartialVersionsRequest(partial="scoped"))
            for write in partial_writes(stub, f"by-{scope.name.lower()}"):
                if can_write:
                    await write()
                else:
                    await rpc_error(
                        write(), grpc.StatusCode.PERMISSION_DENIED, "INSUFFICIENT_PERMISSIONS"
                    )
    partial = (await pg.prompts.GetPartial(ppb.GetPartialRequest(partial="scoped"))).partial
    assert partial.latest_version == 2  # only the template.manage key wrote
    listed = await pg.prompts.ListPartials(ppb.ListPartialsRequest(name_prefix="by-"))
    assert [p.name for p in listed.partials] == ["by-templates"]


async def test_partial_changes_are_in_the_audit_log(pg: Running) -> None:
    await new_partial(pg, "audited", "one", description="For the log")
    await rpc_error(
        pg.prompts.CreatePartial(ppb.CreatePartialRequest(name="audited", content="dup")),
        grpc.StatusCode.ALREADY_EXISTS,
        "PARTIAL_ALREADY_EXISTS",
    )
    await new_partial(pg, "inner", "in")
    await edit_partial(pg, "audited", '{% include "inner" %}', description="nests")
    await pg.prompts.ArchivePartial(ppb.ArchivePartialRequest(partial="audited"))
    await pg.prompts.ArchivePartial(ppb.ArchivePartialRequest(partial="audited"))  # no change
    await pg.prompts.UnarchivePartial(ppb.UnarchivePartialRequest(partial="audited"))
    log = await apb_grpc.AdminServiceStub(pg.channel).ListAuditEvents(
        apb.ListAuditEventsRequest(resource="partials/audited")
    )
    entries = [(e.action, e.resource) for e in reversed(log.audit_events)]
    assert entries == [
        ("partial.create", "partials/audited"),
        ("partial_version.create", "partials/audited/versions/1"),
        ("partial_version.create", "partials/audited/versions/2"),
        ("partial.archive", "partials/audited"),
        ("partial.unarchive", "partials/audited"),
    ]
    second = next(e for e in log.audit_events if e.resource.endswith("/versions/2"))
    assert dict(second.after)["description"] == "nests"
    assert list(second.after["includes"]) == ["inner"]
    assert "content" not in dict(second.after)


# PostgreSQL


@pytest.mark.postgres
async def test_partials_on_postgresql_pin_across_a_restart(
    start_server: StartServer, postgres_url: str
) -> None:
    first = await start_server(database_url=postgres_url, resolve_cache_ttl_s=0)
    await new_partial(first, "facts", "Water boils at 100 C.")
    await new_partial(first, "frame", '[{% include "facts" %}]')
    released = await prompt_with(first, "science", '{% include "frame" %} {{ q }}')
    assert dict(released.partials) == {"frame": 1, "facts": 1}
    numbers = await asyncio.gather(*(edit_partial(first, "facts", f"Fact {i}.") for i in range(6)))
    assert sorted(numbers) == list(range(2, 8))
    latest = await first.prompts.GetPartialVersion(ppb.GetPartialVersionRequest(partial="facts"))
    assert await rendered(first, "science") == "[Water boils at 100 C.] hi"
    await first.channel.close()
    await first.server.stop(grace=0)

    second = await start_server(database_url=postgres_url, resolve_cache_ttl_s=0)
    assert await rendered(second, "science") == "[Water boils at 100 C.] hi"
    assert await executed(second, "science") == "Mock reply to: [Water boils at 100 C.] hi"
    newer = await new_version(second, "science", '{% include "frame" %} {{ q }}')
    assert dict(newer.partials) == {"frame": 1, "facts": 7}
    assert await rendered(second, "science", version=2) == f"[{latest.version.content}] hi"
    versions = await second.prompts.ListPartialVersions(
        ppb.ListPartialVersionsRequest(partial="facts", page_size=3)
    )
    assert [v.version for v in versions.versions] == [7, 6, 5] and versions.next_page_token
    await rpc_error(
        second.prompts.CreatePartialVersion(
            ppb.CreatePartialVersionRequest(partial="facts", content='{% include "frame" %}')
        ),
        INVALID,
        "PARTIAL_CYCLE",
    )
