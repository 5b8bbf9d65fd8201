"""Batch domain objects."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from promptgate.chains.model import ChainExecution, StoredChain
from promptgate.chat import ModelParameters
from promptgate.execution.model import (
    ExecutionFailure,
    ExecutionRecord,
    ExecutionState,
    InlineTarget,
    StoredTarget,
)
from promptgate.prompts.model import PromptInput


class BatchState(enum.StrEnum):
    """The state of a batch."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether the batch has finished."""
        return self in (BatchState.SUCCEEDED, BatchState.FAILED, BatchState.CANCELLED)


class ItemState(enum.StrEnum):
    """The state of one batch item."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    FULFILLED = "FULFILLED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class BatchItemSpec:
    """One item as submitted."""

    custom_id: str
    inputs: tuple[PromptInput, ...] = ()
    parameters: ModelParameters | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """A batch as submitted."""

    workspace_id: str
    target: StoredTarget | InlineTarget | StoredChain
    items: tuple[BatchItemSpec, ...]
    display_name: str = ""
    max_concurrency: int = 0
    callback_url: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    parameters: ModelParameters | None = None
    api_key_id: str = ""


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch and its counts."""

    id: str
    workspace_id: str
    display_name: str
    state: BatchState
    total: int
    succeeded: int
    rejected: int
    cancelled: int
    prompt_id: str
    release_tag: str
    version: int
    max_concurrency: int
    callback_url: str
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    last_seq: int
    error: ExecutionFailure | None = None
    callback_state: str = ""
    callback_attempts: int = 0
    chain_id: str = ""

    @property
    def pending(self) -> int:
        """Items waiting or running."""
        return self.total - self.succeeded - self.rejected - self.cancelled


@dataclass(frozen=True, slots=True)
class ItemResult:
    """A batch item's state and, once it ran, its execution (or chain execution)."""

    custom_id: str
    index: int
    state: ItemState
    execution_id: str = ""
    execution: ExecutionRecord | None = None
    error: ExecutionFailure | None = None
    chain: ChainExecution | None = None


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One WatchBatch event: an item result or a progress snapshot."""

    seq: int
    item: ItemResult | None = None
    progress: Batch | None = None


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """How a batch item ended."""

    batch_id: str
    index: int
    state: ItemState
    execution_id: str = ""
    error: ExecutionFailure | None = None

    @classmethod
    def of(cls, batch_id: str, index: int, record: ExecutionRecord) -> ItemOutcome:
        """How an item whose execution ended as ``record`` ends."""
        if record.state is ExecutionState.FULFILLED:
            state = ItemState.FULFILLED
        elif record.error is not None and record.error.code == "CANCELLED":
            state = ItemState.CANCELLED
        else:
            state = ItemState.REJECTED
        return cls(batch_id, index, state, record.id, record.error)

    @classmethod
    def of_chain(cls, batch_id: str, index: int, execution: ChainExecution) -> ItemOutcome:
        """How an item whose chain execution ended as ``execution`` ends."""
        if execution.state is ExecutionState.FULFILLED:
            state = ItemState.FULFILLED
        elif execution.error is not None and execution.error.code == "CANCELLED":
            state = ItemState.CANCELLED
        else:
            state = ItemState.REJECTED
        return cls(batch_id, index, state, execution.id, execution.error)


def item_external_id(batch_id: str, index: int) -> str:
    """The idempotency key an item's execution runs (and is recorded) under."""
    return f"{batch_id}/{index}"
