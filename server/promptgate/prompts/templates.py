"""Jinja2 templates in a sandbox, compiled once per source text, rendered within bounds.

Templates run in ``SandboxedEnvironment`` (no attribute access to internals,
no unsafe calls) with ``StrictUndefined`` (a missing variable is an error, not
an empty string). Compiled templates are cached by source: versions are
immutable, so a version's templates compile once per process.

Templates come from callers, so rendering must not stall or exhaust the
server. No single value may grow past ``max_chars`` (string and list
multiplication, filters and method calls are checked) and huge powers are
refused. A template without loops, macros or call blocks then does work
proportional to its inputs and renders inline on the event loop (the common
case, and the fast one). A template with them can loop for a very long time
(``range`` allows 100,000 per loop, and loops nest), so it renders on a
worker thread with a time limit: past ``timeout_s`` the thread is
interrupted and the call fails with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from promptgate.errors import InvalidArgument

MAX_EXPONENT = 128
_UNBOUNDED = (nodes.For, nodes.Macro, nodes.CallBlock)


class _RenderInterrupted(BaseException):
    """Raised inside a worker thread whose render ran out of time."""


def _too_big(value: Any, limit: int) -> bool:
    return isinstance(value, str | bytes | list | tuple | dict) and len(value) > limit


class _BoundedSandbox(SandboxedEnvironment):
    """The sandbox, with no value larger than ``max_chars`` and no huge powers."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, max_chars: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_chars = max_chars
        self.filters = {name: self._checked(f) for name, f in self.filters.items()}

    def _checked(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            return self._bounded(function(*args, **kwargs))

        return checked

    def _bounded(self, value: Any) -> Any:
        if _too_big(value, self.max_chars):
            raise SecurityError(f"a value in the template exceeds {self.max_chars} items")
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if (
                isinstance(left, int | float)
                and isinstance(right, int | float)
                and abs(left) > 1
                and abs(right) > MAX_EXPONENT
            ):
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
        elif operator == "*":
            for items, times in ((left, right), (right, left)):
                if (
                    isinstance(items, str | bytes | list | tuple)
                    and isinstance(times, int)
                    and len(items) * times > self.max_chars
                ):
                    raise SecurityError(f"a value in the template exceeds {self.max_chars} items")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        return self._bounded(super().call(context, obj, *args, **kwargs))


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: jinja2.Template
    bounded: bool  # no loops, macros or call blocks: work follows the inputs' size


class TemplateEngine:
    """Compiles, inspects and renders prompt templates."""

    def __init__(
        self,
        cache_size: int = 4096,
        *,
        max_chars: int = 1_000_000,
        timeout_s: float = 1.0,
        workers: int = 2,
    ) -> None:
        self._env = _BoundedSandbox(
            max_chars,
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            cache_size=0,
        )
        self._cache: OrderedDict[str, _Compiled] = OrderedDict()
        self._cache_size = cache_size
        self._max_chars = max_chars
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="template")

    def close(self) -> None:
        """Stops the worker threads (renders still running are interrupted)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def check(self, source: str, field: str) -> set[str]:
        """Validate a template; return the variables it uses.

        Raises InvalidArgument (INVALID_PROMPT) naming ``field`` on a syntax error.
        """
        try:
            ast = self._env.parse(source)
            return set(meta.find_undeclared_variables(ast))
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidArgument.field(
                field,
                f"template syntax error on line {exc.lineno}: {exc.message}",
                reason="INVALID_PROMPT",
            ) from None
        except (jinja2.TemplateError, RecursionError, ValueError, TypeError) as exc:
            raise InvalidArgument.field(
                field, f"the template cannot be compiled: {exc}", reason="INVALID_PROMPT"
            ) from None

    def compile(self, source: str, field: str) -> jinja2.Template:
        """The compiled template for ``source`` (cached)."""
        return self._compiled(source, field).template

    def _compiled(self, source: str, field: str) -> _Compiled:
        compiled = self._cache.get(source)
        if compiled is not None:
            self._cache.move_to_end(source)
            return compiled
        try:
            ast = self._env.parse(source)
            bounded = next(ast.find_all(_UNBOUNDED), None) is None
            template = self._env.from_string(ast)
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidArgument.field(
                field,
                f"template syntax error on line {exc.lineno}: {exc.message}",
                reason="INVALID_PROMPT",
            ) from None
        except (jinja2.TemplateError, RecursionError, ValueError, TypeError) as exc:
            raise InvalidArgument.field(
                field, f"the template cannot be compiled: {exc}", reason="INVALID_PROMPT"
            ) from None
        compiled = _Compiled(template, bounded)
        self._cache[source] = compiled
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return compiled

    async def render(self, source: str, values: dict[str, Any], field: str) -> str:
        """Render ``source`` with ``values``; template errors become InvalidArgument."""
        compiled = self._compiled(source, field)
        if compiled.bounded:
            return self._render(compiled.template, values, field)
        return await self._render_in_worker(compiled.template, values, field)

    async def _render_in_worker(
        self, template: jinja2.Template, values: dict[str, Any], field: str
    ) -> str:
        run = _WorkerRun()

        def work() -> str:
            try:
                run.begin()
                try:
                    return self._render(template, values, field, stream=True)
                finally:
                    run.end()
            except _RenderInterrupted:
                raise InvalidArgument.field(
                    field,
                    f"the template took longer than {self._timeout_s:g} s to render",
                    reason="INVALID_PROMPT",
                ) from None

        future = asyncio.wrap_future(self._pool.submit(work))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            run.interrupt()
            return await future  # the worker unwinds at its next bytecode and raises
        except asyncio.CancelledError:
            run.interrupt()
            with contextlib.suppress(InvalidArgument):
                await asyncio.shield(future)
            raise

    def _oversized(self, field: str, size: int) -> InvalidArgument:
        return InvalidArgument.field(
            field,
            f"the rendered prompt has {size} characters or more, "
            f"more than the limit of {self._max_chars}",
            reason="INVALID_PROMPT",
        )

    def _render(
        self, template: jinja2.Template, values: dict[str, Any], field: str, stream: bool = False
    ) -> str:
        try:
            if not stream:
                text = template.render(values)
            else:
                parts, size = [], 0
                for part in template.generate(values):
                    size += len(part)
                    if size > self._max_chars:
                        raise self._oversized(field, size)
                    parts.append(part)
                text = "".join(parts)
            if len(text) > self._max_chars:
                raise self._oversized(field, len(text))
            return text
        except jinja2.UndefinedError as exc:
            raise InvalidArgument.field(
                field, f"undefined in template: {exc.message}", reason="INVALID_INPUT"
            ) from None
        except SecurityError as exc:
            raise InvalidArgument.field(
                field, f"unsafe template operation: {exc}", reason="INVALID_PROMPT"
            ) from None
        except (
            TypeError,
            ValueError,
            ArithmeticError,
            LookupError,
            RecursionError,
            MemoryError,
            jinja2.TemplateError,
        ) as exc:
            raise InvalidArgument.field(
                field, f"template failed to render: {exc}", reason="INVALID_INPUT"
            ) from None


class _WorkerRun:
    """One render on a worker thread, which the event loop may interrupt.

    The interrupt is an asynchronous exception raised in the worker at its next
    bytecode; ``end`` takes back one that comes too late, so it never reaches
    the next job of that thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: int | None = None
        self._running = False

    def begin(self) -> None:
        with self._lock:
            self._thread = threading.get_ident()
            self._running = True

    def end(self) -> None:
        with self._lock:
            self._running = False
            if self._thread is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread), None)

    def interrupt(self) -> None:
        with self._lock:
            if self._running and self._thread is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread), ctypes.py_object(_RenderInterrupted)
                )
