"""ExecutionRecorder: durable writes of execution records with group commit.

Callers hand a finished record to ``record()`` and wait until it is committed.
One writer task takes everything queued at that moment (up to
``batch_max`` records) and writes it in a single transaction, so under load
many executions share one commit (and one fsync) and recording stays off the
critical path. If a group fails, its records are retried one by one so that
one bad record cannot lose the others.

A record whose write fails is not dropped: its caller is answered at once
(UNAVAILABLE: the execution is not acknowledged), and the record is kept and
written again with backoff until the store takes it, so that an execution
left RUNNING by a store outage ends by itself once the store is back. Records
still unwritten at shutdown are written one last time, then logged as lost.

With ``record_all=False`` (``PROMPTGATE_RECORD_EXECUTIONS=false``) executions
without an ``external_id`` are not stored at all (they are counted in
``skipped``); executions with one still are, because idempotency and batches
depend on their rows, and so are chain steps, which their chain links to.

Tracing: an execution's ``promptgate.record`` span (the executor's) covers
its wait in ``record()``, from queueing to the commit that wrote it. Each
group commit is a span of its own, ``promptgate.recorder.commit`` (a root: one
commit serves many traces), linked both ways with the record spans of the
executions it wrote (the first ``MAX_LINKS`` of them), which also get the
group's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from sqlalchemy import Engine, insert, make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from promptgate.backoff import Backoff
from promptgate.errors import STORE_RETRY_AFTER_S, Unavailable
from promptgate.execution.model import ExecutionRecord
from promptgate.execution.records import row_values, to_row
from promptgate.observability import tracing
from promptgate.observability.metrics import Metrics
from promptgate.observability.tracing import Span
from promptgate.store.engine import SessionFactory, create_sync_sqlite_engine
from promptgate.store.faults import describe, is_store_fault, store_fault
from promptgate.store.tables import ExecutionRow

log = logging.getLogger(__name__)


# Backoff between rewrites of records whose write failed.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 5.0
# Records kept for rewriting at most (about 10 KB each): past this, new
# failures are logged as lost rather than growing memory without bound.
MAX_RETRYING = 50_000
# A failure that is not a store fault (a record the store refuses) is retried
# this many times before it is logged as lost.
MAX_REFUSALS = 3
# Links from a commit span to the record spans it wrote (OpenTelemetry's default limit).
MAX_LINKS = 128
COMMIT_SPAN = "promptgate.recorder.commit"


@dataclass(slots=True)
class _Pending:
    record: ExecutionRecord
    upsert: bool
    done: asyncio.Future[None] | None
    failures: int = 0
    span: Span | None = None  # the waiting caller's record span, when tracing


_EXECUTIONS = SQLModel.metadata.tables[ExecutionRow.__tablename__]


class ExecutionRecorder:
    """Group-commit writer of execution records."""

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        batch_max: int = 512,
        record_all: bool = True,
        sqlite_thread: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        """``sqlite_thread``: on SQLite, write each group from a dedicated thread
        with its own connection, the whole transaction in one hop. ``metrics``:
        queue depth, records waiting for a rewrite, commit times."""
        self._sessions = sessions
        self._metrics = metrics
        self._sync: Engine | None = None
        self._inserter: _SqliteInserter | None = None
        self._thread: ThreadPoolExecutor | None = None
        database = make_url(sessions.url).database or ""
        if sqlite_thread and sessions.url.startswith("sqlite") and database not in ("", ":memory:"):
            self._sync = create_sync_sqlite_engine(sessions.url)
            self._inserter = _SqliteInserter(self._sync)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="recorder")
        self._batch_max = batch_max
        self._record_all = record_all
        self.skipped = 0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._retrying: list[_Pending] = []
        self._rewriter: asyncio.Task[None] | None = None
        self.commits = 0
        self.written = 0
        self.lost = 0
        self._lost_counted = 0
        if metrics is not None:
            metrics.watch_recorder_queue(self._queue.qsize)

    def start(self) -> None:
        """Start the writer task."""
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._run(), name="recorder")

    async def record(self, record: ExecutionRecord, *, upsert: bool = False) -> None:
        """Write ``record`` and return once it is committed.

        ``upsert`` replaces an existing row with the same id (an execution
        that was claimed earlier by its external_id).
        """
        if self._skips(record, upsert):
            return
        if self._closing:
            raise Unavailable("the server is shutting down", reason="SHUTTING_DOWN")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        span = trace.get_current_span() if tracing.enabled() else None
        self._queue.put_nowait(_Pending(record, upsert, done, span=span))
        # Shielded: if the caller is cancelled, the write still completes.
        await asyncio.shield(done)

    def submit(self, record: ExecutionRecord, *, upsert: bool = False) -> None:
        """Queue ``record`` without waiting (used when the caller is being cancelled)."""
        if self._skips(record, upsert):
            return
        if self._closing and self._writer is None:
            log.error("execution %s finished after the recorder closed; not recorded", record.id)
            return
        self._queue.put_nowait(_Pending(record, upsert, None))

    def _skips(self, record: ExecutionRecord, upsert: bool) -> bool:
        """Whether ``record`` is left unstored (recording is off and nothing depends on it)."""
        if self._record_all or upsert or record.external_id or record.chain_execution_id:
            return False
        self.skipped += 1
        return True

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        assert self._inserter is not None
        self._inserter.insert(rows)

    def _release_thread(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._inserter is not None:
            self._inserter.close()
            self._inserter = None
        if self._sync is not None:
            self._sync.dispose()
            self._sync = None

    async def close(self) -> None:
        """Write everything queued, then stop the writer."""
        self._closing = True
        if self._writer is None:
            self._release_thread()
            return
        await self._queue.join()
        for task in (self._writer, self._rewriter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._rewriter = None
        # Records submitted by handlers cancelled during shutdown, and those
        # whose earlier writes failed: one last try each.
        late = self._retrying
        self._retrying = []
        while not self._queue.empty():
            late.append(self._queue.get_nowait())
        if late:
            await self._write(late)
        for pending in self._retrying:
            self.lost += 1
            log.error("execution %s could not be recorded before shutdown", pending.record.id)
        self._retrying = []
        self._observe_waiting()
        self._release_thread()

    def _observe_waiting(self) -> None:
        """Report records waiting for a rewrite, and those lost since the last report."""
        if self._metrics is not None:
            self._metrics.recorder_waiting(len(self._retrying), self.lost - self._lost_counted)
            self._lost_counted = self.lost

    @property
    def retrying(self) -> int:
        """Records whose write failed and that wait to be written again."""
        return len(self._retrying)

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            group = [first]
            while len(group) < self._batch_max and not self._queue.empty():
                group.append(self._queue.get_nowait())
            if self._metrics is not None:
                self._metrics.recorder_queued(self._queue.qsize())
            try:
                await self._write(group)
            finally:
                for _ in group:
                    self._queue.task_done()
                if self._metrics is not None:
                    self._metrics.recorder_queued(self._queue.qsize())

    async def _write(self, group: list[_Pending]) -> None:
        try:
            await self._commit(group)
        except Exception as exc:  # the writer must outlive any bad record
            if len(group) == 1 or is_store_fault(exc):
                # One record, or the store itself is failing: keep them all.
                for pending in group:
                    self._failed(pending, exc)
                return
            log.warning("group commit of %d records failed; retrying one by one", len(group))
            for pending in group:
                try:
                    await self._commit([pending])
                except Exception as one:  # the writer must outlive any bad record
                    self._failed(pending, one)
                    continue
                _resolve(pending)
            return
        for pending in group:
            _resolve(pending)

    def _failed(self, pending: _Pending, exc: Exception) -> None:
        """Answer the waiting caller, and keep the record to write it again later."""
        _resolve(pending, error=exc)
        record = pending.record
        if isinstance(exc, IntegrityError) and pending.upsert and record.external_id:
            # Its RUNNING row was taken over meanwhile (this process looked dead)
            # and another execution holds the key now: keep this one without it.
            record.superseded_key, record.external_id = record.external_id, ""
        elif is_store_fault(exc):
            log.warning(
                "recording execution %s failed (store unavailable): %s", record.id, describe(exc)
            )
        else:
            pending.failures += 1
            if pending.failures > MAX_REFUSALS:
                self.lost += 1
                log.error("execution %s could not be recorded", record.id, exc_info=exc)
                self._observe_waiting()
                return
            log.warning("recording execution %s failed; will retry", record.id, exc_info=exc)
        if len(self._retrying) >= MAX_RETRYING:
            self.lost += 1
            log.error("execution %s could not be recorded (too many waiting)", record.id)
            self._observe_waiting()
            return
        self._retrying.append(pending)
        self._observe_waiting()
        if self._rewriter is None or self._rewriter.done():
            loop = asyncio.get_running_loop()
            self._rewriter = loop.create_task(self._rewrite(), name="recorder-retry")

    async def _rewrite(self) -> None:
        """Write failed records again, with backoff, until none is left."""
        backoff = Backoff(RETRY_INITIAL_S, RETRY_MAX_S)
        while self._retrying:
            await backoff.sleep()
            group, self._retrying = self._retrying, []
            self._observe_waiting()
            for start in range(0, len(group), self._batch_max):
                await self._write(group[start : start + self._batch_max])

    async def _commit(self, group: list[_Pending]) -> None:
        started = time.perf_counter()
        await self._traced_commit(group)
        self.commits += 1
        self.written += len(group)
        if self._metrics is not None:
            self._metrics.recorder_committed(time.perf_counter() - started, len(group))

    async def _traced_commit(self, group: list[_Pending]) -> None:
        if not tracing.enabled():
            await self._commit_group(group)
            return
        spans = [p.span for p in group if p.span is not None and p.span.is_recording()]
        commit = tracing.start(
            COMMIT_SPAN,
            context=otel_context.Context(),  # a root span: the group serves many traces
            attributes={"promptgate.recorder.group_size": len(group)},
            links=[trace.Link(s.get_span_context()) for s in spans[:MAX_LINKS]],
        )
        try:
            await self._commit_group(group)
        except BaseException as exc:
            tracing.finish(commit, exc)
            raise
        commit.end()
        for waiting in spans:
            waiting.set_attribute("promptgate.recorder.group_size", len(group))
            waiting.add_link(commit.get_span_context())

    async def _commit_group(self, group: list[_Pending]) -> None:
        if self._sync is not None and not any(p.upsert for p in group):
            rows = [row_values(p.record) for p in group]
            async with self._sessions.write_turn():
                await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, rows)
            return
        # New rows go in one multi-row INSERT (SQLAlchemy Core: no ORM objects,
        # no unit of work); the few that replace a claimed row are merged.
        fresh: list[dict[str, Any]] = []
        async with self._sessions.write() as session:
            for pending in group:
                if pending.upsert:
                    await session.merge(to_row(pending.record))
                else:
                    fresh.append(row_values(pending.record))
            if fresh:
                connection = await session.connection()
                await connection.execute(insert(_EXECUTIONS), fresh)
            await session.commit()


class _SqliteInserter:
    """Multi-row INSERTs of execution rows on one pysqlite connection (writer thread).

    The statement is compiled once and each value goes through its column
    type's own bind processor, so rows are stored exactly as SQLAlchemy would
    store them, without SQLAlchemy's per-execution work (which cost twice the
    insert itself and held the GIL against the event loop).
    """

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = insert(_EXECUTIONS).compile(
            dialect=dialect, column_keys=[c.name for c in _EXECUTIONS.columns]
        )
        self._sql = str(compiled)
        self._names: list[str] = list(compiled.positiontup or ())
        columns = {c.name: c for c in _EXECUTIONS.columns}
        self._processors: list[Any] = [
            columns[name].type.dialect_impl(dialect).bind_processor(dialect) for name in self._names
        ]
        self._engine = engine
        self._connection: Any = None

    def insert(self, rows: list[dict[str, Any]]) -> None:
        if self._connection is None:
            self._connection = self._engine.raw_connection()
        params = [
            tuple(
                process(row[name]) if process is not None else row[name]
                for name, process in zip(self._names, self._processors, strict=True)
            )
            for row in rows
        ]
        connection = self._connection
        try:
            cursor = connection.cursor()
            try:
                cursor.executemany(self._sql, params)
            finally:
                cursor.close()
            connection.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                connection.rollback()
            raise

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


def _resolve(pending: _Pending, *, error: BaseException | None = None) -> None:
    if pending.done is None or pending.done.done():
        return
    if error is not None:
        # The store is down (STORE_UNAVAILABLE) or this record could not be
        # written (RECORDING_FAILED); either is worth a retry.
        message = "the execution could not be recorded"
        failure = store_fault(error, message) or Unavailable(
            message, reason="RECORDING_FAILED", retry_after=STORE_RETRY_AFTER_S
        )
        pending.done.set_exception(failure)
    else:
        pending.done.set_result(None)
