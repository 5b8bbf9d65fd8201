"""The provider protocol: how promptgate talks to a model API.

A provider turns a ``ProviderRequest`` (rendered messages, model, parameters,
response format, tools and raw overrides) into the provider's own JSON body,
sends it, and reads the answer back into a ``ProviderResponse``. It does one
call: no retries, fallbacks or recording, which the execution layer owns.

A provider implements three things::

    class EchoProvider:
        name = "echo"

        def build_payload(self, request: ProviderRequest) -> dict[str, Any]:
            return {"model": request.model, "messages": [m.content for m in request.messages]}

        async def complete(self, request: ProviderRequest) -> ProviderResponse:
            text = request.messages[-1].content
            return ProviderResponse(model=request.model, text=text, finish_reason=FinishReason.STOP)

        async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
            response = await self.complete(request)
            yield TextDelta(response.text)
            yield StreamDone(response)

Rules every adapter follows:

- ``build_payload`` is pure and returns exactly the body ``complete`` and
  ``stream`` send (RenderPrompt shows it to users), with
  ``request.raw_body`` deep-merged last.
- Failures raise ``promptgate.errors.ProviderError`` (or a subclass) with the
  HTTP status, Retry-After and whether a retry could help; never a transport
  library's exception.
- ``stream`` yields ``TextDelta`` events and ends with exactly one
  ``StreamDone``. If the upstream stream ends early it raises
  ``StreamInterrupted``; it never just stops.
- Cancellation is cooperative: when the awaiting task is cancelled the
  adapter lets ``CancelledError`` propagate and its HTTP request is closed, so
  the upstream sees the disconnect.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

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


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """Everything a provider needs for one call."""

    model: str
    messages: tuple[ChatMessage, ...]
    parameters: ModelParameters = field(default_factory=ModelParameters)
    response_format: ResponseFormat | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    raw_body: dict[str, Any] = field(default_factory=dict)
    raw_headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    """Seconds the whole call may take; None means no limit beyond the caller's."""


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    """A provider's complete answer."""

    model: str
    text: str = ""
    function_calls: tuple[FunctionCall, ...] = ()
    finish_reason: FinishReason = FinishReason.UNSPECIFIED
    usage: Usage = field(default_factory=Usage)
    raw: dict[str, Any] = field(default_factory=dict)
    """The provider's JSON response (for streams: the last chunk, with usage)."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the model's text, in order."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamDone:
    """The stream's last event: the whole answer, as if from ``complete``."""

    response: ProviderResponse


StreamEvent = TextDelta | StreamDone


class Provider(Protocol):
    """A model API. See the module docstring for the rules."""

    name: str

    def build_payload(self, request: ProviderRequest) -> dict[str, Any]:
        """The exact JSON body this request sends."""
        ...

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send the request and return the whole answer."""
        ...

    def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Send the request and yield the answer as it arrives."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
