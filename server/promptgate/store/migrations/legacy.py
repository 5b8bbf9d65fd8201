"""Adopting a database made by a promptgate from before Alembic.

That promptgate kept its schema version (1 to 4) in the one-row table
``schema_version``, created missing tables from its models at every start, and
added columns in its own migrations 2-4. ``adopt`` brings such a database to
the baseline schema (revision 0001) the same way, in the caller's transaction:
the columns of the versions it lacks, then the tables it lacks (as the
baseline creates them), then ``schema_version`` set to say "managed by
Alembic" so that such a promptgate refuses the database from then on. The
caller then stamps revision 0001 and upgrades as usual.

Each step adds only what is missing, so a database in any state that promptgate
could leave (for example one made before batches existed, whose ``batches``
table the baseline creates with the version 4 column already in it) ends at
exactly the baseline schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, inspect, text
from sqlalchemy.types import TypeEngine

from promptgate.store.migrations import SchemaError
from promptgate.store.migrations.baseline import ALEMBIC_MANAGED_VERSION, TABLES

log = logging.getLogger(__name__)

# The newest schema version of the promptgate before Alembic.
LAST_LEGACY_VERSION = 4


TypeFactory = Callable[[], TypeEngine[Any]]


def _string(length: int) -> TypeFactory:
    return lambda: sa.String(length=length)


# The columns each legacy version added, as (table, column, type), in order.
ADDED_COLUMNS: dict[int, tuple[tuple[str, str, TypeFactory], ...]] = {
    2: (
        ("executions", "request_fingerprint", _string(64)),
        ("executions", "owner", _string(40)),
        ("executions", "superseded_key", _string(256)),
    ),
    3: (
        ("release_tags", "split", sa.JSON),
        ("release_tag_events", "split", sa.JSON),
        ("executions", "split_id", _string(40)),
    ),
    4: (
        ("executions", "chain_execution_id", _string(40)),
        ("batches", "chain_id", _string(40)),
        ("executions", "chain_step", _string(64)),
    ),
}
# The indexes each legacy version added, as (name, table, columns).
ADDED_INDEXES: dict[int, tuple[tuple[str, str, list[str]], ...]] = {
    4: (("ix_executions_chain", "executions", ["chain_execution_id"]),),
}


def legacy_version(connection: Connection) -> int | None:
    """The schema version of a database from before Alembic; None if it is not one."""
    if not inspect(connection).has_table("schema_version"):
        return None
    version = connection.execute(text("SELECT version FROM schema_version")).scalar()
    # That promptgate wrote the row in the transaction that created the table:
    # a table without it was made at its newest version.
    return LAST_LEGACY_VERSION if version is None else int(version)


def refuse_newer(version: int) -> None:
    """SchemaError if legacy schema ``version`` is not one this code can adopt."""
    if version > LAST_LEGACY_VERSION:
        raise SchemaError(
            f"the database is at schema version {version}, which this promptgate does not "
            "know (it was written by a newer one); upgrade promptgate"
        )


def adopt(connection: Connection, version: int) -> None:
    """Bring a database at legacy schema ``version`` to the baseline schema."""
    refuse_newer(version)
    log.info("adopting a database at schema version %d (promptgate before Alembic)", version)
    inspector = inspect(connection)
    existing = set(inspector.get_table_names())
    context = MigrationContext.configure(connection)
    operations = Operations(context)
    for step in range(version + 1, LAST_LEGACY_VERSION + 1):
        for table, column, type_ in ADDED_COLUMNS.get(step, ()):
            if table in existing and column not in _columns(connection, table):
                operations.add_column(table, sa.Column(column, type_(), nullable=True))
        for index, table, columns in ADDED_INDEXES.get(step, ()):
            if table in existing and index not in _indexes(connection, table):
                operations.create_index(index, table, columns)
    with Operations.context(context):
        for table, create in TABLES.items():
            if table not in existing:
                log.info("creating table %s", table)
                create()
    connection.execute(text("DELETE FROM schema_version"))
    connection.execute(
        text(
            "INSERT INTO schema_version (id, version, updated_at)"
            " VALUES (1, :version, CURRENT_TIMESTAMP)"
        ),
        {"version": ALEMBIC_MANAGED_VERSION},
    )


def _columns(connection: Connection, table: str) -> set[str]:
    return {column["name"] for column in inspect(connection).get_columns(table)}


def _indexes(connection: Connection, table: str) -> set[str]:
    return {str(index["name"]) for index in inspect(connection).get_indexes(table)}
