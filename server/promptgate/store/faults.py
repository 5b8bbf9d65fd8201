"""Store faults: which database exceptions mean the store is unavailable."""

from __future__ import annotations

import sqlalchemy.exc


def is_store_fault(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached or used right now."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        sqlalchemy.exc.OperationalError
        | sqlalchemy.exc.InterfaceError
        | sqlalchemy.exc.DisconnectionError
        | sqlalchemy.exc.TimeoutError
        | OSError,
    )
