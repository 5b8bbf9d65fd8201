"""How template values print, and how large they would be before they are built.

Prompt authors write ``{{ user }}``, ``{{ count }}`` and ``{{ vip }}`` and
expect what they sent: JSON values (objects and lists) print as JSON text,
numbers as given (an integral double such as 21.0 prints ``21``), booleans as
``true``/``false`` and null as ``null``. Objects that are not data (functions,
the template itself, loop state, generators) have Python reprs with heap
addresses; they are refused instead of printed.

Sizes are estimated by walking the value, without building the text: a list
holding the same long string a thousand times is small in memory and huge in
print, and must be refused before ``json.dumps`` makes it.
"""

from __future__ import annotations

import json
import reprlib
from typing import Any

from jinja2 import StrictUndefined, Undefined
from jinja2.exceptions import SecurityError
from jinja2.utils import missing, object_type_repr

# Integers past this many bits are refused: they only come from arithmetic on
# purpose-built inputs, and their multiplication and printing are super-linear.
MAX_INT_BITS = 4096
# Doubles with an integral value below 2**53 are exact integers: print them so.
_EXACT_INTEGRAL = 2.0**53


class TemplateLimitError(SecurityError):
    """A template would build a value past one of the documented limits."""


def number_text(value: float) -> str:
    """A double as a prompt author wrote it: 21.0 prints ``21``, 0.5 ``0.5``."""
    if value.is_integer() and abs(value) < _EXACT_INTEGRAL:
        return str(int(value))
    return repr(value)


def _not_printable(value: Any) -> SecurityError:
    kind = type(value).__name__
    hint = ""
    if hasattr(value, "__iter__") or hasattr(value, "__next__"):
        hint = "; turn it into a list with |list or into text with |join"
    return SecurityError(
        f"a {kind} object cannot be printed: only text, numbers, booleans, null, "
        f"lists and objects (JSON) print{hint}"
    )


def _string_size(text: str) -> int:
    # JSON escapes quotes and backslashes; other escapes only non-printables.
    if text.isprintable():
        return len(text) + 2 + text.count('"') + text.count("\\")
    return 6 * len(text) + 2


def _scalar_size(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 2
    if isinstance(value, float):
        return 24
    if isinstance(value, Undefined):
        str(value)  # a strict undefined raises its own error here
    raise _not_printable(value)


def printed_size(value: Any, limit: int, indent: int = 0) -> int:
    """An upper bound of the JSON text of ``value``; stops counting past ``limit``.

    Each item adds at least one character, so the walk is bounded by ``limit``
    steps whatever the value shares or nests.
    """
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and total <= limit:
        item, depth = stack.pop()
        if indent:
            total += 1 + indent * depth
        if isinstance(item, str):
            total += _string_size(item)
        elif isinstance(item, dict):
            total += 2
            for key, child in item.items():
                total += 2 + (_string_size(key) if isinstance(key, str) else _scalar_size(key))
                stack.append((child, depth + 1))
                if total > limit:
                    break
        elif isinstance(item, list | tuple):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend((child, depth + 1) for child in item)
        else:
            total += _scalar_size(item)
    return total


def _json_ready(value: Any) -> Any:
    """``value`` with integral doubles as integers and tuples as lists."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < _EXACT_INTEGRAL else value
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def json_text(value: Any, limit: int, indent: int | None = None) -> str:
    """``value`` as JSON text, refused before it is built if it exceeds ``limit``."""
    size = printed_size(value, limit, indent or 0)
    if size > limit:
        raise TemplateLimitError(
            f"printing a value would make {size} characters or more, more than the limit of {limit}"
        )
    return json.dumps(_json_ready(value), ensure_ascii=False, indent=indent)


def as_text(value: Any, limit: int) -> str:
    """How ``value`` prints in a prompt (see the module docstring)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    if value is None:
        return "null"
    if isinstance(value, Undefined):
        return str(value)  # a strict undefined raises its own error here
    if isinstance(value, dict | list | tuple):
        return json_text(value, limit)
    raise _not_printable(value)


def as_format_argument(value: Any, limit: int) -> Any:
    """``value`` ready for ``%`` and ``str.format``: numbers stay numbers, the rest is text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INTEGRAL:
        return int(value)
    if isinstance(value, str | int | float):
        return value
    return as_text(value, limit)


def text_size(value: Any) -> int:
    """The printed size of a value made by ``as_format_argument``."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() * 3 // 10 + 2
    return 330  # a double in %f notation: 309 digits at most, and a sign and a point


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlevel = 3


class BoundedUndefined(StrictUndefined):
    """``StrictUndefined`` whose error message shows at most a short repr of the key.

    Jinja's own message holds the full ``repr`` of a missing key: for a key
    built by the template (a tuple of a million long strings) that single
    C-level call would build terabytes while holding the GIL.
    """

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        name = _SHORT.repr(self._undefined_name)
        if self._undefined_obj is missing:
            return f"{name} is undefined"
        owner = object_type_repr(self._undefined_obj)
        if not isinstance(self._undefined_name, str):
            return f"{owner} has no element {name}"
        return f"{owner!r} has no attribute {name}"
