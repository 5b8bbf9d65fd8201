"""Plain data (parsed YAML) to protobuf messages and back, strictly, by descriptor.

Prompt files hold the fields of promptgate's messages under their proto
names, with friendlier forms for a few types:

- enums by their short lower-case name: ``role: user`` for MESSAGE_ROLE_USER,
  ``type: json_schema`` for ResponseFormat.TYPE_JSON_SCHEMA;
- google.protobuf.Duration as a string such as ``"1.5s"`` or a number of seconds;
- google.protobuf.Struct and Value as any YAML mapping or value (JSON data);
- a few keys renamed (``ALIASES``), e.g. ``default`` for InputVariable.default_value.

Reading collects every problem (an unknown key, a value of the wrong type, an
unknown enum name, two members of one oneof) with the dotted path of the key,
so one run names them all. Writing gives deterministic data: fields in
declaration order, JSON object keys sorted.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

ALIASES: dict[str, dict[str, str]] = {
    # message full name -> {key in the file: proto field name}
    "promptgate.v1.PromptVersion": {
        "variables": "input_variables",
        "version_description": "description",
    },
    "promptgate.v1.InputVariable": {"default": "default_value"},
    "promptgate.v1.ChainVersion": {
        "variables": "input_variables",
        "version_description": "description",
    },
    "promptgate.v1.InlinePrompt": {"variables": "input_variables"},
}

_INTEGERS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_DURATION = "google.protobuf.Duration"


class Problems:
    """Problems found while reading, each as ``key.path: what is wrong``."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)

    def __bool__(self) -> bool:
        return bool(self.items)


def keys_of(descriptor: Any, skip: frozenset[str] = frozenset()) -> dict[str, FieldDescriptor]:
    """The keys a file may use for ``descriptor``'s fields (aliases applied), in field order."""
    renamed = {v: k for k, v in ALIASES.get(descriptor.full_name, {}).items()}
    return {renamed.get(f.name, f.name): f for f in descriptor.fields if f.name not in skip}


def file_path(descriptor: Descriptor, path: str) -> str:
    """A field path of the server's (proto names under ``descriptor``, e.g.
    ``steps[2].inline_prompt.input_variables[0]``) as the keys of a file
    (``steps[2].inline_prompt.variables[0]``); parts it does not know stay as they are."""
    parts: list[str] = []
    current: Descriptor | None = descriptor
    for segment in path.split("."):
        name, bracket, rest = segment.partition("[")
        field = current.fields_by_name.get(name) if current is not None else None
        if current is None or field is None:
            parts.append(segment)
            current = None
            continue
        renamed = {v: k for k, v in ALIASES.get(current.full_name, {}).items()}
        parts.append(renamed.get(name, name) + bracket + rest)
        current = field.message_type
    return ".".join(parts)


def read_message(
    data: Any,
    message: Message,
    problems: Problems,
    path: str = "",
    *,
    skip: frozenset[str] = frozenset(),
    allowed_elsewhere: frozenset[str] = frozenset(),
) -> None:
    """Fill ``message`` from the mapping ``data``; add a problem per bad key.

    ``skip`` names fields the data may not set (e.g. output-only ones);
    ``allowed_elsewhere`` are keys the caller handles (listed in hints only).
    """
    if not isinstance(data, Mapping):
        problems.add(path, f"expected a mapping, got {_kind(data)}")
        return
    descriptor = message.DESCRIPTOR
    fields = keys_of(descriptor, skip)
    oneofs: dict[str, list[str]] = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            known = sorted(set(fields) | allowed_elsewhere)
            renamed = ALIASES.get(descriptor.full_name, {})
            hint = next((k for k, v in renamed.items() if v == key), None)
            problems.add(
                where,
                f"unknown key (did you mean {hint!r}?)"
                if hint
                else f"unknown key; expected one of: {', '.join(known)}",
            )
            continue
        oneof = field.containing_oneof
        if oneof is not None and oneof.name != f"_{field.name}":
            oneofs.setdefault(oneof.name, []).append(key)
        _read_field(value, message, field, problems, where)
    for names in oneofs.values():
        if len(names) > 1:
            problems.add(path, f"set only one of: {', '.join(names)}")


def _read_field(
    value: Any, message: Message, field: FieldDescriptor, problems: Problems, path: str
) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        _read_map(value, getattr(message, field.name), field.message_type, problems, path)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            problems.add(path, f"expected a list, got {_kind(value)}")
            return
        container = getattr(message, field.name)
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            if field.message_type is not None:
                _read_into(item, container.add(), problems, where)
            else:
                scalar = _scalar(item, field, problems, where)
                if scalar is not None:
                    container.append(scalar)
        return
    if field.message_type is not None:
        child = getattr(message, field.name)
        child.SetInParent()
        _read_into(value, child, problems, path)
        return
    scalar = _scalar(value, field, problems, path)
    if scalar is not None:
        try:
            setattr(message, field.name, scalar)
        except (TypeError, ValueError) as exc:
            problems.add(path, str(exc))


def _read_map(value: Any, container: Any, entry: Descriptor, problems: Problems, path: str) -> None:
    if not isinstance(value, Mapping):
        problems.add(path, f"expected a mapping, got {_kind(value)}")
        return
    value_field = entry.fields_by_name["value"]
    for key, item in value.items():
        where = f"{path}.{key}"
        if not isinstance(key, str):
            problems.add(where, f"keys must be strings, got {_kind(key)}")
        elif value_field.message_type is not None:
            _read_into(item, container[key], problems, where)
        else:
            scalar = _scalar(item, value_field, problems, where)
            if scalar is not None:
                container[key] = scalar


def _read_into(value: Any, message: Message, problems: Problems, path: str) -> None:
    """A message-typed value: well-known types by their plain forms, others as mappings."""
    name = message.DESCRIPTOR.full_name
    if name in (_STRUCT, _VALUE):
        if name == _STRUCT and not isinstance(value, Mapping):
            problems.add(path, f"expected a mapping, got {_kind(value)}")
        elif _json_problems(value, problems, path):
            json_format.ParseDict(value, message)
    elif name == _DURATION:
        _read_duration(value, message, problems, path)  # type: ignore[arg-type]
    else:
        read_message(value, message, problems, path)


def _read_duration(
    value: Any, message: duration_pb2.Duration, problems: Problems, path: str
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        problems.add(path, f'expected a duration such as "1.5s" or a number, got {_kind(value)}')
    elif isinstance(value, str):
        try:
            message.FromJsonString(value)
        except ValueError:
            problems.add(path, f'{value!r} is not a duration such as "1.5s"')
    elif not math.isfinite(value) or abs(value) > 315_576_000_000:
        problems.add(path, "the duration is out of range")
    else:
        message.FromNanoseconds(round(value * 1e9))


def _json_problems(value: Any, problems: Problems, path: str) -> bool:
    """True when ``value`` is JSON data (mappings with string keys, lists, scalars)."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            problems.add(path, "numbers must be finite")
            return False
        return True
    if isinstance(value, list):
        results = [_json_problems(v, problems, f"{path}[{i}]") for i, v in enumerate(value)]
        return all(results)
    if isinstance(value, Mapping):
        ok = True
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(f"{path}.{key}", f"keys must be strings, got {_kind(key)}")
                ok = False
            elif not _json_problems(item, problems, f"{path}.{key}"):
                ok = False
        return ok
    problems.add(path, f"expected JSON data, got {_kind(value)}")
    return False


def _scalar(value: Any, field: FieldDescriptor, problems: Problems, path: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        problems.add(path, f"expected a string, got {_kind(value)} (quote it)")
    elif kind == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        problems.add(path, f"expected true or false, got {_kind(value)}")
    elif kind in _INTEGERS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.add(path, f"expected an integer, got {_kind(value)}")
    elif kind in _FLOATS:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.add(path, f"expected a number, got {_kind(value)}")
    elif kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return _enum_number(value, field.enum_type, problems, path)
    else:
        problems.add(path, "this field cannot be set from a file")
    return None


def enum_names(enum: EnumDescriptor) -> dict[str, int]:
    """Short lower-case names of an enum's values (without its _UNSPECIFIED prefix)."""
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return {v.name.removeprefix(prefix).lower(): v.number for v in enum.values if v.number != 0}


def _enum_number(value: Any, enum: EnumDescriptor, problems: Problems, path: str) -> int | None:
    names = enum_names(enum)
    if isinstance(value, str):
        if value.lower() in names:
            return names[value.lower()]
        full = enum.values_by_name.get(value)
        if full is not None and full.number != 0:
            return int(full.number)
    problems.add(path, f"expected one of: {', '.join(names)}; got {value!r}")
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, datetime.date):
        return "a date (quote it)"
    return type(value).__name__


# Writing


def write_message(message: Message, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The set fields of ``message`` as plain data, under the keys ``read_message`` reads."""
    names = {f.name: key for key, f in keys_of(message.DESCRIPTOR, skip).items()}
    data: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.name in names:
            data[names[field.name]] = _write_field(field, value)
    return data


def _write_field(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {k: _write_value(value_field, value[k]) for k in sorted(value)}
    if field.is_repeated:
        return [_write_value(field, item) for item in value]
    return _write_value(field, value)


def _write_value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        name = field.message_type.full_name
        if name in (_STRUCT, _VALUE):
            return _plain(json_format.MessageToDict(value))
        if name == _DURATION:
            return value.ToJsonString()
        return write_message(value)
    if field.enum_type is not None:
        short = {n: name for name, n in enum_names(field.enum_type).items()}
        return short.get(value, value)
    return value


def _plain(value: Any) -> Any:
    """JSON data with sorted keys and integral numbers as ints (JSON numbers are doubles)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
