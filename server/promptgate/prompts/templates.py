"""The template engine: prompt templates compiled once, rendered within bounds.

Templates run in ``BoundedSandbox`` (``promptgate.prompts.sandbox``): an
immutable sandbox with ``StrictUndefined`` (a missing variable is an error,
not an empty string) in which no value may grow past ``max_chars``. Values
print as a prompt author expects (``promptgate.prompts.values``).

Templates come from callers, so neither compiling nor rendering may stall the
server. Before anything else the source is scanned for size and nesting
(``promptgate.prompts.source_limits``); then it compiles on a worker thread
with a time limit, and stays cached by source (versions are immutable, so a
version's templates compile once per process; a cache hit stays on the event
loop). A template that ``renders_inline`` (no loops, calls or arithmetic, few
operations) renders on the event loop, the common and fast case; any other
renders on a worker thread with the same time limit: past ``timeout_s`` the
thread is interrupted and the call fails with INVALID_ARGUMENT.

Partials (``promptgate.prompts.partials``) are included by name,
``{% include "tone" %}``. A template compiles on its own: the include is a
lookup at render time, through a loader that sees only the partial sources
passed to that ``render`` (each compiled and cached by its own source, like any
template), never files nor another render's partials. A template rendered
with version 1 of a partial and one rendered with version 2 thus share no
compiled code but their own, whatever the cache holds. Only a partial's name
as a string constant may be included (so the partials a template uses are
known before it runs); ``{% import %}``, ``{% from %}`` and ``{% extends %}``
are refused. A template that includes anything renders on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import jinja2
from cachetools import LRUCache
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError

from promptgate.errors import InvalidArgument
from promptgate.prompts.sandbox import BoundedSandbox
from promptgate.prompts.source_limits import (
    SourceLimitError,
    check_depth,
    renders_inline,
    scan_source,
)
from promptgate.prompts.values import BoundedUndefined, TemplateLimitError

T = TypeVar("T")


class _Interrupted(BaseException):
    """Raised inside a worker thread whose job ran out of time."""


@dataclass(frozen=True, slots=True)
class TemplateNames:
    """The names a template uses."""

    variables: frozenset[str]  # read from the values it renders with
    assigned: frozenset[str]  # made by the template: set, loop targets, macros and arguments
    includes: frozenset[str]  # the partials it includes


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: jinja2.Template
    names: TemplateNames
    inline: bool  # provably cheap: renders on the event loop


# The compiled partials of the render under way, by name (see _PartialLoader).
_partials: ContextVar[Mapping[str, jinja2.Template] | None] = ContextVar(
    "template_partials", default=None
)


class _PartialLoader(jinja2.BaseLoader):
    """Finds an included partial among those of the render under way; reads nothing."""

    def load(
        self,
        environment: jinja2.Environment,
        name: str,
        globals: Any = None,
    ) -> jinja2.Template:
        template = (_partials.get() or {}).get(name)
        if template is None:
            raise jinja2.TemplateNotFound(name)
        return template


@dataclass(frozen=True, slots=True)
class _Refused:
    """A template that does not compile, kept so it is not compiled again."""

    message: str

    def error(self, field: str) -> InvalidArgument:
        return InvalidArgument.field(field, self.message, reason="INVALID_PROMPT")


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
        self._env = BoundedSandbox(
            max_chars,
            undefined=BoundedUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            cache_size=0,
            loader=_PartialLoader(),
        )
        self._cache: LRUCache[str, _Compiled | _Refused] = LRUCache(maxsize=cache_size)
        self._max_chars = max_chars
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="template")

    def close(self) -> None:
        """Stops the worker threads (jobs still running are interrupted)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def prepare(self, sources: Iterable[str]) -> None:
        """Compile ``sources`` on a worker thread ahead of ``check`` and ``render``.

        A template's refusal (syntax, limits) is kept for ``check`` to report.
        """
        for source in sources:
            with contextlib.suppress(InvalidArgument):
                await self._compiled(source, "")

    def check(self, source: str, field: str) -> set[str]:
        """Validate a template; return the variables it uses.

        Raises InvalidArgument (INVALID_PROMPT) naming ``field`` on a syntax
        error or a template past the source limits. A template ``prepare``
        compiled is a cache hit; any other is parsed here, which the source
        limits keep cheap.
        """
        return set(self.names(source, field).variables)

    def names(self, source: str, field: str) -> TemplateNames:
        """Validate a template like ``check``; return every name it uses."""
        entry = self._cache.get(source)
        if entry is None:
            parsed = self._parsed(source)
            if isinstance(parsed, _Refused):
                raise parsed.error(field)
            names = _names(parsed)
            if isinstance(names, _Refused):
                raise names.error(field)
            return names
        if isinstance(entry, _Refused):
            raise entry.error(field)
        return entry.names

    def _parsed(self, source: str) -> nodes.Template | _Refused:
        try:
            scan_source(self._env, source)
            ast = self._env.parse(source)
            check_depth(ast)
            return ast
        except jinja2.TemplateSyntaxError as exc:
            return _Refused(f"template syntax error on line {exc.lineno}: {exc.message}")
        except SourceLimitError as exc:
            return _Refused(f"the template is too complex: {exc}")
        except (RecursionError, MemoryError, ValueError, TypeError) as exc:
            return _Refused(f"the template cannot be compiled: {exc}")

    def _compile(self, source: str) -> _Compiled | _Refused:
        parsed = self._parsed(source)
        if isinstance(parsed, _Refused):
            return parsed
        try:
            template = self._env.from_string(parsed)
        except (
            jinja2.TemplateError,
            SyntaxError,  # Python's compiler, past limits the scan should have caught
            RecursionError,
            MemoryError,
            ValueError,
            TypeError,
        ) as exc:
            return _Refused(f"the template cannot be compiled: {exc}")
        names = _names(parsed)
        if isinstance(names, _Refused):
            return names
        return _Compiled(template, names, renders_inline(parsed))

    async def _compiled(self, source: str, field: str) -> _Compiled:
        entry = self._cache.get(source)
        if entry is None:
            # A compile that runs out of time is not kept: under load it may pass later.
            entry = await self._in_worker(lambda: self._compile(source), field, "compile")
            self._cache[source] = entry
        if isinstance(entry, _Refused):
            raise entry.error(field)
        return entry

    async def render(
        self,
        source: str,
        values: dict[str, Any],
        field: str,
        partials: Mapping[str, str] | None = None,
    ) -> str:
        """Render ``source`` with ``values``; template errors become InvalidArgument.

        ``partials`` are the sources it may include, by name.
        """
        compiled = await self._compiled(source, field)
        included: dict[str, jinja2.Template] = {}
        if compiled.names.includes and partials:
            for name, partial in partials.items():
                included[name] = (await self._compiled(partial, field)).template
        if compiled.inline:
            return self._render(compiled.template, values, field, included)
        return await self._in_worker(
            lambda: self._render(compiled.template, values, field, included), field, "render"
        )

    async def _in_worker(self, job: Callable[[], T], field: str, doing: str) -> T:
        """Run ``job`` on a worker thread, interrupted ``timeout_s`` after it starts."""
        loop = asyncio.get_running_loop()
        run = _WorkerRun()
        deadline: list[asyncio.TimerHandle] = []

        def start_clock() -> None:
            deadline.append(loop.call_later(self._timeout_s, run.interrupt))

        def work() -> T:
            try:
                run.begin()
                try:
                    # The clock starts when the job does, not while it waits for a thread.
                    loop.call_soon_threadsafe(start_clock)
                    return job()
                finally:
                    run.end()
            except _Interrupted:
                pass
            # Raised outside the handler, so it does not hold the interrupted frames.
            raise InvalidArgument.field(
                field,
                f"the template took longer than {self._timeout_s:g} s to {doing}",
                reason="INVALID_PROMPT",
            )

        future = asyncio.wrap_future(self._pool.submit(work))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            run.interrupt()
            with contextlib.suppress(InvalidArgument):
                await asyncio.shield(future)
            raise
        finally:
            for handle in deadline:
                handle.cancel()

    def _render(
        self,
        template: jinja2.Template,
        values: dict[str, Any],
        field: str,
        included: Mapping[str, jinja2.Template],
    ) -> str:
        token = _partials.set(included)
        try:
            with self._env.rendering():
                parts, size = [], 0
                for part in template.generate(values):
                    size += len(part)
                    if size > self._max_chars:
                        raise InvalidArgument.field(
                            field,
                            f"the rendered prompt has {size} characters or more, "
                            f"more than the limit of {self._max_chars}",
                            reason="INVALID_PROMPT",
                        )
                    parts.append(part)
                return "".join(parts)
        except (
            SecurityError,
            TypeError,
            ValueError,
            ArithmeticError,
            LookupError,
            RecursionError,
            MemoryError,
            jinja2.TemplateError,
        ) as exc:
            error = _render_error(exc, field)
        finally:
            _partials.reset(token)
        # Raised outside the handler, so it does not hold the failed render's
        # frames (and the values they built) as its __context__.
        raise error


def _names(template: nodes.Template) -> TemplateNames | _Refused:
    """The names ``template`` uses; a refusal if it loads templates other than by include."""
    if any(True for _ in template.find_all((nodes.Extends, nodes.Import, nodes.FromImport))):
        return _Refused(
            "only {% include %} can use a partial: {% import %}, {% from %} "
            "and {% extends %} are not supported"
        )
    includes = set()
    for node in template.find_all(nodes.Include):
        target = node.template
        if not (isinstance(target, nodes.Const) and isinstance(target.value, str)):
            return _Refused(
                '{% include %} takes the name of a partial as a string, e.g. {% include "tone" %}'
            )
        includes.add(target.value)
    assigned = {n.name for n in template.find_all(nodes.Name) if n.ctx in ("store", "param")}
    assigned.update(m.name for m in template.find_all(nodes.Macro))
    return TemplateNames(
        variables=frozenset(meta.find_undeclared_variables(template)),
        assigned=frozenset(assigned),
        includes=frozenset(includes),
    )


def _render_error(exc: BaseException, field: str) -> InvalidArgument:
    """What a failed render tells the caller."""
    if isinstance(exc, jinja2.TemplateNotFound):
        return InvalidArgument.field(
            field, f"includes unknown partial {exc.name!r}", reason="PARTIAL_NOT_FOUND"
        )
    if isinstance(exc, jinja2.UndefinedError):
        return InvalidArgument.field(
            field, f"undefined in template: {exc.message}", reason="INVALID_INPUT"
        )
    if isinstance(exc, TemplateLimitError):
        return InvalidArgument.field(
            field, f"the template exceeds a limit: {exc}", reason="INVALID_PROMPT"
        )
    if isinstance(exc, SecurityError):
        return InvalidArgument.field(
            field, f"unsafe template operation: {exc}", reason="INVALID_PROMPT"
        )
    return InvalidArgument.field(field, f"template failed to render: {exc}", reason="INVALID_INPUT")


class _WorkerRun:
    """One job on a worker thread, which the event loop may interrupt.

    The interrupt is an asynchronous exception raised in the worker at its next
    bytecode; ``end`` takes back one that comes too late, so it never reaches
    the next job of that thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: int | None = None
        self._running = False
        self._interrupted = False

    def begin(self) -> None:
        with self._lock:
            if self._interrupted:  # cancelled before a thread took it
                raise _Interrupted
            self._thread = threading.get_ident()
            self._running = True

    def end(self) -> None:
        with self._lock:
            self._running = False
            if self._thread is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread), None)

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            if self._running and self._thread is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread), ctypes.py_object(_Interrupted)
                )
