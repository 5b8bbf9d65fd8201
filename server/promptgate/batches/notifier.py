"""BatchNotifier: wakes WatchBatch streams when their batch changes.

Watchers of a batch wait on one shared signal, so an idle watcher costs a
parked coroutine and nothing else. The signal fires

- at once when this process changes the batch (the runner or CancelBatch call
  ``notify``), and
- within ``poll_s`` when another replica does: while a batch has watchers,
  one poller task per batch (not per watcher) reads the batch's ``last_seq``
  every ``poll_s`` and fires when it moves.

So N idle watchers of one batch cost one small query per ``poll_s``, not N.
Cross-replica push (LISTEN/NOTIFY, pub/sub) would remove that query and the
``poll_s`` delay; it is not needed for correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from promptgate.batches.faults import FaultLog

log = logging.getLogger(__name__)

LastSeq = Callable[[str], Awaitable[int | None]]


class _Watched:
    """The shared state of one watched batch."""

    __slots__ = ("changed", "generation", "last_seq", "poller", "watchers")

    def __init__(self) -> None:
        self.watchers = 0
        self.generation = 0
        self.last_seq: int | None = None  # the newest last_seq anyone saw
        self.changed = asyncio.Event()
        self.poller: asyncio.Task[None] | None = None

    def bump(self) -> None:
        self.generation += 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class BatchChanges:
    """One watcher's view of a batch's changes (from ``BatchNotifier.watch``).

    Take a ``mark()`` before reading the batch, then ``wait(mark, last_seq)``
    with the ``last_seq`` read: a change between the read and the wait is not
    missed.
    """

    def __init__(self, notifier: BatchNotifier, watched: _Watched) -> None:
        self._notifier = notifier
        self._watched = watched

    def mark(self) -> int:
        """The current change count."""
        return self._watched.generation

    async def wait(self, mark: int, seen_seq: int) -> None:
        """Return once the batch changed after ``mark`` or past ``seen_seq`` (or on shutdown)."""
        watched = self._watched
        if watched.last_seq is None or seen_seq > watched.last_seq:
            watched.last_seq = seen_seq
        while not self._notifier.closed and watched.generation == mark:
            if watched.last_seq > seen_seq:  # someone already saw a newer state
                return
            await watched.changed.wait()


class BatchNotifier:
    """See the module docstring."""

    def __init__(self, last_seq: LastSeq | None = None, *, poll_s: float = 0.5) -> None:
        """``last_seq`` reads a batch's ``last_seq`` (None: no polling, local changes only)."""
        self._last_seq = last_seq
        self._poll_s = poll_s
        self._watched: dict[str, _Watched] = {}
        self._faults = FaultLog(log)
        self.closed = False

    @property
    def pollers(self) -> int:
        """How many batches are being polled now."""
        return sum(1 for w in self._watched.values() if w.poller is not None)

    def close(self) -> None:
        """Shutdown: wake every watcher for good, so watch streams end."""
        self.closed = True
        for watched in self._watched.values():
            if watched.poller is not None:
                watched.poller.cancel()
            watched.bump()
        self._watched.clear()

    def notify(self, batch_id: str) -> None:
        """Something happened to ``batch_id`` (in this process)."""
        watched = self._watched.get(batch_id)
        if watched is not None:
            watched.bump()

    @contextlib.contextmanager
    def watch(self, batch_id: str) -> Iterator[BatchChanges]:
        """Follow ``batch_id``'s changes for as long as the block runs."""
        watched = self._watched.get(batch_id)
        if watched is None:
            watched = _Watched()
            if not self.closed:
                self._watched[batch_id] = watched
                if self._last_seq is not None:
                    watched.poller = asyncio.get_running_loop().create_task(
                        self._poll(batch_id, watched), name=f"batch-watch-{batch_id}"
                    )
        watched.watchers += 1
        try:
            yield BatchChanges(self, watched)
        finally:
            watched.watchers -= 1
            if not watched.watchers and self._watched.get(batch_id) is watched:
                # The poller sees it is gone at its next tick and ends by itself
                # (not cancelled, so a query in flight is never cut short).
                del self._watched[batch_id]

    async def _poll(self, batch_id: str, watched: _Watched) -> None:
        assert self._last_seq is not None
        while True:
            await asyncio.sleep(self._poll_s)
            if self.closed or self._watched.get(batch_id) is not watched:
                return
            try:
                seq = await self._last_seq(batch_id)
            except Exception as exc:  # the store is down: watchers wait, polling goes on
                self._faults.warn("polling a watched batch", exc)
                continue
            if seq is not None and (watched.last_seq is None or seq > watched.last_seq):
                watched.last_seq = seq
                watched.bump()
