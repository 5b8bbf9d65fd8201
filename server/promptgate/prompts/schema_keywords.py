"""JSON Schema keywords evaluated with RE2 instead of Python's ``re``.

jsonschema evaluates ``pattern`` and ``patternProperties`` with ``re.search``,
whose backtracking takes exponential time on patterns like ``^(a+)+$``: any
model output could then hold the server for minutes. RE2 matches in time
linear in the text, and refuses what it cannot match that way (lookaround,
backreferences). This module gives the keyword functions that use patterns
(``pattern``, ``patternProperties``, ``additionalProperties`` and
``unevaluatedProperties``, which ask which keys a pattern covers) an RE2
implementation with jsonschema's semantics, and a ``FormatChecker`` whose
``regex`` format compiles with RE2. ``promptgate.prompts.schemas`` builds its
validator classes from them.

Validation work is metered: every keyword evaluation and every pattern search
spends a step of the ``Budget`` set for the running thread (``budget_for``),
which raises ``OverBudget`` once its steps or its time are used up.
``uniqueItems`` is replaced by a linear-time version, as jsonschema's compares
unhashable items pairwise.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import re2
from jsonschema import FormatChecker, ValidationError
from referencing.jsonschema import lookup_recursive_ref

__all__ = [
    "FORMAT_CHECKER",
    "PATTERN_KEYWORDS",
    "UNEVALUATED_KEYWORDS",
    "Budget",
    "OverBudget",
    "PatternError",
    "budget_for",
    "compile_pattern",
    "metered",
]

_OPTIONS: Final = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr
_OPTIONS.never_capture = True


class OverBudget(Exception):
    """A validation used up its steps or its time."""


@dataclass(slots=True)
class Budget:
    """Steps left for one validation, when it must stop, and whether its caller left."""

    steps: int
    deadline: float = math.inf
    abandoned: bool = False


_current = threading.local()
_CLOCK_EVERY: Final = 16  # look at the clock every this many steps


def _spend() -> None:
    budget: Budget | None = getattr(_current, "budget", None)
    if budget is None:
        return
    budget.steps -= 1
    if budget.steps < 0 or (
        budget.steps % _CLOCK_EVERY == 0
        and (budget.abandoned or time.monotonic() > budget.deadline)
    ):
        raise OverBudget


@contextlib.contextmanager
def budget_for(budget: Budget) -> Iterator[None]:
    """Meter the validations this thread runs inside the block against ``budget``."""
    _current.budget = budget
    try:
        yield
    finally:
        _current.budget = None


def metered(function: Callable[..., Any]) -> Callable[..., Any]:
    """A keyword function that spends a step of the thread's budget before running."""

    def keyword(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _spend()
        return function(validator, value, instance, schema)

    return keyword


class PatternError(ValueError):
    """A schema pattern RE2 cannot compile; the message says which and why."""


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> Any:
    return re2.compile(pattern, _OPTIONS)


def compile_pattern(pattern: str) -> Any:
    """The compiled RE2 pattern; ``PatternError`` if RE2 cannot compile it."""
    try:
        return _compile(pattern)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(f"RE2 cannot compile the pattern {pattern!r}: {reason}") from None


def _search(pattern: str, text: str) -> bool:
    _spend()
    return compile_pattern(pattern).search(text) is not None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


FORMAT_CHECKER: Final = FormatChecker()
"""jsonschema's format checker with ``regex`` checked by RE2 (used to check schemas)."""


@FORMAT_CHECKER.checks("regex", raises=PatternError)
def _is_regex(instance: object) -> bool:
    if isinstance(instance, str):
        compile_pattern(instance)
    return True


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{_short(instance)} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Keys of ``instance`` neither in ``properties`` nor matched by ``patternProperties``."""
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [
        key
        for key in instance
        if key not in properties and not any(_search(p, key) for p in patterns)
    ]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined = ", ".join(_short(each) for each in sorted(extras)[:20])
        if "patternProperties" in schema:
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} do(es) not match any of the regexes: {patterns}")
        else:
            yield ValidationError(f"Additional properties are not allowed ({joined} unexpected)")


def _valid(errors: Iterator[ValidationError]) -> bool:
    return next(errors, None) is None


def _evaluated_keys(validator: Any, instance: Mapping[str, Any], schema: Any) -> set[str]:
    """Keys of ``instance`` that ``schema`` evaluates in place (for unevaluatedProperties).

    jsonschema's ``find_evaluated_property_keys_by_schema`` (draft 2020-12,
    also serving 2019-09's ``$recursiveRef``) with RE2 for patternProperties.
    """
    if not isinstance(schema, dict):
        return set()
    keys: set[str] = set()
    references = []
    if isinstance(schema.get("$ref"), str):
        references.append(validator._resolver.lookup(schema["$ref"]))
    if isinstance(schema.get("$dynamicRef"), str):
        references.append(validator._resolver.lookup(schema["$dynamicRef"]))
    if "$recursiveRef" in schema:
        references.append(lookup_recursive_ref(validator._resolver))
    for resolved in references:
        inner = validator.evolve(schema=resolved.contents, _resolver=resolved.resolver)
        keys |= _evaluated_keys(inner, instance, resolved.contents)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        subschema = schema.get(keyword)
        if subschema is not None:
            keys.update(k for k, v in instance.items() if _valid(validator.descend(v, subschema)))
    for pattern in schema.get("patternProperties", {}):
        keys.update(k for k in instance if _search(pattern, k))
    for key, subschema in schema.get("dependentSchemas", {}).items():
        if key in instance:
            keys |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid(validator.descend(instance, subschema)):
                keys |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    bad = [
        key
        for key in instance
        if key not in evaluated and not _valid(validator.descend(instance[key], unevaluated))
    ]
    if bad:
        joined = ", ".join(_short(each) for each in sorted(bad)[:20])
        if unevaluated is False:
            yield ValidationError(f"Unevaluated properties are not allowed ({joined} unexpected)")
        else:
            yield ValidationError(
                f"Unevaluated properties are not valid under the given schema ({joined})"
            )


def _canonical(value: Any) -> Any:
    """A hashable form of a JSON value, equal when JSON Schema calls the values equal."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 == 1.0, with equal hashes
    if isinstance(value, list):
        return ("array", tuple(_canonical(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("scalar", value)


def _unique_items(
    validator: Any, unique: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if unique and validator.is_type(instance, "array"):
        if len({_canonical(item) for item in instance}) < len(instance):
            yield ValidationError(f"{_short(instance)} has non-unique elements")


PATTERN_KEYWORDS: Final = {
    "uniqueItems": _unique_items,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}
"""Keyword functions replacing jsonschema's in every draft."""

UNEVALUATED_KEYWORDS: Final = {"unevaluatedProperties": _unevaluated_properties}
"""Replacements for drafts that have ``unevaluatedProperties`` (2019-09, 2020-12)."""
