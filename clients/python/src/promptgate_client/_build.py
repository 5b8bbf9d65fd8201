"""Typed protobuf messages from plain Python values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from google.protobuf import json_format, struct_pb2

from promptgate_client.v1 import chain_service_pb2, common_pb2, execution_service_pb2

InputValue: TypeAlias = (
    "str | bool | int | float | Mapping[str, Any] | Sequence[Any]"
    " | common_pb2.ChatHistory | common_pb2.PromptInput | None"
)
Inputs: TypeAlias = "Mapping[str, InputValue] | Iterable[common_pb2.PromptInput]"

_ROLES = {
    "system": common_pb2.MESSAGE_ROLE_SYSTEM,
    "user": common_pb2.MESSAGE_ROLE_USER,
    "assistant": common_pb2.MESSAGE_ROLE_ASSISTANT,
    "tool": common_pb2.MESSAGE_ROLE_TOOL,
}


def json_value(value: Any) -> struct_pb2.Value:
    """A google.protobuf.Value holding any JSON-compatible Python value."""
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """A google.protobuf.Struct from a dict."""
    message = struct_pb2.Struct()
    message.update(value)
    return message


def chat_message(
    role: str | common_pb2.MessageRole.ValueType,
    content: str = "",
    **fields: Any,
) -> common_pb2.ChatMessage:
    """A chat message; ``role`` is "system", "user", "assistant", "tool" or the enum."""
    if isinstance(role, str):
        try:
            role = _ROLES[role.lower()]
        except KeyError:
            raise ValueError(f"unknown chat role {role!r}; use one of {sorted(_ROLES)}") from None
    return common_pb2.ChatMessage(role=role, content=content, **fields)


def chat_history(
    messages: Iterable[common_pb2.ChatMessage | Mapping[str, Any]],
) -> common_pb2.ChatHistory:
    """A CHAT_HISTORY value from ChatMessages or dicts like {"role": "user", "content": "hi"}."""
    history = common_pb2.ChatHistory()
    for message in messages:
        if isinstance(message, common_pb2.ChatMessage):
            history.messages.append(message)
        else:
            history.messages.append(chat_message(**message))
    return history


def _is_chat(value: Sequence[Any]) -> bool:
    return bool(value) and all(isinstance(item, common_pb2.ChatMessage) for item in value)


def prompt_input(name: str, value: InputValue) -> common_pb2.PromptInput:
    """A typed input from a plain value.

    str → STRING; bool → BOOLEAN; int/float → NUMBER; ChatHistory or a list of
    ChatMessage → CHAT_HISTORY; dict, list or None → JSON. Chat history given as
    dicts needs :func:`chat_history` (a list of dicts is JSON).
    """
    if isinstance(value, common_pb2.PromptInput):
        result = common_pb2.PromptInput()
        result.CopyFrom(value)
        result.name = name
        return result
    if isinstance(value, str):
        return common_pb2.PromptInput(name=name, string_value=value)
    if isinstance(value, bool):
        return common_pb2.PromptInput(name=name, bool_value=value)
    if isinstance(value, int | float):
        return common_pb2.PromptInput(name=name, number_value=float(value))
    if isinstance(value, common_pb2.ChatHistory):
        return common_pb2.PromptInput(name=name, chat_history=value)
    if isinstance(value, list | tuple) and _is_chat(value):
        return common_pb2.PromptInput(name=name, chat_history=chat_history(value))
    if value is None or isinstance(value, Mapping | Sequence):
        return common_pb2.PromptInput(name=name, json_value=json_value(value))
    raise TypeError(f"input {name!r}: cannot send a {type(value).__name__} value")


def prompt_inputs(inputs: Inputs | None) -> list[common_pb2.PromptInput]:
    """Typed inputs from a dict of plain values (or PromptInput messages as they are)."""
    if inputs is None:
        return []
    if isinstance(inputs, Mapping):
        return [prompt_input(name, value) for name, value in inputs.items()]
    return list(inputs)


def model_parameters(
    value: common_pb2.ModelParameters | Mapping[str, Any] | None,
) -> common_pb2.ModelParameters | None:
    """ModelParameters from a dict in the proto JSON mapping (e.g. {"max_tokens": 5})."""
    if value is None or isinstance(value, common_pb2.ModelParameters):
        return value
    message = common_pb2.ModelParameters()
    json_format.ParseDict(dict(value), message)
    return message


def execute_request(
    prompt: str | common_pb2.InlinePrompt | execution_service_pb2.ExecutePromptRequest,
    *,
    inputs: Inputs | None = None,
    parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    **fields: Any,
) -> execution_service_pb2.ExecutePromptRequest:
    """An ExecutePromptRequest for a prompt name/id or an inline prompt.

    ``fields`` are other ExecutePromptRequest fields (release_tag, version,
    external_id, model, ...).
    """
    if isinstance(prompt, execution_service_pb2.ExecutePromptRequest):
        if inputs or parameters or metadata or fields:
            raise TypeError("pass either a complete request or its parts, not both")
        return prompt
    request = execution_service_pb2.ExecutePromptRequest(inputs=prompt_inputs(inputs), **fields)
    if isinstance(prompt, common_pb2.InlinePrompt):
        request.inline_prompt.CopyFrom(prompt)
    else:
        request.prompt = prompt
    params = model_parameters(parameters)
    if params is not None:
        request.parameters.CopyFrom(params)
    if metadata is not None:
        request.metadata.CopyFrom(struct(metadata))
    return request


def chain_step(
    name: str,
    prompt: str | common_pb2.InlinePrompt,
    output_variable: str,
    *,
    release_tag: str = "",
    version: int = 0,
    parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
) -> chain_service_pb2.ChainStep:
    """One chain step: a stored prompt (name or id, with ``release_tag`` or ``version``)
    or an inline prompt, and the variable its output becomes for later steps."""
    step = chain_service_pb2.ChainStep(
        name=name, output_variable=output_variable, release_tag=release_tag, version=version
    )
    if isinstance(prompt, common_pb2.InlinePrompt):
        step.inline_prompt.CopyFrom(prompt)
    else:
        step.prompt = prompt
    params = model_parameters(parameters)
    if params is not None:
        step.parameters.CopyFrom(params)
    return step


Chain: TypeAlias = (
    "str | chain_service_pb2.InlineChain | Sequence[chain_service_pb2.ChainStep]"
    " | chain_service_pb2.ExecuteChainRequest"
)


def chain_request(
    chain: Chain,
    *,
    inputs: Inputs | None = None,
    metadata: Mapping[str, Any] | None = None,
    **fields: Any,
) -> chain_service_pb2.ExecuteChainRequest:
    """An ExecuteChainRequest for a stored chain (name or id), an InlineChain or a
    list of steps (built with :func:`chain_step`).

    ``fields`` are other ExecuteChainRequest fields (release_tag, version,
    external_id, timeout, ...).
    """
    if isinstance(chain, chain_service_pb2.ExecuteChainRequest):
        if inputs or metadata or fields:
            raise TypeError("pass either a complete request or its parts, not both")
        return chain
    request = chain_service_pb2.ExecuteChainRequest(inputs=prompt_inputs(inputs), **fields)
    if isinstance(chain, str):
        request.chain = chain
    elif isinstance(chain, chain_service_pb2.InlineChain):
        request.inline_chain.CopyFrom(chain)
    else:
        request.inline_chain.steps.extend(chain)
    if metadata is not None:
        request.metadata.CopyFrom(struct(metadata))
    return request


def actual(
    *,
    execution_id: str = "",
    external_id: str = "",
    quality: float | None = None,
    desired_output: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> execution_service_pb2.Actual:
    """Feedback on one execution, addressed by execution_id or external_id."""
    if bool(execution_id) == bool(external_id):
        raise ValueError("give exactly one of execution_id and external_id")
    result = execution_service_pb2.Actual(desired_output=desired_output)
    if execution_id:
        result.execution_id = execution_id
    else:
        result.external_id = external_id
    if quality is not None:
        result.quality = quality
    if metadata is not None:
        result.metadata.CopyFrom(struct(metadata))
    return result


def batch_item(
    custom_id: str,
    inputs: Inputs | None = None,
    *,
    parameters: common_pb2.ModelParameters | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> execution_service_pb2.BatchItem:
    """One item of a batch."""
    item = execution_service_pb2.BatchItem(custom_id=custom_id, inputs=prompt_inputs(inputs))
    params = model_parameters(parameters)
    if params is not None:
        item.parameters.CopyFrom(params)
    if metadata is not None:
        item.metadata.CopyFrom(struct(metadata))
    return item


def output_text(outputs: Iterable[common_pb2.PromptOutput]) -> str:
    """The text of the string outputs, joined."""
    return "".join(o.string_value for o in outputs if o.WhichOneof("value") == "string_value")
