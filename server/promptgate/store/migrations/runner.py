"""Bringing a database to the newest schema revision (head), and reporting where it is.

``upgrade_schema`` is what ``promptgate serve`` (each process) and ``promptgate
migrate`` run. It migrates in one transaction on a connection of its own:

- on PostgreSQL under a session-level advisory lock (``MIGRATION_LOCK_ID``), so
  that replicas starting together take turns: the first migrates, the others
  then find the schema at head;
- on SQLite in a ``BEGIN IMMEDIATE`` transaction, which takes the file's write
  lock before reading the revision: the same turns, through SQLite's own lock.

A database made by a promptgate from before Alembic is adopted first
(``legacy``); one at a revision this code does not know (written by a newer
promptgate) is refused with ``SchemaError`` and left as it is.

Alembic is configured here, without an ini file: the scripts are in this
package (``env.py``, ``versions/``), which is installed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from promptgate.store.engine import create_migration_engine
from promptgate.store.migrations import SchemaError, legacy

log = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).resolve().parent
# The revision that a database from before Alembic is stamped at once adopted.
BASELINE_REVISION = "0001"
# The key of the PostgreSQL advisory lock held while migrating (the bytes
# "promptgt", 8102661195421738868); in pg_locks, classid 1886547821 and objid 1886676852.
MIGRATION_LOCK_ID = 0x70726F6D70746774


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema is, and where this code would take it."""

    current: tuple[str, ...]
    head: str
    legacy_version: int | None = None

    @property
    def at_head(self) -> bool:
        """The database is at this code's newest revision."""
        return self.current == (self.head,)


def alembic_config(url: str | None = None, *, output: TextIO | None = None) -> Config:
    """Alembic's configuration for promptgate's scripts (and ``url``'s dialect, offline)."""
    config = Config(output_buffer=output, stdout=output or sys.stdout)
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # New revisions are numbered 0002, 0003, ... (tools/new_revision.py) and named after it.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no revisions in " + str(SCRIPT_LOCATION)
    return head


async def upgrade_schema(url: str) -> str:
    """Bring the database at ``url`` to head (taking turns with other processes); return it."""
    engine = create_migration_engine(url)
    try:
        async with engine.connect() as conn, _migration_lock(conn), conn.begin():
            return await conn.run_sync(_upgrade)
    finally:
        await engine.dispose()


async def schema_status(url: str) -> SchemaStatus:
    """The revision of the database at ``url`` (which it does not change) and head."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not await asyncio.to_thread(Path(parsed.database or "").is_file):
            return SchemaStatus(current=(), head=head_revision())  # and no file made for it
    engine = create_migration_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_status)
    finally:
        await engine.dispose()


def write_upgrade_sql(url: str, output: TextIO, *, start: str | None = None) -> None:
    """Write the SQL that upgrades a database of ``url``'s dialect to head, touching none.

    From an empty database, or from revision ``start``. (A database from before
    Alembic is adopted online only: ``promptgate migrate``.)
    """
    config = alembic_config(url, output=output)
    try:
        command.upgrade(config, f"{start}:head" if start else "head", sql=True)
    except CommandError as exc:
        raise SchemaError(str(exc)) from exc


@contextlib.asynccontextmanager
async def _migration_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    """Hold PostgreSQL's migration lock on ``conn`` (SQLite: see create_migration_engine)."""
    if conn.dialect.name != "postgresql":
        yield
        return
    lock = {"key": MIGRATION_LOCK_ID}
    if not (await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), lock)).scalar():
        log.info("waiting for another promptgate to finish migrating the schema")
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), lock)
    await conn.commit()
    try:
        yield
    finally:
        # The lock is the session's: it goes with the connection if this fails.
        with contextlib.suppress(Exception):
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), lock)
            await conn.commit()


def _upgrade(connection: Connection) -> str:
    config = alembic_config()
    status = _status(connection, config)
    current = status.current
    if status.legacy_version is not None:
        legacy.adopt(connection, status.legacy_version)
        script = ScriptDirectory.from_config(config)
        MigrationContext.configure(connection).stamp(script, BASELINE_REVISION)
        current = (BASELINE_REVISION,)
    if current == (status.head,):
        log.debug("schema at revision %s (head)", status.head)
        return status.head
    log.info(
        "migrating the schema from %s to revision %s",
        f"revision {', '.join(current)}" if current else "an empty database",
        status.head,
    )
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    log.info("schema migrated to revision %s", status.head)
    return status.head


def _status(connection: Connection, config: Config | None = None) -> SchemaStatus:
    """Where the database is; SchemaError if it is newer than this code."""
    script = ScriptDirectory.from_config(config or alembic_config())
    head = script.get_current_head()
    assert head is not None
    current = tuple(MigrationContext.configure(connection).get_current_heads())
    for revision in current:
        try:
            script.get_revision(revision)
        except CommandError:
            raise SchemaError(
                f"the database is at schema revision {revision}, which this promptgate "
                "does not know (it was written by a newer one); upgrade promptgate"
            ) from None
    if current:
        return SchemaStatus(current=current, head=head)
    version = legacy.legacy_version(connection)
    if version is not None:
        legacy.refuse_newer(version)
    return SchemaStatus(current=(), head=head, legacy_version=version)
