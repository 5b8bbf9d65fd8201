"""Mapping between protobuf messages and domain objects, both ways.

Only shapes are checked here (a oneof that must be set, an enum that must not
be UNSPECIFIED); meaning is checked by the domain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.batches.model import (
    Batch,
    BatchEvent,
    BatchItemSpec,
    BatchSpec,
    BatchState,
    ItemResult,
    ItemState,
)
from promptgate.chat import (
    ChatMessage,
    FinishReason,
    FunctionCall,
    ModelParameters,
    ResponseFormat,
    ResponseFormatType,
    Role,
    Tool,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)
from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.execution.actuals import Actual
from promptgate.execution.model import (
    Attempt,
    ExecutionFailure,
    ExecutionRecord,
    ExecutionRequest,
    ExecutionState,
    FunctionCallOutput,
    InlineTarget,
    JsonOutput,
    Output,
    Rendering,
    StoredTarget,
    TextOutput,
)
from promptgate.prompts.model import (
    CacheMode,
    CachePolicy,
    InputType,
    InputVariable,
    Prompt,
    PromptInput,
    PromptSpec,
    PromptVersion,
    ReleaseTag,
    ReleaseTagEvent,
    RetryPolicy,
    RouteTarget,
    Routing,
    Strategy,
    TemplateMessage,
)

_ROLES: dict[pb.MessageRole.ValueType, Role] = {
    pb.MESSAGE_ROLE_SYSTEM: Role.SYSTEM,
    pb.MESSAGE_ROLE_USER: Role.USER,
    pb.MESSAGE_ROLE_ASSISTANT: Role.ASSISTANT,
    pb.MESSAGE_ROLE_TOOL: Role.TOOL,
}
_ROLES_PB = {v: k for k, v in _ROLES.items()}
_INPUT_TYPES: dict[pb.InputType.ValueType, InputType] = {
    pb.INPUT_TYPE_STRING: InputType.STRING,
    pb.INPUT_TYPE_JSON: InputType.JSON,
    pb.INPUT_TYPE_CHAT_HISTORY: InputType.CHAT_HISTORY,
    pb.INPUT_TYPE_NUMBER: InputType.NUMBER,
    pb.INPUT_TYPE_BOOLEAN: InputType.BOOLEAN,
}
_INPUT_TYPES_PB = {v: k for k, v in _INPUT_TYPES.items()}
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
_FINISH_PB = {
    FinishReason.UNSPECIFIED: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_STATES_PB = {
    ExecutionState.RUNNING: pb.EXECUTION_STATE_RUNNING,
    ExecutionState.FULFILLED: pb.EXECUTION_STATE_FULFILLED,
    ExecutionState.REJECTED: pb.EXECUTION_STATE_REJECTED,
}
_STATES: dict[pb.ExecutionState.ValueType, ExecutionState] = {v: k for k, v in _STATES_PB.items()}


# JSON values


def _plain(value: Any) -> Any:
    """protobuf JSON numbers are doubles; give integral ones back as ints.

    NaN and infinities are not JSON: they are INVALID_ARGUMENT.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(
                "JSON numbers must be finite (no NaN or Infinity)", reason="INVALID_PARAMETERS"
            )
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _to_json(message: struct_pb2.Struct | struct_pb2.Value) -> Any:
    try:
        return json_format.MessageToDict(message)
    except (ValueError, json_format.SerializeToJsonError):
        # NaN or Infinity somewhere inside: not JSON.
        raise InvalidArgument(
            "JSON numbers must be finite (no NaN or Infinity)", reason="INVALID_PARAMETERS"
        ) from None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict."""
    result: dict[str, Any] = _plain(_to_json(struct))
    return result


def value_to_python(value: struct_pb2.Value) -> Any:
    """A Value as a plain Python value."""
    return _plain(_to_json(value))


def dict_to_struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    """A plain dict as a Struct."""
    struct = struct_pb2.Struct()
    if data:
        json_format.ParseDict(data, struct)
    return struct


def python_to_value(data: Any) -> struct_pb2.Value:
    """A plain Python value as a Value."""
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A datetime as a Timestamp (None stays unset)."""
    if when is None:
        return None
    if when.tzinfo is None:
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(when)
        return ts
    # Aware datetimes (all of the domain's): plain arithmetic, several times
    # faster than FromDatetime (which goes through calendar.timegm).
    elapsed = when - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=elapsed.days * 86_400 + elapsed.seconds, nanos=elapsed.microseconds * 1000
    )


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The current time as a Timestamp."""
    ns = time.time_ns()
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    """Seconds as a Duration (None stays unset)."""
    if seconds is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


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
        role=_ROLES_PB[message.role],
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


# Routing and cache

_STRATEGIES = {
    pb.Routing.STRATEGY_SINGLE: Strategy.SINGLE,
    pb.Routing.STRATEGY_FALLBACK: Strategy.FALLBACK,
    pb.Routing.STRATEGY_WEIGHTED: Strategy.WEIGHTED,
}
_STRATEGIES_PB = {v: k for k, v in _STRATEGIES.items()}
_CACHE_MODES = {
    pb.CachePolicy.MODE_ENABLED: CacheMode.ENABLED,
    pb.CachePolicy.MODE_DISABLED: CacheMode.DISABLED,
    pb.CachePolicy.MODE_REFRESH: CacheMode.REFRESH,
}
_CACHE_MODES_PB = {v: k for k, v in _CACHE_MODES.items()}
_CACHE_STATUS_PB = {
    "": pb.CACHE_STATUS_UNSPECIFIED,
    "hit": pb.CACHE_STATUS_HIT,
    "miss": pb.CACHE_STATUS_MISS,
    "refresh": pb.CACHE_STATUS_REFRESH,
}


MAX_SECONDS = 10 * 365 * 86_400.0


def _seconds(value: duration_pb2.Duration, field: str = "duration") -> float:
    """A Duration in seconds; INVALID_ARGUMENT if negative or beyond ten years."""
    seconds = value.seconds + value.nanos / 1e9
    if not 0 <= seconds <= MAX_SECONDS:
        raise InvalidArgument.field(field, "must be between 0 and ten years")
    return seconds


def to_datetime(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A Timestamp as an aware datetime; INVALID_ARGUMENT if out of range."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise InvalidArgument.field(field, "is not a valid time") from None


def routing_from_proto(routing: pb.Routing) -> Routing:
    """A Routing message as domain routing."""
    retry = None
    if routing.HasField("retry"):
        retry = RetryPolicy(
            max_attempts=routing.retry.max_attempts,
            initial_backoff_s=(
                _seconds(routing.retry.initial_backoff)
                if routing.retry.HasField("initial_backoff")
                else None
            ),
            max_backoff_s=(
                _seconds(routing.retry.max_backoff)
                if routing.retry.HasField("max_backoff")
                else None
            ),
        )
    return Routing(
        strategy=_STRATEGIES.get(routing.strategy),
        targets=tuple(
            RouteTarget(
                model=t.model,
                provider=t.provider,
                parameters=parameters_from_proto(t.parameters)
                if t.HasField("parameters")
                else None,
                weight=t.weight if t.weight else 1.0,
            )
            for t in routing.targets
        ),
        retry=retry,
        attempt_timeout_s=(
            _seconds(routing.attempt_timeout) if routing.HasField("attempt_timeout") else None
        ),
    )


def routing_to_proto(routing: Routing) -> pb.Routing:
    """Domain routing as a message."""
    message = pb.Routing(
        strategy=_STRATEGIES_PB.get(routing.strategy, pb.Routing.STRATEGY_UNSPECIFIED)
        if routing.strategy
        else pb.Routing.STRATEGY_UNSPECIFIED,
        targets=[
            pb.RouteTarget(
                provider=t.provider,
                model=t.model,
                weight=t.weight,
                parameters=parameters_to_proto(t.parameters) if t.parameters else None,
            )
            for t in routing.targets
        ],
        attempt_timeout=duration(routing.attempt_timeout_s),
    )
    if routing.retry is not None:
        message.retry.CopyFrom(
            pb.RetryPolicy(
                max_attempts=routing.retry.max_attempts,
                initial_backoff=duration(routing.retry.initial_backoff_s),
                max_backoff=duration(routing.retry.max_backoff_s),
            )
        )
    return message


def cache_from_proto(cache: pb.CachePolicy) -> CachePolicy:
    """A CachePolicy message as a domain policy."""
    return CachePolicy(
        mode=_CACHE_MODES.get(cache.mode),
        ttl_s=_seconds(cache.ttl, "cache.ttl") if cache.HasField("ttl") else None,
    )


def cache_to_proto(cache: CachePolicy) -> pb.CachePolicy:
    """A domain cache policy as a message."""
    return pb.CachePolicy(
        mode=_CACHE_MODES_PB.get(cache.mode, pb.CachePolicy.MODE_UNSPECIFIED)
        if cache.mode
        else pb.CachePolicy.MODE_UNSPECIFIED,
        ttl=duration(cache.ttl_s),
    )


def attempt_to_proto(attempt: Attempt) -> pb.ExecutionAttempt:
    """One provider call as a message."""
    failure = attempt.failure
    return pb.ExecutionAttempt(
        number=attempt.number,
        provider=attempt.provider,
        model=attempt.model,
        error_code=failure.code if failure else "",
        error_message=failure.message if failure else "",
        provider_status=failure.provider_status if failure else 0,
        latency=duration(attempt.latency_s),
    )


# Inputs and templates


def input_from_proto(item: pb.PromptInput, field: str) -> PromptInput:
    """A PromptInput message as a domain input; the oneof gives its type."""
    kind = item.WhichOneof("value")
    if kind == "string_value":
        return PromptInput(item.name, InputType.STRING, item.string_value)
    if kind == "json_value":
        return PromptInput(item.name, InputType.JSON, value_to_python(item.json_value))
    if kind == "chat_history":
        messages = tuple(
            chat_message_from_proto(m, f"{field}.chat_history.messages[{i}]")
            for i, m in enumerate(item.chat_history.messages)
        )
        return PromptInput(item.name, InputType.CHAT_HISTORY, messages)
    if kind == "number_value":
        return PromptInput(item.name, InputType.NUMBER, item.number_value)
    if kind == "bool_value":
        return PromptInput(item.name, InputType.BOOLEAN, item.bool_value)
    raise InvalidArgument.field(
        field,
        f"input {item.name!r} has no value (set string_value, json_value, ...)",
        reason="INVALID_INPUT",
    )


def inputs_from_proto(
    items: Sequence[pb.PromptInput], field: str = "inputs"
) -> tuple[PromptInput, ...]:
    """Every input, with one error listing all that have no value."""
    results: list[PromptInput] = []
    problems: list[FieldViolation] = []
    for i, item in enumerate(items):
        try:
            results.append(input_from_proto(item, f"{field}[{i}]"))
        except InvalidArgument as exc:
            problems.extend(exc.violations)
    if problems:
        raise InvalidArgument.of(problems, reason="INVALID_INPUT")
    return tuple(results)


def input_to_proto(item: PromptInput) -> pb.PromptInput:
    """A domain input as a message."""
    message = pb.PromptInput(name=item.name)
    if item.type is InputType.STRING:
        message.string_value = str(item.value)
    elif item.type is InputType.JSON:
        message.json_value.CopyFrom(python_to_value(item.value))
    elif item.type is InputType.CHAT_HISTORY:
        message.chat_history.messages.extend(chat_message_to_proto(m) for m in item.value)
    elif item.type is InputType.NUMBER:
        message.number_value = float(item.value)
    elif item.type is InputType.BOOLEAN:
        message.bool_value = bool(item.value)
    return message


def input_variable_from_proto(variable: pb.InputVariable, field: str) -> InputVariable:
    """An InputVariable message as a domain declaration."""
    if variable.type not in _INPUT_TYPES:
        raise InvalidArgument.field(
            f"{field}.type", "a type is required (e.g. INPUT_TYPE_STRING)", reason="INVALID_PROMPT"
        )
    kind = _INPUT_TYPES[variable.type]
    has_default = variable.HasField("default_value")
    default = value_to_python(variable.default_value) if has_default else None
    return InputVariable(variable.name, kind, variable.description, has_default, default)


def input_variable_to_proto(variable: InputVariable) -> pb.InputVariable:
    """A domain declaration as a message."""
    message = pb.InputVariable(
        name=variable.name, type=_INPUT_TYPES_PB[variable.type], description=variable.description
    )
    if variable.has_default:
        message.default_value.CopyFrom(python_to_value(variable.default))
    return message


def template_from_proto(message: pb.PromptTemplateMessage, field: str) -> TemplateMessage:
    """A PromptTemplateMessage as a domain template message."""
    if message.chat_history_input:
        return TemplateMessage(role=None, chat_history_input=message.chat_history_input)
    return TemplateMessage(
        role=role_from_proto(message.role, f"{field}.role"), template=message.template
    )


def template_to_proto(message: TemplateMessage) -> pb.PromptTemplateMessage:
    """A domain template message as a message."""
    return pb.PromptTemplateMessage(
        role=_ROLES_PB[message.role] if message.role else pb.MESSAGE_ROLE_UNSPECIFIED,
        template=message.template,
        chat_history_input=message.chat_history_input,
    )


def _collect(field: str, items: Iterable[Any], convert: Any) -> list[Any]:
    results, problems = [], []
    for i, item in enumerate(items):
        try:
            results.append(convert(item, f"{field}[{i}]"))
        except InvalidArgument as exc:
            problems.extend(exc.violations)
    if problems:
        raise InvalidArgument.of(problems, reason="INVALID_PROMPT")
    return results


def spec_from_version(version: ppb.PromptVersion, field: str = "version") -> PromptSpec:
    """The PromptSpec of a PromptVersion message."""
    return PromptSpec(
        messages=tuple(_collect(f"{field}.messages", version.messages, template_from_proto)),
        model=version.model,
        provider=version.provider,
        parameters=parameters_from_proto(version.parameters),
        input_variables=tuple(
            _collect(f"{field}.input_variables", version.input_variables, input_variable_from_proto)
        ),
        response_format=(
            response_format_from_proto(version.response_format)
            if version.HasField("response_format")
            else None
        ),
        tools=tuple(tool_from_proto(t) for t in version.tools),
        tool_choice=tool_choice_from_proto(version.tool_choice)
        if version.HasField("tool_choice")
        else None,
        routing=routing_from_proto(version.routing) if version.HasField("routing") else None,
        cache=cache_from_proto(version.cache) if version.HasField("cache") else None,
    )


def spec_from_inline(inline: pb.InlinePrompt) -> InlineTarget:
    """The target of an InlinePrompt message."""
    field = "inline_prompt"
    messages: list[TemplateMessage] = []
    if inline.system_prompt:
        messages.append(TemplateMessage(Role.SYSTEM, inline.system_prompt))
    messages.extend(_collect(f"{field}.messages", inline.messages, template_from_proto))
    if inline.prompt:
        messages.append(TemplateMessage(Role.USER, inline.prompt))
    spec = PromptSpec(
        messages=tuple(messages),
        model=inline.model,
        provider=inline.provider,
        parameters=parameters_from_proto(inline.parameters),
        input_variables=tuple(
            _collect(f"{field}.input_variables", inline.input_variables, input_variable_from_proto)
        ),
        response_format=(
            response_format_from_proto(inline.response_format)
            if inline.HasField("response_format")
            else None
        ),
        tools=tuple(tool_from_proto(t) for t in inline.tools),
        tool_choice=tool_choice_from_proto(inline.tool_choice)
        if inline.HasField("tool_choice")
        else None,
        routing=routing_from_proto(inline.routing) if inline.HasField("routing") else None,
        cache=cache_from_proto(inline.cache) if inline.HasField("cache") else None,
    )
    return InlineTarget(spec=spec, declared=bool(inline.input_variables))


# Prompts


def prompt_to_proto(prompt: Prompt) -> ppb.Prompt:
    """A domain Prompt as a message."""
    return ppb.Prompt(
        id=prompt.id,
        name=prompt.name,
        description=prompt.description,
        labels=prompt.labels,
        archived=prompt.archived,
        latest_version=prompt.latest_version,
        release_tags=[release_tag_to_proto(t) for t in prompt.release_tags],
        create_time=timestamp(prompt.created_at),
        update_time=timestamp(prompt.updated_at),
    )


def version_to_proto(version: PromptVersion) -> ppb.PromptVersion:
    """A domain PromptVersion as a message."""
    spec = version.spec
    message = ppb.PromptVersion(
        id=version.id,
        prompt_id=version.prompt_id,
        version=version.version,
        messages=[template_to_proto(m) for m in spec.messages],
        provider=spec.provider,
        model=spec.model,
        parameters=parameters_to_proto(spec.parameters),
        input_variables=[input_variable_to_proto(v) for v in spec.input_variables],
        tools=[tool_to_proto(t) for t in spec.tools],
        description=version.description,
        create_time=timestamp(version.created_at),
    )
    if spec.response_format is not None:
        message.response_format.CopyFrom(response_format_to_proto(spec.response_format))
    if spec.tool_choice is not None:
        message.tool_choice.CopyFrom(tool_choice_to_proto(spec.tool_choice))
    if spec.routing is not None:
        message.routing.CopyFrom(routing_to_proto(spec.routing))
    if spec.cache is not None:
        message.cache.CopyFrom(cache_to_proto(spec.cache))
    return message


def release_tag_to_proto(tag: ReleaseTag) -> ppb.ReleaseTag:
    """A domain ReleaseTag as a message."""
    return ppb.ReleaseTag(
        tag=tag.tag,
        version=tag.version,
        version_id=tag.version_id,
        automatic=tag.automatic,
        update_time=timestamp(tag.updated_at),
    )


def tag_event_to_proto(event: ReleaseTagEvent) -> ppb.ReleaseTagEvent:
    """A domain ReleaseTagEvent as a message."""
    return ppb.ReleaseTagEvent(
        tag=event.tag,
        version=event.version,
        version_id=event.version_id,
        previous_version=event.previous_version,
        time=timestamp(event.time),
    )


# Executions


def _target(
    request: epb.ExecutePromptRequest | epb.ExecuteBatchRequest | ppb.RenderPromptRequest,
) -> StoredTarget | InlineTarget:
    """The stored or inline prompt a request names."""
    target_kind = request.WhichOneof("target")
    if target_kind == "prompt":
        return StoredTarget(request.prompt, request.release_tag, request.version)
    if target_kind == "inline_prompt":
        if request.release_tag or request.version:
            raise InvalidArgument.field(
                "release_tag", "release_tag and version apply to stored prompts only"
            )
        return spec_from_inline(request.inline_prompt)
    raise InvalidArgument(
        "set prompt (a stored prompt's id or name) or inline_prompt",
        reason="INVALID_PROMPT",
        violations=[FieldViolation("prompt", "set prompt or inline_prompt")],
    )


def execution_request_from_proto(
    request: epb.ExecutePromptRequest | ppb.RenderPromptRequest,
    *,
    workspace: str,
    deadline: float | None,
    api_key_id: str = "",
) -> ExecutionRequest:
    """The domain request of an ExecutePrompt (or RenderPrompt) request."""
    target = _target(request)
    timeout: float | None = None
    external_id = ""
    metadata: dict[str, Any] = {}
    expand_raw: tuple[str, ...] = ()
    routing: Routing | None = None
    cache: CachePolicy | None = None
    if isinstance(request, epb.ExecutePromptRequest):
        if request.HasField("routing"):
            routing = routing_from_proto(request.routing)
        if request.HasField("cache"):
            cache = cache_from_proto(request.cache)
        if request.HasField("timeout"):
            timeout = request.timeout.seconds + request.timeout.nanos / 1e9
            if not math.isfinite(timeout) or timeout <= 0:
                raise InvalidArgument.field("timeout", "must be positive")
        external_id = request.external_id
        if request.HasField("metadata"):
            metadata = struct_to_dict(request.metadata)
        expand_raw = tuple(request.expand_raw)
    return ExecutionRequest(
        workspace_id=workspace,
        target=target,
        inputs=inputs_from_proto(request.inputs),
        external_id=external_id,
        metadata=metadata,
        parameters=parameters_from_proto(request.parameters)
        if request.HasField("parameters")
        else None,
        response_format=(
            response_format_from_proto(request.response_format)
            if request.HasField("response_format")
            else None
        ),
        tools=tuple(tool_from_proto(t) for t in request.tools) if request.tools else None,
        tool_choice=tool_choice_from_proto(request.tool_choice)
        if request.HasField("tool_choice")
        else None,
        expand_raw=expand_raw,
        raw_body=struct_to_dict(request.raw_overrides.body)
        if request.raw_overrides.HasField("body")
        else {},
        raw_headers=dict(request.raw_overrides.headers),
        model=request.model,
        provider=request.provider,
        timeout=timeout,
        deadline=deadline,
        routing=routing,
        cache=cache,
        api_key_id=api_key_id,
    )


def output_to_proto(output: Output) -> pb.PromptOutput:
    """A domain output as a message."""
    if isinstance(output, TextOutput):
        return pb.PromptOutput(string_value=output.text)
    if isinstance(output, JsonOutput):
        return pb.PromptOutput(json_value=python_to_value(output.value))
    assert isinstance(output, FunctionCallOutput)
    return pb.PromptOutput(function_call=function_call_to_proto(output.call))


def error_to_proto(error: ExecutionFailure | None) -> pb.ExecutionError | None:
    """A domain failure as a message (None stays unset)."""
    if error is None:
        return None
    return pb.ExecutionError(
        code=error.code,
        message=error.message,
        provider_status=error.provider_status,
        retry_after=duration(error.retry_after),
    )


def usage_to_proto(usage: Usage, input_chars: int, output_chars: int) -> pb.Usage:
    """Usage as a message."""
    return pb.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        input_chars=input_chars,
        output_chars=output_chars,
    )


def meta_to_proto(record: ExecutionRecord, expand: pb.ExpandMeta | None = None) -> pb.ExecutionMeta:
    """The meta of ``record``, limited to the groups ``expand`` asks for (all if None)."""
    every = expand is None

    def wanted(group: str) -> bool:
        return every or bool(getattr(expand, group))

    meta = pb.ExecutionMeta()
    if wanted("model"):
        meta.provider = record.provider
        meta.model = record.model
    if wanted("prompt_version"):
        meta.prompt_id = record.prompt_id
        meta.prompt_version_id = record.version_id
        meta.prompt_version = record.version
        meta.release_tag = record.release_tag
    if wanted("finish_reason"):
        meta.finish_reason = _FINISH_PB[record.finish_reason]
    if wanted("usage"):
        meta.usage.CopyFrom(usage_to_proto(record.usage, record.input_chars, record.output_chars))
    if wanted("cost"):
        meta.cost.CopyFrom(
            pb.Cost(value=record.cost.value, unit=record.cost.unit, priced=record.cost.priced)
        )
    if wanted("latency"):
        meta.latency.FromTimedelta(timedelta(seconds=record.latency))
        if record.time_to_first_token is not None:
            meta.time_to_first_token.FromTimedelta(timedelta(seconds=record.time_to_first_token))
    if wanted("parameters"):
        meta.parameters.CopyFrom(parameters_to_proto(record.parameters))
    if wanted("routing"):
        meta.cache_hit = record.cache_hit
        meta.attempts = record.attempts
        meta.cache_status = _CACHE_STATUS_PB.get(record.cache_status, pb.CACHE_STATUS_UNSPECIFIED)
        meta.target_index = record.target_index
    return meta


def _expand(request: epb.ExecutePromptRequest) -> pb.ExpandMeta | None:
    return request.expand_meta if request.HasField("expand_meta") else None


def execute_response(
    record: ExecutionRecord, request: epb.ExecutePromptRequest
) -> epb.ExecutePromptResponse:
    """The ExecutePrompt response for a finished execution."""
    return epb.ExecutePromptResponse(
        execution_id=record.id,
        state=_STATES_PB[record.state],
        outputs=[output_to_proto(o) for o in record.outputs]
        if record.state is ExecutionState.FULFILLED
        else [],
        error=error_to_proto(record.error),
        meta=meta_to_proto(record, _expand(request)),
        raw=dict_to_struct(record.raw) if record.raw else None,
        external_id=record.external_id,
        replayed=record.replayed,
    )


def _known_at_start(expand: pb.ExpandMeta | None) -> pb.ExpandMeta:
    """Meta groups that are known when an execution starts, as far as asked for."""
    asked = expand or pb.ExpandMeta(model=True, prompt_version=True, parameters=True)
    return pb.ExpandMeta(
        model=asked.model, prompt_version=asked.prompt_version, parameters=asked.parameters
    )


def initiated_event(
    record: ExecutionRecord, request: epb.ExecutePromptRequest
) -> epb.ExecutePromptStreamResponse:
    """The INITIATED stream event."""
    return epb.ExecutePromptStreamResponse(
        execution_id=record.id,
        time=timestamp(datetime.now(record.created_at.tzinfo)),
        initiated=epb.InitiatedEvent(
            meta=meta_to_proto(record, _known_at_start(_expand(request))),
            external_id=record.external_id,
            replayed=record.replayed,
        ),
    )


def delta_event(execution_id: str, text: str, index: int) -> epb.ExecutePromptStreamResponse:
    """A STREAMING stream event."""
    return epb.ExecutePromptStreamResponse(
        execution_id=execution_id,
        time=now_timestamp(),
        streaming=epb.StreamingEvent(output_index=index, delta=text),
    )


def finished_event(
    record: ExecutionRecord, request: epb.ExecutePromptRequest
) -> epb.ExecutePromptStreamResponse:
    """The terminal FULFILLED or REJECTED stream event."""
    event = epb.ExecutePromptStreamResponse(
        execution_id=record.id, time=timestamp(record.completed_at or datetime.now().astimezone())
    )
    meta = meta_to_proto(record, _expand(request))
    if record.state is ExecutionState.FULFILLED:
        event.fulfilled.CopyFrom(
            epb.FulfilledEvent(
                outputs=[output_to_proto(o) for o in record.outputs],
                meta=meta,
                raw=dict_to_struct(record.raw) if record.raw else None,
            )
        )
    else:
        event.rejected.CopyFrom(epb.RejectedEvent(error=error_to_proto(record.error), meta=meta))
    return event


def actual_from_proto(actual: epb.Actual) -> Actual:
    """An Actual message as submitted."""
    return Actual(
        execution_id=actual.execution_id,
        external_id=actual.external_id,
        quality=actual.quality if actual.HasField("quality") else None,
        desired_output=actual.desired_output,
        metadata=struct_to_dict(actual.metadata) if actual.HasField("metadata") else {},
        observed_at=to_datetime(actual.time, "actuals.time") if actual.HasField("time") else None,
    )


def actual_to_proto(actual: Actual) -> epb.Actual:
    """A stored actual as a message."""
    message = epb.Actual(
        id=actual.id,
        execution_id=actual.execution_id,
        desired_output=actual.desired_output,
        metadata=dict_to_struct(actual.metadata) if actual.metadata else None,
        time=timestamp(actual.observed_at),
    )
    if actual.quality is not None:
        message.quality = actual.quality
    return message


def execution_to_proto(record: ExecutionRecord) -> epb.Execution:
    """A recorded execution as a message."""
    return epb.Execution(
        id=record.id,
        state=_STATES_PB[record.state],
        external_id=record.external_id,
        prompt_name=record.prompt_name,
        inputs=[input_to_proto(i) for i in record.inputs],
        outputs=[output_to_proto(o) for o in record.outputs],
        error=error_to_proto(record.error),
        meta=meta_to_proto(record),
        metadata=dict_to_struct(record.metadata) if record.metadata else None,
        create_time=timestamp(record.created_at),
        complete_time=timestamp(record.completed_at),
        streamed=record.streamed,
        actuals=[actual_to_proto(a) for a in record.actuals],
        attempt_log=[attempt_to_proto(a) for a in record.attempt_log],
    )


def state_from_proto(state: pb.ExecutionState.ValueType) -> ExecutionState | None:
    """An ExecutionState filter (None for UNSPECIFIED)."""
    return _STATES.get(state)


def rendering_to_proto(rendering: Rendering) -> ppb.RenderPromptResponse:
    """A Rendering as a RenderPrompt response."""
    return ppb.RenderPromptResponse(
        messages=[chat_message_to_proto(m) for m in rendering.messages],
        provider=rendering.provider,
        model=rendering.model,
        provider_payload=dict_to_struct(rendering.payload),
        prompt_id=rendering.prompt_id,
        prompt_version_id=rendering.version_id,
        prompt_version=rendering.version,
        release_tag=rendering.release_tag,
    )


# Batches

_BATCH_STATES_PB = {
    BatchState.PENDING: epb.BATCH_STATE_PENDING,
    BatchState.RUNNING: epb.BATCH_STATE_RUNNING,
    BatchState.SUCCEEDED: epb.BATCH_STATE_SUCCEEDED,
    BatchState.FAILED: epb.BATCH_STATE_FAILED,
    BatchState.CANCELLED: epb.BATCH_STATE_CANCELLED,
}
_ITEM_STATES_PB = {
    ItemState.PENDING: epb.BATCH_ITEM_STATE_PENDING,
    ItemState.RUNNING: epb.BATCH_ITEM_STATE_RUNNING,
    ItemState.FULFILLED: epb.BATCH_ITEM_STATE_FULFILLED,
    ItemState.REJECTED: epb.BATCH_ITEM_STATE_REJECTED,
    ItemState.CANCELLED: epb.BATCH_ITEM_STATE_CANCELLED,
}
_ITEM_STATES: dict[epb.BatchItemState.ValueType, ItemState] = {
    v: k for k, v in _ITEM_STATES_PB.items()
}


def batch_spec_from_proto(
    request: epb.ExecuteBatchRequest, *, workspace: str, api_key_id: str = ""
) -> BatchSpec:
    """The domain batch of an ExecuteBatch request."""
    target = _target(request)
    items = []
    problems: list[FieldViolation] = []
    for i, item in enumerate(request.items):
        try:
            inputs = inputs_from_proto(item.inputs, field=f"items[{i}].inputs")
        except InvalidArgument as exc:
            problems.extend(exc.violations)
            continue
        items.append(
            BatchItemSpec(
                custom_id=item.custom_id,
                inputs=inputs,
                parameters=(
                    parameters_from_proto(item.parameters) if item.HasField("parameters") else None
                ),
                metadata=struct_to_dict(item.metadata) if item.HasField("metadata") else {},
            )
        )
    if problems:
        raise InvalidArgument.of(problems[:100], reason="INVALID_INPUT")
    return BatchSpec(
        workspace_id=workspace,
        target=target,
        items=tuple(items),
        display_name=request.display_name,
        max_concurrency=request.max_concurrency,
        callback_url=request.callback_url,
        metadata=struct_to_dict(request.metadata) if request.HasField("metadata") else {},
        parameters=(
            parameters_from_proto(request.parameters) if request.HasField("parameters") else None
        ),
        api_key_id=api_key_id,
    )


def batch_to_proto(batch: Batch) -> epb.Batch:
    """A domain Batch as a message."""
    return epb.Batch(
        id=batch.id,
        display_name=batch.display_name,
        state=_BATCH_STATES_PB[batch.state],
        counts=epb.BatchCounts(
            total=batch.total,
            pending=batch.pending,
            succeeded=batch.succeeded,
            rejected=batch.rejected,
            cancelled=batch.cancelled,
        ),
        prompt_id=batch.prompt_id,
        release_tag=batch.release_tag,
        version=batch.version,
        max_concurrency=batch.max_concurrency,
        callback_url=batch.callback_url,
        create_time=timestamp(batch.created_at),
        start_time=timestamp(batch.started_at),
        end_time=timestamp(batch.ended_at),
        metadata=dict_to_struct(batch.metadata) if batch.metadata else None,
        error=error_to_proto(batch.error),
        callback_state=batch.callback_state,
        callback_attempts=batch.callback_attempts,
    )


def item_result_to_proto(result: ItemResult) -> epb.BatchItemResult:
    """A batch item's result as a message."""
    message = epb.BatchItemResult(
        custom_id=result.custom_id,
        index=result.index,
        state=_ITEM_STATES_PB[result.state],
        execution_id=result.execution_id,
    )
    record = result.execution
    if record is not None:
        if record.state is ExecutionState.FULFILLED:
            message.outputs.extend(output_to_proto(o) for o in record.outputs)
        message.meta.CopyFrom(meta_to_proto(record))
    error = result.error or (record.error if record is not None else None)
    failure = error_to_proto(error) if result.state is not ItemState.FULFILLED else None
    if failure is not None:
        message.error.CopyFrom(failure)
    return message


def item_state_from_proto(state: epb.BatchItemState.ValueType) -> ItemState | None:
    """A BatchItemState filter (None for UNSPECIFIED)."""
    return _ITEM_STATES.get(state)


def batch_event_to_proto(event: BatchEvent) -> epb.WatchBatchResponse:
    """A WatchBatch event as a message."""
    if event.item is not None:
        return epb.WatchBatchResponse(
            sequence=event.seq, item_result=item_result_to_proto(event.item)
        )
    assert event.progress is not None
    return epb.WatchBatchResponse(sequence=event.seq, progress=batch_to_proto(event.progress))
