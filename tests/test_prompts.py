"""PromptService through real gRPC: prompts, immutable versions, release tags, rendering."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from tests.conftest import Running, error_details

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

# Helpers


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(data)
    return message


def value(data: Any) -> struct_pb2.Value:
    return json_format.ParseDict(data, struct_pb2.Value())


def user(template: str) -> pb.PromptTemplateMessage:
    return pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_USER, template=template)


def system(template: str) -> pb.PromptTemplateMessage:
    return pb.PromptTemplateMessage(role=pb.MESSAGE_ROLE_SYSTEM, template=template)


def string_var(name: str, default: str | None = None) -> pb.InputVariable:
    variable = pb.InputVariable(name=name, type=pb.INPUT_TYPE_STRING)
    if default is not None:
        variable.default_value.CopyFrom(value(default))
    return variable


def simple_version(template: str = "Say: {{ q }}", **fields: Any) -> ppb.PromptVersion:
    """A valid version with one user message using the STRING variable ``q``."""
    fields.setdefault("model", "mock-1")
    fields.setdefault("messages", [user(template)])
    fields.setdefault("input_variables", [string_var("q")])
    return ppb.PromptVersion(**fields)


def q(text: str) -> list[pb.PromptInput]:
    return [pb.PromptInput(name="q", string_value=text)]


async def new_prompt(pg: Running, name: str, **fields: Any) -> ppb.Prompt:
    response = await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name=name, **fields))
    return response.prompt


async def add_version(
    pg: Running, prompt: str, template: str = "Say: {{ q }}", tags: tuple[str, ...] = ()
) -> ppb.PromptVersion:
    response = await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(
            prompt=prompt, version=simple_version(template), release_tags=list(tags)
        )
    )
    return response.version


async def rpc_error(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str
) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    """Await ``call``, which must fail with ``code`` and ErrorInfo ``reason``."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == code, f"{err.code()} {err.details()}"
    info, bad = error_details(err)
    assert info.reason == reason, f"{info.reason}: {err.details()}"
    assert info.domain == "promptgate"
    assert "Traceback" not in (err.details() or "")
    return info, bad


def violation(bad: error_details_pb2.BadRequest | None, field: str, words: str = "") -> str:
    """The description of the violation on ``field`` that contains ``words``."""
    assert bad is not None, "expected a BadRequest detail"
    for v in bad.field_violations:
        if v.field == field and words in v.description:
            return v.description
    raise AssertionError(f"no violation on {field!r} containing {words!r}: {bad}")


def tags_of(tags: Any) -> dict[str, tuple[int, str, bool]]:
    return {t.tag: (t.version, t.version_id, t.automatic) for t in tags}


def blob(message: Any) -> bytes:
    return bytes(message.SerializeToString(deterministic=True))


async def collect_pages(
    fetch: Callable[[str], Awaitable[Any]], items: str
) -> tuple[list[Any], list[int]]:
    """Every item of a paged listing, and the size of each page."""
    found: list[Any] = []
    sizes: list[int] = []
    token = ""
    for _ in range(100):
        page = await fetch(token)
        found.extend(getattr(page, items))
        sizes.append(len(getattr(page, items)))
        token = page.next_page_token
        if not token:
            return found, sizes
    raise AssertionError("paging did not end")


# CreatePrompt


async def test_create_prompt_returns_an_empty_prompt(pg: Running) -> None:
    prompt = await new_prompt(
        pg, "support.triage-v2_x", description="Routes tickets", labels={"team": "support"}
    )
    assert prompt.id.startswith("prm_") and len(prompt.id) > len("prm_")
    assert prompt.name == "support.triage-v2_x"
    assert prompt.description == "Routes tickets"
    assert dict(prompt.labels) == {"team": "support"}
    assert not prompt.archived
    assert prompt.latest_version == 0
    assert list(prompt.release_tags) == []
    assert prompt.HasField("create_time") and prompt.create_time.seconds > 0
    other = await new_prompt(pg, "another")
    assert other.id != prompt.id
    by_id = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt=prompt.id))).prompt
    assert by_id == prompt


async def test_duplicate_prompt_name_is_already_exists(pg: Running) -> None:
    first = await new_prompt(pg, "dup", description="first")
    info, _ = await rpc_error(
        pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="dup", description="second")),
        grpc.StatusCode.ALREADY_EXISTS,
        "PROMPT_ALREADY_EXISTS",
    )
    assert info.metadata["prompt"] == "dup"
    # The seeded demo prompt's name is taken too.
    await rpc_error(
        pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name="demo")),
        grpc.StatusCode.ALREADY_EXISTS,
        "PROMPT_ALREADY_EXISTS",
    )
    kept = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="dup"))).prompt
    assert kept.id == first.id and kept.description == "first"
    listed = await pg.prompts.ListPrompts(ppb.ListPromptsRequest(name_prefix="dup"))
    assert [p.id for p in listed.prompts] == [first.id]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "my prompt",
        " leading",
        "trailing ",
        "x" * 129,
        "-starts-with-dash",
        ".hidden",
        "slash/name",
        "emoji-\u00e9",
        "newline\n",
    ],
    ids=[
        "empty",
        "space",
        "leading-space",
        "trailing-space",
        "too-long",
        "dash-first",
        "dot-first",
        "slash",
        "non-ascii",
        "trailing-newline",
    ],
)
async def test_invalid_prompt_names_are_rejected(pg: Running, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.prompts.CreatePrompt(ppb.CreatePromptRequest(name=name))
    assert caught.value.code() == INVALID, caught.value.details()
    info, bad = error_details(caught.value)
    assert info.reason == "INVALID_PROMPT_NAME"
    assert bad is not None
    assert [v.field for v in bad.field_violations] == ["name"]
    listed = await pg.prompts.ListPrompts(ppb.ListPromptsRequest(show_archived=True))
    assert [p.name for p in listed.prompts] == ["demo"], "nothing was created"


async def test_longest_and_shortest_valid_names_are_accepted(pg: Running) -> None:
    longest = "a" + "b" * 127
    assert (await new_prompt(pg, longest)).name == longest
    assert (await new_prompt(pg, "z")).name == "z"
    assert (await new_prompt(pg, "9-lives.v1_final")).name == "9-lives.v1_final"


# CreatePromptVersion


async def test_versions_are_numbered_one_two_three(pg: Running) -> None:
    prompt = await new_prompt(pg, "numbered")
    created = [await add_version(pg, prompt.name, f"v{i}: {{{{ q }}}}") for i in range(1, 4)]
    assert [v.version for v in created] == [1, 2, 3]
    assert all(v.id.startswith("ver_") for v in created)
    assert len({v.id for v in created}) == 3
    assert all(v.prompt_id == prompt.id for v in created)
    assert [v.messages[0].template for v in created] == [f"v{i}: {{{{ q }}}}" for i in (1, 2, 3)]
    got = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt=prompt.id))).prompt
    assert got.latest_version == 3
    # A new version moves "latest", so the prompt's update_time moves too.
    assert got.update_time.ToNanoseconds() > prompt.update_time.ToNanoseconds()
    assert got.create_time == prompt.create_time
    # Numbering is per prompt: another prompt starts at 1.
    other = await new_prompt(pg, "other")
    assert (await add_version(pg, other.id)).version == 1


async def test_concurrent_versions_get_distinct_numbers_without_gaps(pg: Running) -> None:
    prompt = await new_prompt(pg, "busy")
    requests = [
        ppb.CreatePromptVersionRequest(
            prompt="busy", version=simple_version(f"n{i}: {{{{ q }}}}"), release_tags=["canary"]
        )
        for i in range(10)
    ]
    results = await asyncio.gather(
        *(pg.prompts.CreatePromptVersion(r) for r in requests), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, [
        (e.code(), e.details()) if isinstance(e, grpc.aio.AioRpcError) else repr(e) for e in errors
    ]
    versions = [r.version for r in results if isinstance(r, ppb.CreatePromptVersionResponse)]
    assert sorted(v.version for v in versions) == list(range(1, 11))
    assert len({v.id for v in versions}) == 10
    listed = await pg.prompts.ListPromptVersions(ppb.ListPromptVersionsRequest(prompt=prompt.id))
    assert [v.version for v in listed.versions] == list(range(10, 0, -1))
    by_number = {v.version: v.messages[0].template for v in versions}
    assert {v.version: v.messages[0].template for v in listed.versions} == by_number
    assert sorted(by_number.values()) == sorted(f"n{i}: {{{{ q }}}}" for i in range(10))
    got = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="busy"))).prompt
    assert got.latest_version == 10
    assert tags_of(got.release_tags)["latest"][0] == 10
    # Each creation moved "canary" in turn: the history is one unbroken chain.
    history = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="busy", tag="canary")
    )
    assert [(e.version, e.previous_version) for e in history.events] == [
        (n, n - 1) for n in range(10, 0, -1)
    ]
    assert tags_of(got.release_tags)["canary"][0] == 10


def full_version() -> ppb.PromptVersion:
    """A version that uses every field of the contract."""
    return ppb.PromptVersion(
        provider="mock",
        model="mock-1",
        description="Everything at once.",
        messages=[
            system("You help {{ audience }} (limit {{ limit }}, strict={{ strict }})."),
            pb.PromptTemplateMessage(chat_history_input="history"),
            pb.PromptTemplateMessage(
                role=pb.MESSAGE_ROLE_ASSISTANT, template="Context: {{ context.topic }}"
            ),
            user("{{ question }}"),
        ],
        parameters=pb.ModelParameters(
            temperature=0.7,
            max_tokens=321,
            top_p=0.9,
            stop=["END", "STOP"],
            seed=1234567890123,
            presence_penalty=-0.5,
            frequency_penalty=1.25,
            extra=struct({"mock": {"text": "fixed"}, "n": 2, "nested": {"list": [1, "a", True]}}),
        ),
        input_variables=[
            pb.InputVariable(name="question", type=pb.INPUT_TYPE_STRING, description="Ask."),
            pb.InputVariable(
                name="audience", type=pb.INPUT_TYPE_STRING, default_value=value("engineers")
            ),
            pb.InputVariable(name="limit", type=pb.INPUT_TYPE_NUMBER, default_value=value(3.5)),
            pb.InputVariable(name="strict", type=pb.INPUT_TYPE_BOOLEAN, default_value=value(False)),
            pb.InputVariable(
                name="context",
                type=pb.INPUT_TYPE_JSON,
                default_value=value({"topic": "billing", "ids": [1, 2], "none": None}),
            ),
            pb.InputVariable(name="history", type=pb.INPUT_TYPE_CHAT_HISTORY),
        ],
        response_format=pb.ResponseFormat(
            type=pb.ResponseFormat.TYPE_JSON_SCHEMA,
            schema_name="answer",
            json_schema=struct(
                {
                    "type": "object",
                    "required": ["answer"],
                    "properties": {"answer": {"type": "string", "minLength": 1}},
                    "additionalProperties": False,
                }
            ),
            strict=True,
        ),
        tools=[
            pb.Tool(
                name="lookup_order",
                description="Find an order.",
                parameters=struct(
                    {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}}}
                ),
            ),
            pb.Tool(name="escalate"),
        ],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name="lookup_order"),
    )


async def test_versions_are_immutable_and_read_back_exactly(pg: Running) -> None:
    prompt = await new_prompt(pg, "full")
    sent = full_version()
    created = (
        await pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="full", version=sent)
        )
    ).version
    assert created.version == 1 and created.prompt_id == prompt.id
    assert created.HasField("create_time")
    for name in ("messages", "input_variables", "tools"):
        assert list(getattr(created, name)) == list(getattr(sent, name)), name
    for name in ("parameters", "response_format", "tool_choice"):
        assert blob(getattr(created, name)) == blob(getattr(sent, name)), name
    assert (created.provider, created.model, created.description) == (
        "mock",
        "mock-1",
        "Everything at once.",
    )
    # A later version with other content does not change version 1.
    await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(prompt="full", version=simple_version("changed {{ q }}"))
    )
    for request in (
        ppb.GetPromptVersionRequest(prompt="full", version=1),
        ppb.GetPromptVersionRequest(prompt=prompt.id, version_id=created.id),
    ):
        got = (await pg.prompts.GetPromptVersion(request)).version
        assert blob(got) == blob(created)
        assert blob(got.messages[1]) == blob(sent.messages[1])
        assert blob(got.parameters) == blob(sent.parameters)
        assert [blob(v) for v in got.input_variables] == [blob(v) for v in sent.input_variables]
        assert blob(got.response_format) == blob(sent.response_format)
        assert [blob(t) for t in got.tools] == [blob(t) for t in sent.tools]
        assert blob(got.tool_choice) == blob(sent.tool_choice)
    listed = await pg.prompts.ListPromptVersions(ppb.ListPromptVersionsRequest(prompt="full"))
    assert [v.version for v in listed.versions] == [2, 1]
    assert blob(listed.versions[1]) == blob(created)


async def test_output_only_fields_of_a_version_are_ignored(pg: Running) -> None:
    prompt = await new_prompt(pg, "outputs")
    sent = simple_version(id="ver_forged", prompt_id="prm_forged", version=42)
    created = (
        await pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="outputs", version=sent)
        )
    ).version
    assert created.version == 1
    assert created.id != "ver_forged" and created.id.startswith("ver_")
    assert created.prompt_id == prompt.id


def _with(**changes: Any) -> ppb.PromptVersion:
    version = simple_version()
    for name, new in changes.items():
        version.ClearField(name)
        if isinstance(new, list):
            getattr(version, name).extend(new)
        elif isinstance(new, str):
            setattr(version, name, new)
        else:
            getattr(version, name).CopyFrom(new)
    return version


CHAT = pb.InputVariable(name="history", type=pb.INPUT_TYPE_CHAT_HISTORY)
TOOL = pb.Tool(name="search")


@pytest.mark.parametrize(
    ("version", "reason", "field", "words"),
    [
        pytest.param(
            _with(messages=[user("Hi {{ q }}, about {{ topic }}")]),
            "INVALID_PROMPT",
            "version.messages[0].template",
            "'topic'",
            id="undeclared-variable",
        ),
        pytest.param(
            _with(messages=[user("{% for x in q %}{{ x }}")]),
            "INVALID_PROMPT",
            "version.messages[0].template",
            "syntax error",
            id="unclosed-block",
        ),
        pytest.param(
            _with(messages=[user("{{ q ")]),
            "INVALID_PROMPT",
            "version.messages[0].template",
            "syntax error",
            id="unclosed-expression",
        ),
        pytest.param(
            _with(model=""), "INVALID_PROMPT", "version.model", "model is required", id="no-model"
        ),
        pytest.param(
            _with(model="gpt-9-imaginary"),
            "INVALID_MODEL",
            "version.model",
            "gpt-9-imaginary",
            id="unknown-model",
        ),
        pytest.param(
            simple_version(provider="nowhere"),
            "INVALID_MODEL",
            "version.model",
            "nowhere",
            id="unknown-provider",
        ),
        pytest.param(
            _with(messages=[pb.PromptTemplateMessage(template="{{ q }}")]),
            "INVALID_PROMPT",
            "version.messages[0].role",
            "role",
            id="role-unspecified",
        ),
        pytest.param(
            _with(messages=[]),
            "INVALID_PROMPT",
            "version.messages",
            "at least one message",
            id="no-messages",
        ),
        pytest.param(
            _with(input_variables=[string_var("q"), string_var("q")]),
            "INVALID_PROMPT",
            "version.input_variables[1].name",
            "declared twice",
            id="duplicate-variable",
        ),
        pytest.param(
            _with(messages=[user("hello")], input_variables=[string_var("1abc")]),
            "INVALID_PROMPT",
            "version.input_variables[0].name",
            "not a valid variable name",
            id="bad-variable-name",
        ),
        pytest.param(
            _with(messages=[user("hello")], input_variables=[string_var("has-dash")]),
            "INVALID_PROMPT",
            "version.input_variables[0].name",
            "not a valid variable name",
            id="dash-in-variable-name",
        ),
        pytest.param(
            _with(messages=[user("hello")], input_variables=[string_var("x\n")]),
            "INVALID_PROMPT",
            "version.input_variables[0].name",
            "not a valid variable name",
            id="newline-in-variable-name",
        ),
        pytest.param(
            _with(input_variables=[pb.InputVariable(name="q")]),
            "INVALID_PROMPT",
            "version.input_variables[0].type",
            "type is required",
            id="type-unspecified",
        ),
        pytest.param(
            _with(
                input_variables=[
                    pb.InputVariable(name="q", type=pb.INPUT_TYPE_STRING, default_value=value(5))
                ]
            ),
            "INVALID_PROMPT",
            "version.input_variables[0].default_value",
            "NUMBER",
            id="string-with-number-default",
        ),
        pytest.param(
            _with(
                messages=[user("{{ q }} {{ n }}")],
                input_variables=[
                    string_var("q"),
                    pb.InputVariable(
                        name="n", type=pb.INPUT_TYPE_NUMBER, default_value=value("three")
                    ),
                ],
            ),
            "INVALID_PROMPT",
            "version.input_variables[1].default_value",
            "STRING",
            id="number-with-string-default",
        ),
        pytest.param(
            _with(
                messages=[user("{{ q }} {{ b }}")],
                input_variables=[
                    string_var("q"),
                    pb.InputVariable(name="b", type=pb.INPUT_TYPE_BOOLEAN, default_value=value(1)),
                ],
            ),
            "INVALID_PROMPT",
            "version.input_variables[1].default_value",
            "BOOLEAN",
            id="boolean-with-number-default",
        ),
        pytest.param(
            _with(
                response_format=pb.ResponseFormat(
                    type=pb.ResponseFormat.TYPE_JSON_SCHEMA,
                    json_schema=struct({"type": "not-a-type"}),
                )
            ),
            "INVALID_PROMPT",
            "version.response_format.json_schema",
            "not a valid JSON Schema",
            id="invalid-json-schema",
        ),
        pytest.param(
            _with(
                response_format=pb.ResponseFormat(
                    type=pb.ResponseFormat.TYPE_JSON_SCHEMA,
                    json_schema=struct({"type": "object", "required": "answer"}),
                )
            ),
            "INVALID_PROMPT",
            "version.response_format.json_schema",
            "not a valid JSON Schema",
            id="json-schema-required-not-a-list",
        ),
        pytest.param(
            _with(response_format=pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA)),
            "INVALID_PROMPT",
            "version.response_format.json_schema",
            "required",
            id="json-schema-missing",
        ),
        pytest.param(
            _with(
                tools=[TOOL],
                tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name="nope"),
            ),
            "INVALID_PROMPT",
            "version.tool_choice.function_name",
            "'nope'",
            id="tool-choice-undeclared",
        ),
        pytest.param(
            _with(tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED)),
            "INVALID_PROMPT",
            "version.tool_choice",
            "at least one tool",
            id="tool-required-without-tools",
        ),
        pytest.param(
            _with(tools=[TOOL, TOOL]),
            "INVALID_PROMPT",
            "version.tools[1].name",
            "declared twice",
            id="duplicate-tool",
        ),
        pytest.param(
            _with(tools=[pb.Tool(name="has space")]),
            "INVALID_PROMPT",
            "version.tools[0].name",
            "not a valid function name",
            id="bad-tool-name",
        ),
        pytest.param(
            _with(tools=[pb.Tool(name="search\n")]),
            "INVALID_PROMPT",
            "version.tools[0].name",
            "not a valid function name",
            id="newline-in-tool-name",
        ),
        pytest.param(
            _with(
                messages=[user("{{ q }}"), pb.PromptTemplateMessage(chat_history_input="q")],
            ),
            "INVALID_PROMPT",
            "version.messages[1].chat_history_input",
            "not CHAT_HISTORY",
            id="chat-history-input-not-chat-history",
        ),
        pytest.param(
            _with(
                messages=[user("{{ q }}"), pb.PromptTemplateMessage(chat_history_input="history")],
            ),
            "INVALID_PROMPT",
            "version.messages[1].chat_history_input",
            "not declared",
            id="chat-history-input-undeclared",
        ),
        pytest.param(
            _with(parameters=pb.ModelParameters(temperature=2.5)),
            "INVALID_PROMPT",
            "version.parameters.temperature",
            "between",
            id="temperature-out-of-range",
        ),
        pytest.param(
            _with(parameters=pb.ModelParameters(max_tokens=0)),
            "INVALID_PROMPT",
            "version.parameters.max_tokens",
            "greater than 0",
            id="max-tokens-zero",
        ),
    ],
)
async def test_invalid_versions_are_rejected_with_a_field_violation(
    pg: Running, version: ppb.PromptVersion, reason: str, field: str, words: str
) -> None:
    prompt = await new_prompt(pg, "strict")
    _, bad = await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="strict", version=version, release_tags=["x"])
        ),
        INVALID,
        reason,
    )
    violation(bad, field, words)
    # Nothing was stored: no version, no tag, no history.
    got = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt=prompt.id))).prompt
    assert got.latest_version == 0 and list(got.release_tags) == []
    history = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt=prompt.id)
    )
    assert list(history.events) == []
    # The same prompt still takes a valid version, numbered 1.
    assert (await add_version(pg, "strict")).version == 1


async def test_a_valid_chat_history_block_is_accepted(pg: Running) -> None:
    await new_prompt(pg, "chatty")
    version = _with(
        messages=[system("{{ q }}"), pb.PromptTemplateMessage(chat_history_input="history")],
        input_variables=[string_var("q"), CHAT],
    )
    created = await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(prompt="chatty", version=version)
    )
    assert created.version.messages[1].chat_history_input == "history"


async def test_every_problem_of_a_version_is_reported_at_once(pg: Running) -> None:
    await new_prompt(pg, "many")
    version = ppb.PromptVersion(
        messages=[user("{{ a }} {{ b }}")],
        parameters=pb.ModelParameters(top_p=1.5),
        input_variables=[string_var("a")],
    )
    _, bad = await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="many", version=version)
        ),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(bad, "version.model", "model is required")
    violation(bad, "version.messages[0].template", "'b'")
    violation(bad, "version.parameters.top_p")
    assert bad is not None and len(bad.field_violations) == 3


async def test_undeclared_variable_violation_names_each_variable(pg: Running) -> None:
    await new_prompt(pg, "names")
    version = _with(messages=[system("{{ first_missing }}"), user("{{ q }} {{ second_missing }}")])
    _, bad = await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="names", version=version)
        ),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(bad, "version.messages[0].template", "'first_missing'")
    violation(bad, "version.messages[1].template", "'second_missing'")


@pytest.mark.parametrize(
    ("tags", "field", "words"),
    [
        (["latest"], "release_tags[0]", "latest"),
        (["production", "latest"], "release_tags[1]", "latest"),
        (["bad tag"], "release_tags[0]", ""),
        (["ok", "-dash"], "release_tags[1]", ""),
        (["t" * 65], "release_tags[0]", ""),
        ([""], "release_tags[0]", ""),
        (["staging\n"], "release_tags[0]", ""),
        (["twice", "twice"], "release_tags", "twice"),
    ],
    ids=["latest", "latest-second", "space", "dash-first", "too-long", "empty", "newline", "dup"],
)
async def test_bad_release_tags_on_create_are_rejected(
    pg: Running, tags: list[str], field: str, words: str
) -> None:
    await new_prompt(pg, "tagged")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="tagged", version=simple_version(), release_tags=tags
            )
        )
    assert caught.value.code() == INVALID, caught.value.details()
    _, bad = error_details(caught.value)
    violation(bad, field, words)
    tags_now = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="tagged"))
    assert list(tags_now.release_tags) == []
    versions = await pg.prompts.ListPromptVersions(ppb.ListPromptVersionsRequest(prompt="tagged"))
    assert list(versions.versions) == []


async def test_release_tags_on_create_point_at_the_new_version(pg: Running) -> None:
    await new_prompt(pg, "ship")
    v1 = await add_version(pg, "ship", tags=("production", "staging", "t" * 64))
    v2 = await add_version(pg, "ship", tags=("staging",))
    tags = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="ship"))
    assert tags_of(tags.release_tags) == {
        "latest": (2, v2.id, True),
        "production": (1, v1.id, False),
        "staging": (2, v2.id, False),
        "t" * 64: (1, v1.id, False),
    }


async def test_version_for_a_missing_prompt_or_without_content(pg: Running) -> None:
    await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="ghost", version=simple_version())
        ),
        NOT_FOUND,
        "PROMPT_NOT_FOUND",
    )
    _, bad = await rpc_error(
        pg.prompts.CreatePromptVersion(ppb.CreatePromptVersionRequest(prompt="demo")),
        INVALID,
        "INVALID_PROMPT",
    )
    violation(bad, "version")


# Release tags


async def test_set_release_tag_by_number_and_by_version_id(pg: Running) -> None:
    prompt = await new_prompt(pg, "tags")
    v1 = await add_version(pg, "tags", tags=("production",))
    v2 = await add_version(pg, "tags")
    v3 = await add_version(pg, "tags")
    before = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="tags"))).prompt

    moved = await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="tags", tag="staging", version=2)
    )
    tag = moved.release_tag
    assert (tag.tag, tag.version, tag.version_id, tag.automatic) == ("staging", 2, v2.id, False)
    assert tag.HasField("update_time")

    moved = await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt=prompt.id, tag="staging", version_id=v3.id)
    )
    assert (moved.release_tag.version, moved.release_tag.version_id) == (3, v3.id)

    listed = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="tags"))
    assert [t.tag for t in listed.release_tags] == ["latest", "production", "staging"]
    assert tags_of(listed.release_tags) == {
        "latest": (3, v3.id, True),
        "production": (1, v1.id, False),
        "staging": (3, v3.id, False),
    }
    after = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="tags"))).prompt
    assert tags_of(after.release_tags) == tags_of(listed.release_tags)
    assert after.update_time.ToNanoseconds() > before.update_time.ToNanoseconds()
    staged = await pg.prompts.GetPromptVersion(
        ppb.GetPromptVersionRequest(prompt="tags", release_tag="staging")
    )
    assert staged.version.id == v3.id


async def test_latest_is_automatic_and_follows_new_versions(pg: Running) -> None:
    prompt = await new_prompt(pg, "follow")
    empty = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="follow"))
    assert list(empty.release_tags) == []
    await rpc_error(
        pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt="follow", release_tag="latest")
        ),
        NOT_FOUND,
        "VERSION_NOT_FOUND",
    )
    for number in (1, 2, 3):
        created = await add_version(pg, "follow", f"v{number} {{{{ q }}}}")
        listed = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt=prompt.id))
        assert tags_of(listed.release_tags) == {"latest": (number, created.id, True)}
        latest = await pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt="follow", release_tag="latest")
        )
        assert latest.version.version == number and latest.version.id == created.id
        got = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="follow"))).prompt
        assert got.latest_version == number
        assert tags_of(got.release_tags)["latest"] == (number, created.id, True)
    # Moving "latest" is not recorded in the tag history: it is automatic.
    history = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="follow")
    )
    assert list(history.events) == []


async def test_execution_and_render_pick_the_version_by_tag_or_number(pg: Running) -> None:
    await new_prompt(pg, "pick")
    v1 = await add_version(pg, "pick", "one {{ q }}", tags=("production",))
    v2 = await add_version(pg, "pick", "two {{ q }}", tags=("staging",))
    v3 = await add_version(pg, "pick", "three {{ q }}")
    cases: list[tuple[dict[str, Any], ppb.PromptVersion, str, str]] = [
        ({}, v1, "production", "one"),
        ({"release_tag": "production"}, v1, "production", "one"),
        ({"release_tag": "staging"}, v2, "staging", "two"),
        ({"release_tag": "latest"}, v3, "latest", "three"),
        ({"version": 2}, v2, "", "two"),
        ({"version": 3}, v3, "", "three"),
        ({"version": 1}, v1, "", "one"),
    ]
    for selector, expected, tag, word in cases:
        response = await pg.executions.ExecutePrompt(
            epb.ExecutePromptRequest(prompt="pick", inputs=q("go"), **selector)
        )
        assert response.state == pb.EXECUTION_STATE_FULFILLED, selector
        meta = response.meta
        assert (meta.prompt_version, meta.prompt_version_id, meta.release_tag) == (
            expected.version,
            expected.id,
            tag,
        ), selector
        assert meta.prompt_id == expected.prompt_id
        assert response.outputs[0].string_value == f"Mock reply to: {word} go", selector
        rendered = await pg.prompts.RenderPrompt(
            ppb.RenderPromptRequest(prompt="pick", inputs=q("go"), **selector)
        )
        assert (rendered.prompt_version, rendered.prompt_version_id, rendered.release_tag) == (
            expected.version,
            expected.id,
            tag,
        ), selector
        assert rendered.messages[-1].content == f"{word} go"
    # Moving staging changes what staging executes, immediately.
    await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="pick", tag="staging", version=3)
    )
    response = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="pick", inputs=q("go"), release_tag="staging")
    )
    assert (response.meta.prompt_version, response.meta.release_tag) == (3, "staging")
    # A new version moves latest, not production.
    v4 = await add_version(pg, "pick", "four {{ q }}")
    latest = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="pick", inputs=q("go"), release_tag="latest")
    )
    assert latest.meta.prompt_version_id == v4.id
    default = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="pick", inputs=q("go"))
    )
    assert default.meta.prompt_version == 1


async def test_release_tag_history_newest_first_filtered_and_paged(pg: Running) -> None:
    await new_prompt(pg, "hist")
    v1 = await add_version(pg, "hist", tags=("production",))
    v2 = await add_version(pg, "hist")
    v3 = await add_version(pg, "hist")
    for tag, number in (("staging", 2), ("staging", 3), ("production", 2)):
        await pg.prompts.SetReleaseTag(
            ppb.SetReleaseTagRequest(prompt="hist", tag=tag, version=number)
        )
    ids = {1: v1.id, 2: v2.id, 3: v3.id}
    expected = [("production", 2, 1), ("staging", 3, 2), ("staging", 2, 0), ("production", 1, 0)]

    history = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="hist")
    )
    assert [(e.tag, e.version, e.previous_version) for e in history.events] == expected
    assert [e.version_id for e in history.events] == [ids[v] for _, v, _ in expected]
    assert history.next_page_token == ""
    times = [e.time.ToNanoseconds() for e in history.events]
    assert all(t > 0 for t in times)
    assert times == sorted(times, reverse=True)

    staging = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="hist", tag="staging")
    )
    assert [(e.tag, e.version, e.previous_version) for e in staging.events] == [
        ("staging", 3, 2),
        ("staging", 2, 0),
    ]
    nothing = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="hist", tag="canary")
    )
    assert list(nothing.events) == []

    async def page(token: str) -> ppb.ListReleaseTagHistoryResponse:
        return await pg.prompts.ListReleaseTagHistory(
            ppb.ListReleaseTagHistoryRequest(prompt="hist", page_size=1, page_token=token)
        )

    events, sizes = await collect_pages(page, "events")
    assert sizes == [1, 1, 1, 1]
    assert [(e.tag, e.version, e.previous_version) for e in events] == expected

    async def staging_page(token: str) -> ppb.ListReleaseTagHistoryResponse:
        return await pg.prompts.ListReleaseTagHistory(
            ppb.ListReleaseTagHistoryRequest(
                prompt="hist", tag="staging", page_size=1, page_token=token
            )
        )

    events, sizes = await collect_pages(staging_page, "events")
    assert sizes == [1, 1]
    assert [(e.version, e.previous_version) for e in events] == [(3, 2), (2, 0)]

    # The demo prompt's history is its own.
    demo = await pg.prompts.ListReleaseTagHistory(ppb.ListReleaseTagHistoryRequest(prompt="demo"))
    assert [(e.tag, e.version, e.previous_version) for e in demo.events] == [("production", 1, 0)]


async def test_release_tag_errors(pg: Running) -> None:
    await new_prompt(pg, "errs")
    v1 = await add_version(pg, "errs", tags=("production",))
    await add_version(pg, "errs")
    demo_v1 = (
        await pg.prompts.GetPromptVersion(ppb.GetPromptVersionRequest(prompt="demo", version=1))
    ).version

    info, _ = await rpc_error(
        pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt="errs", release_tag="canary")
        ),
        NOT_FOUND,
        "RELEASE_TAG_NOT_FOUND",
    )
    assert info.metadata["release_tag"] == "canary"
    await rpc_error(
        pg.executions.ExecutePrompt(
            epb.ExecutePromptRequest(prompt="errs", inputs=q("x"), release_tag="canary")
        ),
        NOT_FOUND,
        "RELEASE_TAG_NOT_FOUND",
    )
    await rpc_error(
        pg.prompts.RenderPrompt(
            ppb.RenderPromptRequest(prompt="errs", inputs=q("x"), release_tag="canary")
        ),
        NOT_FOUND,
        "RELEASE_TAG_NOT_FOUND",
    )
    missing = [
        ppb.SetReleaseTagRequest(prompt="errs", tag="staging", version=9),
        ppb.SetReleaseTagRequest(prompt="errs", tag="staging", version_id="ver_nope"),
        # A version of another prompt is not a version of this one.
        ppb.SetReleaseTagRequest(prompt="errs", tag="staging", version_id=demo_v1.id),
    ]
    for request in missing:
        await rpc_error(pg.prompts.SetReleaseTag(request), NOT_FOUND, "VERSION_NOT_FOUND")
    _, bad = await rpc_error(
        pg.prompts.SetReleaseTag(ppb.SetReleaseTagRequest(prompt="errs", tag="latest", version=1)),
        INVALID,
        "INVALID_RELEASE_TAG",
    )
    violation(bad, "tag", "latest")
    for tag in ("", "bad tag", "x" * 65, "-x", "a/b"):
        _, bad = await rpc_error(
            pg.prompts.SetReleaseTag(ppb.SetReleaseTagRequest(prompt="errs", tag=tag, version=1)),
            INVALID,
            "INVALID_RELEASE_TAG",
        )
        violation(bad, "tag")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.prompts.SetReleaseTag(ppb.SetReleaseTagRequest(prompt="errs", tag="staging"))
    assert caught.value.code() == INVALID
    await rpc_error(
        pg.prompts.SetReleaseTag(
            ppb.SetReleaseTagRequest(prompt="ghost", tag="staging", version=1)
        ),
        NOT_FOUND,
        "PROMPT_NOT_FOUND",
    )
    # None of the failures moved or created a tag.
    tags = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="errs"))
    assert set(tags_of(tags.release_tags)) == {"latest", "production"}
    assert tags_of(tags.release_tags)["production"] == (1, v1.id, False)
    history = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="errs")
    )
    assert [(e.tag, e.version) for e in history.events] == [("production", 1)]


async def test_set_release_tag_rejects_a_tag_with_a_trailing_newline(pg: Running) -> None:
    _, bad = await rpc_error(
        pg.prompts.SetReleaseTag(ppb.SetReleaseTagRequest(prompt="demo", tag="prod\n", version=1)),
        INVALID,
        "INVALID_RELEASE_TAG",
    )
    violation(bad, "tag")
    tags = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="demo"))
    assert [t.tag for t in tags.release_tags] == ["latest", "production"]


async def test_concurrent_first_moves_of_a_new_tag_all_succeed(pg: Running) -> None:
    await new_prompt(pg, "race")
    versions = [await add_version(pg, "race") for _ in range(10)]
    new_tags = [f"tag-{i}" for i in range(5)]
    results = await asyncio.gather(
        *(
            pg.prompts.SetReleaseTag(
                ppb.SetReleaseTagRequest(prompt="race", tag=tag, version=v.version)
            )
            for v in versions
            for tag in new_tags
        ),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, [
        (e.code(), e.details()) if isinstance(e, grpc.aio.AioRpcError) else repr(e) for e in errors
    ]
    for tag in new_tags:
        history = await pg.prompts.ListReleaseTagHistory(
            ppb.ListReleaseTagHistoryRequest(prompt="race", tag=tag)
        )
        assert sorted(e.version for e in history.events) == list(range(1, 11)), tag


async def test_concurrent_moves_of_a_tag_keep_a_consistent_history(pg: Running) -> None:
    await new_prompt(pg, "race")
    await add_version(pg, "race", tags=("staging",))
    versions = [await add_version(pg, "race") for _ in range(9)]
    results = await asyncio.gather(
        *(
            pg.prompts.SetReleaseTag(
                ppb.SetReleaseTagRequest(prompt="race", tag="staging", version=v.version)
            )
            for v in versions
        ),
        return_exceptions=True,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    history = await pg.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="race", tag="staging")
    )
    events = list(history.events)
    assert sorted(e.version for e in events) == list(range(1, 11))
    assert events[-1].version == 1 and events[-1].previous_version == 0
    # Each move's previous version is the version the move before it left behind.
    moves = [(e.version, e.previous_version) for e in events]
    assert [p for _, p in moves] == [v for v, _ in moves[1:]] + [0], moves
    tags = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="race"))
    assert tags_of(tags.release_tags)["staging"][0] == events[0].version


async def test_release_tags_are_per_prompt(pg: Running) -> None:
    await new_prompt(pg, "mine")
    await add_version(pg, "mine", tags=("production",))
    await add_version(pg, "mine")
    await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="mine", tag="production", version=2)
    )
    demo = await pg.prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="demo"))
    assert {t: v for t, (v, _, _) in tags_of(demo.release_tags).items()} == {
        "latest": 1,
        "production": 1,
    }


# GetPromptVersion / ListPromptVersions


async def test_get_prompt_version_by_number_id_and_tag(pg: Running) -> None:
    prompt = await new_prompt(pg, "get")
    v1 = await add_version(pg, "get", "first {{ q }}", tags=("production",))
    v2 = await add_version(pg, "get", "second {{ q }}")
    for ref in ("get", prompt.id):
        by_number = await pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt=ref, version=1)
        )
        by_id = await pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt=ref, version_id=v1.id)
        )
        by_tag = await pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt=ref, release_tag="production")
        )
        assert blob(by_number.version) == blob(by_id.version) == blob(by_tag.version) == blob(v1)
        newest = await pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt=ref, version=2)
        )
        assert blob(newest.version) == blob(v2)
    await rpc_error(
        pg.prompts.GetPromptVersion(ppb.GetPromptVersionRequest(prompt="get", version=3)),
        NOT_FOUND,
        "VERSION_NOT_FOUND",
    )
    await rpc_error(
        pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt="get", version_id="ver_missing")
        ),
        NOT_FOUND,
        "VERSION_NOT_FOUND",
    )
    demo_v1 = (
        await pg.prompts.GetPromptVersion(ppb.GetPromptVersionRequest(prompt="demo", version=1))
    ).version
    await rpc_error(
        pg.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt="get", version_id=demo_v1.id)
        ),
        NOT_FOUND,
        "VERSION_NOT_FOUND",
    )
    await rpc_error(
        pg.prompts.GetPromptVersion(ppb.GetPromptVersionRequest(prompt="nope", version=1)),
        NOT_FOUND,
        "PROMPT_NOT_FOUND",
    )


@pytest.mark.parametrize(
    "request_",
    [
        ppb.GetPromptVersionRequest(prompt="demo"),
        ppb.GetPromptVersionRequest(prompt="demo", version=-1),
        ppb.GetPromptVersionRequest(prompt="demo", version=0),
        ppb.GetPromptVersionRequest(prompt="demo", release_tag=""),
        ppb.GetPromptVersionRequest(version=1),
    ],
    ids=["no-selector", "negative", "zero", "empty-tag", "no-prompt"],
)
async def test_get_prompt_version_without_a_usable_selector_is_invalid(
    pg: Running, request_: ppb.GetPromptVersionRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.prompts.GetPromptVersion(request_)
    assert caught.value.code() == INVALID, (caught.value.code(), caught.value.details())
    _, bad = error_details(caught.value)
    assert bad is not None and len(bad.field_violations) >= 1


async def test_list_prompt_versions_newest_first_with_paging(pg: Running) -> None:
    await new_prompt(pg, "pages")
    created = [await add_version(pg, "pages", f"v{i} {{{{ q }}}}") for i in range(1, 6)]
    everything = await pg.prompts.ListPromptVersions(ppb.ListPromptVersionsRequest(prompt="pages"))
    assert [v.version for v in everything.versions] == [5, 4, 3, 2, 1]
    assert [blob(v) for v in everything.versions] == [blob(v) for v in reversed(created)]
    assert everything.next_page_token == ""

    async def page(token: str) -> ppb.ListPromptVersionsResponse:
        return await pg.prompts.ListPromptVersions(
            ppb.ListPromptVersionsRequest(prompt="pages", page_size=2, page_token=token)
        )

    versions, sizes = await collect_pages(page, "versions")
    assert sizes == [2, 2, 1]
    assert [v.version for v in versions] == [5, 4, 3, 2, 1]
    assert len({v.id for v in versions}) == 5

    exact = await pg.prompts.ListPromptVersions(
        ppb.ListPromptVersionsRequest(prompt="pages", page_size=5)
    )
    assert len(exact.versions) == 5 and exact.next_page_token == ""

    for request in (
        ppb.ListPromptVersionsRequest(prompt="pages", page_token="not-a-token"),
        ppb.ListPromptVersionsRequest(prompt="pages", page_size=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pg.prompts.ListPromptVersions(request)
        assert caught.value.code() == INVALID
    # A token from another listing is not accepted.
    prompts_page = await pg.prompts.ListPrompts(ppb.ListPromptsRequest(page_size=1))
    assert prompts_page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.prompts.ListPromptVersions(
            ppb.ListPromptVersionsRequest(prompt="pages", page_token=prompts_page.next_page_token)
        )
    assert caught.value.code() == INVALID
    empty_prompt = await new_prompt(pg, "no-versions")
    none = await pg.prompts.ListPromptVersions(
        ppb.ListPromptVersionsRequest(prompt=empty_prompt.id)
    )
    assert list(none.versions) == [] and none.next_page_token == ""


def forged_token(kind: str, **position: Any) -> str:
    raw = json.dumps({"k": kind, **position}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "call",
    [
        lambda pg: pg.prompts.ListPromptVersions(
            ppb.ListPromptVersionsRequest(prompt="demo", page_token=forged_token("versions", v="x"))
        ),
        lambda pg: pg.prompts.ListReleaseTagHistory(
            ppb.ListReleaseTagHistoryRequest(
                prompt="demo", page_token=forged_token("tag-history", seq=[1])
            )
        ),
        lambda pg: pg.prompts.ListPrompts(
            ppb.ListPromptsRequest(page_token=forged_token("versions", v=1))
        ),
    ],
    ids=["versions-bad-position", "history-bad-position", "prompts-wrong-kind"],
)
async def test_forged_page_tokens_are_invalid_argument_not_internal(
    pg: Running, call: Callable[[Running], Awaitable[Any]]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(pg)
    assert caught.value.code() == INVALID, (caught.value.code(), caught.value.details())
    _, bad = error_details(caught.value)
    violation(bad, "page_token")


# GetPrompt / ListPrompts / Archive


async def test_get_prompt_by_id_and_name(pg: Running) -> None:
    created = await new_prompt(pg, "lookup", description="d", labels={"a": "1"})
    await add_version(pg, "lookup", tags=("production",))
    by_name = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="lookup"))).prompt
    by_id = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt=created.id))).prompt
    assert by_name == by_id
    assert (by_name.id, by_name.name, by_name.description, dict(by_name.labels)) == (
        created.id,
        "lookup",
        "d",
        {"a": "1"},
    )
    assert by_name.latest_version == 1
    assert [t.tag for t in by_name.release_tags] == ["latest", "production"]
    assert by_name.create_time == created.create_time
    info, _ = await rpc_error(
        pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="unknown")), NOT_FOUND, "PROMPT_NOT_FOUND"
    )
    assert info.metadata["prompt"] == "unknown"
    await rpc_error(
        pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="prm_doesnotexist")),
        NOT_FOUND,
        "PROMPT_NOT_FOUND",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.prompts.GetPrompt(ppb.GetPromptRequest())
    assert caught.value.code() == INVALID


async def test_list_prompts_by_name_with_paging(pg: Running) -> None:
    for name in ("delta", "alpha", "charlie", "bravo", "echo"):
        await new_prompt(pg, name)
    expected = ["alpha", "bravo", "charlie", "delta", "demo", "echo"]
    listed = await pg.prompts.ListPrompts(ppb.ListPromptsRequest())
    assert [p.name for p in listed.prompts] == expected
    assert listed.next_page_token == ""
    demo = next(p for p in listed.prompts if p.name == "demo")
    assert demo.latest_version == 1 and [t.tag for t in demo.release_tags] == [
        "latest",
        "production",
    ]

    for size, sizes in ((2, [2, 2, 2]), (4, [4, 2]), (1, [1] * 6)):

        async def page(token: str, size: int = size) -> ppb.ListPromptsResponse:
            return await pg.prompts.ListPrompts(
                ppb.ListPromptsRequest(page_size=size, page_token=token)
            )

        prompts, got_sizes = await collect_pages(page, "prompts")
        assert [p.name for p in prompts] == expected, size
        assert got_sizes == sizes, size

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg.prompts.ListPrompts(ppb.ListPromptsRequest(page_token="garbage!"))
    assert caught.value.code() == INVALID


async def test_list_prompts_name_prefix(pg: Running) -> None:
    for name in ("team-a.one", "team-a.two", "team-b.one", "team_x", "teamXx", "other"):
        await new_prompt(pg, name)

    async def names(prefix: str, **fields: Any) -> list[str]:
        listed = await pg.prompts.ListPrompts(ppb.ListPromptsRequest(name_prefix=prefix, **fields))
        return [p.name for p in listed.prompts]

    assert await names("team-a.") == ["team-a.one", "team-a.two"]
    assert await names("team-") == ["team-a.one", "team-a.two", "team-b.one"]
    # '_' and '.' are literal characters, not wildcards.
    assert await names("team_") == ["team_x"]
    assert await names("team-a_") == []
    assert await names("nothing") == []
    assert await names("other") == ["other"]

    async def page(token: str) -> ppb.ListPromptsResponse:
        return await pg.prompts.ListPrompts(
            ppb.ListPromptsRequest(name_prefix="team-", page_size=2, page_token=token)
        )

    prompts, sizes = await collect_pages(page, "prompts")
    assert [p.name for p in prompts] == ["team-a.one", "team-a.two", "team-b.one"]
    assert sizes == [2, 1]


async def test_prompt_names_and_name_prefix_are_case_sensitive(pg: Running) -> None:
    lower = await new_prompt(pg, "casey")
    upper = await new_prompt(pg, "Casey")
    assert lower.id != upper.id
    got = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="Casey"))).prompt
    assert got.id == upper.id
    listed = await pg.prompts.ListPrompts(ppb.ListPromptsRequest(name_prefix="Cas"))
    assert [p.name for p in listed.prompts] == ["Casey"]
    listed = await pg.prompts.ListPrompts(ppb.ListPromptsRequest(name_prefix="cas"))
    assert [p.name for p in listed.prompts] == ["casey"]


async def test_archive_hides_and_blocks_execution_until_unarchived(pg: Running) -> None:
    for name in ("alpha", "bravo"):
        await new_prompt(pg, name)
    archived = (await pg.prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="demo"))).prompt
    assert archived.archived and archived.name == "demo" and archived.latest_version == 1

    listed = await pg.prompts.ListPrompts(ppb.ListPromptsRequest())
    assert [p.name for p in listed.prompts] == ["alpha", "bravo"]
    everything = await pg.prompts.ListPrompts(ppb.ListPromptsRequest(show_archived=True))
    assert [(p.name, p.archived) for p in everything.prompts] == [
        ("alpha", False),
        ("bravo", False),
        ("demo", True),
    ]
    # Still readable, with its versions and tags.
    got = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="demo"))).prompt
    assert got.archived and [t.tag for t in got.release_tags] == ["latest", "production"]
    version = await pg.prompts.GetPromptVersion(
        ppb.GetPromptVersionRequest(prompt="demo", version=1)
    )
    assert version.version.version == 1

    inputs = [pb.PromptInput(name="question", string_value="still there?")]
    info, _ = await rpc_error(
        pg.executions.ExecutePrompt(epb.ExecutePromptRequest(prompt="demo", inputs=inputs)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROMPT_ARCHIVED",
    )
    assert info.metadata["prompt"] == "demo"
    await rpc_error(
        pg.prompts.RenderPrompt(ppb.RenderPromptRequest(prompt="demo", inputs=inputs)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROMPT_ARCHIVED",
    )
    await rpc_error(
        pg.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(prompt="demo", version=simple_version())
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROMPT_ARCHIVED",
    )
    assert (
        await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="demo"))
    ).prompt.latest_version == 1
    executions = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
    assert list(executions.executions) == []

    restored = (await pg.prompts.UnarchivePrompt(ppb.UnarchivePromptRequest(prompt="demo"))).prompt
    assert not restored.archived and restored.id == archived.id
    response = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="demo", inputs=inputs)
    )
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    assert response.meta.prompt_version == 1 and response.meta.release_tag == "production"
    listed = await pg.prompts.ListPrompts(ppb.ListPromptsRequest())
    assert [p.name for p in listed.prompts] == ["alpha", "bravo", "demo"]
    assert (await add_version(pg, "demo", "new {{ q }}")).version == 2

    for call in (
        pg.prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="ghost")),
        pg.prompts.UnarchivePrompt(ppb.UnarchivePromptRequest(prompt="ghost")),
    ):
        await rpc_error(call, NOT_FOUND, "PROMPT_NOT_FOUND")


# RenderPrompt


DEMO_SYSTEM = "You are a concise assistant for {}."
DEMO_USER = "Answer in one sentence: {}"


def demo_render(question: str = "What is gRPC?", **fields: Any) -> ppb.RenderPromptRequest:
    inputs = [pb.PromptInput(name="question", string_value=question)]
    inputs.extend(fields.pop("extra_inputs", []))
    return ppb.RenderPromptRequest(prompt="demo", inputs=inputs, **fields)


async def test_render_demo_prompt(pg: Running) -> None:
    demo = (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt="demo"))).prompt
    demo_v1 = (
        await pg.prompts.GetPromptVersion(ppb.GetPromptVersionRequest(prompt="demo", version=1))
    ).version
    rendered = await pg.prompts.RenderPrompt(demo_render())
    assert [(m.role, m.content) for m in rendered.messages] == [
        (pb.MESSAGE_ROLE_SYSTEM, DEMO_SYSTEM.format("engineers")),
        (pb.MESSAGE_ROLE_USER, DEMO_USER.format("What is gRPC?")),
    ]
    assert (rendered.provider, rendered.model) == ("mock", "mock-1")
    assert (rendered.prompt_id, rendered.prompt_version_id, rendered.prompt_version) == (
        demo.id,
        demo_v1.id,
        1,
    )
    assert rendered.release_tag == "production"
    assert json_format.MessageToDict(rendered.provider_payload) == {
        "model": "mock-1",
        "messages": [
            {"role": "system", "content": DEMO_SYSTEM.format("engineers")},
            {"role": "user", "content": DEMO_USER.format("What is gRPC?")},
        ],
        "temperature": 0.2,
        "max_tokens": 200,
    }
    # Rendering executes nothing and records nothing.
    executions = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
    assert list(executions.executions) == []


async def test_render_with_inputs_overrides_and_model(pg: Running) -> None:
    rendered = await pg.prompts.RenderPrompt(
        demo_render(
            "Why?",
            extra_inputs=[pb.PromptInput(name="audience", string_value="lawyers")],
            parameters=pb.ModelParameters(temperature=0.9, max_tokens=50, top_p=0.5, stop=["END"]),
            model="mock-2",
        )
    )
    assert rendered.messages[0].content == DEMO_SYSTEM.format("lawyers")
    assert (rendered.provider, rendered.model) == ("mock", "mock-2")
    assert rendered.prompt_version == 1
    payload = json_format.MessageToDict(rendered.provider_payload)
    assert payload == {
        "model": "mock-2",
        "messages": [
            {"role": "system", "content": DEMO_SYSTEM.format("lawyers")},
            {"role": "user", "content": DEMO_USER.format("Why?")},
        ],
        "temperature": 0.9,
        "max_tokens": 50,
        "top_p": 0.5,
        "stop": ["END"],
    }
    # Only the overridden parameter changes; the others keep the version's defaults.
    partial = await pg.prompts.RenderPrompt(
        demo_render(parameters=pb.ModelParameters(max_tokens=7))
    )
    payload = json_format.MessageToDict(partial.provider_payload)
    assert (payload["temperature"], payload["max_tokens"], payload["model"]) == (0.2, 7, "mock-1")
    executions = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
    assert list(executions.executions) == []


async def test_render_errors(pg: Running) -> None:
    _, bad = await rpc_error(
        pg.prompts.RenderPrompt(ppb.RenderPromptRequest(prompt="demo")), INVALID, "INVALID_INPUT"
    )
    violation(bad, "inputs", "'question'")
    _, bad = await rpc_error(
        pg.prompts.RenderPrompt(
            ppb.RenderPromptRequest(
                prompt="demo", inputs=[pb.PromptInput(name="question", bool_value=True)]
            )
        ),
        INVALID,
        "INVALID_INPUT",
    )
    violation(bad, "inputs[0]", "BOOLEAN")
    await rpc_error(
        pg.prompts.RenderPrompt(demo_render(model="gpt-9-imaginary")), INVALID, "INVALID_MODEL"
    )
    await rpc_error(
        pg.prompts.RenderPrompt(demo_render(parameters=pb.ModelParameters(temperature=5))),
        INVALID,
        "INVALID_PARAMETERS",
    )
    await rpc_error(
        pg.prompts.RenderPrompt(ppb.RenderPromptRequest(prompt="ghost")),
        NOT_FOUND,
        "PROMPT_NOT_FOUND",
    )
    await rpc_error(pg.prompts.RenderPrompt(demo_render(version=5)), NOT_FOUND, "VERSION_NOT_FOUND")
    executions = await pg.executions.ListExecutions(epb.ListExecutionsRequest())
    assert list(executions.executions) == []


# Persistence


async def test_prompts_versions_and_tags_survive_a_restart(
    start_server: Callable[..., Awaitable[Running]], tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'restart' / 'promptgate.db'}"
    first = await start_server(database_url=url)
    assert first.server.settings.database_url == url
    prompt = await new_prompt(first, "durable", description="kept", labels={"k": "v"})
    sent = full_version()
    v1 = (
        await first.prompts.CreatePromptVersion(
            ppb.CreatePromptVersionRequest(
                prompt="durable", version=sent, release_tags=["production"]
            )
        )
    ).version
    await add_version(first, "durable", "two {{ q }}", tags=("staging",))
    await add_version(first, "durable", "three {{ q }}")
    await first.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="durable", tag="staging", version=3)
    )
    await new_prompt(first, "shelved")
    await first.prompts.ArchivePrompt(ppb.ArchivePromptRequest(prompt="shelved"))

    async def snapshot(running: Running) -> list[bytes]:
        prompts = running.prompts
        return [
            blob(await prompts.GetPrompt(ppb.GetPromptRequest(prompt="durable"))),
            blob(await prompts.ListPrompts(ppb.ListPromptsRequest(show_archived=True))),
            blob(await prompts.ListPromptVersions(ppb.ListPromptVersionsRequest(prompt="durable"))),
            blob(await prompts.ListReleaseTags(ppb.ListReleaseTagsRequest(prompt="durable"))),
            blob(
                await prompts.ListReleaseTagHistory(
                    ppb.ListReleaseTagHistoryRequest(prompt="durable")
                )
            ),
        ]

    before = await snapshot(first)
    await first.server.stop(grace=0)

    second = await start_server(database_url=first.server.settings.database_url)
    assert await snapshot(second) == before

    got = (await second.prompts.GetPrompt(ppb.GetPromptRequest(prompt=prompt.id))).prompt
    assert (got.name, got.description, dict(got.labels), got.latest_version) == (
        "durable",
        "kept",
        {"k": "v"},
        3,
    )
    assert {t: v for t, (v, _, _) in tags_of(got.release_tags).items()} == {
        "latest": 3,
        "production": 1,
        "staging": 3,
    }
    read_v1 = (
        await second.prompts.GetPromptVersion(
            ppb.GetPromptVersionRequest(prompt="durable", version=1)
        )
    ).version
    assert blob(read_v1) == blob(v1)
    assert list(read_v1.messages) == list(sent.messages)
    assert blob(read_v1.parameters) == blob(sent.parameters)
    history = await second.prompts.ListReleaseTagHistory(
        ppb.ListReleaseTagHistoryRequest(prompt="durable")
    )
    assert [(e.tag, e.version, e.previous_version) for e in history.events] == [
        ("staging", 3, 2),
        ("staging", 2, 0),
        ("production", 1, 0),
    ]
    listed = await second.prompts.ListPrompts(ppb.ListPromptsRequest())
    assert [p.name for p in listed.prompts] == ["demo", "durable"], "archived stays hidden"

    # Numbering continues after the restart, and the tags still resolve for execution.
    assert (await add_version(second, "durable", "four {{ q }}")).version == 4
    response = await second.executions.ExecutePrompt(
        epb.ExecutePromptRequest(prompt="durable", inputs=q("hi"), release_tag="staging")
    )
    assert (response.meta.prompt_version, response.outputs[0].string_value) == (
        3,
        "Mock reply to: three hi",
    )
