"""ExecutionRecorder on a real SQLite file: group commit and isolation of bad records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from promptgate.errors import Unavailable
from promptgate.execution.actuals import ActualsLog
from promptgate.execution.model import ExecutionRecord, ExecutionState
from promptgate.execution.recorder import ExecutionRecorder
from promptgate.execution.records import ExecutionHistory
from promptgate.ids import new_id
from promptgate.store.engine import create_engine, session_factory
from promptgate.store.migrations.runner import upgrade_schema
from promptgate.store.tables import utcnow


def record(execution_id: str | None = None) -> ExecutionRecord:
    return ExecutionRecord(
        id=execution_id or new_id("exe"),
        workspace_id="w",
        state=ExecutionState.FULFILLED,
        created_at=utcnow(),
        completed_at=utcnow(),
    )


async def test_a_bad_record_does_not_lose_the_others(tmp_path: Path) -> None:
    await upgrade_schema(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    sessions = session_factory(engine)
    recorder = ExecutionRecorder(sessions)
    recorder.start()
    existing = record()
    await recorder.record(existing)
    good = [record() for _ in range(20)]
    duplicate = record(existing.id)  # violates the primary key
    results = await asyncio.gather(
        *(recorder.record(r) for r in [*good[:10], duplicate, *good[10:]]),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], Unavailable)
    history = ExecutionHistory(sessions, ActualsLog(sessions))
    for r in good:
        assert await history.find("w", execution_id=r.id) is not None
    # The writer survives and keeps writing.
    late = record()
    await recorder.record(late)
    assert await history.find("w", execution_id=late.id) is not None
    await recorder.close()
    with pytest.raises(Unavailable):
        await recorder.record(record())
    await engine.dispose()


async def test_close_flushes_submitted_records(tmp_path: Path) -> None:
    await upgrade_schema(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    sessions = session_factory(engine)
    recorder = ExecutionRecorder(sessions, batch_max=7)
    recorder.start()
    submitted = [record() for _ in range(50)]
    for r in submitted:
        recorder.submit(r)
    await recorder.close()
    history = ExecutionHistory(sessions, ActualsLog(sessions))
    page, _ = await history.list("w", size=100, token="")
    assert {r.id for r in page} == {r.id for r in submitted}
    assert recorder.commits >= 50 // 7
    await engine.dispose()
