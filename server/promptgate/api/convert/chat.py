"""Chat vocabulary between protobuf and the domain: roles, messages, parameters,
response formats and tools."""

from __future__ import annotations

from google.protobuf import json_format

from promptgate.api.convert.values import dict_to_struct, struct_to_dict
from promptgate.api.v1 import common_pb2 as pb
from promptgate.chat import (
    ChatMessage,
    FunctionCall,
    ModelParameters,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Tool,
    ToolChoice,
    ToolChoiceMode,
)
from promptgate.errors import InvalidArgument

_ROLES: dict[pb.MessageRole.ValueType, Role] = {
    pb.MESSAGE_ROLE_SYSTEM: Role.SYSTEM,
    pb.MESSAGE_ROLE_USER: Role.USER,
    pb.MESSAGE_ROLE_ASSISTANT: Role.ASSISTANT,
    pb.MESSAGE_ROLE_TOOL: Role.TOOL,
}
ROLES_PB = {v: k for k, v in _ROLES.items()}
_FORMATS = {
    pb.ResponseFormat.TYPE_UNSPECIFIED: ResponseFormatType.TEXT,
    pb.ResponseFormat.TYPE_TEXT: ResponseFormatType.TEXT,
    pb.ResponseFormat.TYPE_JSON_OBJECT: ResponseFormatType.JSON_OBJECT,
    pb.ResponseFormat.TYPE_JSON_SCHEMA: ResponseFormatType.JSON_SCHEMA,
}
_FORMATS_PB = {
    ResponseFormatType.TEXT: pb.ResponseFormat.TYPE_TEXT,
    ResponseFormatType.JSON_OBJECT: pb.ResponseFormat.TYPE_JSON_OBJECT,
    ResponseFormatType.JSON_SCHEMA: pb.ResponseFormat.TYPE_JSON_SCHEMA,
}
_CHOICES = {
    pb.ToolChoice.MODE_UNSPECIFIED: ToolChoiceMode.AUTO,
    pb.ToolChoice.MODE_AUTO: ToolChoiceMode.AUTO,
    pb.ToolChoice.MODE_NONE: ToolChoiceMode.NONE,
    pb.ToolChoice.MODE_REQUIRED: ToolChoiceMode.REQUIRED,
    pb.ToolChoice.MODE_FUNCTION: ToolChoiceMode.FUNCTION,
}
_CHOICES_PB = {
    ToolChoiceMode.AUTO: pb.ToolChoice.MODE_AUTO,
    ToolChoiceMode.NONE: pb.ToolChoice.MODE_NONE,
    ToolChoiceMode.REQUIRED: pb.ToolChoice.MODE_REQUIRED,
    ToolChoiceMode.FUNCTION: pb.ToolChoice.MODE_FUNCTION,
}
# Chat vocabulary


def role_from_proto(
    role: pb.MessageRole.ValueType, field: str, *, required: bool = True
) -> Role | None:
    """A MessageRole as a Role; UNSPECIFIED is INVALID_ARGUMENT when required."""
    if role in _ROLES:
        return _ROLES[role]
    if required or role != pb.MESSAGE_ROLE_UNSPECIFIED:
        raise InvalidArgument.field(field, "a role is required (e.g. MESSAGE_ROLE_USER)")
    return None


def function_call_from_proto(call: pb.FunctionCall) -> FunctionCall:
    """A FunctionCall message as a domain FunctionCall."""
    arguments = struct_to_dict(call.arguments) if call.HasField("arguments") else None
    arguments_json = call.arguments_json
    if not arguments_json and arguments is not None:
        arguments_json = json_format.MessageToJson(call.arguments, indent=None)
    return FunctionCall(
        id=call.id,
        name=call.name,
        arguments_json=arguments_json,
        arguments=arguments,
        signature=call.signature,
    )


def function_call_to_proto(call: FunctionCall) -> pb.FunctionCall:
    """A domain FunctionCall as a message."""
    message = pb.FunctionCall(
        id=call.id, name=call.name, arguments_json=call.arguments_json, signature=call.signature
    )
    if call.arguments is not None:
        message.arguments.CopyFrom(dict_to_struct(call.arguments))
    return message


def chat_message_from_proto(message: pb.ChatMessage, field: str) -> ChatMessage:
    """A ChatMessage message as a domain ChatMessage."""
    role = role_from_proto(message.role, f"{field}.role")
    assert role is not None
    return ChatMessage(
        role=role,
        content=message.content,
        function_calls=tuple(function_call_from_proto(c) for c in message.function_calls),
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def chat_message_to_proto(message: ChatMessage) -> pb.ChatMessage:
    """A domain ChatMessage as a message."""
    return pb.ChatMessage(
        role=ROLES_PB[message.role],
        content=message.content,
        function_calls=[function_call_to_proto(c) for c in message.function_calls],
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def parameters_from_proto(params: pb.ModelParameters) -> ModelParameters:
    """ModelParameters message as domain parameters."""
    return ModelParameters(
        temperature=params.temperature if params.HasField("temperature") else None,
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        stop=tuple(params.stop),
        seed=params.seed if params.HasField("seed") else None,
        presence_penalty=params.presence_penalty if params.HasField("presence_penalty") else None,
        frequency_penalty=(
            params.frequency_penalty if params.HasField("frequency_penalty") else None
        ),
        extra=struct_to_dict(params.extra) if params.HasField("extra") else {},
    )


def parameters_to_proto(params: ModelParameters) -> pb.ModelParameters:
    """Domain parameters as a message."""
    message = pb.ModelParameters(stop=list(params.stop))
    for name in (
        "temperature",
        "max_tokens",
        "top_p",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    ):
        value = getattr(params, name)
        if value is not None:
            setattr(message, name, value)
    if params.extra:
        message.extra.CopyFrom(dict_to_struct(params.extra))
    return message


def response_format_from_proto(fmt: pb.ResponseFormat) -> ResponseFormat:
    """A ResponseFormat message as a domain format."""
    return ResponseFormat(
        type=_FORMATS.get(fmt.type, ResponseFormatType.TEXT),
        schema_name=fmt.schema_name,
        json_schema=struct_to_dict(fmt.json_schema) if fmt.HasField("json_schema") else None,
        strict=fmt.strict,
    )


def response_format_to_proto(fmt: ResponseFormat) -> pb.ResponseFormat:
    """A domain format as a message."""
    message = pb.ResponseFormat(
        type=_FORMATS_PB[fmt.type], schema_name=fmt.schema_name, strict=fmt.strict
    )
    if fmt.json_schema is not None:
        message.json_schema.CopyFrom(dict_to_struct(fmt.json_schema))
    return message


def tool_from_proto(tool: pb.Tool) -> Tool:
    """A Tool message as a domain Tool."""
    return Tool(
        name=tool.name,
        description=tool.description,
        parameters=struct_to_dict(tool.parameters) if tool.HasField("parameters") else None,
    )


def tool_to_proto(tool: Tool) -> pb.Tool:
    """A domain Tool as a message."""
    message = pb.Tool(name=tool.name, description=tool.description)
    if tool.parameters is not None:
        message.parameters.CopyFrom(dict_to_struct(tool.parameters))
    return message


def tool_choice_from_proto(choice: pb.ToolChoice) -> ToolChoice:
    """A ToolChoice message as a domain choice."""
    return ToolChoice(
        mode=_CHOICES.get(choice.mode, ToolChoiceMode.AUTO), function_name=choice.function_name
    )


def tool_choice_to_proto(choice: ToolChoice) -> pb.ToolChoice:
    """A domain choice as a message."""
    return pb.ToolChoice(mode=_CHOICES_PB[choice.mode], function_name=choice.function_name)
