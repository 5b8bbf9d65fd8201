"""SQLModel tables. Rows only: domain objects are built from them elsewhere.

Every row carries ``workspace_id`` so that each query can be scoped to the
caller's workspace. Structured values (templates, inputs, outputs) are JSON
columns; the domain owns their shape.

A change here needs a migration: see "Changing the schema" in the README.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored datetime as aware UTC (SQLite returns naive values)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(factory: type[dict[str, Any]] | type[list[Any]] | None) -> Any:
    if factory is None:
        return Field(default=None, sa_column=Column(JSON, nullable=True))
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


def _split() -> Any:
    # none_as_null: None is SQL NULL (not JSON null), so "IS NULL" finds it.
    return Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))


def _time(index: bool = False) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=index))


class PromptRow(SQLModel, table=True):
    """A named prompt."""

    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_prompts_workspace_name"),)

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=64)
    name: str = Field(max_length=128)
    description: str = ""
    labels: dict[str, str] = _json(dict)
    archived: bool = False
    latest_version: int = 0
    created_at: datetime = _time()
    updated_at: datetime = _time()


class PromptVersionRow(SQLModel, table=True):
    """An immutable prompt version; ``spec`` is the domain's PromptSpec as JSON."""

    __tablename__ = "prompt_versions"
    __table_args__ = (UniqueConstraint("prompt_id", "version", name="uq_versions_prompt_version"),)

    id: str = Field(primary_key=True, max_length=40)
    prompt_id: str = Field(foreign_key="prompts.id", max_length=40)
    workspace_id: str = Field(max_length=64)
    version: int
    spec: dict[str, Any] = _json(dict)
    description: str = ""
    created_at: datetime = _time()


class ReleaseTagRow(SQLModel, table=True):
    """Where a release tag of a prompt points now."""

    __tablename__ = "release_tags"

    prompt_id: str = Field(primary_key=True, foreign_key="prompts.id", max_length=40)
    tag: str = Field(primary_key=True, max_length=64)
    version_id: str = Field(max_length=40)
    version: int
    updated_at: datetime = _time()
    # A/B split (schema version 3): the domain's TrafficSplit, or NULL.
    split: dict[str, Any] | None = _split()


class ReleaseTagEventRow(SQLModel, table=True):
    """One move of a release tag (the tag history)."""

    __tablename__ = "release_tag_events"
    __table_args__ = (Index("ix_tag_events_prompt_seq", "prompt_id", "seq"),)

    seq: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    prompt_id: str = Field(max_length=40)
    tag: str = Field(max_length=64)
    version_id: str = Field(max_length=40)
    version: int
    previous_version: int = 0
    created_at: datetime = _time()
    # The split the tag moved to (schema version 3), or NULL.
    split: dict[str, Any] | None = _split()


class ExecutionRow(SQLModel, table=True):
    """A recorded execution."""

    __tablename__ = "executions"
    __table_args__ = (
        UniqueConstraint("workspace_id", "external_id", name="uq_executions_external_id"),
        Index("ix_executions_workspace_id", "workspace_id", "id"),
        Index("ix_executions_prompt", "workspace_id", "prompt_id", "id"),
        Index("ix_executions_api_key", "api_key_id", "created_at"),
        Index("ix_executions_chain", "chain_execution_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=64)
    external_id: str | None = Field(default=None, max_length=256)
    state: str = Field(max_length=16)
    streamed: bool = False
    prompt_id: str | None = Field(default=None, max_length=40)
    prompt_name: str = ""
    version_id: str | None = Field(default=None, max_length=40)
    version: int = 0
    release_tag: str = ""
    provider: str = ""
    model: str = ""
    inputs: list[Any] = _json(list)
    outputs: list[Any] = _json(list)
    error: dict[str, Any] | None = _json(None)
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    input_chars: int = 0
    output_chars: int = 0
    cost: float = 0.0
    priced: bool = False
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempts: int = 0
    cache_hit: bool = False
    cache_status: str = ""
    api_key_id: str | None = Field(default=None, max_length=40)
    target_index: int = 0
    attempt_log: list[Any] = _json(list)
    parameters: dict[str, Any] = _json(dict)
    request_metadata: dict[str, Any] = _json(dict)
    raw: dict[str, Any] = _json(dict)
    created_at: datetime = _time()
    completed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # Idempotency (schema version 2): a hash of the request that used the
    # external_id, the process that runs a RUNNING row, and on an attempt that
    # a later retry replaced, the external_id it had.
    request_fingerprint: str | None = Field(default=None, max_length=64)
    owner: str | None = Field(default=None, max_length=40)
    superseded_key: str | None = Field(default=None, max_length=256)
    # The release tag's traffic split that picked the version (schema version 3).
    split_id: str | None = Field(default=None, max_length=40)
    # Chains (schema version 4): the chain execution this is a step of, and the step.
    chain_execution_id: str | None = Field(default=None, max_length=40)
    chain_step: str | None = Field(default=None, max_length=64)
    # Tracing (schema version 5): the W3C trace id of the trace the execution ran in.
    trace_id: str | None = Field(default=None, max_length=32)


class ActualRow(SQLModel, table=True):
    """Feedback on an execution; the newest per execution is current."""

    __tablename__ = "actuals"
    __table_args__ = (Index("ix_actuals_execution", "execution_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=64)
    execution_id: str = Field(max_length=40)
    quality: float | None = None
    desired_output: str = ""
    actual_metadata: dict[str, Any] = _json(dict)
    observed_at: datetime = _time()
    created_at: datetime = _time()


class ChainRow(SQLModel, table=True):
    """A named chain of prompt steps."""

    __tablename__ = "chains"
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_chains_workspace_name"),)

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=64)
    name: str = Field(max_length=128)
    description: str = ""
    labels: dict[str, str] = _json(dict)
    archived: bool = False
    latest_version: int = 0
    created_at: datetime = _time()
    updated_at: datetime = _time()


class ChainVersionRow(SQLModel, table=True):
    """An immutable chain version; ``spec`` is the domain's ChainSpec as JSON."""

    __tablename__ = "chain_versions"
    __table_args__ = (
        UniqueConstraint("chain_id", "version", name="uq_chain_versions_chain_version"),
    )

    id: str = Field(primary_key=True, max_length=40)
    chain_id: str = Field(foreign_key="chains.id", max_length=40)
    workspace_id: str = Field(max_length=64)
    version: int
    spec: dict[str, Any] = _json(dict)
    description: str = ""
    created_at: datetime = _time()


class ChainReleaseTagRow(SQLModel, table=True):
    """Where a release tag of a chain points now."""

    __tablename__ = "chain_release_tags"

    chain_id: str = Field(primary_key=True, foreign_key="chains.id", max_length=40)
    tag: str = Field(primary_key=True, max_length=64)
    version_id: str = Field(max_length=40)
    version: int
    updated_at: datetime = _time()


class ChainReleaseTagEventRow(SQLModel, table=True):
    """One move of a chain's release tag (the tag history)."""

    __tablename__ = "chain_release_tag_events"
    __table_args__ = (Index("ix_chain_tag_events_chain_seq", "chain_id", "seq"),)

    seq: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    chain_id: str = Field(max_length=40)
    tag: str = Field(max_length=64)
    version_id: str = Field(max_length=40)
    version: int
    previous_version: int = 0
    created_at: datetime = _time()


class ChainExecutionRow(SQLModel, table=True):
    """An execution of a chain; its steps are executions rows that point back here."""

    __tablename__ = "chain_executions"
    __table_args__ = (
        UniqueConstraint("workspace_id", "external_id", name="uq_chain_executions_external_id"),
        Index("ix_chain_executions_workspace_id", "workspace_id", "id"),
        Index("ix_chain_executions_chain", "workspace_id", "chain_id", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=64)
    external_id: str | None = Field(default=None, max_length=256)
    request_fingerprint: str | None = Field(default=None, max_length=64)
    superseded_key: str | None = Field(default=None, max_length=256)
    owner: str | None = Field(default=None, max_length=40)
    state: str = Field(max_length=16)
    streamed: bool = False
    chain_id: str | None = Field(default=None, max_length=40)
    chain_name: str = ""
    version_id: str | None = Field(default=None, max_length=40)
    version: int = 0
    release_tag: str = ""
    inputs: list[Any] = _json(list)
    outputs: list[Any] = _json(list)
    steps: list[Any] = _json(list)
    error: dict[str, Any] | None = _json(None)
    failed_step: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    input_chars: int = 0
    output_chars: int = 0
    cost: float = 0.0
    priced: bool = False
    latency_ms: float = 0.0
    request_metadata: dict[str, Any] = _json(dict)
    api_key_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = _time()
    completed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class BatchRow(SQLModel, table=True):
    """A durable batch; the counters and ``last_seq`` change with every finished item."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_state", "state", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=64)
    display_name: str = ""
    state: str = Field(max_length=16)
    prompt_id: str | None = Field(default=None, max_length=40)
    prompt_name: str = ""
    version_id: str | None = Field(default=None, max_length=40)
    version: int = 0
    release_tag: str = ""
    inline_spec: dict[str, Any] | None = _json(None)
    parameters: dict[str, Any] = _json(dict)
    max_concurrency: int = 1
    callback_url: str = ""
    batch_metadata: dict[str, Any] = _json(dict)
    total: int = 0
    succeeded: int = 0
    rejected: int = 0
    cancelled: int = 0
    last_seq: int = 0
    cancel_requested: bool = False
    error: dict[str, Any] | None = _json(None)
    callback_state: str = ""
    callback_claimed_by: str | None = Field(default=None, max_length=40)
    callback_attempts: int = 0
    api_key_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = _time()
    started_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    ended_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    updated_at: datetime = _time()
    # Chains (schema version 4): the stored chain the items run, instead of a
    # prompt (version_id, version and release_tag are then the chain's).
    chain_id: str | None = Field(default=None, max_length=40)


class BatchItemRow(SQLModel, table=True):
    """One item of a batch: its inputs, and its state and execution once it ran."""

    __tablename__ = "batch_items"
    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id", name="uq_batch_items_custom_id"),
        Index("ix_batch_items_state", "batch_id", "state", "idx"),
        Index("ix_batch_items_claimed_by", "claimed_by", "state"),
    )

    batch_id: str = Field(primary_key=True, foreign_key="batches.id", max_length=40)
    idx: int = Field(primary_key=True)
    custom_id: str = Field(max_length=256)
    inputs: list[Any] = _json(list)
    parameters: dict[str, Any] | None = _json(None)
    item_metadata: dict[str, Any] = _json(dict)
    state: str = Field(max_length=16)
    execution_id: str | None = Field(default=None, max_length=40)
    error: dict[str, Any] | None = _json(None)
    attempts: int = 0
    starts: int = 0
    claimed_by: str | None = Field(default=None, max_length=40)
    claimed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    seq: int | None = None


class BatchEventRow(SQLModel, table=True):
    """The batch's event log, numbered from 1: items finishing and state changes."""

    __tablename__ = "batch_events"

    batch_id: str = Field(primary_key=True, max_length=40)
    seq: int = Field(primary_key=True)
    kind: str = Field(max_length=8)
    item_idx: int | None = None
    state: str = ""
    created_at: datetime = _time()


class BatchWorkerRow(SQLModel, table=True):
    """A process that runs batch items; a stale heartbeat means it died."""

    __tablename__ = "batch_workers"

    id: str = Field(primary_key=True, max_length=40)
    heartbeat_at: datetime = _time()
    started_at: datetime = _time()


class BatchCallbackAttemptRow(SQLModel, table=True):
    """One delivery attempt of a batch's completion webhook."""

    __tablename__ = "batch_callback_attempts"
    __table_args__ = (Index("ix_callback_attempts_batch", "batch_id", "attempt"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    batch_id: str = Field(max_length=40)
    attempt: int
    status_code: int = 0
    error: str = ""
    duration_ms: float = 0.0
    created_at: datetime = _time()


class WorkspaceRow(SQLModel, table=True):
    """A workspace: every prompt, execution and batch belongs to one."""

    __tablename__ = "workspaces"

    id: str = Field(primary_key=True, max_length=64)
    name: str = ""
    created_at: datetime = _time()


class ApiKeyRow(SQLModel, table=True):
    """An API key: its secret's SHA-256, never the secret."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_workspace", "workspace_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(foreign_key="workspaces.id", max_length=64)
    name: str = ""
    secret_sha256: str = Field(max_length=64)
    scopes: list[str] = _json(list)
    plan: str = Field(max_length=32)
    limit_overrides: dict[str, Any] = _json(dict)
    created_at: datetime = _time()
    expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class AuditEventRow(SQLModel, table=True):
    """One administrative change (see promptgate.audit); ``seq`` orders the log."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_workspace_seq", "workspace_id", "seq"),
        Index("ix_audit_events_resource", "workspace_id", "resource", "seq"),
    )

    seq: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    id: str = Field(max_length=40)
    workspace_id: str = Field(max_length=64)
    actor: str = Field(max_length=64)
    action: str = Field(max_length=64)
    resource: str = Field(max_length=512)
    before: dict[str, Any] | None = _json(None)
    after: dict[str, Any] | None = _json(None)
    created_at: datetime = _time()


# Partials


class PartialRow(SQLModel, table=True):
    """A named partial (a template snippet that prompt templates include)."""

    __tablename__ = "partials"
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_partials_workspace_name"),)

    id: str = Field(primary_key=True, max_length=40)
    workspace_id: str = Field(max_length=64)
    name: str = Field(max_length=128)
    description: str = ""
    archived: bool = False
    latest_version: int = 0
    created_at: datetime = _time()
    updated_at: datetime = _time()


class PartialVersionRow(SQLModel, table=True):
    """An immutable partial version; ``includes`` lists the partials its content includes."""

    __tablename__ = "partial_versions"
    __table_args__ = (
        UniqueConstraint("partial_id", "version", name="uq_partial_versions_partial_version"),
    )

    id: str = Field(primary_key=True, max_length=40)
    partial_id: str = Field(foreign_key="partials.id", max_length=40)
    workspace_id: str = Field(max_length=64)
    version: int
    content: str = Field(sa_column=Column(Text, nullable=False))
    includes: list[str] = _json(list)
    description: str = ""
    created_at: datetime = _time()
