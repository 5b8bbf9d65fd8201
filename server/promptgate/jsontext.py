"""Bounded JSON text parsing for caller input and provider output.

``json.loads`` accepts more than promptgate can carry: NaN and Infinity (not
JSON; PostgreSQL's JSONB refuses them), ``1e400`` (infinity again), integers
of thousands of digits (Python refuses over 4,300 with a ValueError; protobuf
carries numbers as doubles, which end near 1.8e308) and nesting deep enough
to raise RecursionError. ``loads`` refuses all of them with ``JsonTextError``,
a ValueError whose message says what is wrong:

- nesting: at most ``MAX_DEPTH`` (32) arrays/objects inside one another. That
  is what protobuf's Struct can carry back to clients: each JSON level costs
  a Python, C++ or Java client three of its 100 nesting levels, and the
  deepest response wraps a value in three more messages.
- integers: at most ``MAX_INTEGER_DIGITS`` (300) digits, so every number fits
  a double;
- numbers must be finite: no NaN, Infinity or literal that overflows a double.

Parsing stays close to ``json.loads``: number hooks run only when a linear
RE2 scan finds a long number, and the depth is only walked when the text holds
more brackets than the limit allows.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

import re2

__all__ = ["MAX_DEPTH", "MAX_INTEGER_DIGITS", "JsonTextError", "depth_exceeds", "loads"]

MAX_DEPTH: Final = 32
"""Arrays and objects nested deeper than this are refused."""

MAX_INTEGER_DIGITS: Final = 300
"""Integer literals with more digits than this are refused."""


class JsonTextError(ValueError):
    """The text is not JSON promptgate accepts; the message says why."""


class _Refused(ValueError):
    """Raised by the number hooks inside the C scanner; becomes JsonTextError."""


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused(f"the number {literal[:40]} does not fit a double")
    return value


def _int(literal: str) -> int:
    digits = len(literal) - (literal[0] == "-")
    if digits > MAX_INTEGER_DIGITS:
        raise _Refused(f"an integer has {digits} digits (at most {MAX_INTEGER_DIGITS})")
    return int(literal)


_CHECKED: Final = json.JSONDecoder(parse_constant=_constant, parse_float=_float, parse_int=_int)
_FAST: Final = json.JSONDecoder(parse_constant=_constant)

# Only text with a run of 301 digits or a three-digit exponent can hold a number
# past the limits. RE2 finds one in linear time (about 3 us a kilobyte); text
# without one parses with the C scanner's own number conversion, which is
# faster than a Python hook per number.
_OPTIONS: Final = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.never_capture = True
_BIG_NUMBER: Final = re2.compile(
    rf"[0-9]{{{MAX_INTEGER_DIGITS + 1}}}|[eE][+-]?[0-9]{{3}}", _OPTIONS
)


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``text``; ``JsonTextError`` if it is not acceptable JSON.

    ``bytes`` are decoded as ``json.loads`` does (UTF-8, -16 or -32).
    """
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")
        except UnicodeDecodeError as exc:
            raise JsonTextError(f"not valid text: {exc.reason}") from None
    decoder = _CHECKED if _BIG_NUMBER.search(text) else _FAST
    try:
        value = decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise JsonTextError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _Refused as exc:
        raise JsonTextError(str(exc)) from None
    except RecursionError:
        raise JsonTextError(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # a number Python cannot convert
        raise JsonTextError(str(exc)) from None
    # Each level opens with a bracket: with no more brackets than the limit, no walk is needed.
    if text.count("[") + text.count("{") > max_depth and depth_exceeds(value, max_depth):
        raise JsonTextError(f"nested deeper than {max_depth} levels")
    return value


def depth_exceeds(value: Any, max_depth: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests arrays/objects more than ``max_depth`` levels deep.

    Walks one level at a time (no recursion, so any depth is measured) and
    stops at the first level past the limit.
    """
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        if depth == max_depth:
            return True
        below: list[Any] = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
        level = below
        depth += 1
    return False
