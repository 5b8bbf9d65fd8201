"""The async database engines and sessions.

SQLite (the default) runs in WAL mode with full fsync, so that a committed
row survives a crash; PostgreSQL is used as-is. The schema is Alembic's
(``promptgate.store.migrations``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession


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


def create_migration_engine(url: str) -> AsyncEngine:
    """An engine for schema migrations: no pool, and on SQLite an eager write lock.

    Without a pool a connection ends when its user is done with it, and with
    it a PostgreSQL session lock. On SQLite a transaction starts with
    ``BEGIN IMMEDIATE``, taking the file's write lock before it reads the
    schema's revision: processes migrating one file at once then take turns
    (waiting up to the busy timeout) instead of one of them failing on a
    snapshot another has since changed.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, poolclass=NullPool)
    database = parsed.database or ""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    event.listen(engine.sync_engine, "connect", _sqlite_migration_connection)
    event.listen(engine.sync_engine, "begin", _begin_immediate)
    return engine


def _sqlite_migration_connection(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    # The driver then starts no transaction by itself: _begin_immediate does.
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


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
