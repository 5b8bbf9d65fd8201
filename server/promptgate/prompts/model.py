"""Prompt domain objects."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from promptgate.chat import ModelParameters, ResponseFormat, Role, Tool, ToolChoice
from promptgate.prompts.partial_sets import EMPTY_PARTIALS, PartialSet


class InputType(enum.StrEnum):
    """The declared type of an input variable."""

    STRING = "STRING"
    JSON = "JSON"
    CHAT_HISTORY = "CHAT_HISTORY"
    NUMBER = "NUMBER"
    BOOLEAN = "BOOLEAN"


@dataclass(frozen=True, slots=True)
class InputVariable:
    """A declared input variable; it is required unless it has a default."""

    name: str
    type: InputType
    description: str = ""
    has_default: bool = False
    default: Any = None


@dataclass(frozen=True, slots=True)
class PromptInput:
    """A caller-supplied input value; ``type`` is the kind of value given."""

    name: str
    type: InputType
    value: Any


@dataclass(frozen=True, slots=True)
class TemplateMessage:
    """One message template, or a chat-history block when ``chat_history_input`` is set."""

    role: Role | None
    template: str = ""
    chat_history_input: str = ""


class Strategy(enum.StrEnum):
    """How routing targets are tried."""

    SINGLE = "single"
    FALLBACK = "fallback"
    WEIGHTED = "weighted"


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One provider target of a route."""

    model: str
    provider: str = ""
    parameters: ModelParameters | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of one target; None fields take the server's defaults."""

    max_attempts: int = 0
    initial_backoff_s: float | None = None
    max_backoff_s: float | None = None


@dataclass(frozen=True, slots=True)
class Routing:
    """Targets, retries and fallbacks of an execution."""

    strategy: Strategy | None = None
    targets: tuple[RouteTarget, ...] = ()
    retry: RetryPolicy | None = None
    attempt_timeout_s: float | None = None


class CacheMode(enum.StrEnum):
    """How an execution uses the response cache."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Response cache policy; None fields inherit."""

    mode: CacheMode | None = None
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """What a prompt version (or an inline prompt) says to do."""

    messages: tuple[TemplateMessage, ...]
    model: str
    provider: str = ""
    parameters: ModelParameters = field(default_factory=ModelParameters)
    input_variables: tuple[InputVariable, ...] = ()
    response_format: ResponseFormat | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    routing: Routing | None = None
    cache: CachePolicy | None = None
    # A stored version's partials, name -> version, pinned when it was created.
    partials: dict[str, int] = field(default_factory=dict)


SPEC_ADAPTER: TypeAdapter[PromptSpec] = TypeAdapter(PromptSpec)


def spec_to_json(spec: PromptSpec) -> dict[str, Any]:
    """The spec as a JSON-ready dict (for storage)."""
    data: dict[str, Any] = SPEC_ADAPTER.dump_python(spec, mode="json")
    return data


def spec_from_json(data: dict[str, Any]) -> PromptSpec:
    """A spec from storage."""
    return SPEC_ADAPTER.validate_python(data)


@dataclass(frozen=True, slots=True)
class VersionWeight:
    """A version of a traffic split and its weight (asked for: by number or id)."""

    version: int = 0
    version_id: str = ""
    weight: float = 0.0


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """A release tag's split between versions (an A/B test); the first is the control.

    Weights are normalised (they sum to 1). See prompts/splits.py.
    """

    id: str
    versions: tuple[VersionWeight, ...]
    started_at: datetime


@dataclass(frozen=True, slots=True)
class ReleaseTag:
    """Where a release tag points; with a split, ``version`` is its control."""

    tag: str
    version: int
    version_id: str
    updated_at: datetime
    automatic: bool = False
    split: TrafficSplit | None = None


@dataclass(frozen=True, slots=True)
class ReleaseTagEvent:
    """One move of a release tag."""

    seq: int
    tag: str
    version: int
    version_id: str
    previous_version: int
    time: datetime
    split: TrafficSplit | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    """A named prompt and its release tags."""

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
class PromptVersion:
    """An immutable prompt version."""

    id: str
    prompt_id: str
    version: int
    spec: PromptSpec
    description: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ResolvedPrompt:
    """A stored prompt version picked by a tag or number, ready to render.

    Through a split tag, ``split`` is set and ``variants`` holds its versions
    in order; ``version`` is the control until ``splits.assign`` picks one.
    """

    prompt: Prompt
    version: PromptVersion
    release_tag: str
    split: TrafficSplit | None = None
    variants: tuple[PromptVersion, ...] = ()
    # The partial versions each of them pins (version id -> set); see ``partials_of``.
    partials: Mapping[str, PartialSet] = field(default_factory=dict)

    def partials_of(self, version: PromptVersion) -> PartialSet:
        """The partials ``version`` (``version`` or one of ``variants``) renders with."""
        return self.partials.get(version.id, EMPTY_PARTIALS)
