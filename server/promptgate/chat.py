"""The chat vocabulary shared by prompts, providers and execution.

Plain dataclasses: what a rendered prompt is, what parameters a model call
takes and what a model returns. Protobuf mapping lives in ``promptgate.api``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Role(enum.StrEnum):
    """Who wrote a chat message (values are the OpenAI wire names)."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(enum.StrEnum):
    """Why a model stopped, normalised across providers."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A function call made by a model. ``arguments`` is None if they were not JSON."""

    id: str
    name: str
    arguments_json: str
    arguments: dict[str, Any] | None = None
    signature: str = ""
    """Opaque provider data to send back with the call (Gemini's thought signature)."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A rendered chat message."""

    role: Role
    content: str = ""
    function_calls: tuple[FunctionCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class ModelParameters:
    """Sampling parameters; None means "not set here"."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def merged_over(self, base: ModelParameters) -> ModelParameters:
        """These parameters, with unset ones taken from ``base``."""
        return ModelParameters(
            temperature=self.temperature if self.temperature is not None else base.temperature,
            max_tokens=self.max_tokens if self.max_tokens is not None else base.max_tokens,
            top_p=self.top_p if self.top_p is not None else base.top_p,
            stop=self.stop or base.stop,
            seed=self.seed if self.seed is not None else base.seed,
            presence_penalty=(
                self.presence_penalty
                if self.presence_penalty is not None
                else base.presence_penalty
            ),
            frequency_penalty=(
                self.frequency_penalty
                if self.frequency_penalty is not None
                else base.frequency_penalty
            ),
            extra=deep_merge(base.extra, self.extra),
        )


class ResponseFormatType(enum.StrEnum):
    """The kind of output a model is asked for."""

    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The shape the model's answer must take."""

    type: ResponseFormatType = ResponseFormatType.TEXT
    schema_name: str = ""
    json_schema: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None


class ToolChoiceMode(enum.StrEnum):
    """Whether and which function the model should call."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    FUNCTION = "function"


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A tool choice; ``function_name`` is set for FUNCTION."""

    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    function_name: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by a provider."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in; nested dicts merge, others replace."""
    if not override:
        return dict(base)
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parameter_problems(params: ModelParameters, field: str) -> list[tuple[str, str]]:
    """(field, description) for each out-of-range parameter."""
    problems: list[tuple[str, str]] = []

    def check(name: str, value: float | None, low: float, high: float) -> None:
        if value is not None and not (low <= value <= high):
            problems.append((f"{field}.{name}", f"must be between {low:g} and {high:g}"))

    check("temperature", params.temperature, 0, 2)
    check("top_p", params.top_p, 0, 1)
    check("presence_penalty", params.presence_penalty, -2, 2)
    check("frequency_penalty", params.frequency_penalty, -2, 2)
    if params.max_tokens is not None and params.max_tokens <= 0:
        problems.append((f"{field}.max_tokens", "must be greater than 0"))
    if len(params.stop) > 16:
        problems.append((f"{field}.stop", "at most 16 stop sequences"))
    return problems
