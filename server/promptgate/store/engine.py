"""The async database engine and schema set-up.

SQLite (the default) runs in WAL mode with full fsync, so that a committed
row survives a crash; PostgreSQL is used as-is. The schema is created from
the SQLModel metadata at start-up and its version kept in ``schema_version``;
a database written by a newer promptgate is refused rather than damaged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.errors import PromptgateError
from promptgate.store import tables  # noqa: F401  (registers the tables)
from promptgate.store.tables import SchemaVersionRow, utcnow

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5


async def _idempotency_columns(conn: AsyncConnection) -> None:
    """Version 2: executions remember their request's fingerprint, owner and replaced key."""
    for column, size in (("request_fingerprint", 64), ("owner", 40), ("superseded_key", 256)):
        await conn.execute(text(f"ALTER TABLE executions ADD COLUMN {column} VARCHAR({size})"))


async def _split_columns(conn: AsyncConnection) -> None:
    """Version 3: release tags and their history keep A/B splits; executions their split."""
    await conn.execute(text("ALTER TABLE release_tags ADD COLUMN split JSON"))
    await conn.execute(text("ALTER TABLE release_tag_events ADD COLUMN split JSON"))
    await conn.execute(text("ALTER TABLE executions ADD COLUMN split_id VARCHAR(40)"))


async def _chain_columns(conn: AsyncConnection) -> None:
    """Version 4: executions name the chain execution and step they ran as; batches
    name the chain their items run."""
    await conn.execute(text("ALTER TABLE executions ADD COLUMN chain_execution_id VARCHAR(40)"))
    await conn.execute(text("ALTER TABLE batches ADD COLUMN chain_id VARCHAR(40)"))
    await conn.execute(text("ALTER TABLE executions ADD COLUMN chain_step VARCHAR(64)"))
    await conn.execute(text("CREATE INDEX ix_executions_chain ON executions (chain_execution_id)"))


async def _trace_column(conn: AsyncConnection) -> None:
    """Version 5: executions keep the trace id of the trace they ran in."""
    await conn.execute(text("ALTER TABLE executions ADD COLUMN trace_id VARCHAR(32)"))


# Migrations from version N-1 to N, run in order inside one transaction.
MIGRATIONS: dict[int, Callable[[AsyncConnection], Awaitable[None]]] = {
    2: _idempotency_columns,
    3: _split_columns,
    4: _chain_columns,
    5: _trace_column,
}


class SessionFactory:
    """Opens sessions; ``write()`` opens one for a write transaction.

    SQLite allows one writer at a time and makes the others sleep in its busy
    handler (for up to tens of milliseconds) when they collide. On SQLite,
    ``write()`` therefore queues writers of this process on an asyncio lock,
    so they never collide; reads (WAL mode) run alongside. On PostgreSQL it
    is an ordinary session.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._maker = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        self._gate = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    def __call__(self) -> AsyncSession:
        """A session for reads (or a write that needs no queueing)."""
        return self._maker()

    @property
    def url(self) -> str:
        """The database URL (with its password)."""
        return self._engine.url.render_as_string(hide_password=False)

    @contextlib.asynccontextmanager
    async def write_turn(self) -> AsyncIterator[None]:
        """This process's turn to write (SQLite), for writers that bring their own connection."""
        if self._gate is None:
            yield
            return
        async with self._gate:
            yield

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session for a write transaction, queued behind this process's other writers."""
        if self._gate is None:
            async with self._maker() as session:
                yield session
            return
        async with self._gate, self._maker() as session:
            yield session


class SchemaError(PromptgateError):
    """The database's schema cannot be used by this promptgate."""


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine for ``url``; SQLite files get their directory and pragmas."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=20, max_overflow=20, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_sync_sqlite_engine(url: str) -> Engine:
    """A blocking (pysqlite) engine on the SQLite file of the async ``url``, same pragmas.

    For a writer thread that does a whole transaction in one hop, rather than
    one thread hop per statement as aiosqlite does.
    """
    parsed = make_url(url).set(drivername="sqlite+pysqlite")
    engine = sa_create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions that keep loaded rows usable after commit."""
    return SessionFactory(engine)


async def prepare_schema(engine: AsyncEngine) -> int:
    """Create missing tables and bring the schema to SCHEMA_VERSION; return it."""
    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
        session = AsyncSession(bind=conn)
        row = (await session.exec(select(SchemaVersionRow))).first()
        if row is None:
            session.add(SchemaVersionRow(id=1, version=SCHEMA_VERSION, updated_at=utcnow()))
        elif row.version > SCHEMA_VERSION:
            raise SchemaError(
                f"the database is at schema version {row.version}, newer than this "
                f"promptgate's {SCHEMA_VERSION}; upgrade promptgate"
            )
        elif row.version < SCHEMA_VERSION:
            for version in range(row.version + 1, SCHEMA_VERSION + 1):
                log.info("migrating schema to version %d", version)
                await MIGRATIONS[version](conn)
            row.version = SCHEMA_VERSION
            row.updated_at = utcnow()
            session.add(row)
        await session.flush()
    return SCHEMA_VERSION
