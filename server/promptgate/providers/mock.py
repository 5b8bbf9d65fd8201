"""The mock provider: deterministic, controllable, free.

It answers every model name (``mock-1``, ``mock-fast``, ...) with text derived
only from the rendered prompt, so tests, demos and benchmarks get stable
results without a network. Its behaviour is controlled per request by a
``mock`` object in the parameters' ``extra`` (or in ``raw_overrides.body``)::

    {"mock": {
        "text": "fixed reply",         # reply text (default: derived from the prompt)
        "output_tokens": 50,           # reply length in tokens (words)
        "input_tokens": 12,            # reported prompt tokens (default: counted)
        "latency_ms": 20,              # unary: time before the answer
        "ttft_ms": 5,                  # stream: time before the first delta
        "chunks": 8,                   # stream: number of deltas
        "chunk_interval_ms": 10,       # stream: time between deltas
        "error_status": 429,           # fail like a provider answering this HTTP status
        "error_message": "...",        # with this message
        "retry_after_s": 2,            # and this Retry-After
        "cut_after": 3,                # stream: break off after this many deltas
        "hang": true,                  # never answer (until cancelled or timed out)
        "function_call": {"name": "f", "arguments": {"x": 1}}
    }}

Model names work too: ``mock-hang``, ``mock-error-503``, ``mock-cut-2``.
A token is a whitespace-separated word.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from promptgate.chat import FinishReason, FunctionCall, Role, Usage, deep_merge
from promptgate.errors import ProviderError, StreamInterrupted
from promptgate.providers.base import (
    ProviderRequest,
    ProviderResponse,
    StreamDone,
    StreamEvent,
    TextDelta,
)

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()
_MODEL_CONTROL = re.compile(r"^mock-(hang|error-(\d{3})|cut-(\d+))$")


_Count = Annotated[int, Field(ge=0, le=100_000)]
_Millis = Annotated[float, Field(ge=0, le=3_600_000)]


@dataclass(frozen=True, slots=True)
class MockControls:
    """The behaviour asked of the mock for one request."""

    text: str | None = None
    output_tokens: _Count | None = None
    input_tokens: _Count | None = None
    latency_ms: _Millis = 0.0
    ttft_ms: _Millis = 0.0
    chunks: Annotated[int, Field(ge=1, le=10_000)] | None = None
    chunk_interval_ms: _Millis = 0.0
    error_status: Annotated[int, Field(ge=0, le=599)] = 0
    error_message: str = ""
    retry_after_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    cut_after: _Count | None = None
    hang: bool = False
    function_call: dict[str, Any] | None = None

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> MockControls:
        """Controls from the payload's ``mock`` key and the model name."""
        raw = payload.get("mock") or {}
        if not isinstance(raw, dict):
            raw = {}
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name in raw and raw[name] is not None:
                values[name] = raw[name]
        match = _MODEL_CONTROL.match(str(payload.get("model", "")))
        if match:
            if match.group(1) == "hang":
                values.setdefault("hang", True)
            elif match.group(2):
                values.setdefault("error_status", int(match.group(2)))
            elif match.group(3):
                values.setdefault("cut_after", int(match.group(3)))
        try:
            return _CONTROLS.validate_python(values)
        except ValidationError as exc:
            # Like a provider refusing a bad parameter: the execution is REJECTED.
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ProviderError(
                f"invalid mock controls: {problems}", code="PROVIDER_INVALID_REQUEST", status=400
            ) from None


_CONTROLS: TypeAdapter[MockControls] = TypeAdapter(MockControls)


class MockProvider:
    """A provider that needs no network. See the module docstring."""

    name = "mock"

    def build_payload(self, request: ProviderRequest, *, stream: bool = False) -> dict[str, Any]:
        """An OpenAI-shaped body; the ``mock`` controls ride along in it."""
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role.value, "content": m.content} for m in request.messages],
        }
        params = request.parameters
        for key in ("temperature", "max_tokens", "top_p", "seed"):
            value = getattr(params, key)
            if value is not None:
                payload[key] = value
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.extra:
            payload = deep_merge(payload, params.extra)
        if stream:
            payload["stream"] = True
        return deep_merge(payload, request.raw_body)

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Wait ``latency_ms`` (or forever, or fail) and answer."""
        payload = self.build_payload(request)
        controls = MockControls.from_payload(payload)
        if controls.hang:
            await asyncio.Event().wait()
        if controls.latency_ms > 0:
            await asyncio.sleep(controls.latency_ms / 1000)
        _raise_if_error(controls)
        return _answer(request, payload, controls)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Yield the answer in ``chunks`` deltas, paced as asked."""
        payload = self.build_payload(request, stream=True)
        controls = MockControls.from_payload(payload)
        if controls.hang:
            await asyncio.Event().wait()
        if controls.ttft_ms > 0:
            await asyncio.sleep(controls.ttft_ms / 1000)
        _raise_if_error(controls)
        response = _answer(request, payload, controls)
        pieces = _split(response.text, controls.chunks)
        for index, piece in enumerate(pieces):
            if controls.cut_after is not None and index >= controls.cut_after:
                raise StreamInterrupted(f"mock stream cut after {index} chunks")
            if index and controls.chunk_interval_ms > 0:
                await asyncio.sleep(controls.chunk_interval_ms / 1000)
            yield TextDelta(piece)
        if controls.cut_after is not None and len(pieces) <= controls.cut_after:
            raise StreamInterrupted(f"mock stream cut after {len(pieces)} chunks")
        yield StreamDone(response)

    async def aclose(self) -> None:
        """Nothing to release."""


def _raise_if_error(controls: MockControls) -> None:
    status = controls.error_status
    if not status:
        return
    message = controls.error_message or f"mock provider error {status}"
    code = "PROVIDER_RATE_LIMITED" if status == 429 else "PROVIDER_ERROR"
    raise ProviderError(
        message,
        code=code,
        status=status,
        retry_after=controls.retry_after_s,
        retryable=status in (408, 409, 429) or status >= 500,
    )


def _answer(
    request: ProviderRequest, payload: dict[str, Any], controls: MockControls
) -> ProviderResponse:
    prompt_text = "\n".join(m.content for m in request.messages)
    input_tokens = (
        controls.input_tokens if controls.input_tokens is not None else len(prompt_text.split())
    )
    calls: tuple[FunctionCall, ...] = ()
    if controls.function_call:
        arguments = controls.function_call.get("arguments", {})
        arguments_json = json.dumps(arguments, sort_keys=True)
        digest = hashlib.sha256(prompt_text.encode()).hexdigest()[:12]
        calls = (
            FunctionCall(
                id=f"call_{digest}",
                name=str(controls.function_call.get("name", "function")),
                arguments_json=arguments_json,
                arguments=arguments if isinstance(arguments, dict) else None,
            ),
        )
    text = "" if calls else _text(request, prompt_text, controls)
    max_tokens = request.parameters.max_tokens
    words = text.split(" ") if text else []
    finish = FinishReason.TOOL_CALLS if calls else FinishReason.STOP
    if max_tokens is not None and len(words) > max_tokens:
        text = " ".join(words[:max_tokens])
        finish = FinishReason.LENGTH
    usage = Usage(input_tokens=input_tokens, output_tokens=len(text.split()) + 10 * len(calls))
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    raw = {
        "id": f"mock-{digest[:16]}",
        "object": "chat.completion",
        "model": request.model,
        "system_fingerprint": "mock",
        "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens},
    }
    return ProviderResponse(
        model=request.model,
        text=text,
        function_calls=calls,
        finish_reason=finish,
        usage=usage,
        raw=raw,
    )


def _text(request: ProviderRequest, prompt_text: str, controls: MockControls) -> str:
    if controls.text is not None:
        base = controls.text
    else:
        last_user = next(
            (m.content for m in reversed(request.messages) if m.role is Role.USER), prompt_text
        )
        base = f"Mock reply to: {' '.join(last_user.split()[:40])}"
    if controls.output_tokens is None:
        return base
    words = base.split()
    seed = int.from_bytes(hashlib.sha256(prompt_text.encode()).digest()[:8], "big")
    while len(words) < controls.output_tokens:
        words.append(_WORDS[(seed + len(words)) % len(_WORDS)])
    return " ".join(words[: max(controls.output_tokens, 0)])


def _split(text: str, chunks: int | None) -> list[str]:
    """``text`` in ``chunks`` pieces on word boundaries (default: one piece per word, at most 16)."""
    words = text.split(" ") if text else []
    if not words:
        return []
    count = max(1, min(chunks if chunks is not None else 16, len(words)))
    size, extra = divmod(len(words), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        piece = " ".join(words[start:end])
        pieces.append(piece if index == 0 else " " + piece)
        start = end
    return pieces
