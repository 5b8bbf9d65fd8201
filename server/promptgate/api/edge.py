"""Checks every request gets at the edge, before a servicer sees it.

Whatever the RPC, the strings of a request follow three rules:

- Identifiers and names (ids, external and custom ids, prompt and key names,
  release tags, display names, model and provider names, page tokens, label
  keys and metadata keys) are at most ``MAX_IDENTIFIER_CHARS`` characters
  (page tokens ``MAX_PAGE_TOKEN_CHARS``) and contain no control characters
  (U+0000-U+001F, U+007F-U+009F). They are stored as text columns, echoed in
  errors and logs, and used as keys: NUL cannot be stored by PostgreSQL, and a
  10,000-character id only makes error messages huge.
- Every other string field (templates, input strings, chat content,
  descriptions, ...) contains no NUL (U+0000): PostgreSQL's text type cannot
  hold it, and no prompt needs it. JSON values (``google.protobuf.Struct`` and
  ``Value``: metadata values, JSON inputs, parameters' ``extra``, raw bodies)
  are JSON, where U+0000 is the escape ``\\u0000``; they are stored as JSON on
  every database and are accepted as they are.
- ``raw_overrides.headers`` go onto shared HTTP connections: a header name is
  an HTTP token, and a value has no control character but tab (no CR, LF or
  NUL that could split or smuggle a header).

A request breaking them is INVALID_ARGUMENT with one field violation per bad
field (the bad value is never echoed back); the reason is the one the domain
gives for that field (INVALID_PROMPT under ``version``, INVALID_INPUT under
``inputs``, ...), INVALID_PARAMETERS otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from promptgate.errors import FieldViolation, InvalidArgument

MAX_IDENTIFIER_CHARS: Final = 256
MAX_PAGE_TOKEN_CHARS: Final = 512
MAX_REPORTED_VIOLATIONS: Final = 20

# Field names that hold an identifier or a name, in any message.
_IDENTIFIER_FIELDS: Final = frozenset(
    {
        "api_key_id",
        "batch_id",
        "chat_history_input",
        "custom_id",
        "display_name",
        "execution_id",
        "expand_raw",
        "external_id",
        "function_name",
        "id",
        "key_id",
        "model",
        "name",
        "name_prefix",
        "page_token",
        "partial",
        "plan",
        "prompt",
        "prompt_id",
        "provider",
        "release_tag",
        "release_tags",
        "schema_name",
        "scopes",
        "tag",
        "tool_call_id",
        "version_id",
    }
)
# Same names, checked as text here (NUL only): the user prompt of an inline
# prompt is free text, and the others are matched against a strict pattern by
# the domain, whose message says what a valid one looks like.
_TEXT_EXCEPTIONS: Final = frozenset(
    {
        "promptgate.v1.InlinePrompt.prompt",
        "promptgate.v1.CreatePromptRequest.name",
        "promptgate.v1.CreatePartialRequest.name",
        "promptgate.v1.InputVariable.name",
        "promptgate.v1.Tool.name",
        "promptgate.v1.SetReleaseTagRequest.tag",
        "promptgate.v1.CreatePromptVersionRequest.release_tags",
    }
)
_HEADERS: Final = "promptgate.v1.RawOverrides.headers"
_STRUCT: Final = "google.protobuf.Struct"
_JSON_TYPES: Final = frozenset({_STRUCT, "google.protobuf.Value", "google.protobuf.ListValue"})

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_BAD: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_NUL_TEXT: Final = "must not contain NUL characters (U+0000)"
_CONTROL_TEXT: Final = "must not contain control characters (such as NUL, CR or LF)"

# What to do with each field of a message type: computed once per type.
_ID, _TEXT, _MESSAGE, _MAP, _METADATA, _HEADER_MAP, _SKIP = range(7)
_plans: dict[str, dict[str, int]] = {}


# The reason of an edge refusal, by the request field it is under: the same
# reason the domain gives when it finds a mistake in that field, so a caller
# sees one reason for one mistake whichever check caught it.
_REASONS: Final = {
    "version": "INVALID_PROMPT",
    "inline_prompt": "INVALID_PROMPT",
    "inputs": "INVALID_INPUT",
    "items": "INVALID_BATCH",
    "actuals": "INVALID_ACTUAL",
    "tag": "INVALID_RELEASE_TAG",
    "release_tags": "INVALID_RELEASE_TAG",
}
_REQUEST_REASONS: Final = {
    ("promptgate.v1.CreatePromptRequest", "name"): "INVALID_PROMPT_NAME",
    ("promptgate.v1.CreatePartialRequest", "name"): "INVALID_PARTIAL_NAME",
    ("promptgate.v1.CreatePartialRequest", "content"): "INVALID_PROMPT",
    ("promptgate.v1.CreatePartialVersionRequest", "content"): "INVALID_PROMPT",
}


def check_request(request: Any) -> None:
    """Raise InvalidArgument if a string of ``request`` breaks the rules above.

    Anything but a protobuf message (a generic handler's raw bytes) is left alone.
    """
    if not isinstance(request, Message):
        return
    problems: list[FieldViolation] = []
    _check(request, "", problems)
    if problems:
        reason = _reason(request.DESCRIPTOR.full_name, problems[0].field)
        raise InvalidArgument.of(problems[:MAX_REPORTED_VIOLATIONS], reason=reason)


def _reason(request_type: str, path: str) -> str:
    top = re.split(r"[.\[]", path, maxsplit=1)[0]
    if top == "items" and ".inputs[" in path:
        return "INVALID_INPUT"
    return _REQUEST_REASONS.get((request_type, top)) or _REASONS.get(top, "INVALID_PARAMETERS")


def _plan(descriptor: Any) -> dict[str, int]:
    # Any: upb's Descriptor and the pure-Python one are different types to mypy.
    plan = _plans.get(descriptor.full_name)
    if plan is None:
        plan = {f.name: _kind(f) for f in descriptor.fields}
        _plans[descriptor.full_name] = plan
    return plan


def _kind(field: FieldDescriptor) -> int:
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name in _IDENTIFIER_FIELDS and field.full_name not in _TEXT_EXCEPTIONS:
            return _ID
        return _TEXT
    message_type = field.message_type
    if field.type != FieldDescriptor.TYPE_MESSAGE or message_type is None:
        return _SKIP
    if message_type.GetOptions().map_entry:
        return _HEADER_MAP if field.full_name == _HEADERS else _MAP
    if message_type.full_name == _STRUCT and field.name == "metadata":
        return _METADATA
    if message_type.full_name in _JSON_TYPES:
        return _SKIP
    return _MESSAGE


def _check(message: Message, prefix: str, problems: list[FieldViolation]) -> None:
    # Hot for large batches: paths are only formatted for a violation.
    plan = _plan(message.DESCRIPTOR)
    for field, value in message.ListFields():
        if len(problems) >= MAX_REPORTED_VIOLATIONS:
            return
        name = field.name
        kind = plan[name]
        if kind == _ID or kind == _TEXT:
            check = _identifier if kind == _ID else _text
            if field.is_repeated:
                for i, text in enumerate(value):
                    if problem := check(name, text):
                        problems.append(FieldViolation(f"{prefix}{name}[{i}]", problem))
            elif problem := check(name, value):
                problems.append(FieldViolation(f"{prefix}{name}", problem))
        elif kind == _MESSAGE:
            if field.is_repeated:
                for i, child in enumerate(value):
                    _check(child, f"{prefix}{name}[{i}].", problems)
            else:
                _check(value, f"{prefix}{name}.", problems)
        elif kind == _MAP:
            _check_map(field, f"{prefix}{name}", value, problems)
        elif kind == _HEADER_MAP:
            problems.extend(_header_problems(f"{prefix}{name}", value))
        elif kind == _METADATA:
            problems.extend(
                FieldViolation(f"{prefix}{name}[{_shown(key)}]", f"the key {problem}")
                for key in value.fields
                if (problem := _identifier("key", key))
            )


def _check_map(
    field: FieldDescriptor, path: str, entries: Any, problems: list[FieldViolation]
) -> None:
    entry: Any = field.message_type
    value_field = entry.fields_by_name["value"]
    for key, value in entries.items():
        if isinstance(key, str) and (problem := _identifier("key", key)):
            problems.append(FieldViolation(f"{path}[{_shown(key)}]", f"the key {problem}"))
            continue
        at = f"{path}[{key}]"
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            _check(value, f"{at}.", problems)
        elif isinstance(value, str) and (problem := _text("value", value)):
            problems.append(FieldViolation(at, problem))


def _identifier(name: str, text: str) -> str:
    limit = MAX_PAGE_TOKEN_CHARS if name == "page_token" else MAX_IDENTIFIER_CHARS
    if len(text) > limit:
        return f"at most {limit} characters (got {len(text)})"
    if _CONTROL.search(text):
        return _CONTROL_TEXT
    return ""


def _text(name: str, text: str) -> str:
    return _NUL_TEXT if "\x00" in text else ""


def _shown(key: str) -> str:
    """A map key as shown in a field path: cut, control characters replaced."""
    return _CONTROL.sub("?", key[:64]) + ("…" if len(key) > 64 else "")


def _header_problems(path: str, headers: Any) -> Iterable[FieldViolation]:
    for name, value in headers.items():
        shown = _shown(name)
        if not _HEADER_NAME.fullmatch(name):
            yield FieldViolation(f"{path}[{shown}]", "is not a valid HTTP header name (a token)")
        elif _HEADER_VALUE_BAD.search(value):
            yield FieldViolation(
                f"{path}[{shown}]", "the value must not contain control characters (CR, LF, NUL)"
            )
