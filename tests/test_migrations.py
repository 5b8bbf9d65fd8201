"""Schema migrations: a database written by an earlier schema version is brought up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import chain_service_pb2_grpc as cpb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.store.engine import SCHEMA_VERSION, create_engine, prepare_schema
from tests.conftest import Running

# The columns each schema version added, as (table, column).
ADDED_COLUMNS = {
    2: (
        ("executions", "request_fingerprint"),
        ("executions", "owner"),
        ("executions", "superseded_key"),
    ),
    3: (
        ("release_tags", "split"),
        ("release_tag_events", "split"),
        ("executions", "split_id"),
    ),
    4: (
        ("executions", "chain_execution_id"),
        ("executions", "chain_step"),
        ("batches", "chain_id"),
    ),
    5: (("executions", "trace_id"),),
}
# The indexes each schema version added on existing tables (dropped before their columns).
ADDED_INDEXES = {4: ("ix_executions_chain",)}


async def _downgrade_to(url: str, version: int) -> None:
    """Make a database (current, or new) look like one written at schema ``version``."""
    engine = create_engine(url)
    try:
        await prepare_schema(engine)
        async with engine.begin() as conn:
            for newer in range(SCHEMA_VERSION, version, -1):
                for index in ADDED_INDEXES.get(newer, ()):
                    await conn.execute(text(f"DROP INDEX {index}"))
                for table, column in ADDED_COLUMNS[newer]:
                    await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            await conn.execute(text(f"UPDATE schema_version SET version = {version}"))
    finally:
        await engine.dispose()


async def _version(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(text("SELECT version FROM schema_version"))).scalar_one()
            )
    finally:
        await engine.dispose()


async def _idempotent_call(running: Running) -> None:
    request = epb.ExecutePromptRequest(
        prompt="demo",
        inputs=[pb.PromptInput(name="question", string_value="migrated?")],
        external_id="after-migration",
    )
    first = await running.executions.ExecutePrompt(request)
    again = await running.executions.ExecutePrompt(request)
    assert first.state == pb.EXECUTION_STATE_FULFILLED
    assert again.replayed and again.execution_id == first.execution_id


async def _split_after_upgrade(running: Running) -> None:
    """The demo prompt's tag, moved before the upgrade, has no split; one can be set."""
    prompts = running.prompts
    tags = (await prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="demo"))).release_tags
    production = next(t for t in tags if t.tag == "production")
    assert production.version == 1 and not production.HasField("split")
    old = await prompts.GetPromptVersion(ppb.GetPromptVersionRequest(prompt="demo", version=1))
    await prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(prompt="demo", version=old.version)
    )
    tag = await prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(
            prompt="demo",
            tag="production",
            splits=[ppb.VersionWeight(version=1, weight=1), ppb.VersionWeight(version=2, weight=1)],
        )
    )
    response = await running.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            prompt="demo",
            inputs=[pb.PromptInput(name="question", string_value="split?")],
            split_key="user-1",
        )
    )
    assert response.meta.split_id == tag.release_tag.split.id
    assert response.meta.prompt_version in (1, 2)
    history = await prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="demo", tag="production")
    )
    assert [e.HasField("split") for e in history.events] == [True, False]


async def _chain_call(running: Running) -> None:
    """A chain's steps are recorded with their chain execution and step (version 4)."""
    prompt = pb.InlinePrompt(model="mock-1", prompt="Say {{ word }}")
    request = cpb.ExecuteChainRequest(
        inline_chain=cpb.InlineChain(
            steps=[cpb.ChainStep(name="say", inline_prompt=prompt, output_variable="said")]
        ),
        inputs=[pb.PromptInput(name="word", string_value="hi")],
    )
    chain = cpb_grpc.ChainServiceStub(running.channel)
    response = await chain.ExecuteChain(request)
    assert response.chain_execution.state == pb.EXECUTION_STATE_FULFILLED
    listed = await running.executions.ListExecutions(
        epb.ListExecutionsRequest(chain_execution_id=response.chain_execution.id)
    )
    assert [e.chain_step for e in listed.executions] == ["say"]


async def _traced_call(running: Running) -> None:
    """Executions keep the trace id of the caller's traceparent (version 5)."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    response = await running.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            prompt="demo", inputs=[pb.PromptInput(name="question", string_value="traced?")]
        ),
        metadata=(("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),),
    )
    got = await running.executions.GetExecution(
        epb.GetExecutionRequest(execution_id=response.execution_id)
    )
    assert got.execution.trace_id == trace_id


async def _upgrade_from(start_server: Any, url: str, version: int) -> Running:
    """Seed a database at the current version, take it back to ``version``, start on it."""
    seeded: Running = await start_server(database_url=url)
    await seeded.channel.close()
    await seeded.server.stop(grace=0)
    await _downgrade_to(url, version)
    running: Running = await start_server(database_url=url)
    assert await _version(url) == SCHEMA_VERSION == 5
    return running


async def test_sqlite_database_at_version_1_is_migrated(tmp_path: Path, start_server: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await _downgrade_to(url, 1)
    running: Running = await start_server(database_url=url)
    assert await _version(url) == SCHEMA_VERSION == 5
    await _idempotent_call(running)
    await _chain_call(running)
    await _traced_call(running)


async def test_sqlite_database_at_version_2_is_migrated(tmp_path: Path, start_server: Any) -> None:
    running = await _upgrade_from(start_server, f"sqlite+aiosqlite:///{tmp_path / 'v2.db'}", 2)
    await _split_after_upgrade(running)
    await _chain_call(running)


async def test_sqlite_database_at_version_3_is_migrated(tmp_path: Path, start_server: Any) -> None:
    running = await _upgrade_from(start_server, f"sqlite+aiosqlite:///{tmp_path / 'v3.db'}", 3)
    await _chain_call(running)
    await _idempotent_call(running)


async def test_sqlite_database_at_version_4_is_migrated(tmp_path: Path, start_server: Any) -> None:
    running = await _upgrade_from(start_server, f"sqlite+aiosqlite:///{tmp_path / 'v4.db'}", 4)
    await _traced_call(running)
    await _idempotent_call(running)


@pytest.mark.postgres
async def test_postgres_database_at_version_1_is_migrated(
    postgres_url: str, start_server: Any
) -> None:
    await _downgrade_to(postgres_url, 1)
    running: Running = await start_server(database_url=postgres_url)
    assert await _version(postgres_url) == SCHEMA_VERSION == 5
    await _idempotent_call(running)
    await _chain_call(running)


@pytest.mark.postgres
async def test_postgres_database_at_version_2_is_migrated(
    postgres_url: str, start_server: Any
) -> None:
    running = await _upgrade_from(start_server, postgres_url, 2)
    await _split_after_upgrade(running)
    await _idempotent_call(running)
    await _chain_call(running)


@pytest.mark.postgres
async def test_postgres_database_at_version_3_is_migrated(
    postgres_url: str, start_server: Any
) -> None:
    running = await _upgrade_from(start_server, postgres_url, 3)
    await _chain_call(running)


@pytest.mark.postgres
async def test_postgres_database_at_version_4_is_migrated(
    postgres_url: str, start_server: Any
) -> None:
    running = await _upgrade_from(start_server, postgres_url, 4)
    await _traced_call(running)
    await _chain_call(running)
