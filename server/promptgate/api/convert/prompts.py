"""Prompts between protobuf and the domain: routing, cache policy, inputs,
templates, versions, release tags and renderings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from promptgate.api.convert.chat import (
    ROLES_PB,
    chat_message_from_proto,
    chat_message_to_proto,
    parameters_from_proto,
    parameters_to_proto,
    response_format_from_proto,
    response_format_to_proto,
    role_from_proto,
    tool_choice_from_proto,
    tool_choice_to_proto,
    tool_from_proto,
    tool_to_proto,
)
from promptgate.api.convert.values import (
    _seconds,
    dict_to_struct,
    duration,
    python_to_value,
    timestamp,
    value_to_python,
)
from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.chat import (
    Role,
)
from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.execution.model import (
    InlineTarget,
    Rendering,
)
from promptgate.prompts.compatibility import BreakingChangeType, CompatibilityReport
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
    TrafficSplit,
    VersionWeight,
)

_INPUT_TYPES: dict[pb.InputType.ValueType, InputType] = {
    pb.INPUT_TYPE_STRING: InputType.STRING,
    pb.INPUT_TYPE_JSON: InputType.JSON,
    pb.INPUT_TYPE_CHAT_HISTORY: InputType.CHAT_HISTORY,
    pb.INPUT_TYPE_NUMBER: InputType.NUMBER,
    pb.INPUT_TYPE_BOOLEAN: InputType.BOOLEAN,
}
INPUT_TYPES_PB = {v: k for k, v in _INPUT_TYPES.items()}
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
CACHE_STATUS_PB = {
    "": pb.CACHE_STATUS_UNSPECIFIED,
    "hit": pb.CACHE_STATUS_HIT,
    "miss": pb.CACHE_STATUS_MISS,
    "refresh": pb.CACHE_STATUS_REFRESH,
}


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
        name=variable.name, type=INPUT_TYPES_PB[variable.type], description=variable.description
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
        role=ROLES_PB[message.role] if message.role else pb.MESSAGE_ROLE_UNSPECIFIED,
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


def spec_from_inline(inline: pb.InlinePrompt, field: str = "inline_prompt") -> InlineTarget:
    """The target of an InlinePrompt message (``field``: where it is, for errors)."""
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
    message = ppb.PromptVersion(
        id=version.id,
        prompt_id=version.prompt_id,
        version=version.version,
        description=version.description,
        create_time=timestamp(version.created_at),
        partials=version.spec.partials,
    )
    _spec_into(version.spec, message)
    return message


def inline_to_proto(target: InlineTarget) -> pb.InlinePrompt:
    """An inline prompt as a message (its system and user prompts as messages)."""
    message = pb.InlinePrompt()
    _spec_into(target.spec, message)
    return message


def _spec_into(spec: PromptSpec, message: ppb.PromptVersion | pb.InlinePrompt) -> None:
    """Copy ``spec`` into a PromptVersion or InlinePrompt message (they share its fields)."""
    message.messages.extend(template_to_proto(m) for m in spec.messages)
    message.provider = spec.provider
    message.model = spec.model
    message.parameters.CopyFrom(parameters_to_proto(spec.parameters))
    message.input_variables.extend(input_variable_to_proto(v) for v in spec.input_variables)
    message.tools.extend(tool_to_proto(t) for t in spec.tools)
    if spec.response_format is not None:
        message.response_format.CopyFrom(response_format_to_proto(spec.response_format))
    if spec.tool_choice is not None:
        message.tool_choice.CopyFrom(tool_choice_to_proto(spec.tool_choice))
    if spec.routing is not None:
        message.routing.CopyFrom(routing_to_proto(spec.routing))
    if spec.cache is not None:
        message.cache.CopyFrom(cache_to_proto(spec.cache))


def release_tag_to_proto(tag: ReleaseTag) -> ppb.ReleaseTag:
    """A domain ReleaseTag as a message."""
    return ppb.ReleaseTag(
        tag=tag.tag,
        version=tag.version,
        version_id=tag.version_id,
        automatic=tag.automatic,
        update_time=timestamp(tag.updated_at),
        split=split_to_proto(tag.split),
    )


def tag_event_to_proto(event: ReleaseTagEvent) -> ppb.ReleaseTagEvent:
    """A domain ReleaseTagEvent as a message."""
    return ppb.ReleaseTagEvent(
        tag=event.tag,
        version=event.version,
        version_id=event.version_id,
        previous_version=event.previous_version,
        time=timestamp(event.time),
        split=split_to_proto(event.split),
    )


def split_to_proto(split: TrafficSplit | None) -> ppb.TrafficSplit | None:
    """A domain traffic split as a message (None stays unset)."""
    if split is None:
        return None
    return ppb.TrafficSplit(
        id=split.id,
        versions=[
            ppb.VersionWeight(version=v.version, version_id=v.version_id, weight=v.weight)
            for v in split.versions
        ],
        start_time=timestamp(split.started_at),
    )


def split_entries_from_proto(entries: Iterable[ppb.VersionWeight]) -> tuple[VersionWeight, ...]:
    """SetReleaseTagRequest.splits as domain entries (checked by the catalog)."""
    return tuple(
        VersionWeight(version=e.version, version_id=e.version_id, weight=e.weight) for e in entries
    )


_BREAKING_CHANGE_TYPES_PB = {
    BreakingChangeType.VARIABLE_REMOVED: ppb.BREAKING_CHANGE_TYPE_VARIABLE_REMOVED,
    BreakingChangeType.VARIABLE_TYPE_CHANGED: ppb.BREAKING_CHANGE_TYPE_VARIABLE_TYPE_CHANGED,
    BreakingChangeType.VARIABLE_NOW_REQUIRED: ppb.BREAKING_CHANGE_TYPE_VARIABLE_NOW_REQUIRED,
}


def compatibility_to_proto(report: CompatibilityReport) -> ppb.CompatibilityReport:
    """A domain CompatibilityReport as a message."""
    return ppb.CompatibilityReport(
        release_tag=report.release_tag,
        versions=list(report.versions),
        compatible=report.compatible,
        breaking_changes=[
            ppb.BreakingChange(
                type=_BREAKING_CHANGE_TYPES_PB[c.type],
                variable=c.variable,
                description=c.description,
                version=c.version,
            )
            for c in report.changes
        ],
    )


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
        split_id=rendering.split_id,
        partials=rendering.partials,
    )


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
