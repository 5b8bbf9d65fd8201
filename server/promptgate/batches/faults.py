"""Store faults in the batch worker: recognising them, pacing retries, logging them.

A store fault is the database being out of reach for a while (a restart, a
failover, a dropped connection, a busy SQLite file): the same statement will
work again later, so the worker waits and retries instead of giving up on an
item or a batch. Anything else (a bug, a bad row) is not retried forever.

During an outage every loop and item fails at once, for every retry, so
faults are logged as one short warning line, at most once per
``every_s`` per kind of work, never as a traceback per failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from sqlalchemy import exc as sa_exc

from promptgate.errors import Unavailable

# Reasons of domain errors that are a store fault seen from further down
# (the execution recorder gives up on a write with RECORDING_FAILED).
_TRANSIENT_REASONS = {"RECORDING_FAILED"}


def is_store_fault(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is out of reach for now (worth retrying)."""
    if isinstance(exc, Unavailable):
        return exc.reason in _TRANSIENT_REASONS
    if isinstance(
        exc,
        (
            OSError,  # connection refused or reset, before SQLAlchemy wraps anything
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.TimeoutError,  # no pooled connection came free in time
            sa_exc.PendingRollbackError,
        ),
    ):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def describe(exc: BaseException) -> str:
    """One short line for a log: the exception's type and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Backoff:
    """Exponential delays with jitter, from ``base_s`` up to ``cap_s``."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 2.0) -> None:
        self._base = base_s
        self._cap = cap_s
        self._next = base_s

    def reset(self) -> None:
        """Start again from the shortest delay (the last try worked)."""
        self._next = self._base

    async def sleep(self) -> None:
        """Wait the next delay."""
        delay = self._next
        self._next = min(self._cap, self._next * 2)
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))


class FaultLog:
    """Warnings about store faults, at most one line per kind every ``every_s``."""

    def __init__(self, logger: logging.Logger, every_s: float = 5.0) -> None:
        self._log = logger
        self._every = every_s
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warn(self, what: str, exc: BaseException) -> None:
        """Note that ``what`` failed because of ``exc`` (a store fault)."""
        now = time.monotonic()
        if now - self._last.get(what, -self._every) < self._every:
            self._quiet[what] = self._quiet.get(what, 0) + 1
            return
        self._last[what] = now
        quiet = self._quiet.pop(what, 0)
        more = f" ({quiet} more since the last warning)" if quiet else ""
        self._log.warning("%s failed, will retry: %s%s", what, describe(exc), more)
