"""Execution domain objects: requests, outcomes and stream events."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from promptgate.chat import (
    ChatMessage,
    FinishReason,
    FunctionCall,
    ModelParameters,
    ResponseFormat,
    Tool,
    ToolChoice,
    Usage,
)
from promptgate.execution.actuals import Actual
from promptgate.prompts.model import CachePolicy, PromptInput, PromptSpec, Routing


class ExecutionState(enum.StrEnum):
    """The state of an execution."""

    RUNNING = "RUNNING"
    FULFILLED = "FULFILLED"
    REJECTED = "REJECTED"


@dataclass(frozen=True, slots=True)
class StoredTarget:
    """Run a stored prompt, by version number or else by release tag."""

    prompt: str
    release_tag: str = ""
    version: int = 0


@dataclass(frozen=True, slots=True)
class InlineTarget:
    """Run a prompt sent with the request. ``declared`` False: inputs define the variables."""

    spec: PromptSpec
    declared: bool = False


@dataclass(frozen=True, slots=True)
class ExecutionRequest:
    """One execution as asked for by a caller (already free of protobuf)."""

    workspace_id: str
    target: StoredTarget | InlineTarget
    inputs: tuple[PromptInput, ...] = ()
    external_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    parameters: ModelParameters | None = None
    response_format: ResponseFormat | None = None
    tools: tuple[Tool, ...] | None = None
    tool_choice: ToolChoice | None = None
    expand_raw: tuple[str, ...] = ()
    raw_body: dict[str, Any] = field(default_factory=dict)
    raw_headers: dict[str, str] = field(default_factory=dict)
    model: str = ""
    provider: str = ""
    timeout: float | None = None
    """Seconds, from the request's timeout field."""
    deadline: float | None = None
    """Seconds left until the caller's deadline, if it set one."""
    routing: Routing | None = None
    cache: CachePolicy | None = None
    api_key_id: str = ""
    """The API key the execution is made with (its tokens count against it)."""
    split_key: str = ""
    """What a release tag's traffic split assigns the version by (random if empty)."""
    chain_execution_id: str = ""
    """The chain execution this execution is a step of ("" outside chains)."""
    chain_step: str = ""
    """The name of the chain step it runs."""
    resume: bool = False
    fresh: bool = False
    """The caller knows no execution with this external_id exists (skip the lookup)."""
    """Re-run (under the same id) an execution with this external_id that is still
    RUNNING or was CANCELLED: its process died or was shut down (batch items)."""


@dataclass(frozen=True, slots=True)
class TextOutput:
    """A STRING output."""

    text: str


@dataclass(frozen=True, slots=True)
class JsonOutput:
    """A JSON output."""

    value: Any


@dataclass(frozen=True, slots=True)
class FunctionCallOutput:
    """A FUNCTION_CALL output."""

    call: FunctionCall


Output = TextOutput | JsonOutput | FunctionCallOutput


@dataclass(frozen=True, slots=True)
class ExecutionFailure:
    """Why an execution was rejected."""

    code: str
    message: str
    provider_status: int = 0
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One provider call of an execution."""

    number: int
    provider: str
    model: str
    latency_s: float
    failure: ExecutionFailure | None = None


@dataclass(frozen=True, slots=True)
class Cost:
    """What an execution cost; ``priced`` False when the model has no price."""

    value: float = 0.0
    unit: str = "USD"
    priced: bool = False


@dataclass(slots=True)
class ExecutionRecord:
    """An execution: live while it runs, then as recorded."""

    id: str
    workspace_id: str
    state: ExecutionState
    created_at: datetime
    external_id: str = ""
    streamed: bool = False
    prompt_id: str = ""
    prompt_name: str = ""
    version_id: str = ""
    version: int = 0
    release_tag: str = ""
    provider: str = ""
    model: str = ""
    inputs: tuple[PromptInput, ...] = ()
    outputs: tuple[Output, ...] = ()
    error: ExecutionFailure | None = None
    finish_reason: FinishReason = FinishReason.UNSPECIFIED
    usage: Usage = field(default_factory=Usage)
    input_chars: int = 0
    output_chars: int = 0
    cost: Cost = field(default_factory=Cost)
    latency: float = 0.0
    time_to_first_token: float | None = None
    attempts: int = 0
    cache_hit: bool = False
    parameters: ModelParameters = field(default_factory=ModelParameters)
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    completed_at: datetime | None = None
    replayed: bool = False
    actuals: tuple[Actual, ...] = ()
    attempt_log: tuple[Attempt, ...] = ()
    target_index: int = 0
    cache_status: str = ""
    """"hit", "miss" or "refresh"; "" when caching was off."""
    api_key_id: str = ""
    fingerprint: str = ""
    """A hash of the request, kept with an external_id (see records.request_fingerprint)."""
    owner: str = ""
    """The server process that runs the execution (its heartbeat tells if it is alive)."""
    superseded_key: str = ""
    """The external_id this attempt had before a retry of a transient failure replaced it."""
    split_id: str = ""
    """The release tag's traffic split that picked the version, if one did."""
    chain_execution_id: str = ""
    """The chain execution this execution is a step of ("" outside chains)."""
    chain_step: str = ""
    """The name of the chain step it ran."""
    trace_id: str = ""
    """The W3C trace id (32 hex digits) of the trace it ran in, "" if none was known."""


@dataclass(frozen=True, slots=True)
class Rendering:
    """A rendered prompt and the provider request it makes, without executing it."""

    messages: tuple[ChatMessage, ...]
    provider: str
    model: str
    payload: dict[str, Any]
    prompt_id: str = ""
    version_id: str = ""
    version: int = 0
    release_tag: str = ""
    split_id: str = ""
    partials: Mapping[str, int] = field(default_factory=dict)  # the partial versions included


@dataclass(frozen=True, slots=True)
class Initiated:
    """Stream event: the execution started."""

    record: ExecutionRecord


@dataclass(frozen=True, slots=True)
class Delta:
    """Stream event: a piece of output ``index``."""

    text: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    """Stream event: the execution finished (FULFILLED or REJECTED) and is recorded."""

    record: ExecutionRecord


ExecutionEvent = Initiated | Delta | Finished
