"""Hostile templates: refused as INVALID_PROMPT, never INTERNAL, and the server keeps answering.

One test per class of attack: templates that make compiling slow or crash
Python's compiler, values that grow past the limit in one C-level operation
(refused before they are built, so memory does not jump), objects whose
printed form is a repr with a heap address, and loops that run for too long.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running, error_details
from tests.hostile.probe import while_attacking

BIG = '{% set a = "x" * 999999 %}'


def inline(template: str) -> pb.InlinePrompt:
    return pb.InlinePrompt(model="mock-1", prompt=template)


INPUTS = [pb.PromptInput(name="x", string_value="abc")]


async def refused(running: Running, template: str, rpc: str) -> tuple[str, str, list[str]]:
    """The reason, message and violated fields of the refusal of ``template`` over ``rpc``."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if rpc == "render":
            await running.prompts.RenderPrompt(
                ppb.RenderPromptRequest(inline_prompt=inline(template), inputs=INPUTS), timeout=30
            )
        else:
            await running.executions.ExecutePrompt(
                epb.ExecutePromptRequest(inline_prompt=inline(template), inputs=INPUTS), timeout=30
            )
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    info, bad = error_details(error)
    assert bad is not None, "a refused template names the field at fault"
    return info.reason, error.details() or "", [v.field for v in bad.field_violations]


async def attack(running: Running, template: str) -> list[tuple[str, str, list[str]]]:
    """The template sent over RenderPrompt and ExecutePrompt, a few times each."""
    answers = []
    for _ in range(2):
        for rpc in ("render", "execute"):
            answers.append(await refused(running, template, rpc))
    return answers


def assert_refused_as_prompt(answers: list[tuple[str, str, list[str]]], *words: str) -> None:
    for reason, details, fields in answers:
        assert reason == "INVALID_PROMPT", details
        assert fields and all(f.startswith("inline_prompt") for f in fields), fields
        assert any(f.endswith(".template") for f in fields), fields
        for word in words:
            assert word in details, details


def peak_rss_mb() -> float:
    """The process's peak resident memory (VmHWM); the test server runs in this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{ x" + "|upper" * 150 + " }}", ["filter chain", "32"]),
        ("{{ x" + "|upper" * 250 + " }}", ["filter chain", "32"]),
        ("{% if 1 %}" * 100 + "y" + "{% endif %}" * 100, ["nesting of blocks", "16"]),
        ("{% if 1 %}" * 200 + "y" + "{% endif %}" * 200, ["nesting of blocks", "16"]),
        ("{% for i in x %}" * 25 + "y" + "{% endfor %}" * 25, ["nesting of blocks"]),
        ("{{ " + "(" * 100 + "x" + ")" * 100 + " }}", ["nesting of brackets", "32"]),
        ("{{ 1" + " + 1" * 300 + " }}", ["nesting of expressions", "64"]),
        ("{{ x" + ".a" * 300 + " }}", ["nesting of expressions", "64"]),
        ("{{ x }}" * 3000, ["number of tokens", "4096"]),
        ("x" * 300_000, ["size", "200000"]),
    ],
    ids=[
        "filters-150",
        "filters-250",
        "ifs-100",
        "ifs-200",
        "fors-25",
        "brackets",
        "additions",
        "attributes",
        "tokens",
        "size",
    ],
)
async def test_templates_that_are_costly_to_compile_are_refused_before_compiling(
    pg: Running, template: str, words: list[str]
) -> None:
    answers, probe = await while_attacking(pg, attack(pg, template))
    assert_refused_as_prompt(answers, "too complex", *words)
    probe.assert_responsive()


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{ (((9**128)**128)**128)**2 }}", ["4096 bits"]),
        ("{{ lipsum(20000) }}", ["lipsum"]),
        ("{{ lipsum(1, max=10**9) }}", ["lipsum"]),
        ("{{ 2 ** 5000 }}", ["4096 bits"]),
    ],
    ids=["power-tower", "lipsum-paragraphs", "lipsum-words", "power"],
)
async def test_expensive_computations_are_refused(
    pg: Running, template: str, words: list[str]
) -> None:
    answers, probe = await while_attacking(pg, attack(pg, template))
    assert_refused_as_prompt(answers, "limit", *words)
    probe.assert_responsive()


SIZE_BOMBS = {
    "doublings": BIG + "".join("{% set a = a ~ a %}" for _ in range(6)) + "{{ a|length }}",
    "percent-width": '{{ ("%300000000s" % x)|length }}',
    "format-width": '{{ "{:>300000000}".format(x)|length }}',
    "format-filter": '{{ "%.300000000f"|format(1.5)|length }}',
    "integer": "{{ ((9**128)**128)**128 }}",
    "repeat": "{{ ('x' * 1000000000)|length }}",
    "replace-method": '{{ ("x" * 30000).replace("x", "y" * 30000)|length }}',
    "replace-filter": '{{ ("x" * 30000)|replace("x", "y" * 30000)|length }}',
    "center": "{{ x.center(1000000000)|length }}",
    "center-filter": "{{ x|center(1000000000)|length }}",
    "zfill": "{{ x.zfill(1000000000)|length }}",
    "indent": "{{ x|indent(1000000000) }}",
    "wordwrap": '{{ ("x " * 400000)|wordwrap(1, wrapstring="y" * 1000) }}',
    "join": BIG + "{{ ([a] * 1000)|join|length }}",
    "join-method": BIG + "{{ ''.join([a] * 1000)|length }}",
    "print-list": BIG + "{{ [a] * 1000 }}",
    "tojson": BIG + "{{ ([a] * 1000)|tojson|length }}",
    "sum": BIG + "{{ ([[a] * 900000] * 1000)|sum(start=[])|length }}",
    "macro-output": BIG + "{% macro m() %}{{ a }}{{ a }}{% endmacro %}{{ m()|length }}",
    "loop-accumulation": (
        "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}"
        "{% set ns.x = ns.x + [range(99999)|list] %}{% endfor %}{{ ns.x|length }}"
    ),
}


@pytest.mark.parametrize(
    "template",
    [
        "{{ {}[('x' * 999999,) * 999999] }}",  # a missing key whose repr is a terabyte
        "{{ {}.get('k', 'x' * 999999)[('y' * 999999,) * 999999] }}",
    ],
)
async def test_an_error_message_never_spells_out_a_huge_value(pg: Running, template: str) -> None:
    answers, probe = await while_attacking(pg, attack(pg, template))
    for reason, details, fields in answers:
        assert reason in ("INVALID_INPUT", "INVALID_PROMPT"), details
        assert fields and len(details) < 2000, len(details)
    probe.assert_responsive()


@pytest.mark.parametrize("template", list(SIZE_BOMBS.values()), ids=list(SIZE_BOMBS))
async def test_values_past_the_limit_are_refused_before_they_are_built(
    pg: Running, template: str
) -> None:
    before = peak_rss_mb()
    answers, probe = await while_attacking(pg, attack(pg, template))
    assert_refused_as_prompt(answers)
    for _, details, _ in answers:
        assert "limit" in details or "took longer" in details, details
    probe.assert_responsive()
    # The server runs in this process: its peak memory barely moved.
    assert peak_rss_mb() - before < 200, (before, peak_rss_mb())


@pytest.mark.parametrize(
    "template",
    [
        "{{ self }}",
        "{{ cycler|string }}",
        "{{ lipsum }}",
        "{{ x.upper }}",
        "{{ x|map('upper') }}",
        "{{ range(3) }}",
        "{{ self|upper }}",
        "{{ 'a' ~ self }}",
        "{{ '%s' % self }}",
        "{{ '{}'.format(cycler) }}",
        "{{ [self]|join }}",
        "{{ {'a': self} }}",
        "{{ self|pprint }}",
        "{% for i in x %}{{ loop }}{% endfor %}",
        "{% macro m() %}{% endmacro %}{{ m }}",
    ],
)
async def test_objects_without_a_data_form_are_refused_not_printed(
    pg: Running, template: str
) -> None:
    answers, probe = await while_attacking(pg, attack(pg, template))
    assert_refused_as_prompt(answers, "cannot be printed")
    for _, details, _ in answers:
        assert "0x" not in details and " at " not in details, details
    probe.assert_responsive()


async def test_a_runaway_loop_is_stopped_while_the_server_keeps_answering(
    start_server: Any,
) -> None:
    running: Running = await start_server(template_timeout_s=0.5)
    loops = (
        "{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% if i == j == -1 %}y{% endif %}{% endfor %}{% endfor %}"
    )
    answers, probe = await while_attacking(running, attack(running, loops))
    assert_refused_as_prompt(answers, "took longer than 0.5 s to render")
    probe.assert_responsive()


def _json(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


@pytest.mark.parametrize(
    ("template", "inputs", "expected"),
    [
        ("{{ v }}", [pb.PromptInput(name="v", json_value=_json({"a": [1, 2]}))], '{"a": [1, 2]}'),
        ("{{ v }}", [pb.PromptInput(name="v", json_value=_json(["x", None]))], '["x", null]'),
        ("{{ v.a }}", [pb.PromptInput(name="v", json_value=_json({"a": 3}))], "3"),
        ("{{ v }}", [pb.PromptInput(name="v", number_value=21)], "21"),
        ("{{ v }}", [pb.PromptInput(name="v", number_value=2.5)], "2.5"),
        ("{{ v }}", [pb.PromptInput(name="v", bool_value=True)], "true"),
        ("{{ v }}", [pb.PromptInput(name="v", bool_value=False)], "false"),
        ("{{ 'n=' ~ v }}", [pb.PromptInput(name="v", number_value=21)], "n=21"),
        ("{{ '%s/%s' % (v, v) }}", [pb.PromptInput(name="v", bool_value=True)], "true/true"),
        ("{{ '{}'.format(v) }}", [pb.PromptInput(name="v", json_value=_json([1]))], "[1]"),
        ("{{ v|string }}", [pb.PromptInput(name="v", number_value=21)], "21"),
        ("{{ v|join(', ') }}", [pb.PromptInput(name="v", json_value=_json([1, True]))], "1, true"),
        ("{% if v %}yes{% endif %}", [pb.PromptInput(name="v", bool_value=True)], "yes"),
        ("{{ v + 1 }}", [pb.PromptInput(name="v", number_value=20)], "21"),
    ],
)
async def test_typed_inputs_render_as_a_prompt_author_expects(
    pg: Running, template: str, inputs: list[pb.PromptInput], expected: str
) -> None:
    rendered = await pg.prompts.RenderPrompt(
        ppb.RenderPromptRequest(inline_prompt=inline(template), inputs=inputs), timeout=30
    )
    assert rendered.messages[0].content == expected
    executed = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(inline_prompt=inline(template), inputs=inputs), timeout=30
    )
    assert executed.state == pb.EXECUTION_STATE_FULFILLED


async def test_refusals_are_remembered_and_valid_templates_still_render(pg: Running) -> None:
    bomb = "{{ x" + "|upper" * 150 + " }}"
    first, second = await asyncio.gather(refused(pg, bomb, "render"), refused(pg, bomb, "execute"))
    assert first[0] == second[0] == "INVALID_PROMPT"
    rendered = await pg.prompts.RenderPrompt(
        ppb.RenderPromptRequest(inline_prompt=inline("{{ x|upper|lower }}!"), inputs=INPUTS)
    )
    assert rendered.messages[0].content == "abc!"
