"""Batch rows as the domain sees them: batches, claimed items, runnable targets, errors."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from promptgate.batches.model import Batch, BatchState
from promptgate.chat import ModelParameters
from promptgate.execution.model import InlineTarget
from promptgate.execution.records import error_from_json, input_from_json
from promptgate.prompts.model import PromptInput, spec_from_json
from promptgate.store.tables import BatchItemRow, BatchRow, as_utc

PARAMS: TypeAdapter[ModelParameters] = TypeAdapter(ModelParameters)


class ClaimedItem:
    """An item a worker has claimed, with what it needs to run."""

    __slots__ = ("attempts", "custom_id", "index", "inputs", "metadata", "parameters", "starts")

    def __init__(self, row: BatchItemRow) -> None:
        self.index = row.idx
        self.custom_id = row.custom_id
        self.inputs: tuple[PromptInput, ...] = tuple(input_from_json(i) for i in row.inputs)
        self.parameters = PARAMS.validate_python(row.parameters) if row.parameters else None
        self.metadata: dict[str, Any] = dict(row.item_metadata or {})
        self.attempts = row.attempts
        self.starts = row.starts


class RunnableBatch:
    """What a worker needs to run a batch's items."""

    __slots__ = (
        "api_key_id",
        "chain_id",
        "id",
        "inline",
        "parameters",
        "prompt_id",
        "version",
        "workspace_id",
    )

    def __init__(self, row: BatchRow) -> None:
        self.id = row.id
        self.chain_id = row.chain_id or ""
        self.workspace_id = row.workspace_id
        self.api_key_id = row.api_key_id or ""
        self.prompt_id = row.prompt_id or ""
        self.version = row.version
        self.inline = (
            InlineTarget(
                spec=spec_from_json(row.inline_spec["spec"]), declared=row.inline_spec["declared"]
            )
            if row.inline_spec
            else None
        )
        self.parameters = PARAMS.validate_python(row.parameters) if row.parameters else None


def batch_of(row: BatchRow) -> Batch:
    """The Batch a row stores."""
    return Batch(
        id=row.id,
        workspace_id=row.workspace_id,
        display_name=row.display_name,
        state=BatchState(row.state),
        total=row.total,
        succeeded=row.succeeded,
        rejected=row.rejected,
        cancelled=row.cancelled,
        prompt_id=row.prompt_id or "",
        release_tag=row.release_tag,
        version=row.version,
        max_concurrency=row.max_concurrency,
        callback_url=row.callback_url,
        metadata=dict(row.batch_metadata or {}),
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at) if row.started_at else None,
        ended_at=as_utc(row.ended_at) if row.ended_at else None,
        last_seq=row.last_seq,
        error=error_from_json(row.error),
        callback_state=row.callback_state,
        callback_attempts=row.callback_attempts,
        chain_id=row.chain_id or "",
    )
