"""Chain domain objects: specs, stored chains, requests, executions and stream events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from promptgate.chat import ModelParameters, Usage
from promptgate.execution.model import (
    Cost,
    ExecutionFailure,
    ExecutionRecord,
    ExecutionState,
    InlineTarget,
    Output,
    StoredTarget,
)
from promptgate.prompts.model import InputVariable, PromptInput, ReleaseTag


@dataclass(frozen=True, slots=True)
class ChainStep:
    """One step: a prompt to run and the variable its output becomes."""

    name: str
    target: StoredTarget | InlineTarget
    output_variable: str
    parameters: ModelParameters | None = None


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """What a chain version (or an inline chain) says to do.

    With ``input_variables`` empty, a chain's inputs are taken as given.
    """

    steps: tuple[ChainStep, ...]
    input_variables: tuple[InputVariable, ...] = ()


_SPEC: TypeAdapter[ChainSpec] = TypeAdapter(ChainSpec)


def spec_to_json(spec: ChainSpec) -> dict[str, Any]:
    """The spec as a JSON-ready dict (for storage)."""
    data: dict[str, Any] = _SPEC.dump_python(spec, mode="json")
    return data


def spec_from_json(data: dict[str, Any]) -> ChainSpec:
    """A spec from storage."""
    return _SPEC.validate_python(data)


@dataclass(frozen=True, slots=True)
class Chain:
    """A named chain and its release tags."""

    id: str
    workspace_id: str
    name: str
    description: str
    labels: dict[str, str]
    archived: bool
    latest_version: int
    release_tags: tuple[ReleaseTag, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ChainVersion:
    """An immutable chain version."""

    id: str
    chain_id: str
    version: int
    spec: ChainSpec
    description: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ResolvedChain:
    """A stored chain version picked by a tag or number."""

    chain: Chain
    version: ChainVersion
    release_tag: str


@dataclass(frozen=True, slots=True)
class StoredChain:
    """Run a stored chain, by version number or else by release tag."""

    chain: str
    release_tag: str = ""
    version: int = 0


@dataclass(frozen=True, slots=True)
class InlineChain:
    """Run a chain sent with the request."""

    spec: ChainSpec


@dataclass(frozen=True, slots=True)
class ChainRequest:
    """One chain execution as asked for by a caller (already free of protobuf)."""

    workspace_id: str
    target: StoredChain | InlineChain
    inputs: tuple[PromptInput, ...] = ()
    external_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    """Seconds, for the whole chain."""
    deadline: float | None = None
    """Seconds left until the caller's deadline, if it set one."""
    api_key_id: str = ""
    split_key: str = ""
    """Passed to every step: sticky assignment on split release tags."""


@dataclass(slots=True)
class StepResult:
    """What one step did; ``record`` is its execution when it is at hand."""

    name: str
    output_variable: str
    state: ExecutionState
    execution_id: str = ""
    error: ExecutionFailure | None = None
    record: ExecutionRecord | None = None


@dataclass(slots=True)
class ChainExecution:
    """A chain execution: live while it runs, then as recorded."""

    id: str
    workspace_id: str
    state: ExecutionState
    created_at: datetime
    external_id: str = ""
    streamed: bool = False
    chain_id: str = ""
    chain_name: str = ""
    version_id: str = ""
    version: int = 0
    release_tag: str = ""
    inputs: tuple[PromptInput, ...] = ()
    outputs: tuple[Output, ...] = ()
    steps: list[StepResult] = field(default_factory=list)
    error: ExecutionFailure | None = None
    failed_step: str = ""
    usage: Usage = field(default_factory=Usage)
    input_chars: int = 0
    output_chars: int = 0
    cost: Cost = field(default_factory=lambda: Cost(priced=True))
    latency: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    completed_at: datetime | None = None
    api_key_id: str = ""
    fingerprint: str = ""
    """A hash of the request, kept with an external_id (see runner.chain_fingerprint)."""
    owner: str = ""
    """The server process that runs the chain (its heartbeat tells if it is alive)."""
    replayed: bool = False

    def add_step(self, result: StepResult) -> None:
        """Count a finished step: its usage and cost add to the chain's."""
        self.steps.append(result)
        record = result.record
        if record is None:
            return
        self.usage = Usage(
            input_tokens=self.usage.input_tokens + record.usage.input_tokens,
            output_tokens=self.usage.output_tokens + record.usage.output_tokens,
            cached_input_tokens=self.usage.cached_input_tokens + record.usage.cached_input_tokens,
        )
        self.input_chars += record.input_chars
        self.output_chars += record.output_chars
        self.cost = Cost(
            value=self.cost.value + record.cost.value,
            unit=record.cost.unit,
            priced=self.cost.priced and record.cost.priced,
        )


@dataclass(frozen=True, slots=True)
class StepStarted:
    """Stream event: step ``index`` of chain execution ``chain`` started as ``record``."""

    chain: str
    index: int
    step: str
    record: ExecutionRecord


@dataclass(frozen=True, slots=True)
class StepDelta:
    """Stream event: a piece of output ``output_index`` of step ``index``."""

    chain: str
    index: int
    step: str
    text: str
    output_index: int = 0


@dataclass(frozen=True, slots=True)
class StepFinished:
    """Stream event: step ``index`` finished (its execution is recorded)."""

    chain: str
    index: int
    result: StepResult


@dataclass(frozen=True, slots=True)
class ChainFinished:
    """Stream event: the chain finished (FULFILLED or REJECTED) and is recorded."""

    execution: ChainExecution


ChainEvent = StepStarted | StepDelta | StepFinished | ChainFinished
