"""Schema migrations: a database written by the previous schema version is brought up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.store.engine import SCHEMA_VERSION, create_engine, prepare_schema
from tests.conftest import Running

V2_COLUMNS = ("request_fingerprint", "owner", "superseded_key")


async def _downgrade_to_v1(url: str) -> None:
    """Make a current database look like one written at schema version 1."""
    engine = create_engine(url)
    try:
        await prepare_schema(engine)
        async with engine.begin() as conn:
            for column in V2_COLUMNS:
                await conn.execute(text(f"ALTER TABLE executions DROP COLUMN {column}"))
            await conn.execute(text("UPDATE schema_version SET version = 1"))
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


async def test_sqlite_database_at_version_1_is_migrated(tmp_path: Path, start_server: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await _downgrade_to_v1(url)
    running: Running = await start_server(database_url=url)
    assert await _version(url) == SCHEMA_VERSION == 2
    await _idempotent_call(running)


@pytest.mark.postgres
async def test_postgres_database_at_version_1_is_migrated(
    postgres_url: str, start_server: Any
) -> None:
    await _downgrade_to_v1(postgres_url)
    running: Running = await start_server(database_url=postgres_url)
    assert await _version(postgres_url) == SCHEMA_VERSION == 2
    await _idempotent_call(running)
