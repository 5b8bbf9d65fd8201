"""Limits on a template's source, checked before it is parsed or compiled.

Jinja compiles a template to Python source and then to bytecode. Both steps
are super-linear in how deeply the template nests, and Python's compiler
fails outright past 100 indented blocks or 200 nested parentheses (it also
holds the GIL while it works, so even a worker thread would stall the
server). A linear scan with Jinja's lexer therefore refuses, before parsing:

- templates over ``MAX_TEMPLATE_CHARS`` characters or ``MAX_TEMPLATE_TOKENS``
  tokens of template syntax (text between tags is one token);
- brackets nested deeper than ``MAX_NESTING``;
- filter chains (``x|a|b|c``) longer than ``MAX_FILTER_CHAIN``;
- blocks (``if``, ``for``, ``macro``...) nested deeper than ``MAX_BLOCK_NESTING``.

After parsing, expressions nested deeper than ``MAX_EXPRESSION_DEPTH`` (long
``a + b + c ...`` chains, filters inside filter arguments) are refused too.
``renders_inline`` decides which templates are cheap enough to render on the
event loop.
"""

from __future__ import annotations

from jinja2 import Environment, nodes

MAX_TEMPLATE_CHARS = 200_000
MAX_TEMPLATE_TOKENS = 4_096
MAX_NESTING = 32
MAX_FILTER_CHAIN = 32
MAX_BLOCK_NESTING = 16
MAX_EXPRESSION_DEPTH = 64
# Inline (event-loop) renders: only these nodes, few of them.
MAX_INLINE_NODES = 256
MAX_INLINE_OPERATIONS = 32

_OPEN = frozenset({"lparen", "lbracket", "lbrace"})
_CLOSE = frozenset({"rparen", "rbracket", "rbrace"})
_BLOCKS = frozenset({"for", "if", "macro", "call", "filter", "with", "block", "autoescape"})
_INLINE_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.Getattr,
    nodes.Getitem,
    nodes.If,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Test,
    nodes.Concat,
    nodes.Filter,
)
# Filters linear in their value and with bounded arguments.
_INLINE_FILTERS = frozenset(
    {
        *("abs capitalize count d default e escape first float int join last").split(),
        *("length lower round safe string title tojson trim upper").split(),
    }
)
_OPERATIONS = (nodes.Filter, nodes.Test, nodes.Compare, nodes.Concat, nodes.Getitem)


class SourceLimitError(Exception):
    """The template's source is past one of the documented limits."""


def _refuse(what: str, limit: int) -> SourceLimitError:
    return SourceLimitError(f"{what} is above the limit of {limit}")


def scan_source(env: Environment, source: str) -> None:
    """Refuse ``source`` if it is too large or nests too deeply (see the module docstring).

    Raises SourceLimitError; the lexer's own syntax errors propagate.
    """
    if len(source) > MAX_TEMPLATE_CHARS:
        raise _refuse(f"the template's size ({len(source)} characters)", MAX_TEMPLATE_CHARS)
    brackets = 0
    chains = [0]  # filters in a row, per bracket level
    blocks = 0
    tag_start = False  # the previous token opened a {% tag %}
    pending_set = False  # a {% set x %} without "=" opens a block
    for count, token in enumerate(env.lexer.tokenize(source), 1):
        if count > MAX_TEMPLATE_TOKENS:
            raise _refuse("the number of tokens in the template", MAX_TEMPLATE_TOKENS)
        kind = token.type
        if kind in _OPEN:
            brackets += 1
            if brackets > MAX_NESTING:
                raise _refuse("the nesting of brackets", MAX_NESTING)
            chains.append(0)
        elif kind in _CLOSE:
            brackets -= 1
            chains.pop()
        elif kind == "pipe":
            chains[-1] += 1
            if chains[-1] > MAX_FILTER_CHAIN:
                raise _refuse("the length of a filter chain", MAX_FILTER_CHAIN)
        elif kind not in ("name", "dot"):
            chains[-1] = 0
        if tag_start and kind == "name":
            if token.value in _BLOCKS:
                blocks += 1
            elif token.value == "set":
                pending_set = True
            elif token.value.startswith("end"):
                blocks -= 1
        elif kind == "assign":
            pending_set = False
        elif kind == "block_end" and pending_set:
            pending_set = False
            blocks += 1
        if blocks > MAX_BLOCK_NESTING:
            raise _refuse("the nesting of blocks", MAX_BLOCK_NESTING)
        tag_start = kind == "block_begin"


def check_depth(template: nodes.Template) -> None:
    """Refuse expressions nested past ``MAX_EXPRESSION_DEPTH`` (walked without recursion)."""
    stack: list[tuple[nodes.Node, int]] = [(template, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, nodes.Expr):
            depth += 1
            if depth > MAX_EXPRESSION_DEPTH:
                raise _refuse("the nesting of expressions", MAX_EXPRESSION_DEPTH)
        else:
            depth = 0
        stack.extend((child, depth) for child in node.iter_child_nodes())


def renders_inline(template: nodes.Template) -> bool:
    """True if rendering is provably cheap: no loops, calls or arithmetic, few operations.

    Such a template does a bounded number of operations, each linear in a value
    that is itself bounded (by the inputs, or by ``max_chars``), so it may
    render on the event loop without a thread hop.
    """
    operations = 0
    for count, node in enumerate(template.find_all(nodes.Node), 1):
        if count > MAX_INLINE_NODES or not isinstance(node, _INLINE_NODES):
            return False
        if isinstance(node, nodes.Filter) and node.name not in _INLINE_FILTERS:
            return False
        if isinstance(node, _OPERATIONS):
            operations += 1
            if operations > MAX_INLINE_OPERATIONS:
                return False
    return True
