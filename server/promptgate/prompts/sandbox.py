"""The bounded Jinja environment that prompt templates render in.

Templates come from callers. ``ImmutableSandboxedEnvironment`` keeps them away
from Python internals and from mutating lists and dicts; this environment also
bounds every value a template builds, *before* it is built: one C-level
operation (``"x" * 10**9``, ``s.replace(a, b)``, ``"%300000000s" % x``) holds
the GIL and the memory for as long as it runs, so checking its result would be
too late. Each such operation is estimated first and refused past
``max_chars`` (characters of text, items of a list):

- arithmetic (``+ - * / // % **``) on text, lists and integers; integers are
  capped at ``MAX_INT_BITS`` bits;
- ``~`` (compiled to a join: the code generator routes it here);
- ``%``, ``|format`` and ``str.format`` widths, precisions and arguments;
- the methods of ``str`` that grow text (``replace``, ``center``, ``join``...);
- filters (see ``promptgate.prompts.filters``) and printing (``values``).

One render may also build only so much in all (a budget of ``BUDGET_FACTOR``
bytes per character of ``max_chars``), so a loop cannot pile up values that
are each under the limit.
Printing follows ``promptgate.prompts.values``: JSON as JSON, 21.0 as ``21``,
booleans as ``true``/``false``; objects without a data form are refused.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from string import Formatter
from typing import Any, TypeVar, cast

from jinja2 import nodes, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup, escape

from promptgate.prompts import filters
from promptgate.prompts.values import (
    MAX_INT_BITS,
    TemplateLimitError,
    as_format_argument,
    as_text,
    text_size,
)

V = TypeVar("V")

# One render may build this many bytes per character of max_chars in all
# (garbage included): room for a few values at the limit, not for a loop of them.
BUDGET_FACTOR = 64
# lipsum() makes placeholder text; more than this is no placeholder.
MAX_LIPSUM_PARAGRAPHS = 20
MAX_LIPSUM_WORDS = 200
_DIGITS = re.compile(r"\d+")
# Methods of str a template may call. Those that can grow text past a constant
# factor of their inputs are estimated in ``_str_call_size``; ``encode``
# (bytes) and ``translate`` (unbounded tables) are left out.
_STR_METHODS = frozenset(
    {
        *("capitalize casefold count endswith find index isalnum isalpha isascii").split(),
        *("isdecimal isdigit isidentifier islower isnumeric isprintable isspace").split(),
        *("istitle isupper lower lstrip partition removeprefix removesuffix rfind").split(),
        *("rindex rpartition rsplit rstrip split splitlines startswith strip").split(),
        *("swapcase title upper center ljust rjust zfill expandtabs replace join").split(),
        *("escape unescape striptags format format_map").split(),  # Markup's
    }
)


def _size_of(value: Any) -> int:
    """About the bytes a value holds: its characters, or a pointer and a small object per item."""
    if isinstance(value, str):
        return len(value) if value.isascii() else 4 * len(value)  # isascii() is O(1)
    if isinstance(value, list | tuple | dict):
        return 40 * len(value)
    return 0


class _Budget:
    """What one render may still build."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def charge(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise TemplateLimitError(
                f"the template builds more than {self.limit} bytes of values in one render"
            )


_budget: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a bounded join instead of Jinja's plain one."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.joined(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedFormatting(Formatter):
    """``str.format`` whose fields are estimated before they are formatted."""

    _total = 0

    @property
    def _sandbox(self) -> BoundedSandbox:
        return cast(BoundedSandbox, self._env)  # type: ignore[attr-defined]

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._total = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        return super().convert_field(self._sandbox.format_argument(value), conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._total += self._sandbox.spec_size(format_spec) + text_size(value)
        self._sandbox.require(self._total, "formatting text")
        return super().format_field(value, format_spec)


class _Formatter(_BoundedFormatting, SandboxedFormatter):
    pass


class _EscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every value bounded by ``max_chars`` before it is built."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, max_chars: int, **options: Any) -> None:
        # No constant folding: every value, constant or not, goes through the
        # checks below at render time, and nothing is evaluated while compiling.
        super().__init__(optimized=False, finalize=self._finalize, **options)
        self.max_chars = max_chars
        self.filters = {
            name: self._guarded(name, function)
            for name, function in {**self.filters, **filters.OVERRIDES}.items()
            if name not in filters.REMOVED
        }
        self.globals["lipsum"] = _lipsum

    # Limits

    def require(self, size: int, doing: str) -> None:
        """Refuse ``doing`` if it would build a value of ``size`` past the limit."""
        if size > self.max_chars:
            raise TemplateLimitError(
                f"{doing} would make a value of {size} characters or items, "
                f"more than the limit of {self.max_chars}"
            )

    def accepted(self, value: V) -> V:
        """``value``, after checking its size and charging it to the render's budget."""
        size = _size_of(value)
        if size:
            self.require(len(value), "the template")  # type: ignore[arg-type]
            budget = _budget.get()
            if budget is not None:
                budget.charge(size)
        return value

    @contextlib.contextmanager
    def rendering(self) -> Iterator[None]:
        """A fresh budget for the render inside the block."""
        token = _budget.set(_Budget(BUDGET_FACTOR * self.max_chars))
        try:
            yield
        finally:
            _budget.reset(token)

    def spec_size(self, spec: str) -> int:
        """An upper bound of the widths and precisions in a format spec."""
        # Past 12 digits the exact number no longer matters (nor is it cheap to parse).
        return sum(int(digits[:13]) for digits in _DIGITS.findall(spec))

    # Printing

    def text(self, value: Any) -> str:
        """How ``value`` prints (see ``promptgate.prompts.values``)."""
        return str(self.accepted(as_text(value, self.max_chars)))

    def format_argument(self, value: Any) -> Any:
        """``value`` ready for ``%`` and ``str.format``."""
        return as_format_argument(value, self.max_chars)

    @pass_eval_context
    def _finalize(self, eval_ctx: EvalContext, value: Any) -> str:
        return self.text(value)

    def joined(self, eval_ctx: EvalContext, values: Iterable[Any]) -> str:
        """``a ~ b ~ c``: the values as text, joined once their total size is known."""
        texts = [self.text(v) for v in values]
        self.require(sum(map(len, texts)), "joining text with ~")
        if eval_ctx.autoescape:
            return self.accepted(Markup("").join(escape(t) for t in texts))
        return self.accepted("".join(texts))

    def concat(self, parts: Iterable[str]) -> str:
        """Joins the output of a template, macro or block once its size is known."""
        collected, size = [], 0
        for part in parts:
            size += len(part)
            self.require(size, "the rendered output")
            collected.append(part)
        return self.accepted("".join(collected))

    # Operations

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            return self.accepted(self.percent(left, right))
        if isinstance(left, int) and isinstance(right, int):
            self._check_integers(operator, left, right)
        elif operator == "+" and isinstance(left, str | list | tuple):
            if isinstance(right, str | list | tuple):
                self.require(len(left) + len(right), "adding")
        elif operator == "*":
            for items, times in ((left, right), (right, left)):
                if isinstance(items, str | list | tuple) and isinstance(times, int):
                    self.require(len(items) * times, "multiplying")
        return self.accepted(super().call_binop(context, operator, left, right))

    def _check_integers(self, operator: str, left: int, right: int) -> None:
        bits = max(left.bit_length(), right.bit_length())
        if operator == "*":
            bits = left.bit_length() + right.bit_length()
        elif operator == "**" and right > 0 and abs(left) > 1:
            bits = left.bit_length() * right if right <= MAX_INT_BITS else MAX_INT_BITS + 1
        elif operator in ("+", "-"):
            bits += 1
        if bits > MAX_INT_BITS:
            raise TemplateLimitError(
                f"the result of {operator!r} would have more than {MAX_INT_BITS} bits"
            )

    def percent(self, template: str, arguments: Any) -> str:
        """``template % arguments``, refused first if it could exceed the limit."""
        if isinstance(arguments, Mapping) and "%(" in template:
            values: Any = {k: self.format_argument(v) for k, v in arguments.items()}
            sizes = [text_size(v) for v in values.values()]
            size = template.count("%") * max(sizes, default=0)
        elif isinstance(arguments, tuple):
            values = tuple(self.format_argument(v) for v in arguments)
            size = sum(text_size(v) for v in values)
            if "*" in template:  # widths taken from the arguments
                size += sum(abs(v) for v in values if isinstance(v, int))
        else:
            values = self.format_argument(arguments)
            size = text_size(values)
        self.require(len(template) + self.spec_size(template) + size, "formatting text with %")
        return str(template % values) if type(template) is str else Markup(template % values)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map`` with bounded fields (see ``_BoundedFormatting``)."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        owner: str = value.__self__
        formatter: SandboxedFormatter
        if isinstance(owner, Markup):
            formatter = _EscapeFormatter(self, escape=owner.escape)
        else:
            formatter = _Formatter(self)
        is_format_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one mapping")
                return self.accepted(type(owner)(formatter.vformat(owner, (), args[0])))
            return self.accepted(type(owner)(formatter.vformat(owner, args, kwargs)))

        return functools.update_wrapper(bounded, value)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str):
            if name not in _STR_METHODS:
                raise SecurityError(f"str.{name}() is not available in templates")
            if name == "join" and len(args) == 1:
                args = (self._items(args[0]),)
            self.require(_str_call_size(owner, name, args, kwargs), f"str.{name}()")
        elif isinstance(owner, bytes | bytearray) or name == "to_bytes":
            raise SecurityError(f"{name}() is not available in templates")
        if not self.is_safe_callable(obj):
            # Jinja's own message shows the object's repr, which has its address.
            raise SecurityError(f"a {type(obj).__name__} is not safely callable")
        return self.accepted(context.call(obj, *args, **kwargs))

    def _items(self, iterable: Any) -> list[Any]:
        """An iterable as a list, refused past the limit before it grows further."""
        if isinstance(iterable, list | tuple | str | dict):
            return list(iterable)
        items = []
        for item in iterable:
            items.append(item)
            if len(items) > self.max_chars:
                self.require(len(items), "collecting items")
        return items

    def _guarded(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """A filter whose value prints as text (for text filters) and whose result is bounded."""
        skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0
        as_text_first = name in filters.TEXT_FILTERS
        signature = inspect.signature(function)

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if as_text_first and len(args) > skip:
                args = (*args[:skip], self.text(args[skip]), *args[skip + 1 :])
            estimate = filters.ESTIMATES.get(name)
            if estimate is not None:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                self.require(estimate(self, bound.arguments), f"the {name} filter")
            return self.accepted(function(*args, **kwargs))

        return guarded


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _str_call_size(owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """An upper bound of what ``owner.name(*args, **kwargs)`` makes (0: at most a few times ``owner``)."""
    arguments = [*args, *kwargs.values()]
    first = arguments[0] if arguments else None
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(owner), _int(first))
    if name == "expandtabs":
        return len(owner) + owner.count("\t") * max(_int(first) if arguments else 8, 0)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str):
        old, new = args[0], args[1]
        if not isinstance(new, str):
            return 0
        count = owner.count(old) if old else len(owner) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        return len(owner) + count * max(len(new) - len(old), 0)
    if name == "join" and isinstance(first, list):
        texts = [len(item) for item in first if isinstance(item, str)]
        return sum(texts) + len(owner) * max(len(first) - 1, 0)
    return 0


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's placeholder text, with at most a few paragraphs of a few words."""
    if n > MAX_LIPSUM_PARAGRAPHS or max > MAX_LIPSUM_WORDS:
        raise TemplateLimitError(
            f"lipsum() makes at most {MAX_LIPSUM_PARAGRAPHS} paragraphs "
            f"of at most {MAX_LIPSUM_WORDS} words"
        )
    return generate_lorem_ipsum(n, html, min, max)
