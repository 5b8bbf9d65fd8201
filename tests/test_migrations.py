"""Schema migrations (Alembic), in process, on real SQLite files and PostgreSQL databases.

The guard: a database upgraded to head matches the models exactly (Alembic's
autogenerate compare finds nothing), so a model change without a revision
fails here. Databases that a promptgate from before Alembic left (schema
versions 1 to 4, built from its frozen DDL by tests/legacy_db.py) upgrade
with every row intact, to exactly the schema of a new database.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from promptgate.api.v1 import chain_service_pb2 as cpb
from promptgate.api.v1 import chain_service_pb2_grpc as cpb_grpc
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.store.engine import create_engine
from promptgate.store.migrations import SchemaError, autogen, runner
from promptgate.store.migrations.autogen import target_metadata
from promptgate.store.migrations.baseline import ALEMBIC_MANAGED_VERSION
from promptgate.store.migrations.runner import head_revision, schema_status, upgrade_schema
from tests.conftest import Running, fresh_postgres_database
from tests.legacy_db import (
    ADDED_COLUMNS,
    FIRST_TABLES,
    create_legacy_database,
    fill_every_table,
    model_differences,
    rows,
    scalar,
    schema,
)

DIALECTS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
# Columns that revisions after the baseline added to existing tables, as
# (table, column): rows from before them have NULL there. Add a revision's here.
ADDED_BY_REVISIONS: frozenset[tuple[str, str]] = frozenset({("executions", "trace_id")})
# A column that no model has, for revisions and model changes made up by tests.
PROBE = "migration_probe"


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of the test's dialect."""
    if dialect == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'promptgate.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def fresh_url(dialect: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database of the test's dialect (to compare with)."""
    if dialect == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


async def _versions(url: str) -> tuple[str, int]:
    """The database's Alembic revision and what its schema_version table says."""
    revision = await scalar(url, "SELECT version_num FROM alembic_version")
    return revision, await scalar(url, "SELECT version FROM schema_version")


def _added_after(version: int) -> set[tuple[str, str]]:
    return {column for newer in range(version + 1, 5) for column in ADDED_COLUMNS[newer]}


async def _assert_rows_kept(
    url: str,
    before: dict[str, list[dict[str, Any]]],
    version: int,
    revised: frozenset[tuple[str, str]] = frozenset(),
) -> None:
    """Every row of ``before`` is still there with its values; the columns added since
    (legacy versions after ``version``, revisions, and the ``revised`` ones) are NULL."""
    after = await rows(url)
    added = _added_after(version) | ADDED_BY_REVISIONS | revised
    for table, old in before.items():
        new = after[table]
        assert len(new) == len(old), table
        assert [{k: row[k] for k in old_row} for row, old_row in zip(new, old, strict=True)] == old
        for row in new:
            for column in set(row) - set(old[0]):
                assert (table, column) in added, f"{table}.{column} came from nowhere"
                assert row[column] is None


# The guard


async def test_a_new_database_is_migrated_to_exactly_the_models(database_url: str) -> None:
    assert await upgrade_schema(database_url) == head_revision()
    assert await model_differences(database_url) == [], (
        "the models and the migrations differ: add a revision (README: Changing the schema)"
    )
    assert await _versions(database_url) == (head_revision(), ALEMBIC_MANAGED_VERSION)
    assert (await schema_status(database_url)).at_head


async def test_the_guard_sees_a_model_change_without_a_revision(database_url: str) -> None:
    await upgrade_schema(database_url)
    changed = sa.MetaData()
    for table in target_metadata().tables.values():
        table.to_metadata(changed)
    changed.tables["executions"].append_column(sa.Column(PROBE, sa.String(32)))
    differences = await model_differences(database_url, changed)
    assert [(d[0], d[2], d[3].name) for d in differences] == [("add_column", "executions", PROBE)]


# Databases from before Alembic


@pytest.mark.parametrize("version", [1, 2, 3, 4])
async def test_a_legacy_database_upgrades_with_its_data(
    database_url: str, fresh_url: str, version: int
) -> None:
    await create_legacy_database(database_url, version)
    await fill_every_table(database_url)
    before = await rows(database_url)
    assert len(before) == 21 and all(len(r) == 1 for r in before.values())

    assert await upgrade_schema(database_url) == head_revision()

    await _assert_rows_kept(database_url, before, version)
    assert await _versions(database_url) == (head_revision(), ALEMBIC_MANAGED_VERSION)
    assert await model_differences(database_url) == []
    await upgrade_schema(fresh_url)
    assert await schema(database_url) == await schema(fresh_url), (
        "an adopted database must end at exactly the schema of a new one"
    )


async def test_a_database_from_before_batches_gets_the_tables_it_lacks(
    database_url: str, fresh_url: str
) -> None:
    await create_legacy_database(database_url, 1, tables=FIRST_TABLES)
    await fill_every_table(database_url)
    before = await rows(database_url)
    assert set(before) == FIRST_TABLES - {"schema_version"}

    await upgrade_schema(database_url)

    await _assert_rows_kept(database_url, before, 1)
    await upgrade_schema(fresh_url)
    assert await schema(database_url) == await schema(fresh_url)


async def test_upgrading_again_changes_nothing(database_url: str) -> None:
    await create_legacy_database(database_url, 2)
    await fill_every_table(database_url)
    await upgrade_schema(database_url)
    state = (
        await schema(database_url),
        await rows(database_url),
        await scalar(database_url, "SELECT updated_at FROM schema_version"),
    )
    assert await upgrade_schema(database_url) == head_revision()
    assert await upgrade_schema(database_url) == head_revision()
    assert (
        await schema(database_url),
        await rows(database_url),
        await scalar(database_url, "SELECT updated_at FROM schema_version"),
    ) == state
    assert await _versions(database_url) == (head_revision(), ALEMBIC_MANAGED_VERSION)


# Refusals


async def test_a_database_at_an_unknown_revision_is_refused(
    database_url: str, start_server: Any
) -> None:
    await upgrade_schema(database_url)
    await _execute(database_url, "UPDATE alembic_version SET version_num = '9999'")
    before = await schema(database_url)
    with pytest.raises(SchemaError, match=r"revision 9999, .* newer one\); upgrade promptgate"):
        await upgrade_schema(database_url)
    with pytest.raises(SchemaError, match="upgrade promptgate"):
        await start_server(database_url=database_url)
    with pytest.raises(SchemaError, match="upgrade promptgate"):
        await schema_status(database_url)
    assert await schema(database_url) == before
    assert await scalar(database_url, "SELECT version_num FROM alembic_version") == "9999"


async def test_a_legacy_database_newer_than_the_code_is_refused(database_url: str) -> None:
    await create_legacy_database(database_url, 4)
    await _execute(database_url, "UPDATE schema_version SET version = 5")
    before = await schema(database_url)
    with pytest.raises(SchemaError, match=r"schema version 5, .* upgrade promptgate"):
        await upgrade_schema(database_url)
    assert await schema(database_url) == before, "no alembic_version, nothing adopted"


# Later revisions


def _next(revision: str) -> str:
    return f"{int(revision) + 1:04d}"


def _probe_revision(revision: str, down_revision: str) -> str:
    """A revision as a developer writes one: a column and an index on executions."""
    return f'''"""executions.{PROBE}"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("{PROBE}", sa.String(length=32), nullable=True))
        batch.create_index("ix_executions_{PROBE}", ["{PROBE}"])


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_index("ix_executions_{PROBE}")
        batch.drop_column("{PROBE}")
'''


def _failing_revision(revision: str, down_revision: str) -> str:
    """A revision that fails half-way."""
    return f'''"""doomed"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("doomed", sa.Integer(), nullable=True))
    op.create_table("doomed", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("SELECT no_such_function()")


def downgrade() -> None:
    pass
'''


async def test_a_new_revision_applies_and_a_failing_one_leaves_nothing(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_legacy_database(database_url, 3)
    await fill_every_table(database_url)
    before = await rows(database_url)
    head = head_revision()
    probe, doomed = _next(head), _next(_next(head))
    scripts = _copy_scripts(tmp_path, monkeypatch)
    (scripts / "versions" / f"{probe}_probe.py").write_text(_probe_revision(probe, head))

    assert await upgrade_schema(database_url) == probe
    assert (await _versions(database_url))[0] == probe
    await _assert_rows_kept(database_url, before, 3, frozenset({("executions", PROBE)}))
    indexes = (await schema(database_url))["executions"]["indexes"]
    assert (f"ix_executions_{PROBE}", (PROBE,), False) in indexes
    migrated = await schema(database_url)

    (scripts / "versions" / f"{doomed}_doomed.py").write_text(_failing_revision(doomed, probe))
    with pytest.raises(sa.exc.DBAPIError, match="no_such_function"):
        await upgrade_schema(database_url)
    assert await schema(database_url) == migrated, "a failed upgrade is rolled back whole"
    assert (await _versions(database_url))[0] == probe


async def test_new_revision_tool_writes_what_the_models_added(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tools/new_revision.py, as a developer uses it after changing tables.py."""
    from tools.new_revision import write_revision

    head = head_revision()
    scripts = _copy_scripts(tmp_path, monkeypatch)
    changed = sa.MetaData()
    for table in target_metadata().tables.values():
        table.to_metadata(changed)
    executions = changed.tables["executions"]
    executions.append_column(sa.Column(PROBE, sa.String(32), nullable=True))
    sa.Index(f"ix_executions_{PROBE}", executions.c[PROBE])
    monkeypatch.setattr(autogen, "target_metadata", lambda: changed)

    path = await write_revision(f"executions {PROBE}")

    assert path == scripts / "versions" / f"{_next(head)}_executions_{PROBE}.py"
    written = path.read_text()
    assert f"down_revision: str | Sequence[str] | None = '{head}'" in written
    assert f"sa.Column('{PROBE}', sa.String(length=32), nullable=True)" in written
    assert "sqlmodel" not in written
    await create_legacy_database(database_url, 4)
    assert await upgrade_schema(database_url) == _next(head)
    assert await model_differences(database_url, changed) == []


def _copy_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the migration scripts that the runner uses for the rest of the test."""
    scripts = tmp_path / "scripts"
    shutil.copytree(runner.SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runner, "SCRIPT_LOCATION", scripts)
    return scripts


# Serve on an upgraded database


async def _idempotent_call(running: Running) -> None:
    """Executions keep their request's fingerprint (version 2)."""
    request = epb.ExecutePromptRequest(
        prompt="demo",
        inputs=[pb.PromptInput(name="question", string_value="migrated?")],
        external_id="after-migration",
    )
    first = await running.executions.ExecutePrompt(request)
    again = await running.executions.ExecutePrompt(request)
    assert first.state == pb.EXECUTION_STATE_FULFILLED
    assert again.replayed and again.execution_id == first.execution_id


async def _split_call(running: Running) -> None:
    """A release tag takes an A/B split, which executions record (version 3)."""
    prompts = running.prompts
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
    response = await cpb_grpc.ChainServiceStub(running.channel).ExecuteChain(request)
    assert response.chain_execution.state == pb.EXECUTION_STATE_FULFILLED
    listed = await running.executions.ListExecutions(
        epb.ListExecutionsRequest(chain_execution_id=response.chain_execution.id)
    )
    assert [e.chain_step for e in listed.executions] == ["say"]


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_serve_migrates_a_legacy_database_at_start(
    database_url: str, start_server: Any, version: int
) -> None:
    await create_legacy_database(database_url, version)
    await fill_every_table(database_url)
    before = await rows(database_url)

    running: Running = await start_server(database_url=database_url)

    assert await _versions(database_url) == (head_revision(), ALEMBIC_MANAGED_VERSION)
    await _idempotent_call(running)
    await _split_call(running)
    await _chain_call(running)
    after = await rows(database_url)
    for table, old in before.items():
        assert old[0] in [{k: row[k] for k in old[0]} for row in after[table]], table


async def _execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()
