"""Hostile templates: rendering stays bounded in time and size, the server stays responsive."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running, error_details
from tests.hostile.probe import RESPONSIVE_S

NESTED_LOOPS = (
    "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% if i == j == -1 %}x{% endif %}{% endfor %}{% endfor %}"
)


def render(template: str, question: str = "q") -> ppb.RenderPromptRequest:
    return ppb.RenderPromptRequest(
        inline_prompt=pb.InlinePrompt(model="mock-1", prompt=template),
        inputs=[pb.PromptInput(name="question", string_value=question)],
    )


async def refused(running: Running, request: ppb.RenderPromptRequest) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.prompts.RenderPrompt(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    info, _ = error_details(caught.value)
    return info.reason, caught.value.details() or ""


async def test_a_runaway_loop_is_stopped_and_the_server_keeps_answering(
    start_server: object,
) -> None:
    running: Running = await start_server(template_timeout_s=0.5)  # type: ignore[operator]
    slow = asyncio.create_task(refused(running, render(NESTED_LOOPS)))
    await asyncio.sleep(0.1)  # the runaway render is under way
    started = time.perf_counter()
    answered = await running.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            prompt="demo", inputs=[pb.PromptInput(name="question", string_value="still there?")]
        )
    )
    responsive_s = time.perf_counter() - started
    assert answered.state == pb.EXECUTION_STATE_FULFILLED
    reason, details = await slow
    assert reason == "INVALID_PROMPT" and "took longer than 0.5 s" in details
    # Rendered on a worker thread, so the event loop was not held for the whole render.
    assert responsive_s < RESPONSIVE_S, responsive_s
    # The worker was interrupted, not left spinning: the next loop renders at once.
    small = await running.prompts.RenderPrompt(
        render("{% for i in range(3) %}{{ i }}{% endfor %} {{ question }}")
    )
    assert small.messages[0].content == "012 q"


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 1000000000 }}",
        "{{ [1, 2] * 900000000 }}",
        "{{ question * 2000000 }}",
        "{{ 10 ** 100000000 }}",
        "{{ question.center(2000000) }}",
        "{{ question | center(2000000) }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
        "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
    ],
)
async def test_templates_that_grow_without_bound_are_refused(pg: Running, template: str) -> None:
    started = time.perf_counter()
    reason, _ = await refused(pg, render(template))
    assert reason in {"INVALID_PROMPT", "INVALID_INPUT"}
    assert time.perf_counter() - started < 5


async def test_ordinary_templates_still_render(pg: Running) -> None:
    cases = {
        "{{ question * 3 }}": "a,ba,ba,b",
        "{{ 2 ** 10 }}": "1024",
        "{% for w in question.split(',') %}[{{ w }}]{% endfor %}": "[a][b]",
        "{% macro b(x) %}<{{ x }}>{% endmacro %}{{ b(question) }}": "<a,b>",
        "{{ question | upper }}": "A,B",
    }
    for template, expected in cases.items():
        rendered = await pg.prompts.RenderPrompt(render(template, "a,b"))
        assert rendered.messages[0].content == expected, template
