"""Execution records in the store: row conversion, lookups, listings and idempotency keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python
from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.chat import ChatMessage, FinishReason, FunctionCall, ModelParameters, Usage
from promptgate.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from promptgate.execution.actuals import ActualsLog
from promptgate.execution.model import (
    Attempt,
    Cost,
    ExecutionFailure,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionState,
    FunctionCallOutput,
    JsonOutput,
    Output,
    TextOutput,
)
from promptgate.paging import decode_token, encode_token, page_size
from promptgate.prompts.model import InputType, PromptInput
from promptgate.store.engine import SessionFactory
from promptgate.store.tables import BatchWorkerRow, ExecutionRow, as_utc, utcnow

_MESSAGES: TypeAdapter[list[ChatMessage]] = TypeAdapter(list[ChatMessage])
_CALL: TypeAdapter[FunctionCall] = TypeAdapter(FunctionCall)
_PARAMS: TypeAdapter[ModelParameters] = TypeAdapter(ModelParameters)
_ATTEMPTS: TypeAdapter[list[Attempt]] = TypeAdapter(list[Attempt])


def to_row(record: ExecutionRecord) -> ExecutionRow:
    """The row that stores ``record``."""
    return ExecutionRow(**row_values(record))


def row_values(record: ExecutionRecord) -> dict[str, Any]:
    """The column values of the row that stores ``record`` (for a bulk insert)."""
    return dict(
        id=record.id,
        workspace_id=record.workspace_id,
        external_id=record.external_id or None,
        state=record.state.value,
        streamed=record.streamed,
        prompt_id=record.prompt_id or None,
        prompt_name=record.prompt_name,
        version_id=record.version_id or None,
        version=record.version,
        release_tag=record.release_tag,
        provider=record.provider,
        model=record.model,
        inputs=[input_to_json(i) for i in record.inputs],
        outputs=[output_to_json(o) for o in record.outputs],
        error=error_json(record.error),
        finish_reason=record.finish_reason.value,
        input_tokens=record.usage.input_tokens,
        output_tokens=record.usage.output_tokens,
        cached_input_tokens=record.usage.cached_input_tokens,
        input_chars=record.input_chars,
        output_chars=record.output_chars,
        cost=record.cost.value,
        priced=record.cost.priced,
        latency_ms=record.latency * 1000,
        ttft_ms=record.time_to_first_token * 1000
        if record.time_to_first_token is not None
        else None,
        attempts=record.attempts,
        cache_hit=record.cache_hit,
        cache_status=record.cache_status,
        api_key_id=record.api_key_id or None,
        target_index=record.target_index,
        attempt_log=_ATTEMPTS.dump_python(list(record.attempt_log), mode="json"),
        parameters=_PARAMS.dump_python(record.parameters, mode="json"),
        request_metadata=record.metadata,
        raw=record.raw,
        created_at=record.created_at,
        completed_at=record.completed_at,
        request_fingerprint=record.fingerprint or None,
        owner=record.owner or None,
        superseded_key=record.superseded_key or None,
        split_id=record.split_id or None,
        chain_execution_id=record.chain_execution_id or None,
        chain_step=record.chain_step or None,
        trace_id=record.trace_id or None,
    )


def from_row(row: ExecutionRow) -> ExecutionRecord:
    """The record stored in ``row``."""
    return ExecutionRecord(
        id=row.id,
        workspace_id=row.workspace_id,
        state=ExecutionState(row.state),
        created_at=as_utc(row.created_at),
        external_id=row.external_id or "",
        streamed=row.streamed,
        prompt_id=row.prompt_id or "",
        prompt_name=row.prompt_name,
        version_id=row.version_id or "",
        version=row.version,
        release_tag=row.release_tag,
        provider=row.provider,
        model=row.model,
        inputs=tuple(input_from_json(i) for i in row.inputs or []),
        outputs=tuple(output_from_json(o) for o in row.outputs or []),
        error=error_from_json(row.error),
        finish_reason=FinishReason(row.finish_reason or FinishReason.UNSPECIFIED.value),
        usage=Usage(row.input_tokens, row.output_tokens, row.cached_input_tokens),
        input_chars=row.input_chars,
        output_chars=row.output_chars,
        cost=Cost(value=row.cost, priced=row.priced),
        latency=row.latency_ms / 1000,
        time_to_first_token=row.ttft_ms / 1000 if row.ttft_ms is not None else None,
        attempts=row.attempts,
        cache_hit=row.cache_hit,
        cache_status=row.cache_status,
        api_key_id=row.api_key_id or "",
        target_index=row.target_index,
        attempt_log=tuple(_ATTEMPTS.validate_python(row.attempt_log or [])),
        parameters=_PARAMS.validate_python(row.parameters or {}),
        metadata=dict(row.request_metadata or {}),
        raw=dict(row.raw or {}),
        completed_at=as_utc(row.completed_at) if row.completed_at else None,
        fingerprint=row.request_fingerprint or "",
        owner=row.owner or "",
        superseded_key=row.superseded_key or "",
        split_id=row.split_id or "",
        chain_execution_id=row.chain_execution_id or "",
        chain_step=row.chain_step or "",
        trace_id=row.trace_id or "",
    )


def error_json(error: ExecutionFailure | None) -> dict[str, Any] | None:
    """How an error is stored."""
    if error is None:
        return None
    return {
        "code": error.code,
        "message": error.message,
        "provider_status": error.provider_status,
        "retry_after": error.retry_after,
    }


def error_from_json(data: dict[str, Any] | None) -> ExecutionFailure | None:
    """A stored error."""
    if not data:
        return None
    return ExecutionFailure(
        code=data["code"],
        message=data["message"],
        provider_status=data.get("provider_status") or 0,
        retry_after=data.get("retry_after"),
    )


def input_to_json(item: PromptInput) -> dict[str, Any]:
    value = item.value
    if item.type is InputType.CHAT_HISTORY:
        value = _MESSAGES.dump_python(list(value), mode="json")
    return {"name": item.name, "type": item.type.value, "value": value}


def input_from_json(data: dict[str, Any]) -> PromptInput:
    kind = InputType(data["type"])
    value = data.get("value")
    if kind is InputType.CHAT_HISTORY:
        value = tuple(_MESSAGES.validate_python(value or []))
    return PromptInput(name=data["name"], type=kind, value=value)


def output_to_json(output: Output) -> dict[str, Any]:
    """How an output is stored."""
    if isinstance(output, TextOutput):
        return {"type": "STRING", "value": output.text}
    if isinstance(output, JsonOutput):
        return {"type": "JSON", "value": output.value}
    return {"type": "FUNCTION_CALL", "value": _CALL.dump_python(output.call, mode="json")}


def output_from_json(data: dict[str, Any]) -> Output:
    """A stored output."""
    kind = data.get("type")
    if kind == "JSON":
        return JsonOutput(data.get("value"))
    if kind == "FUNCTION_CALL":
        return FunctionCallOutput(_CALL.validate_python(data["value"]))
    return TextOutput(str(data.get("value", "")))


class ExecutionHistory:
    """Reads recorded executions, with their actuals."""

    def __init__(self, sessions: SessionFactory, actuals: ActualsLog) -> None:
        self._sessions = sessions
        self._actuals = actuals

    async def get(
        self, workspace: str, *, execution_id: str = "", external_id: str = ""
    ) -> ExecutionRecord:
        """One execution by id or external_id; NOT_FOUND if absent."""
        if not execution_id and not external_id:
            raise InvalidArgument.field(
                "execution_id", "an execution_id or external_id is required"
            )
        record = await self.find(workspace, execution_id=execution_id, external_id=external_id)
        if record is None:
            key = execution_id or external_id
            raise NotFound(
                f"execution {key!r} not found",
                reason="EXECUTION_NOT_FOUND",
                metadata={"execution": key},
            )
        actuals = await self._actuals.for_executions(workspace, [record.id])
        record.actuals = tuple(actuals.get(record.id, ()))
        return record

    async def find(
        self, workspace: str, *, execution_id: str = "", external_id: str = ""
    ) -> ExecutionRecord | None:
        """One execution by id or external_id, or None."""
        query = select(ExecutionRow).where(ExecutionRow.workspace_id == workspace)
        if execution_id:
            query = query.where(ExecutionRow.id == execution_id)
        else:
            query = query.where(ExecutionRow.external_id == external_id)
        async with self._sessions() as session:
            row = (await session.exec(query)).first()
        return from_row(row) if row else None

    async def month_tokens(self, api_key_id: str, since: datetime) -> int:
        """Tokens (input + output) the key's executions used since ``since``."""
        query = select(
            func.coalesce(func.sum(ExecutionRow.input_tokens + ExecutionRow.output_tokens), 0)
        ).where(ExecutionRow.api_key_id == api_key_id, col(ExecutionRow.created_at) >= since)
        async with self._sessions() as session:
            return int((await session.exec(query)).one())

    async def get_many(self, workspace: str, ids: Sequence[str]) -> dict[str, ExecutionRecord]:
        """The executions with these ids (absent ones are left out), without actuals."""
        if not ids:
            return {}
        query = select(ExecutionRow).where(
            ExecutionRow.workspace_id == workspace, col(ExecutionRow.id).in_(list(ids))
        )
        async with self._sessions() as session:
            rows = (await session.exec(query)).all()
        return {row.id: from_row(row) for row in rows}

    async def list(
        self,
        workspace: str,
        *,
        size: int,
        token: str,
        prompt_id: str = "",
        version: int = 0,
        release_tag: str = "",
        state: ExecutionState | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        chain_execution_id: str = "",
    ) -> tuple[list[ExecutionRecord], str]:
        """A page of executions, newest first, and the next page's token."""
        limit = page_size(size)
        after = decode_token("executions", token, {"id": str})
        query = select(ExecutionRow).where(ExecutionRow.workspace_id == workspace)
        if prompt_id:
            query = query.where(ExecutionRow.prompt_id == prompt_id)
        if version:
            query = query.where(ExecutionRow.version == version)
        if release_tag:
            query = query.where(ExecutionRow.release_tag == release_tag)
        if state is not None:
            query = query.where(ExecutionRow.state == state.value)
        if start is not None:
            query = query.where(col(ExecutionRow.created_at) >= start)
        if end is not None:
            query = query.where(col(ExecutionRow.created_at) < end)
        if chain_execution_id:
            query = query.where(ExecutionRow.chain_execution_id == chain_execution_id)
        if after:
            query = query.where(col(ExecutionRow.id) < str(after.get("id", "")))
        query = query.order_by(col(ExecutionRow.id).desc()).limit(limit + 1)
        async with self._sessions() as session:
            rows = list((await session.exec(query)).all())
        page = rows[:limit]
        next_token = encode_token("executions", {"id": page[-1].id}) if len(rows) > limit else ""
        records = [from_row(r) for r in page]
        actuals = await self._actuals.for_executions(workspace, [r.id for r in records])
        for record in records:
            record.actuals = tuple(actuals.get(record.id, ()))
        return records, next_token


def request_fingerprint(request: ExecutionRequest) -> str:
    """A hash of what ``request`` asks to run, kept with its external_id.

    It covers the target, inputs, model and provider overrides, parameters,
    response format, tools, raw overrides, routing, cache policy and split key; not the
    timeout, metadata or which response fields to return, which do not change
    what runs.
    """
    document = {
        "target": to_jsonable_python(request.target),
        "inputs": [input_to_json(i) for i in request.inputs],
        "model": request.model,
        "provider": request.provider,
        "parameters": to_jsonable_python(request.parameters),
        "response_format": to_jsonable_python(request.response_format),
        "tools": to_jsonable_python(request.tools),
        "tool_choice": to_jsonable_python(request.tool_choice),
        "raw_body": request.raw_body,
        "raw_headers": request.raw_headers,
        "routing": to_jsonable_python(request.routing),
        "cache": to_jsonable_python(request.cache),
    }
    if request.split_key:  # only when set: fingerprints stored before it existed stay valid
        document["split_key"] = request.split_key
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class IdempotencyKeys:
    """The external_id contract, as payment APIs have it, over the executions table.

    - The first call with a key inserts a RUNNING row holding the key, the
      request's fingerprint and this process as its owner, so concurrent
      repeats see it: they get ABORTED (EXECUTION_IN_PROGRESS) while it runs.
    - A repeat of the same request after it finished replays the recorded
      result, without calling the provider again.
    - The same key with another request is FAILED_PRECONDITION
      (IDEMPOTENCY_KEY_REUSED).
    - A transient rejection (see ``outcomes.is_transient``) is not replayed: the
      repeat runs again as a new execution, which takes the key; the earlier
      attempt stays recorded with its key in ``superseded_key``.
    - A RUNNING row whose owner process stopped heartbeating (it crashed) is
      marked REJECTED (ABANDONED) and the repeat runs again at once.

    Batch items (``request.resume``) own their keys exclusively: their rows are
    reused rather than replaced, and no fingerprint is checked.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        history: ExecutionHistory,
        *,
        owner: str,
        stale_after_s: float,
        running_limit_s: float,
        is_transient: Callable[[ExecutionFailure | None], bool],
    ) -> None:
        self._sessions = sessions
        self._history = history
        self.owner = owner
        self._stale_after_s = stale_after_s
        self._running_limit_s = running_limit_s
        self._is_transient = is_transient

    async def lookup(
        self, request: ExecutionRequest, fingerprint: str
    ) -> tuple[ExecutionRecord | None, ExecutionRecord | None]:
        """(the recorded result to replay, the earlier execution the new run replaces)."""
        if not request.external_id or request.fresh:
            return None, None
        existing = await self._history.find(request.workspace_id, external_id=request.external_id)
        if existing is None:
            return None, None
        return await self._decide(existing, request, fingerprint)

    async def claim(
        self,
        request: ExecutionRequest,
        record: ExecutionRecord,
        replaced: ExecutionRecord | None,
    ) -> bool | ExecutionRecord:
        """Take the key for ``record`` before it runs.

        Returns True when a row with the record's id now exists (the final
        write replaces it), False when there is none, or the execution to
        answer with instead (one that won a race for the key).
        """
        if not request.external_id:
            return False
        if request.resume:
            # A batch worker owns this key: it reruns its own earlier attempt in place.
            if replaced is not None:
                record.id = replaced.id
                return True
            return False
        record.owner = self.owner
        for _ in range(3):
            try:
                async with self._sessions.write() as session:
                    if replaced is not None:
                        if not await _release_key(session, replaced, record.external_id):
                            await session.rollback()
                            replaced = None
                            raise _Raced
                    session.add(to_row(record))
                    await session.commit()
                return True
            except (IntegrityError, _Raced):
                existing = await self._history.find(
                    request.workspace_id, external_id=request.external_id
                )
                if existing is None:
                    continue
                replay, replaced = await self._decide(existing, request, record.fingerprint)
                if replay is not None:
                    return replay
        raise Aborted(
            f"the external_id {request.external_id!r} is in use by concurrent calls; retry",
            reason="EXECUTION_IN_PROGRESS",
            metadata={"external_id": request.external_id},
        )

    async def _decide(
        self, existing: ExecutionRecord, request: ExecutionRequest, fingerprint: str
    ) -> tuple[ExecutionRecord | None, ExecutionRecord | None]:
        if request.resume:
            if existing.state is ExecutionState.RUNNING or (
                existing.error is not None and existing.error.code == "CANCELLED"
            ):
                return None, existing
            existing.replayed = True
            return existing, None
        if existing.fingerprint and fingerprint and existing.fingerprint != fingerprint:
            raise FailedPrecondition(
                f"the external_id {existing.external_id!r} was used for a different request",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"external_id": existing.external_id, "execution_id": existing.id},
            )
        if existing.state is ExecutionState.RUNNING:
            if await self._alive(existing):
                raise Aborted(
                    f"an execution with external_id {existing.external_id!r} is still running",
                    reason="EXECUTION_IN_PROGRESS",
                    metadata={"external_id": existing.external_id, "execution_id": existing.id},
                )
            return None, existing  # its server stopped: run it again
        if existing.state is ExecutionState.REJECTED and self._is_transient(existing.error):
            return None, existing
        existing.replayed = True
        return existing, None

    async def _alive(self, running: ExecutionRecord) -> bool:
        """Whether the process that runs ``running`` still heartbeats."""
        if running.owner == self.owner:
            return True
        if not running.owner:  # recorded before owners were: judge by age
            age = (utcnow() - running.created_at).total_seconds()
            return age <= self._running_limit_s
        return await heartbeat_fresh(self._sessions, running.owner, self._stale_after_s)


async def heartbeat_fresh(sessions: SessionFactory, process: str, stale_after_s: float) -> bool:
    """Whether server process ``process`` heartbeated within ``stale_after_s`` seconds."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    async with sessions() as session:
        beat = (
            await session.exec(
                select(BatchWorkerRow.heartbeat_at).where(BatchWorkerRow.id == process)
            )
        ).first()
    return beat is not None and as_utc(beat) >= cutoff


class _Raced(Exception):
    """Another call replaced the same earlier attempt first."""


async def _release_key(session: AsyncSession, replaced: ExecutionRecord, key: str) -> bool:
    """Move ``key`` off the attempt being replaced (ending it if it was left RUNNING)."""
    values: dict[str, Any] = {"external_id": None, "superseded_key": key}
    if replaced.state is ExecutionState.RUNNING:
        values.update(
            state=ExecutionState.REJECTED.value,
            finish_reason=FinishReason.ERROR.value,
            error=error_json(
                ExecutionFailure(
                    "ABANDONED", "the server running this execution stopped before it finished"
                )
            ),
            completed_at=utcnow(),
        )
    done = await session.exec(
        update(ExecutionRow)
        .where(
            col(ExecutionRow.id) == replaced.id,
            col(ExecutionRow.external_id) == key,
            col(ExecutionRow.state) == replaced.state.value,
        )
        .values(**values)
    )
    return bool(done.rowcount == 1)
