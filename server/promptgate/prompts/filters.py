"""Jinja's filters, bounded: what each may build is estimated before it runs.

``BoundedSandbox`` wraps every filter: a text filter first turns its value
into text the way printing does (JSON as JSON, ``true``, ``21``), and every
result is checked against ``max_chars`` and the render's budget. Filters that
can grow text past a constant factor of their inputs have an estimate here,
checked *before* the filter runs; a few are replaced outright:

- ``string`` and ``pprint`` print as values print (``pprint``: indented JSON);
- ``format`` is ``%`` with its widths and arguments bounded;
- ``join`` and ``sum`` know their total size before joining or adding, and
  ``sum`` of lists is linear, not quadratic;
- ``urlize`` and ``xmlattr`` (HTML helpers whose output grows with the square
  of their arguments) are not available.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from jinja2 import pass_environment
from jinja2.filters import do_tojson, do_urlencode, make_attrgetter
from markupsafe import Markup, escape

from promptgate.prompts.values import json_text, printed_size

if TYPE_CHECKING:
    from promptgate.prompts.sandbox import BoundedSandbox

# Filters that work on text: their value is printed first, as ``{{ value }}`` would.
TEXT_FILTERS = frozenset(
    {
        *("capitalize center e escape forceescape indent lower replace safe").split(),
        *("striptags title trim truncate upper wordcount wordwrap").split(),
    }
)
REMOVED = frozenset({"urlize", "xmlattr"})
# Slices beyond this many are empty lists only, made one by one.
MAX_SLICES = 10_000


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _indent_size(env: BoundedSandbox, a: dict[str, Any]) -> int:
    width = a["width"]
    if isinstance(width, int):
        env.require(width, "the indent filter's width")  # Jinja makes " " * width first
    per_line = len(width) if isinstance(width, str) else _int(width)
    text: str = a["s"]
    return len(text) + (text.count("\n") + 1) * per_line


def _wordwrap_size(env: BoundedSandbox, a: dict[str, Any]) -> int:
    wrap = a["wrapstring"] if isinstance(a["wrapstring"], str) else env.newline_sequence
    return len(a["s"]) + (len(a["s"]) + 1) * len(wrap)


def _replace_size(env: BoundedSandbox, a: dict[str, Any]) -> int:
    s, old, new = a["s"], a["old"], a["new"]
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    count = s.count(old) if old else len(s) + 1
    if isinstance(a["count"], int) and a["count"] >= 0:
        count = min(count, a["count"])
    return len(s) + count * max(len(new) - len(old), 0)


def _truncate_size(env: BoundedSandbox, a: dict[str, Any]) -> int:
    return len(a["s"]) + (len(a["end"]) if isinstance(a["end"], str) else 0)


def _batch_size(env: BoundedSandbox, a: dict[str, Any]) -> int:
    return _int(a["linecount"]) if a["fill_with"] is not None else 0


def _slice_size(env: BoundedSandbox, a: dict[str, Any]) -> int:
    slices = _int(a["slices"])
    if slices > MAX_SLICES:
        env.require(env.max_chars + 1, f"more than {MAX_SLICES} slices")
    return 0


def _tojson_size(env: BoundedSandbox, a: dict[str, Any]) -> int:
    indent = a["indent"]
    per_level = len(indent) if isinstance(indent, str) else _int(indent)
    return printed_size(a["value"], env.max_chars, per_level)


# Estimates by filter name; each gets the filter's bound arguments.
ESTIMATES: dict[str, Callable[[BoundedSandbox, dict[str, Any]], int]] = {
    "center": lambda env, a: max(len(a["value"]), _int(a["width"])),
    "indent": _indent_size,
    "wordwrap": _wordwrap_size,
    "truncate": _truncate_size,
    "batch": _batch_size,
    "slice": _slice_size,
    "tojson": _tojson_size,
}


@pass_environment
def _string(env: BoundedSandbox, value: Any) -> str:
    return env.text(value)


@pass_environment
def _pprint(env: BoundedSandbox, value: Any) -> str:
    return json_text(value, env.max_chars, indent=2)


@pass_environment
def _format(env: BoundedSandbox, value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise TypeError("the format filter takes positional or keyword arguments, not both")
    return env.percent(env.text(value), kwargs or args)


@pass_environment
def _replace(env: BoundedSandbox, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    # Jinja's replace turns old and new into text with str(): print them instead.
    text, old, new = env.text(s), env.text(old), env.text(new)
    limit = -1 if count is None else count
    env.require(_replace_size(env, {"s": text, "old": old, "new": new, "count": limit}), "replace")
    if isinstance(text, Markup):
        return text.replace(escape(old), escape(new), limit)
    return text.replace(old, new, limit)


@pass_environment
def _join(env: BoundedSandbox, value: Iterable[Any], d: Any = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = map(make_attrgetter(env, attribute), value)
    texts = [env.text(item) for item in env._items(value)]
    separator = env.text(d)
    env.require(sum(map(len, texts)) + len(separator) * max(len(texts) - 1, 0), "join")
    return separator.join(texts)


@pass_environment
def _sum(
    env: BoundedSandbox, iterable: Iterable[Any], attribute: Any = None, start: Any = 0
) -> Any:
    if attribute is not None:
        iterable = map(make_attrgetter(env, attribute), iterable)
    items = env._items(iterable)
    if isinstance(start, list | tuple):
        env.require(len(start) + sum(len(i) for i in items if isinstance(i, list | tuple)), "sum")
        # Adding lists one by one copies the total each time: chain them once.
        return type(start)(itertools.chain(start, *items))
    total = start
    for item in items:
        total = env.call_binop(None, "+", total, item)  # type: ignore[arg-type]
    return total


@pass_environment
def _urlencode(env: BoundedSandbox, value: Any) -> str:
    if isinstance(value, dict):
        value = {env.text(k): env.text(v) for k, v in value.items()}
    elif isinstance(value, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 for p in value
    ):
        value = [(env.text(k), env.text(v)) for k, v in value]
    else:
        value = env.text(value)
    return do_urlencode(value)


# Filters replaced outright (``tojson`` keeps Jinja's, with an estimate).
OVERRIDES: dict[str, Callable[..., Any]] = {
    "string": _string,
    "pprint": _pprint,
    "format": _format,
    "replace": _replace,
    "join": _join,
    "sum": _sum,
    "urlencode": _urlencode,
    "tojson": do_tojson,
}
