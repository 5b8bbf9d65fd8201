"""Turns a prompt spec and template values into chat messages."""

from __future__ import annotations

from typing import Any

from promptgate.chat import ChatMessage, Role
from promptgate.errors import InvalidArgument
from promptgate.prompts.model import PromptSpec
from promptgate.prompts.partial_sets import EMPTY_PARTIALS, PartialSet
from promptgate.prompts.templates import TemplateEngine


async def render_messages(
    spec: PromptSpec,
    values: dict[str, Any],
    templates: TemplateEngine,
    *,
    field: str,
    max_chars: int,
    partials: PartialSet = EMPTY_PARTIALS,
) -> tuple[ChatMessage, ...]:
    """The rendered messages, ``partials`` included. An empty or oversized result is INVALID_PROMPT."""
    messages: list[ChatMessage] = []
    for i, block in enumerate(spec.messages):
        if block.chat_history_input:
            history = values.get(block.chat_history_input) or []
            messages.extend(m for m in history if isinstance(m, ChatMessage))
            continue
        content = await templates.render(
            block.template, values, f"{field}.messages[{i}].template", partials.sources
        )
        messages.append(ChatMessage(role=block.role or Role.USER, content=content))
    total = sum(len(m.content) for m in messages)
    if not messages or not any(m.content.strip() or m.function_calls for m in messages):
        raise InvalidArgument.field(field, "the rendered prompt is empty", reason="INVALID_PROMPT")
    if total > max_chars:
        raise InvalidArgument.field(
            field,
            f"the rendered prompt has {total} characters, more than the limit of {max_chars}",
            reason="INVALID_PROMPT",
        )
    return tuple(messages)
