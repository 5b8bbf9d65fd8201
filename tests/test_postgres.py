"""The server on real PostgreSQL: schema set-up, versions and tags, concurrency.

Each test gets a fresh database from the ``postgres_url`` fixture (PostgreSQL
on 127.0.0.1:5432, or PROMPTGATE_TEST_PG) and starts the in-process server on
it with ``dev=True``, so the demo prompt is seeded there too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.store.migrations.baseline import ALEMBIC_MANAGED_VERSION
from promptgate.store.migrations.runner import head_revision
from tests.conftest import Running, error_details

pytestmark = pytest.mark.postgres

StartServer = Callable[..., Any]


def demo(question: str, **fields: Any) -> epb.ExecutePromptRequest:
    return epb.ExecutePromptRequest(
        prompt="demo", inputs=[pb.PromptInput(name="question", string_value=question)], **fields
    )


def version(template: str, description: str = "") -> ppb.PromptVersion:
    return ppb.PromptVersion(
        model="mock-1",
        messages=[pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template=template)],
        input_variables=[pb.InputVariable(name="topic", type=pb.INPUT_TYPE_STRING)],
        description=description,
    )


async def sql(postgres_url: str, query: str) -> list[asyncpg.Record]:
    """Run ``query`` on the test database with a plain asyncpg connection."""
    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def list_all_executions(running: Running, page_size: int) -> list[epb.Execution]:
    """Every execution, following next_page_token to the end."""
    executions: list[epb.Execution] = []
    token = ""
    for _ in range(1000):
        page = await running.executions.ListExecutions(
            epb.ListExecutionsRequest(page_size=page_size, page_token=token)
        )
        assert len(page.executions) <= page_size
        executions.extend(page.executions)
        token = page.next_page_token
        if not token:
            return executions
    pytest.fail("ListExecutions paging did not end")


async def test_schema_is_created_and_a_second_start_reuses_it(
    start_server: StartServer, postgres_url: str
) -> None:
    first: Running = await start_server(database_url=postgres_url)
    tables = {
        r["tablename"]
        for r in await sql(
            postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    assert {
        "alembic_version",
        "schema_version",
        "prompts",
        "prompt_versions",
        "release_tags",
        "release_tag_events",
        "executions",
    } <= tables
    rows = await sql(postgres_url, "SELECT version_num FROM alembic_version")
    assert [r["version_num"] for r in rows] == [head_revision()]
    rows = await sql(postgres_url, "SELECT id, version, updated_at FROM schema_version")
    assert [(r["id"], r["version"]) for r in rows] == [(1, ALEMBIC_MANAGED_VERSION)]
    stamped = rows[0]["updated_at"]
    executed = await first.executions.ExecutePrompt(demo("before the restart"))
    assert executed.state == pb.EXECUTION_STATE_FULFILLED
    await first.channel.close()
    await first.server.stop(grace=0)

    second: Running = await start_server(database_url=postgres_url)
    rows = await sql(postgres_url, "SELECT id, version, updated_at FROM schema_version")
    assert [(r["id"], r["version"], r["updated_at"]) for r in rows] == [
        (1, ALEMBIC_MANAGED_VERSION, stamped)
    ], "a restart at head must leave the schema alone"
    rows = await sql(postgres_url, "SELECT version_num FROM alembic_version")
    assert [r["version_num"] for r in rows] == [head_revision()]
    # The demo prompt is not seeded twice, and the first run's data is still there.
    prompts = await second.prompts.ListPrompts(ppb.ListPromptsRequest())
    assert [(p.name, p.latest_version) for p in prompts.prompts] == [("demo", 1)]
    stored = await second.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=executed.execution_id)
    )
    assert stored.execution.outputs[0].string_value == executed.outputs[0].string_value
    again = await second.executions.ExecutePrompt(demo("after the restart"))
    assert again.state == pb.EXECUTION_STATE_FULFILLED


async def test_prompt_versions_and_release_tags(
    start_server: StartServer, postgres_url: str
) -> None:
    running: Running = await start_server(database_url=postgres_url)
    prompts = running.prompts
    created = await prompts.CreatePrompt(
        ppb.CreatePromptRequest(name="summarize", description="Summaries", labels={"team": "ml"})
    )
    assert created.prompt.id.startswith("prm_") and created.prompt.latest_version == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts.CreatePrompt(ppb.CreatePromptRequest(name="summarize"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_details(caught.value)[0].reason == "PROMPT_ALREADY_EXISTS"

    v1 = await prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(
            prompt="summarize", version=version("v1: {{ topic }}"), release_tags=["production"]
        )
    )
    v2 = await prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(
            prompt=created.prompt.id, version=version("v2: {{ topic }}"), release_tags=["staging"]
        )
    )
    assert (v1.version.version, v2.version.version) == (1, 2)
    assert v1.version.id != v2.version.id

    def tags_of(response: Any) -> dict[str, int]:
        return {t.tag: t.version for t in response.release_tags}

    listed = await prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="summarize"))
    assert tags_of(listed) == {"latest": 2, "production": 1, "staging": 2}

    async def run(**target: Any) -> epb.ExecutePromptResponse:
        return await running.executions.ExecutePrompt(
            epb.ExecutePromptRequest(
                prompt="summarize",
                inputs=[pb.PromptInput(name="topic", string_value="tides")],
                **target,
            )
        )

    production = await run()
    assert production.outputs[0].string_value == "Mock reply to: v1: tides"
    assert (production.meta.prompt_version, production.meta.release_tag) == (1, "production")
    staging = await run(release_tag="staging")
    assert staging.outputs[0].string_value == "Mock reply to: v2: tides"
    assert (await run(release_tag="latest")).meta.prompt_version == 2

    moved = await prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="summarize", tag="production", version=2)
    )
    assert (moved.release_tag.tag, moved.release_tag.version_id) == ("production", v2.version.id)
    assert (await run()).outputs[0].string_value == "Mock reply to: v2: tides"
    assert (await run(version=1)).outputs[0].string_value == "Mock reply to: v1: tides"

    history = await prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="summarize", tag="production")
    )
    assert [(e.version, e.previous_version) for e in history.events] == [(2, 1), (1, 0)]
    got = await prompts.GetPrompt(ppb.GetPromptRequest(prompt="summarize"))
    assert got.prompt.latest_version == 2 and dict(got.prompt.labels) == {"team": "ml"}
    assert tags_of(got.prompt) == {"latest": 2, "production": 2, "staging": 2}
    by_tag = await prompts.GetPromptVersion(
        ppb.GetPromptVersionRequest(prompt="summarize", release_tag="production")
    )
    assert by_tag.version.id == v2.version.id
    assert by_tag.version.messages[0].template == "v2: {{ topic }}"
    versions = await prompts.ListPromptVersions(ppb.ListPromptVersionsRequest(prompt="summarize"))
    assert [v.version for v in versions.versions] == [2, 1]
    by_prompt = await running.executions.ListExecutions(
        epb.ListExecutionsRequest(prompt="summarize", version=1)
    )
    assert len(by_prompt.executions) == 2


async def test_concurrent_executions_are_all_recorded(
    start_server: StartServer, postgres_url: str
) -> None:
    running: Running = await start_server(database_url=postgres_url)
    responses = await asyncio.gather(
        *(running.executions.ExecutePrompt(demo(f"question {i}")) for i in range(50))
    )
    assert all(r.state == pb.EXECUTION_STATE_FULFILLED for r in responses)
    for i, response in enumerate(responses):
        expected = f"Mock reply to: Answer in one sentence: question {i}"
        assert response.outputs[0].string_value == expected
    ids = [r.execution_id for r in responses]
    assert len(set(ids)) == 50

    listed = await list_all_executions(running, page_size=7)
    listed_ids = [e.id for e in listed]
    assert len(listed_ids) == 50, "an execution was lost or listed twice"
    assert set(listed_ids) == set(ids)
    assert listed_ids == sorted(listed_ids, reverse=True), "newest first"
    assert all(e.state == pb.EXECUTION_STATE_FULFILLED for e in listed)
    rows = await sql(postgres_url, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM executions")
    assert (rows[0]["n"], rows[0]["d"]) == (50, 50)


async def test_external_id_replay(start_server: StartServer, postgres_url: str) -> None:
    running: Running = await start_server(database_url=postgres_url)
    executions = running.executions
    first = await executions.ExecutePrompt(demo("replay me", external_id="order-1"))
    assert first.state == pb.EXECUTION_STATE_FULFILLED
    assert first.external_id == "order-1" and not first.replayed
    # A retry of the same request with the key returns the first result.
    again = await executions.ExecutePrompt(demo("replay me", external_id="order-1"))
    assert again.replayed and again.execution_id == first.execution_id
    assert again.outputs == first.outputs
    # The key with another request is refused.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await executions.ExecutePrompt(demo("something else", external_id="order-1"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    streamed = [
        e async for e in executions.ExecutePromptStream(demo("replay me", external_id="order-1"))
    ]
    assert streamed[0].initiated.replayed
    assert {e.execution_id for e in streamed} == {first.execution_id}
    assert streamed[-1].fulfilled.outputs == first.outputs
    by_key = await executions.GetExecution(epb.GetExecutionRequest(external_id="order-1"))
    assert by_key.execution.id == first.execution_id

    # Concurrent requests with one new key (each takes 300 ms at the provider): exactly
    # one executes; the others replay it or are told it is still running.
    slow = pb.ModelParameters()
    slow.extra.update({"mock": {"latency_ms": 300}})
    results = await asyncio.gather(
        *(
            executions.ExecutePrompt(demo("race", external_id="order-2", parameters=slow))
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    done = [r for r in results if isinstance(r, epb.ExecutePromptResponse)]
    failed = [r for r in results if not isinstance(r, epb.ExecutePromptResponse)]
    for error in failed:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert error.code() == grpc.StatusCode.ABORTED, error
        assert error_details(error)[0].reason == "EXECUTION_IN_PROGRESS"
    assert done, "no request with the new key succeeded"
    assert len({r.execution_id for r in done}) == 1
    assert sum(not r.replayed for r in done) == 1
    assert all(r.state == pb.EXECUTION_STATE_FULFILLED for r in done)
    settled = await executions.ExecutePrompt(demo("race", external_id="order-2", parameters=slow))
    assert settled.replayed and settled.execution_id == done[0].execution_id

    rows = await sql(
        postgres_url,
        "SELECT external_id, state, count(*) AS n FROM executions"
        " WHERE external_id IS NOT NULL GROUP BY external_id, state ORDER BY external_id",
    )
    assert [(r["external_id"], r["state"], r["n"]) for r in rows] == [
        ("order-1", "FULFILLED", 1),
        ("order-2", "FULFILLED", 1),
    ]


async def test_concurrent_versions_get_distinct_numbers(
    start_server: StartServer, postgres_url: str
) -> None:
    running: Running = await start_server(database_url=postgres_url)
    await running.prompts.CreatePrompt(ppb.CreatePromptRequest(name="busy"))
    created = await asyncio.gather(
        *(
            running.prompts.CreatePromptVersion(
                ppb.CreatePromptVersionRequest(
                    prompt="busy", version=version(f"draft {i}: {{{{ topic }}}}", f"draft {i}")
                )
            )
            for i in range(10)
        )
    )
    numbers = sorted(c.version.version for c in created)
    assert numbers == list(range(1, 11))
    assert len({c.version.id for c in created}) == 10
    # Each number holds the content of the call that got it.
    by_number = {c.version.version: c.version.description for c in created}
    listed = await running.prompts.ListPromptVersions(
        ppb.ListPromptVersionsRequest(prompt="busy", page_size=100)
    )
    assert [v.version for v in listed.versions] == list(range(10, 0, -1))
    assert {v.version: v.description for v in listed.versions} == by_number
    prompt = await running.prompts.GetPrompt(ppb.GetPromptRequest(prompt="busy"))
    assert prompt.prompt.latest_version == 10
    latest = {t.tag: t.version for t in prompt.prompt.release_tags}
    assert latest == {"latest": 10}
