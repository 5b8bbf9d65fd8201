"""Check caller inputs against declared variables and produce template values.

Every problem is collected, so one error lists every bad input: undeclared
names, duplicates, missing required variables and values of the wrong type,
each as a field violation naming the variable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from promptgate import jsontext
from promptgate.chat import ChatMessage
from promptgate.errors import FieldViolation, InvalidArgument
from promptgate.prompts.model import InputType, InputVariable, PromptInput


def resolve_inputs(
    declared: Sequence[InputVariable] | None,
    given: Sequence[PromptInput],
    *,
    field: str = "inputs",
) -> dict[str, Any]:
    """Template values for ``given`` inputs checked against ``declared`` variables.

    With ``declared`` None (an inline prompt that declares nothing), every
    input is accepted with the type of its value.
    """
    violations: list[FieldViolation] = []
    by_name = {v.name: v for v in declared} if declared is not None else None
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for index, item in enumerate(given):
        path = f"{field}[{index}]"
        if not item.name:
            violations.append(FieldViolation(f"{path}.name", "an input needs a name"))
            continue
        if item.name in seen:
            violations.append(FieldViolation(f"{path}.name", f"input {item.name!r} is given twice"))
            continue
        seen.add(item.name)
        if by_name is None:
            variable = InputVariable(item.name, item.type)
        elif item.name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            violations.append(
                FieldViolation(
                    f"{path}.name",
                    f"input {item.name!r} is not a declared variable (declared: {known})",
                )
            )
            continue
        else:
            variable = by_name[item.name]
        try:
            values[item.name] = coerce(variable, item)
        except ValueError as exc:
            violations.append(FieldViolation(path, str(exc)))
    for variable in declared or ():
        if variable.name in seen:
            continue
        if variable.has_default:
            values[variable.name] = variable.default
        else:
            violations.append(
                FieldViolation(
                    field, f"missing required input {variable.name!r} ({variable.type.value})"
                )
            )
    if violations:
        raise InvalidArgument.of(violations, reason="INVALID_INPUT")
    return values


def coerce(variable: InputVariable, item: PromptInput) -> Any:
    """The template value of ``item`` for ``variable``; ValueError if it does not fit."""
    expected, got = variable.type, item.type
    label = f"input {variable.name!r} is declared {expected.value}"
    if item.value is None:
        raise ValueError(f"{label} but has no value")
    if expected is InputType.JSON:
        if got is InputType.STRING:
            try:
                return jsontext.loads(item.value)
            except jsontext.JsonTextError as exc:
                raise ValueError(f"{label} but its string is not valid JSON: {exc}") from None
        if got is InputType.CHAT_HISTORY:
            raise ValueError(f"{label} but got a CHAT_HISTORY value")
        return item.value
    if expected is not got:
        raise ValueError(f"{label} but got a {got.value} value")
    if expected is InputType.NUMBER and not math.isfinite(item.value):
        raise ValueError(f"{label} but got a non-finite number")
    if expected is InputType.CHAT_HISTORY:
        return [m for m in item.value if isinstance(m, ChatMessage)]
    return item.value
