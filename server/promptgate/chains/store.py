"""ChainExecutionStore: chain executions in the store.

A chain execution is one row of ``chain_executions``: written RUNNING when
the chain starts (so its steps, recorded as they finish, can point at it and
GetChainExecution sees it), then once more when it ends. The row keeps each
step's name, variable, execution id, state and error; the steps' outputs and
meta are read from their executions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from promptgate.chains.model import ChainExecution, StepResult
from promptgate.chat import Usage
from promptgate.errors import InvalidArgument, NotFound
from promptgate.execution.model import Cost, ExecutionState
from promptgate.execution.records import (
    ExecutionHistory,
    error_from_json,
    error_json,
    input_from_json,
    input_to_json,
    output_from_json,
    output_to_json,
)
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import ChainExecutionRow, as_utc


class ChainExecutionStore:
    """Writes and reads chain executions (scoped to a workspace)."""

    def __init__(self, sessions: SessionFactory, history: ExecutionHistory) -> None:
        self._sessions = sessions
        self._history = history

    async def insert(self, execution: ChainExecution) -> None:
        """Store a new (RUNNING) chain execution; IntegrityError if its external_id is taken."""
        async with self._sessions.write() as session:
            session.add(ChainExecutionRow(**_values(execution)))
            await session.commit()

    async def save(self, execution: ChainExecution) -> None:
        """Write the chain execution's current state over its row."""
        values = _values(execution)
        values.pop("id")
        async with self._sessions.write() as session:
            await session.exec(
                update(ChainExecutionRow)
                .where(col(ChainExecutionRow.id) == execution.id)
                .values(**values)
            )
            await session.commit()

    async def release_key(
        self, execution: ChainExecution, key: str, values: dict[str, Any]
    ) -> bool:
        """Take ``key`` off ``execution`` (a repeat replaces it), if it still holds it
        in the state it was read in; ``values`` are further columns to set."""
        async with self._sessions.write() as session:
            done = await session.exec(
                update(ChainExecutionRow)
                .where(
                    col(ChainExecutionRow.id) == execution.id,
                    col(ChainExecutionRow.external_id) == key,
                    col(ChainExecutionRow.state) == execution.state.value,
                )
                .values(external_id=None, superseded_key=key, **values)
            )
            await session.commit()
        return bool(done.rowcount == 1)

    async def find(
        self, workspace: str, *, chain_execution_id: str = "", external_id: str = ""
    ) -> ChainExecution | None:
        """A chain execution by id or external_id, or None (its steps without records)."""
        query = select(ChainExecutionRow).where(ChainExecutionRow.workspace_id == workspace)
        if chain_execution_id:
            query = query.where(ChainExecutionRow.id == chain_execution_id)
        else:
            query = query.where(ChainExecutionRow.external_id == external_id)
        async with self._sessions() as session:
            row = (await session.exec(query)).first()
        return _execution(row) if row is not None else None

    async def get(
        self, workspace: str, *, chain_execution_id: str = "", external_id: str = ""
    ) -> ChainExecution:
        """A chain execution with its steps' executions; NOT_FOUND if absent."""
        if not chain_execution_id and not external_id:
            raise InvalidArgument.field(
                "chain_execution_id", "a chain_execution_id or external_id is required"
            )
        execution = await self.find(
            workspace, chain_execution_id=chain_execution_id, external_id=external_id
        )
        if execution is None:
            key = chain_execution_id or external_id
            raise NotFound(
                f"chain execution {key!r} not found",
                reason="CHAIN_EXECUTION_NOT_FOUND",
                metadata={"chain_execution": key},
            )
        await self.load_steps(execution)
        return execution

    async def get_many(self, workspace: str, ids: Sequence[str]) -> dict[str, ChainExecution]:
        """The chain executions with these ids (absent ones are left out), without step records."""
        if not ids:
            return {}
        query = select(ChainExecutionRow).where(
            ChainExecutionRow.workspace_id == workspace, col(ChainExecutionRow.id).in_(list(ids))
        )
        async with self._sessions() as session:
            rows = (await session.exec(query)).all()
        return {row.id: _execution(row) for row in rows}

    async def load_steps(self, execution: ChainExecution) -> None:
        """Attach each step's recorded execution to its result."""
        ids = [s.execution_id for s in execution.steps if s.execution_id]
        records = await self._history.get_many(execution.workspace_id, ids)
        for step in execution.steps:
            step.record = records.get(step.execution_id)

    async def list(
        self,
        workspace: str,
        *,
        size: int,
        token: str,
        chain_id: str = "",
        state: ExecutionState | None = None,
    ) -> tuple[list[ChainExecution], str]:
        """A page of chain executions, newest first, and the next page's token."""
        limit = page_size(size)
        after = decode_token("chain-executions", token, {"id": str})
        query = select(ChainExecutionRow).where(ChainExecutionRow.workspace_id == workspace)
        if chain_id:
            query = query.where(ChainExecutionRow.chain_id == chain_id)
        if state is not None:
            query = query.where(ChainExecutionRow.state == state.value)
        if after:
            query = query.where(col(ChainExecutionRow.id) < str(after.get("id", "")))
        query = query.order_by(col(ChainExecutionRow.id).desc()).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = (
            encode_token("chain-executions", {"id": page[-1].id}) if len(rows) > limit else ""
        )
        return [_execution(r) for r in page], next_token


def _values(execution: ChainExecution) -> dict[str, Any]:
    return dict(
        id=execution.id,
        workspace_id=execution.workspace_id,
        external_id=execution.external_id or None,
        request_fingerprint=execution.fingerprint or None,
        owner=execution.owner or None,
        state=execution.state.value,
        streamed=execution.streamed,
        chain_id=execution.chain_id or None,
        chain_name=execution.chain_name,
        version_id=execution.version_id or None,
        version=execution.version,
        release_tag=execution.release_tag,
        inputs=[input_to_json(i) for i in execution.inputs],
        outputs=[output_to_json(o) for o in execution.outputs],
        steps=[
            {
                "name": s.name,
                "output_variable": s.output_variable,
                "state": s.state.value,
                "execution_id": s.execution_id,
                "error": error_json(s.error),
            }
            for s in execution.steps
        ],
        error=error_json(execution.error),
        failed_step=execution.failed_step,
        input_tokens=execution.usage.input_tokens,
        output_tokens=execution.usage.output_tokens,
        cached_input_tokens=execution.usage.cached_input_tokens,
        input_chars=execution.input_chars,
        output_chars=execution.output_chars,
        cost=execution.cost.value,
        priced=execution.cost.priced,
        latency_ms=execution.latency * 1000,
        request_metadata=execution.metadata,
        api_key_id=execution.api_key_id or None,
        created_at=execution.created_at,
        completed_at=execution.completed_at,
    )


def _execution(row: ChainExecutionRow) -> ChainExecution:
    return ChainExecution(
        id=row.id,
        workspace_id=row.workspace_id,
        state=ExecutionState(row.state),
        created_at=as_utc(row.created_at),
        external_id=row.external_id or "",
        streamed=row.streamed,
        chain_id=row.chain_id or "",
        chain_name=row.chain_name,
        version_id=row.version_id or "",
        version=row.version,
        release_tag=row.release_tag,
        inputs=tuple(input_from_json(i) for i in row.inputs or []),
        outputs=tuple(output_from_json(o) for o in row.outputs or []),
        steps=[
            StepResult(
                name=s["name"],
                output_variable=s.get("output_variable", ""),
                state=ExecutionState(s["state"]),
                execution_id=s.get("execution_id", ""),
                error=error_from_json(s.get("error")),
            )
            for s in row.steps or []
        ],
        error=error_from_json(row.error),
        failed_step=row.failed_step,
        usage=Usage(row.input_tokens, row.output_tokens, row.cached_input_tokens),
        input_chars=row.input_chars,
        output_chars=row.output_chars,
        cost=Cost(value=row.cost, priced=row.priced),
        latency=row.latency_ms / 1000,
        metadata=dict(row.request_metadata or {}),
        completed_at=as_utc(row.completed_at) if row.completed_at else None,
        api_key_id=row.api_key_id or "",
        fingerprint=row.request_fingerprint or "",
        owner=row.owner or "",
    )
