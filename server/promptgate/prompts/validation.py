"""Checks a prompt spec before it is stored or run.

A spec is rejected, with a field violation per problem, when a template does
not parse, uses a variable that is not declared, or when declarations,
parameters, the response format or tools are malformed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence

from promptgate.chat import (
    ResponseFormat,
    ResponseFormatType,
    Tool,
    ToolChoice,
    ToolChoiceMode,
    parameter_problems,
)
from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.prompts.inputs import coerce
from promptgate.prompts.model import (
    CachePolicy,
    InputType,
    InputVariable,
    PromptInput,
    PromptSpec,
    Routing,
    Strategy,
)
from promptgate.prompts.partial_sets import PartialSet
from promptgate.prompts.schemas import schema_problems
from promptgate.prompts.templates import TemplateEngine, TemplateNames

MAX_ATTEMPTS = 10
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

ModelCheck = Callable[[str, str, str], None]
"""Raises InvalidArgument if (provider, model) cannot be served; the third argument is the field."""


def validate_spec(
    spec: PromptSpec,
    templates: TemplateEngine,
    *,
    field: str,
    check_model: ModelCheck,
    declared_required: bool = True,
    partials: PartialSet | None = None,
) -> None:
    """Raise InvalidArgument listing every problem of ``spec``.

    With ``declared_required`` False (inline prompts that declare nothing),
    template variables need not be declared. ``partials`` are those the
    templates include: a variable a partial uses must be declared too, unless
    a template or partial of the include chain sets it (``set``, ``for``...).
    """
    problems: list[FieldViolation] = []
    if not spec.model:
        problems.append(FieldViolation(f"{field}.model", "a model is required"))
    else:
        # An unservable model is its own error (INVALID_MODEL), reported first.
        check_model(spec.provider, spec.model, f"{field}.model")
    problems.extend(variable_problems(spec.input_variables, f"{field}.input_variables"))
    declared = {v.name: v for v in spec.input_variables}
    if not spec.messages:
        problems.append(FieldViolation(f"{field}.messages", "a prompt needs at least one message"))
    for i, message in enumerate(spec.messages):
        path = f"{field}.messages[{i}]"
        if message.chat_history_input:
            history = declared.get(message.chat_history_input)
            if history is None and declared_required:
                problems.append(
                    FieldViolation(
                        f"{path}.chat_history_input",
                        f"variable {message.chat_history_input!r} is not declared",
                    )
                )
            elif history is not None and history.type is not InputType.CHAT_HISTORY:
                problems.append(
                    FieldViolation(
                        f"{path}.chat_history_input",
                        f"variable {message.chat_history_input!r} is not CHAT_HISTORY",
                    )
                )
            continue
        if message.role is None:
            problems.append(FieldViolation(f"{path}.role", "a role is required"))
        try:
            names = templates.names(message.template, f"{path}.template")
        except InvalidArgument as exc:
            problems.extend(exc.violations)
            continue
        if declared_required:
            for name in sorted(names.variables - declared.keys()):
                problems.append(
                    FieldViolation(f"{path}.template", f"uses undeclared variable {name!r}")
                )
            if names.includes and partials is not None:
                problems.extend(
                    _partial_variable_problems(
                        templates, partials, names, declared.keys(), f"{path}.template"
                    )
                )
    problems.extend(
        FieldViolation(f, d) for f, d in parameter_problems(spec.parameters, f"{field}.parameters")
    )
    problems.extend(response_format_problems(spec.response_format, f"{field}.response_format"))
    problems.extend(tool_problems(spec.tools, spec.tool_choice, field))
    problems.extend(routing_problems(spec.routing, f"{field}.routing", check_model))
    problems.extend(cache_problems(spec.cache, f"{field}.cache"))
    if problems:
        raise InvalidArgument.of(problems, reason="INVALID_PROMPT")


def _partial_variable_problems(
    templates: TemplateEngine,
    partials: PartialSet,
    names: TemplateNames,
    declared: Iterable[str],
    field: str,
) -> list[FieldViolation]:
    """Variables that the partials a template includes use, and nothing declares or sets."""
    reached = {
        name: templates.names(partials.sources[name], field)
        for name in partials.reachable(names.includes)
    }
    known = names.assigned.union(declared, *(n.assigned for n in reached.values()))
    return [
        FieldViolation(field, f"partial {partial!r} uses undeclared variable {variable!r}")
        for partial, used in sorted(reached.items())
        for variable in sorted(used.variables - known)
    ]


def variable_problems(variables: Sequence[InputVariable], field: str) -> list[FieldViolation]:
    """Problems of input variable declarations: bad or repeated names, defaults that do not fit."""
    problems: list[FieldViolation] = []
    declared: set[str] = set()
    for i, variable in enumerate(variables):
        path = f"{field}[{i}]"
        if not IDENTIFIER.fullmatch(variable.name):
            problems.append(
                FieldViolation(f"{path}.name", f"{variable.name!r} is not a valid variable name")
            )
        elif variable.name in declared:
            problems.append(
                FieldViolation(f"{path}.name", f"variable {variable.name!r} is declared twice")
            )
        declared.add(variable.name)
        if variable.has_default:
            try:
                coerce(
                    variable,
                    PromptInput(
                        variable.name, _kind(variable.default, variable.type), variable.default
                    ),
                )
            except ValueError as exc:
                problems.append(FieldViolation(f"{path}.default_value", str(exc)))
    return problems


def _kind(value: object, declared: InputType) -> InputType:
    if declared is InputType.JSON:
        return InputType.JSON
    if isinstance(value, bool):
        return InputType.BOOLEAN
    if isinstance(value, int | float):
        return InputType.NUMBER
    if isinstance(value, str):
        return InputType.STRING
    return InputType.JSON


def routing_problems(
    routing: Routing | None, field: str, check_model: ModelCheck
) -> list[FieldViolation]:
    """Problems of a routing policy: unservable targets, bad weights, retries or timeouts."""
    if routing is None:
        return []
    problems: list[FieldViolation] = []
    for i, target in enumerate(routing.targets):
        path = f"{field}.targets[{i}]"
        if not target.model:
            problems.append(FieldViolation(f"{path}.model", "a model is required"))
        else:
            try:
                check_model(target.provider, target.model, f"{path}.model")
            except InvalidArgument as exc:
                problems.extend(exc.violations)
        if not math.isfinite(target.weight) or target.weight < 0:
            problems.append(FieldViolation(f"{path}.weight", "must be a non-negative number"))
        if target.parameters is not None:
            problems.extend(
                FieldViolation(f, d)
                for f, d in parameter_problems(target.parameters, f"{path}.parameters")
            )
    if (
        routing.strategy is Strategy.WEIGHTED
        and routing.targets
        and not any(t.weight > 0 for t in routing.targets)
    ):
        problems.append(
            FieldViolation(f"{field}.targets", "weighted routing needs a positive weight")
        )
    retry = routing.retry
    if retry is not None:
        if not 0 <= retry.max_attempts <= MAX_ATTEMPTS:
            problems.append(
                FieldViolation(
                    f"{field}.retry.max_attempts", f"must be between 0 and {MAX_ATTEMPTS}"
                )
            )
        for name in ("initial_backoff_s", "max_backoff_s"):
            value = getattr(retry, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                label = name.removesuffix("_s")
                problems.append(FieldViolation(f"{field}.retry.{label}", "must not be negative"))
    if routing.attempt_timeout_s is not None and routing.attempt_timeout_s <= 0:
        problems.append(FieldViolation(f"{field}.attempt_timeout", "must be positive"))
    return problems


def cache_problems(cache: CachePolicy | None, field: str) -> list[FieldViolation]:
    """Problems of a cache policy: a TTL must be positive."""
    if cache is not None and cache.ttl_s is not None and cache.ttl_s <= 0:
        return [FieldViolation(f"{field}.ttl", "must be positive")]
    return []


def response_format_problems(fmt: ResponseFormat | None, field: str) -> list[FieldViolation]:
    """Problems of a response format: a json_schema format needs a usable JSON Schema.

    See ``promptgate.prompts.schemas``: RE2 patterns, local references only,
    bounded size and work.
    """
    if fmt is None or fmt.type is not ResponseFormatType.JSON_SCHEMA:
        return []
    if not fmt.json_schema:
        return [FieldViolation(f"{field}.json_schema", "required for TYPE_JSON_SCHEMA")]
    return schema_problems(fmt.json_schema, f"{field}.json_schema")


def tool_problems(
    tools: tuple[Tool, ...], choice: ToolChoice | None, field: str
) -> list[FieldViolation]:
    """Problems of tool declarations and the tool choice."""
    problems: list[FieldViolation] = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not TOOL_NAME.fullmatch(tool.name):
            problems.append(
                FieldViolation(
                    f"{field}.tools[{i}].name", f"{tool.name!r} is not a valid function name"
                )
            )
        elif tool.name in names:
            problems.append(
                FieldViolation(
                    f"{field}.tools[{i}].name", f"function {tool.name!r} is declared twice"
                )
            )
        names.add(tool.name)
        if tool.parameters:
            problems.extend(schema_problems(tool.parameters, f"{field}.tools[{i}].parameters"))
    if (
        choice is not None
        and choice.mode is ToolChoiceMode.FUNCTION
        and choice.function_name not in names
    ):
        problems.append(
            FieldViolation(
                f"{field}.tool_choice.function_name",
                f"{choice.function_name!r} is not a declared tool",
            )
        )
    if (
        choice is not None
        and choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.FUNCTION)
        and not tools
    ):
        problems.append(FieldViolation(f"{field}.tool_choice", "needs at least one tool"))
    return problems
