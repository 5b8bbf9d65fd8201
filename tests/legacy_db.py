"""Databases as a promptgate from before Alembic left them, and ways to look at a database.

``create_legacy_database`` runs the frozen schema of that promptgate
(tests/legacy_schema/, what its ``create_all`` made at schema version 4) and
takes it back to an older version the way that promptgate's own migrations
went forward. ``fill_every_table`` puts a row with a value in every column into
every table; ``rows`` and ``schema`` read a database back for comparison.

The versions' columns are listed here again rather than imported from
``promptgate.store.migrations.legacy``, so that a mistake there shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from promptgate.store.engine import create_engine
from promptgate.store.migrations.autogen import CONTEXT_OPTIONS, target_metadata

LEGACY_SCHEMA = Path(__file__).parent / "legacy_schema"

# The columns each legacy schema version added, as (table, column).
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
}
# The indexes each version added on existing tables (dropped before their columns).
ADDED_INDEXES = {4: ("ix_executions_chain",)}
# The tables of the first promptgate (schema version 1, before actuals, batches,
# keys, the audit log, partials and chains); the others came with create_all.
FIRST_TABLES = frozenset(
    {"schema_version", "prompts", "prompt_versions", "release_tags", "release_tag_events"}
    | {"executions"}
)


def legacy_statements(dialect: str) -> list[str]:
    """The frozen CREATE statements of schema version 4 for ``dialect``."""
    script = (LEGACY_SCHEMA / f"v4.{dialect}.sql").read_text()
    lines = [line for line in script.splitlines() if not line.startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def create_legacy_database(
    url: str, version: int, *, tables: Iterable[str] | None = None
) -> None:
    """Make the database at ``url`` as a promptgate before Alembic left it at ``version``.

    ``tables``: only these (a database from before the others existed).
    """
    keep = set(tables) if tables is not None else None
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in legacy_statements(engine.dialect.name):
                words = statement.split()
                table = words[2] if words[1] == "TABLE" else words[words.index("ON") + 1]
                if keep is None or table in keep:
                    await conn.execute(text(statement))
            for newer in range(4, version, -1):
                for index in ADDED_INDEXES.get(newer, ()):
                    await conn.execute(text(f"DROP INDEX IF EXISTS {index}"))
                for table, column in ADDED_COLUMNS[newer]:
                    if keep is None or table in keep:
                        await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            await conn.execute(
                text("INSERT INTO schema_version (id, version, updated_at) VALUES (1, :v, :t)"),
                {"v": version, "t": datetime(2025, 6, 1, tzinfo=UTC)},
            )
    finally:
        await engine.dispose()


def _value(table: sa.Table, column: sa.Column[Any]) -> Any:
    """A value for ``column`` that tells it apart from the other columns."""
    for key in column.foreign_keys:
        return _value(key.column.table, key.column)
    type_ = column.type
    if isinstance(type_, sa.JSON):
        return {"table": table.name, "column": column.name, "list": [1, 2.5, None]}
    if isinstance(type_, sa.Boolean):
        return True
    if isinstance(type_, sa.DateTime):
        return datetime(2025, 1, 2, 3, 4, len(column.name), tzinfo=UTC)
    if isinstance(type_, sa.Float):
        return len(column.name) + 0.25
    if isinstance(type_, sa.Integer):
        return len(table.name) * 100 + len(column.name)
    if isinstance(type_, sa.String):
        value = f"{table.name}.{column.name}"
        return value[-type_.length :] if type_.length else value
    raise AssertionError(f"no test value for {table.name}.{column.name} ({type_})")


def _fill(conn: Connection) -> None:
    metadata = sa.MetaData()
    metadata.reflect(conn)
    for table in metadata.sorted_tables:
        if table.name == "schema_version":
            continue
        key = list(table.primary_key.columns)
        # A single integer key is a serial one: the database numbers it.
        serial = key if len(key) == 1 and isinstance(key[0].type, sa.Integer) else []
        conn.execute(
            table.insert(),
            {
                column.name: _value(table, column)
                for column in table.columns
                if column not in serial
            },
        )


async def fill_every_table(url: str) -> None:
    """Insert one row into every table (but schema_version), a value in every column."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_fill)
    finally:
        await engine.dispose()


def _rows(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    metadata = sa.MetaData()
    metadata.reflect(conn)
    return {
        table.name: [dict(row._mapping) for row in conn.execute(sa.select(table))]
        for table in metadata.sorted_tables
        if table.name not in ("schema_version", "alembic_version")
    }


async def rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table but the version tables, by table."""
    return await _run(url, _rows)


def _schema(conn: Connection) -> dict[str, Any]:
    inspector = inspect(conn)
    described: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        columns = sorted(
            (
                c["name"],
                c["type"].compile(dialect=conn.dialect),
                c["nullable"],
                str(c.get("default")),
            )
            for c in inspector.get_columns(table)
        )
        described[table] = {
            "columns": columns,
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted(
                (tuple(k["constrained_columns"]), k["referred_table"], tuple(k["referred_columns"]))
                for k in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (str(i["name"]), tuple(map(str, i["column_names"])), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(
                (str(u["name"]), tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(table)
            ),
        }
    return described


async def schema(url: str) -> dict[str, Any]:
    """The database's tables as reflected: columns (any order), keys, indexes, constraints."""
    return await _run(url, _schema)


async def model_differences(url: str, metadata: sa.MetaData | None = None) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models (none: in step)."""

    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts=CONTEXT_OPTIONS)
        return list(compare_metadata(context, metadata or target_metadata()))

    return await _run(url, differences)


async def scalar(url: str, query: str) -> Any:
    """The one value ``query`` selects."""
    return await _run(url, lambda conn: conn.execute(text(query)).scalar_one())


async def _run(url: str, work: Any) -> Any:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()
