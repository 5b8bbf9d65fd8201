"""JSON Schemas from callers: checked when given, evaluated with bounded work.

A schema (a response format's ``json_schema`` or a tool's ``parameters``) is
caller input run against model output, so ``schema_problems`` refuses, when
the schema is given, everything that could make evaluation unsafe:

- more than ``MAX_SCHEMA_NODES`` values or nesting past ``MAX_SCHEMA_DEPTH``;
- an unknown ``$schema`` (drafts 4, 6, 7, 2019-09 and 2020-12 are known);
- a ``pattern``/``patternProperties`` RE2 cannot compile (patterns are
  evaluated by RE2 in linear time, see ``schema_keywords``);
- a ``$ref`` (or ``$dynamicRef``/``$recursiveRef``) that is not local
  (``#...``) or does not resolve: references are never fetched;
- references that loop without descending into the instance
  (``{"$ref": "#"}``), which would never finish, or that fan out to more than
  ``MAX_FAN_OUT`` schemas applied to one value (work doubling at each step).

``check_output`` parses a model's JSON output (``promptgate.jsontext``) and
validates it. Small jobs run on the event loop under a step budget; a job
that exceeds it moves to a worker thread with a time limit, so a schema whose
work multiplies (references fanning out) holds no caller up and ends with a
clear problem, never an exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.protocols import Validator
from referencing.jsonschema import specification_with

from promptgate import jsontext
from promptgate.errors import FieldViolation
from promptgate.prompts.schema_keywords import (
    FORMAT_CHECKER,
    PATTERN_KEYWORDS,
    UNEVALUATED_KEYWORDS,
    Budget,
    OverBudget,
    PatternError,
    budget_for,
    compile_pattern,
    metered,
)

__all__ = [
    "FAST_SECONDS",
    "FAST_STEPS",
    "MAX_FAN_OUT",
    "MAX_SCHEMA_DEPTH",
    "MAX_SCHEMA_NODES",
    "VALIDATION_SECONDS",
    "check_output",
    "schema_problems",
]

MAX_SCHEMA_NODES: Final = 10_000
"""Values (objects, arrays, scalars) a schema may hold."""

MAX_SCHEMA_DEPTH: Final = jsontext.MAX_DEPTH
"""How deeply a schema may nest."""

MAX_FAN_OUT: Final = 1_000
"""Schemas one schema object may apply to the same value, references followed."""

FAST_STEPS: Final = 5_000
"""Keyword evaluations allowed on the event loop before a check moves to a thread."""

FAST_SECONDS: Final = 0.02
"""Time a check may hold the event loop before it moves to a thread."""

VALIDATION_SECONDS: Final = 2.0
"""Time one output's validation may take in the worker thread."""

_FAST_TEXT_CHARS: Final = 65_536  # longer outputs are parsed and checked in the thread

_DRAFTS: Final[dict[str, type[Validator]]] = {
    "https://json-schema.org/draft/2020-12/schema": jsonschema.Draft202012Validator,
    "https://json-schema.org/draft/2019-09/schema": jsonschema.Draft201909Validator,
    "http://json-schema.org/draft-07/schema": jsonschema.Draft7Validator,
    "http://json-schema.org/draft-06/schema": jsonschema.Draft6Validator,
    "http://json-schema.org/draft-04/schema": jsonschema.Draft4Validator,
}
_DEFAULT_DRAFT: Final[type[Validator]] = jsonschema.Draft202012Validator

_REFERENCES: Final = ("$ref", "$dynamicRef", "$recursiveRef")
# Keywords whose values are data, not schemas: their keys mean nothing.
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples"})
# Keywords applying their subschemas to the same instance (no descent into it).
_IN_PLACE_ONE: Final = ("not", "if", "then", "else")
_IN_PLACE_MANY: Final = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAP: Final = ("dependentSchemas", "dependencies")


def _refuse_retrieval(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


# Only the schema itself and the bundled meta-schemas are known; nothing is fetched.
_REGISTRY: Final[referencing.Registry[Any]] = referencing.Registry(
    retrieve=_refuse_retrieval  # type: ignore[call-arg]
)


def _bounded(draft: type[Validator]) -> type[Validator]:
    keywords = dict(draft.VALIDATORS)
    keywords.update(PATTERN_KEYWORDS)
    if "unevaluatedProperties" in keywords:
        keywords.update(UNEVALUATED_KEYWORDS)
    extended: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        draft, validators={k: metered(f) for k, f in keywords.items()}
    )
    return extended


_VALIDATORS: Final = {draft: _bounded(draft) for draft in {*_DRAFTS.values(), _DEFAULT_DRAFT}}


def _draft(schema: dict[str, Any]) -> type[Validator] | None:
    declared = schema.get("$schema")
    if declared is None:
        return _DEFAULT_DRAFT
    if not isinstance(declared, str):
        return None
    return _DRAFTS.get(declared.removesuffix("#"))


# ---------------------------------------------------------------------- checking


def schema_problems(schema: dict[str, Any], field: str) -> list[FieldViolation]:
    """Every reason ``schema`` cannot be used, as violations of ``field`` (see module doc)."""
    if jsontext.depth_exceeds(schema, MAX_SCHEMA_DEPTH):
        return [FieldViolation(field, f"nests deeper than {MAX_SCHEMA_DEPTH} levels")]
    if _count(schema) > MAX_SCHEMA_NODES:
        return [FieldViolation(field, f"has more than {MAX_SCHEMA_NODES} values")]
    draft = _draft(schema)
    if draft is None:
        known = ", ".join(sorted(_DRAFTS))
        return [FieldViolation(f"{field}.$schema", f"unknown $schema (known: {known})")]
    problems = [FieldViolation(field, p) for p in _pattern_problems(schema)]
    if problems:
        return problems
    try:
        draft.check_schema(schema, format_checker=FORMAT_CHECKER)  # type: ignore[call-arg]
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        at = f" at /{where}" if where else ""
        return [FieldViolation(field, f"not a valid JSON Schema{at}: {exc.message}")]
    except RecursionError:
        return [FieldViolation(field, "not a valid JSON Schema: too deeply nested")]
    return [FieldViolation(field, p) for p in _reference_problems(schema, draft)]


def _count(schema: Any) -> int:
    count, stack = 0, [schema]
    while stack and count <= MAX_SCHEMA_NODES:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _schemas(schema: Any, path: str = "") -> Iterator[tuple[dict[str, Any], str]]:
    """Every object in ``schema`` that may be a schema, with its JSON pointer.

    Objects under ``const``, ``enum``, ``default`` and ``examples`` are data
    and skipped. Depth is bounded by ``schema_problems`` before this runs.
    """
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            yield from _schemas(item, f"{path}/{i}")
    elif isinstance(schema, dict):
        yield schema, path or "/"
        for key, value in schema.items():
            if key not in _DATA_KEYWORDS and isinstance(value, dict | list):
                yield from _schemas(value, f"{path}/{key}")


def _pattern_problems(schema: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for node, path in _schemas(schema):
        patterns = []
        if isinstance(node.get("pattern"), str):
            patterns.append(node["pattern"])
        if isinstance(node.get("patternProperties"), dict):
            patterns.extend(node["patternProperties"])
        for pattern in patterns:
            try:
                compile_pattern(pattern)
            except PatternError as exc:
                problems.append(f"at {path}: {exc} (patterns use RE2 syntax)")
    return problems


def _reference_problems(schema: dict[str, Any], draft: type[Validator]) -> list[str]:
    """Non-local or unresolvable references, and reference loops that never descend."""
    specification = specification_with(draft.META_SCHEMA["$schema"])
    root = specification.create_resource(schema)
    resolver = _REGISTRY.resolver_with_root(root)
    problems: list[str] = []
    # In-place edges: schema object -> schema objects applied to the same instance.
    edges: dict[int, list[dict[str, Any]]] = {}
    where: dict[int, str] = {}
    stack: list[tuple[Any, Any, str]] = [(schema, resolver, "")]
    while stack:
        node, scope, path = stack.pop()
        if isinstance(node, list):
            stack.extend((item, scope, f"{path}/{i}") for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("$id"), str) and node is not schema:
            scope = scope.in_subresource(specification.create_resource(node))
        where[id(node)] = path or "/"
        targets = edges.setdefault(id(node), [])
        for keyword in _REFERENCES:
            ref = node.get(keyword)
            if ref is None:
                continue
            if not isinstance(ref, str) or not ref.startswith("#"):
                problems.append(
                    f"{keyword} {ref!r} at {path or '/'} is not local: only '#...' "
                    "references to this schema are allowed (nothing is fetched)"
                )
                continue
            try:
                resolved = scope.lookup(ref)
            except (referencing.exceptions.Unresolvable, LookupError, ValueError):
                problems.append(f"{keyword} {ref!r} at {path or '/'} does not resolve")
                continue
            if isinstance(resolved.contents, dict):
                targets.append(resolved.contents)
        for keyword in _IN_PLACE_ONE:
            if isinstance(node.get(keyword), dict):
                targets.append(node[keyword])
        for keyword in _IN_PLACE_MANY:
            if isinstance(node.get(keyword), list):
                targets.extend(s for s in node[keyword] if isinstance(s, dict))
        for keyword in _IN_PLACE_MAP:
            if isinstance(node.get(keyword), dict):
                targets.extend(s for s in node[keyword].values() if isinstance(s, dict))
        for key, value in node.items():
            if key not in _DATA_KEYWORDS and isinstance(value, dict | list):
                stack.append((value, scope, f"{path}/{key}"))
    if not problems:
        node, kind = _loop_at(schema, edges)
        if kind == "loop":
            problems.append(
                f"the schema at {where.get(node, '/')} refers back to itself without "
                "descending into the value (its validation would never end)"
            )
        elif kind == "fan-out":
            problems.append(
                f"the schema at {where.get(node, '/')} applies more than {MAX_FAN_OUT} "
                "schemas (through references and allOf/anyOf/oneOf) to one value"
            )
    return problems


def _loop_at(schema: dict[str, Any], edges: dict[int, list[dict[str, Any]]]) -> tuple[int, str]:
    """A schema object whose in-place applications loop or fan out too far, and which.

    Iterative depth-first search over the in-place edges: a back edge is a
    loop (``"loop"``); otherwise each object's count of schemas applied to one
    value (1 + its targets' counts, counting repeats) must stay within
    ``MAX_FAN_OUT`` (``"fan-out"``). ``(0, "")`` when neither happens.
    """
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    reach: dict[int, int] = {}
    for start in edges:
        if start in state:
            continue
        path: list[tuple[int, Iterator[dict[str, Any]]]] = [(start, iter(edges[start]))]
        state[start] = 1
        while path:
            node, children = path[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                path.pop()
                total = 1 + sum(reach[id(t)] for t in edges.get(node, []))
                reach[node] = min(total, MAX_FAN_OUT + 1)
                if total > MAX_FAN_OUT:
                    return node, "fan-out"
                continue
            key = id(child)
            if state.get(key) == 1:
                return key, "loop"
            if key not in state:
                state[key] = 1
                path.append((key, iter(edges.get(key, []))))
    return 0, ""


# ---------------------------------------------------------------------- validating

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # Two workers: at most two slow validations compete with the loop for the GIL.
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="schema-check")
    return _POOL


async def check_output(text: str, schema: dict[str, Any] | None) -> tuple[Any, str]:
    """``text`` parsed as JSON and validated against ``schema``: ``(value, problem)``.

    ``problem`` is empty when the output is acceptable; otherwise it says why
    not (not JSON promptgate accepts, not valid against the schema, or too
    costly to check) and ``value`` is None.
    """
    if len(text) <= _FAST_TEXT_CHARS:
        try:
            return _check(text, schema, Budget(FAST_STEPS, time.monotonic() + FAST_SECONDS))
        except OverBudget:
            pass
    budget = Budget(steps=2**62)
    try:
        return await asyncio.get_running_loop().run_in_executor(
            _pool(), _check_in_thread, text, schema, budget
        )
    except asyncio.CancelledError:
        budget.abandoned = True  # the thread stops at its next check
        raise


def _check_in_thread(text: str, schema: dict[str, Any] | None, budget: Budget) -> tuple[Any, str]:
    if budget.abandoned:
        return None, "abandoned"
    budget.deadline = time.monotonic() + VALIDATION_SECONDS
    try:
        return _check(text, schema, budget)
    except OverBudget:
        return None, (
            f"the output could not be checked against its JSON schema within "
            f"{VALIDATION_SECONDS:g} s; simplify the schema"
        )


def _check(text: str, schema: dict[str, Any] | None, budget: Budget) -> tuple[Any, str]:
    try:
        value = jsontext.loads(text)
    except jsontext.JsonTextError as exc:
        return None, f"the output is not valid JSON: {exc}"
    if not schema:
        return value, ""
    with budget_for(budget):
        problem = _validate(schema, value)
    return (None, problem) if problem else (value, "")


def _validate(schema: dict[str, Any], value: Any) -> str:
    draft = _draft(schema)
    if draft is None:
        return "the JSON schema names an unknown $schema"
    validator = _VALIDATORS[draft](schema, registry=_REGISTRY)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except PatternError as exc:
        return f"the JSON schema cannot be evaluated: {exc}"
    except referencing.exceptions.Unresolvable as exc:
        return f"the JSON schema has a reference that does not resolve: {exc}"
    except RecursionError:
        return "the JSON schema's references nest too deeply to check this output"
    if error is None:
        return ""
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"the output does not match its JSON schema at {where}: {error.message[:500]}"
