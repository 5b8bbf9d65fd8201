"""Which database exceptions are an outage of the store.

A store that cannot be reached, restarts, drops connections, runs out of pool
connections, or (SQLite) stays locked or fails its disk I/O is a transient
condition for the caller: UNAVAILABLE with a retry delay, never INTERNAL.
``store_fault`` is the one place that knows the driver exceptions
(SQLAlchemy, asyncpg, sqlite3, OSError) and turns them into the domain's
``StoreUnavailable``; the transport asks it before falling back to INTERNAL.

Anything else a database raises (a constraint the code did not expect, a
value it cannot store, a bug in a query) is not an outage and stays an
internal error.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from sqlalchemy import exc as sa_exc

from promptgate.errors import StoreUnavailable

# PostgreSQL SQLSTATE classes that mean "the server cannot serve now":
# 08 connection exception, 53 insufficient resources (too many connections,
# disk full), 57 operator intervention (shutdown, restart, query cancelled by
# a timeout), 58 system error (I/O).
_OUTAGE_SQLSTATE_CLASSES: Final = frozenset({"08", "53", "57", "58"})

# sqlite3 reports both outages and programming errors as OperationalError;
# only these messages are an outage (another writer holds the lock, the disk
# failed or is full, the file cannot be opened).
_SQLITE_OUTAGES: Final = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "disk i/o error",
    "unable to open database file",
    "database or disk is full",
    "attempt to write a readonly database",
)

# How far down the chain of causes to look: the driver's own exception is one
# or two levels under SQLAlchemy's wrapper. Only explicit causes (``raise ...
# from``, which SQLAlchemy and its asyncpg adapter use) are followed: an
# unrelated bug raised while handling a connection error is not an outage.
_MAX_DEPTH: Final = 6


def store_fault(exc: BaseException, message: str | None = None) -> StoreUnavailable | None:
    """The ``StoreUnavailable`` that ``exc`` amounts to, or None if it is no outage.

    ``message`` replaces the default message (the database's own text is never
    shown to callers: it may name hosts and users).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    depth = 0
    while current is not None and depth < _MAX_DEPTH and id(current) not in seen:
        seen.add(id(current))
        if _is_outage(current):
            return StoreUnavailable(message) if message else StoreUnavailable()
        current = current.__cause__
        depth += 1
    return None


def describe(exc: BaseException) -> str:
    """A one-line description of a store fault for the log (no traceback)."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:199] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, sqlite3.Error):
            return False  # the sqlite3 error one level down decides
        return isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError)
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        # A dropped connection, or no pool connection free within pool_timeout.
        return True
    if isinstance(exc, sqlite3.Error):
        return _sqlite_outage(exc)
    if isinstance(exc, OSError):
        # Connection refused or reset, or a connect timeout.
        return True
    return _postgres_outage(exc) or _asyncpg_interface_error(exc)


def _sqlite_outage(exc: sqlite3.Error) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return any(marker in text for marker in _SQLITE_OUTAGES)


def _postgres_outage(exc: BaseException | None) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES


def _asyncpg_interface_error(exc: BaseException) -> bool:
    # asyncpg's InterfaceError covers "connection is closed" and
    # ConnectionDoesNotExistError ("connection was closed in the middle of
    # operation"); matched by module so that asyncpg stays an optional driver.
    return any(
        cls.__name__ == "InterfaceError" and cls.__module__.startswith("asyncpg")
        for cls in type(exc).__mro__
    )


def is_store_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is an outage of the store (see ``store_fault``)."""
    return store_fault(exc) is not None
