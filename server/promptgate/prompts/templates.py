"""Jinja2 templates in a sandbox, compiled once per source text.

Templates run in ``SandboxedEnvironment`` (no attribute access to internals,
no unsafe calls) with ``StrictUndefined`` (a missing variable is an error, not
an empty string). Compiled templates are cached by source: versions are
immutable, so a version's templates compile once per process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from promptgate.errors import InvalidArgument


class TemplateEngine:
    """Compiles, inspects and renders prompt templates."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._env = SandboxedEnvironment(
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            cache_size=0,
        )
        self._cache: OrderedDict[str, jinja2.Template] = OrderedDict()
        self._cache_size = cache_size

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
        template = self._cache.get(source)
        if template is not None:
            self._cache.move_to_end(source)
            return template
        try:
            template = self._env.from_string(source)
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
        self._cache[source] = template
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return template

    def render(self, source: str, values: dict[str, Any], field: str) -> str:
        """Render ``source`` with ``values``; template errors become InvalidArgument."""
        template = self.compile(source, field)
        try:
            return template.render(values)
        except jinja2.UndefinedError as exc:
            raise InvalidArgument.field(
                field, f"undefined in template: {exc.message}", reason="INVALID_INPUT"
            ) from None
        except SecurityError as exc:
            raise InvalidArgument.field(
                field, f"unsafe template operation: {exc}", reason="INVALID_PROMPT"
            ) from None
        except (TypeError, ValueError, ArithmeticError, LookupError, jinja2.TemplateError) as exc:
            raise InvalidArgument.field(
                field, f"template failed to render: {exc}", reason="INVALID_INPUT"
            ) from None
