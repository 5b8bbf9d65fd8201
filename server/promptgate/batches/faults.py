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

import logging
import time

from promptgate.errors import Unavailable
from promptgate.store.faults import describe, store_fault

__all__ = ["FaultLog", "describe", "is_store_fault"]


def is_store_fault(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is out of reach for now (worth retrying).

    Besides the drivers' own exceptions (``store.faults``), an execution whose
    record could not be written answers UNAVAILABLE (STORE_UNAVAILABLE or
    RECORDING_FAILED): the item runs again later, and replays the execution if
    its record landed after all.
    """
    if isinstance(exc, Unavailable):
        return exc.reason in ("STORE_UNAVAILABLE", "RECORDING_FAILED")
    return store_fault(exc) is not None


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
