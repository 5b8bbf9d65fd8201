"""Prompts as code: ``promptgate prompts push|pull DIR`` against a real server.

The command runs in-process (in a thread: the server runs on the test's event
loop) or as a subprocess, talking gRPC with the dev API key like any client.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from promptgate.api.v1 import common_pb2 as pb
from promptgate.api.v1 import execution_service_pb2 as epb
from promptgate.api.v1 import prompt_service_pb2 as ppb
from promptgate.cli import main as server_main
from promptgate_client.prompts_as_code.cli import main as client_main
from promptgate_client.prompts_as_code.cli import prompts_main
from tests.conftest import Running

GREET = """\
description: Greets people
labels: {team: growth}
tags: [production, staging]
model: mock-1
provider: mock
parameters:
  temperature: 0.2
  max_tokens: 100
variables:
  - name: person
    type: string
    description: Who to greet
  - name: tone
    type: string
    default: warm
messages:
  - role: system
    template: |
      You greet people.
      Be {{ tone }}.
  - role: user
    template: "Greet {{ person }}"
"""

TRIAGE = """\
name: support.triage
model: mock-1
version_description: first cut
tags: [production]
variables:
  - {name: history, type: chat_history}
  - {name: ticket, type: string}
  - {name: limits, type: json, default: {max: 3, tags: [a, b]}}
  - {name: urgent, type: boolean, default: false}
  - {name: score, type: number, default: 0.5}
messages:
  - role: system
    template: "Triage. Limits: {{ limits }} urgent={{ urgent }} score={{ score }}"
  - chat_history_input: history
  - role: user
    template: "{{ ticket }}"
parameters:
  temperature: 0
  stop: [END]
  seed: 7
  extra: {mock: {chunks: 2}}
response_format:
  type: json_schema
  schema_name: triage
  strict: true
  json_schema:
    type: object
    properties: {queue: {type: string}}
    required: [queue]
tools:
  - name: lookup_order
    description: Finds an order
    parameters: {type: object, properties: {id: {type: string}}}
tool_choice: {mode: auto}
routing:
  strategy: fallback
  targets:
    - {model: mock-1}
    - {model: mock-2, weight: 2}
  retry: {max_attempts: 2, initial_backoff: 0.25s}
  attempt_timeout: 10s
cache: {mode: enabled, ttl: 300s}
"""


@dataclass
class Result:
    code: int
    out: str
    err: str


def folder(root: Path, **files: str) -> Path:
    """``root`` with ``prompts/<name>.yaml`` for each keyword (``_`` in names is ``.``)."""
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / "prompts" / f"{name.replace('__', '.')}.yaml").write_text(text)
    return root


def connection(pg: Running) -> list[str]:
    return ["--address", pg.address, "--api-key", pg.key]


async def run(
    pg: Running, *argv: str | Path, entry: Callable[[list[str]], int] | None = None
) -> Result:
    """``promptgate prompts ARGV`` in-process, in a thread; its exit code and output."""
    args = [str(a) for a in argv]
    command = args[0]
    full = [command, *connection(pg), *args[1:]]

    def invoke() -> int:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry(["prompts", *full]) if entry else prompts_main(full)
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
        outputs.extend([out.getvalue(), err.getvalue()])
        return code

    outputs: list[str] = []
    code = await asyncio.to_thread(invoke)
    return Result(code, outputs[0], outputs[1])


async def prompt(pg: Running, name: str) -> ppb.Prompt:
    return (await pg.prompts.GetPrompt(ppb.GetPromptRequest(prompt=name))).prompt


async def tags(pg: Running, name: str) -> dict[str, int]:
    return {t.tag: t.version for t in (await prompt(pg, name)).release_tags if not t.automatic}


async def version(pg: Running, name: str, number: int) -> ppb.PromptVersion:
    request = ppb.GetPromptVersionRequest(prompt=name, version=number)
    return (await pg.prompts.GetPromptVersion(request)).version


async def moves(pg: Running, name: str) -> int:
    request = ppb.ListReleaseTagHistoryRequest(prompt=name, page_size=1000)
    return len((await pg.prompts.ListReleaseTagHistory(request)).events)


async def missing(pg: Running, name: str) -> bool:
    try:
        await prompt(pg, name)
    except grpc.aio.AioRpcError as err:
        return err.code() == grpc.StatusCode.NOT_FOUND
    return False


# Push


async def test_push_creates_prompts_with_their_versions_and_tags(
    pg: Running, tmp_path: Path
) -> None:
    root = folder(tmp_path, greet=GREET, support__triage=TRIAGE)
    result = await run(pg, "push", root)
    assert result.code == 0, result
    assert "create     greet: new prompt, version 1" in result.out
    assert "tag        greet: production -> v1 (new tag)" in result.out
    assert "created support.triage version 1" in result.out
    greet = await prompt(pg, "greet")
    assert (greet.latest_version, greet.description, dict(greet.labels)) == (
        1,
        "Greets people",
        {"team": "growth"},
    )
    assert await tags(pg, "greet") == {"production": 1, "staging": 1}
    stored = await version(pg, "greet", 1)
    assert stored.messages[0].template == "You greet people.\nBe {{ tone }}.\n"
    assert [(v.name, v.HasField("default_value")) for v in stored.input_variables] == [
        ("person", False),
        ("tone", True),
    ]
    assert stored.parameters.temperature == pytest.approx(0.2)
    triage = await version(pg, "support.triage", 1)
    assert triage.description == "first cut"
    assert triage.response_format.type == pb.ResponseFormat.TYPE_JSON_SCHEMA
    assert [t.model for t in triage.routing.targets] == ["mock-1", "mock-2"]
    assert triage.routing.retry.initial_backoff.nanos == 250_000_000
    assert triage.cache.ttl.seconds == 300
    assert triage.input_variables[2].default_value.struct_value["max"] == 3
    # The pushed prompt runs.
    response = await pg.executions.ExecutePrompt(
        epb.ExecutePromptRequest(
            prompt="greet", inputs=[pb.PromptInput(name="person", string_value="Ada")]
        )
    )
    assert response.state == pb.EXECUTION_STATE_FULFILLED
    assert response.meta.prompt_version == 1


async def test_re_push_of_unchanged_files_changes_nothing(pg: Running, tmp_path: Path) -> None:
    root = folder(tmp_path, greet=GREET, support__triage=TRIAGE)
    assert (await run(pg, "push", root)).code == 0
    history = await moves(pg, "greet")
    again = await run(pg, "push", root)
    assert again.code == 0, again
    assert "unchanged  greet: version 1" in again.out
    assert "unchanged  support.triage: version 1" in again.out
    assert "up to date: nothing to push" in again.out
    assert (await prompt(pg, "greet")).latest_version == 1
    assert (await prompt(pg, "support.triage")).latest_version == 1
    assert await moves(pg, "greet") == history


async def test_an_edit_makes_a_new_version_and_moves_the_tags(pg: Running, tmp_path: Path) -> None:
    root = folder(tmp_path, greet=GREET)
    assert (await run(pg, "push", root)).code == 0
    # staging moves by hand; the file's tags bring it back with the new version.
    folder(root, greet=GREET.replace("Greet {{ person }}", "Say hello to {{ person }}"))
    result = await run(pg, "push", root)
    assert result.code == 0, result
    assert "version    greet: new version 2 (compatible with production v1)" in result.out
    assert "tag        greet: production v1 -> v2" in result.out
    assert "tag        greet: staging v1 -> v2" in result.out
    assert (await prompt(pg, "greet")).latest_version == 2
    assert await tags(pg, "greet") == {"production": 2, "staging": 2}
    assert (await version(pg, "greet", 2)).messages[1].template == "Say hello to {{ person }}"
    # A tag added to an unchanged file only moves that tag.
    folder(
        root,
        greet=GREET.replace("Greet {{ person }}", "Say hello to {{ person }}").replace(
            "tags: [production, staging]", "tags: [production, staging, canary]"
        ),
    )
    added = await run(pg, "push", root)
    assert "unchanged  greet: version 2" in added.out
    assert "tag        greet: canary -> v2 (new tag)" in added.out
    assert (await prompt(pg, "greet")).latest_version == 2
    assert (await tags(pg, "greet"))["canary"] == 2


async def test_dry_run_prints_the_plan_and_writes_nothing(pg: Running, tmp_path: Path) -> None:
    root = folder(tmp_path, greet=GREET)
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    assert "create     greet: new prompt, version 1" in planned.out
    assert "dry run: nothing was written" in planned.out
    assert await missing(pg, "greet")
    assert (await run(pg, "push", root)).code == 0
    history = await moves(pg, "greet")
    folder(root, greet=GREET.replace("default: warm", "default: kind"))
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 0, planned
    assert "version    greet: new version 2 (compatible with production v1)" in planned.out
    assert "tag        greet: production v1 -> v2" in planned.out
    assert "plan: 0 to create, 1 new version, 2 tag moves (0 breaking), 0 up to date" in (
        planned.out
    )
    assert (await prompt(pg, "greet")).latest_version == 1
    assert await moves(pg, "greet") == history


BREAKING_EDITS = {
    # kind: (the edit to GREET, the violation type, the variable)
    "removed": (
        ("  - name: person\n    type: string\n    description: Who to greet\n", ""),
        "VARIABLE_REMOVED",
        "person",
    ),
    "type changed": (
        ("    type: string\n    default: warm", "    type: json\n    default: warm"),
        "VARIABLE_TYPE_CHANGED",
        "tone",
    ),
    "now required": (("    default: warm\n", ""), "VARIABLE_NOW_REQUIRED", "tone"),
}


@pytest.mark.parametrize("kind", list(BREAKING_EDITS))
async def test_a_breaking_change_fails_the_dry_run_and_the_push_unless_allowed(
    pg: Running, tmp_path: Path, kind: str
) -> None:
    (old, new), change, variable = BREAKING_EDITS[kind]
    root = folder(tmp_path, greet=GREET)
    assert (await run(pg, "push", root)).code == 0
    edited = GREET.replace(old, new).replace("{{ person }}", "someone")
    assert edited != GREET
    folder(root, greet=edited)
    planned = await run(pg, "push", root, "--dry-run")
    assert planned.code == 1, planned
    assert "BREAKING   greet: production v1 -> v2 refused" in planned.out
    assert "BREAKING   greet: staging v1 -> v2 refused" in planned.out
    assert f"{change} {variable}: release tag 'production'" in planned.out
    assert "(breaks callers of production v1: 1 breaking change)" in planned.out
    refused = await run(pg, "push", root)
    assert refused.code == 1
    assert "nothing was pushed: breaking changes" in refused.err
    assert (await prompt(pg, "greet")).latest_version == 1
    assert await tags(pg, "greet") == {"production": 1, "staging": 1}
    allowed = await run(pg, "push", root, "--allow-breaking-changes")
    assert allowed.code == 0, allowed
    assert "tag        greet: production v1 -> v2 (breaking changes allowed)" in allowed.out
    assert await tags(pg, "greet") == {"production": 2, "staging": 2}


async def test_a_version_the_server_refuses_fails_the_whole_push(
    pg: Running, tmp_path: Path
) -> None:
    root = folder(tmp_path, greet=GREET, support__triage=TRIAGE)
    assert (await run(pg, "push", root)).code == 0
    folder(
        root,
        greet=GREET.replace("Greet {{ person }}", "Greet {{ nobody }}"),
        support__triage=TRIAGE.replace("first cut", "second cut"),
    )
    result = await run(pg, "push", root)
    assert result.code == 1
    assert "error      greet" in result.out and "INVALID_PROMPT" in result.out
    assert "uses undeclared variable 'nobody'" in result.out
    assert "version    support.triage: new version 2" in result.out
    assert (await prompt(pg, "support.triage")).latest_version == 1, "nothing was pushed"


async def test_a_new_prompt_the_server_refuses_is_caught_by_the_plan(
    pg: Running, tmp_path: Path
) -> None:
    root = folder(tmp_path, greet=GREET.replace("Greet {{ person }}", "Greet {{ nobody }}"))
    for extra in (["--dry-run"], []):
        result = await run(pg, "push", root, *extra)
        assert result.code == 1, result
        assert (
            "error      greet" in result.out and "uses undeclared variable 'nobody'" in result.out
        )
    assert await missing(pg, "greet")


async def test_a_split_tag_stays_unless_the_file_moves_it(pg: Running, tmp_path: Path) -> None:
    only_production = GREET.replace("[production, staging]", "[production]")
    root = folder(tmp_path, greet=only_production)
    assert (await run(pg, "push", root)).code == 0
    second = ppb.PromptVersion()
    second.CopyFrom(await version(pg, "greet", 1))
    second.messages[1].template = "Hi {{ person }}"
    await pg.prompts.CreatePromptVersion(
        ppb.CreatePromptVersionRequest(prompt="greet", version=second)
    )
    weights = [ppb.VersionWeight(version=1, weight=1), ppb.VersionWeight(version=2, weight=1)]
    await pg.prompts.SetReleaseTag(
        ppb.SetReleaseTagRequest(prompt="greet", tag="production", splits=weights)
    )
    # The file is version 1, production's control: nothing to do, the split stays.
    same = await run(pg, "push", root)
    assert "unchanged  greet: version 1" in same.out and "up to date" in same.out
    tagged = {t.tag: t for t in (await prompt(pg, "greet")).release_tags}
    assert tagged["production"].HasField("split")
    folder(root, greet=only_production.replace("Greet {{ person }}", "Welcome {{ person }}"))
    moved = await run(pg, "push", root)
    assert moved.code == 0, moved
    assert "tag        greet: production v1 -> v3 (ends its A/B split)" in moved.out
    production = next(t for t in (await prompt(pg, "greet")).release_tags if t.tag == "production")
    assert production.version == 3 and not production.HasField("split")


async def test_newer_partials_make_a_new_version_that_pins_them(
    pg: Running, tmp_path: Path
) -> None:
    await pg.prompts.CreatePartial(ppb.CreatePartialRequest(name="footer", content="Thanks."))
    text = GREET.replace("Greet {{ person }}", "Greet {{ person }}. {% include 'footer' %}")
    root = folder(tmp_path / "repo", greet=text)
    assert (await run(pg, "push", root)).code == 0
    assert dict((await version(pg, "greet", 1)).partials) == {"footer": 1}
    pulled = tmp_path / "pulled"
    assert (await run(pg, "pull", pulled, "--prompt", "greet")).code == 0
    assert "partials" not in (pulled / "prompts" / "greet.yaml").read_text()
    assert "up to date" in (await run(pg, "push", pulled)).out
    await pg.prompts.CreatePartialVersion(
        ppb.CreatePartialVersionRequest(partial="footer", content="Thank you.")
    )
    # The repo has no partial files: the same prompt file pins the newer version.
    result = await run(pg, "push", root)
    assert result.code == 0, result
    assert "version    greet: new version 2" in result.out
    assert (
        "note       greet: same content as version 1; newer partial versions: footer v1 -> v2"
        in (result.out)
    )
    assert dict((await version(pg, "greet", 2)).partials) == {"footer": 2}
    assert await tags(pg, "greet") == {"production": 2, "staging": 2}
    assert "up to date" in (await run(pg, "push", root)).out


BAD_FILES = {
    "yaml syntax": ("model: [mock-1\n", "invalid YAML: line"),
    "unknown key": (GREET + "modle: mock-2\n", "modle: unknown key"),
    "proto name of a renamed key": (
        GREET.replace("variables:", "input_variables:"),
        "input_variables: unknown key (did you mean 'variables'?)",
    ),
    "list expected": (
        GREET.replace("messages:\n", "messages: hello\nx:\n"),
        "messages: expected a list",
    ),
    "wrong scalar type": (
        GREET.replace("max_tokens: 100", "max_tokens: many"),
        "parameters.max_tokens: expected an integer",
    ),
    "unknown enum name": (
        GREET.replace("role: system", "role: robot"),
        "messages[0].role: expected one of: system, user, assistant, tool",
    ),
    "name differs": ("name: other\n" + GREET, "name: 'other' differs from the file name 'greet'"),
    "key twice": (GREET + "model: mock-2\n", "found the key 'model' twice"),
    "latest tag": (GREET.replace("[production, staging]", "[latest]"), "tags:"),
    "output-only field": (GREET + "partials: {footer: 1}\n", "partials: unknown key"),
    "not a mapping": ("- a\n- b\n", "expected a mapping"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
async def test_a_bad_file_is_named_and_nothing_is_written(
    pg: Running, tmp_path: Path, kind: str
) -> None:
    text, words = BAD_FILES[kind]
    root = folder(tmp_path, greet=text, fine=GREET)
    for extra in ([], ["--dry-run"]):
        result = await run(pg, "push", root, *extra)
        assert result.code == 2, result
        bad = root / "prompts" / "greet.yaml"
        assert f"{bad}: " in result.err
        assert words in result.err, result.err
        assert "nothing was pushed" in result.err
    assert await missing(pg, "fine")


async def test_folder_layout_errors(pg: Running, tmp_path: Path) -> None:
    root = folder(tmp_path, greet=GREET)
    (root / "partials").mkdir()
    (root / "partials" / "footer.yaml").write_text("template: bye\n")
    (root / "chains").mkdir()
    (root / "chains" / "flow.yaml").write_text("stepz: []\n")
    (root / "stray.yaml").write_text("model: mock-1\n")
    (root / "README.md").write_text("ignored\n")
    (root / ".github").mkdir()
    (root / ".github" / "ci.yml").write_text("ignored: true\n")
    (root / "prompt").mkdir()
    (root / "prompt" / "typo.yaml").write_text(GREET)
    (root / "prompts" / "team").mkdir()
    (root / "prompts" / "team" / "nested.yaml").write_text(GREET)
    result = await run(pg, "push", root)
    assert result.code == 2
    assert f"{root / 'prompt'}: unknown folder of prompt, partial or chain files" in result.err
    assert f"{root / 'prompts' / 'team' / 'nested.yaml'}: nested folders" in result.err
    assert ".github" not in result.err and "README" not in result.err
    assert f"{root / 'partials' / 'footer.yaml'}: template: unknown key" in result.err
    assert f"{root / 'chains' / 'flow.yaml'}: stepz: unknown key" in result.err
    assert f"{root / 'stray.yaml'}: prompt files go in" in result.err
    assert await missing(pg, "greet")


async def test_a_bad_api_key_is_reported(pg: Running, tmp_path: Path) -> None:
    root = folder(tmp_path, greet=GREET)
    result = await run(pg, "push", root, "--api-key", "pgk_wrong")
    assert result.code == 1
    assert "UNAUTHENTICATED" in result.err


# Pull


async def test_pull_then_push_is_a_no_op(pg: Running, tmp_path: Path) -> None:
    source = folder(tmp_path / "source", greet=GREET, support__triage=TRIAGE)
    assert (await run(pg, "push", source)).code == 0
    pulled = tmp_path / "pulled"
    result = await run(pg, "pull", pulled)
    assert result.code == 0, result
    names = sorted(p.name for p in (pulled / "prompts").iterdir())
    assert names == ["demo.yaml", "greet.yaml", "support.triage.yaml"]
    text = (pulled / "prompts" / "greet.yaml").read_text()
    assert text.startswith("name: greet\ndescription: Greets people\n")
    assert "tags:\n  - production\n  - staging\n" in text
    assert "    template: |\n      You greet people.\n      Be {{ tone }}.\n" in text
    triage = (pulled / "prompts" / "support.triage.yaml").read_text()
    assert "attempt_timeout: 10s" in triage and "type: json_schema" in triage
    assert "version_description: first cut" in triage
    versions = {
        n: (await prompt(pg, n)).latest_version for n in ("demo", "greet", "support.triage")
    }
    history = await moves(pg, "greet")
    again = await run(pg, "push", pulled)
    assert again.code == 0, again
    assert "up to date: nothing to push" in again.out
    assert "note" not in again.out
    assert {n: (await prompt(pg, n)).latest_version for n in versions} == versions
    assert await moves(pg, "greet") == history
    # Pulling again writes the same bytes.
    before = {p.name: p.read_bytes() for p in (pulled / "prompts").iterdir()}
    assert (await run(pg, "pull", pulled)).code == 0
    assert {p.name: p.read_bytes() for p in (pulled / "prompts").iterdir()} == before


async def test_pull_by_tag_and_by_prompt(pg: Running, tmp_path: Path) -> None:
    root = folder(tmp_path / "source", greet=GREET.replace("[production, staging]", "[production]"))
    assert (await run(pg, "push", root)).code == 0
    folder(
        root, greet=GREET.replace("Greet", "Hello").replace("[production, staging]", "[staging]")
    )
    assert (await run(pg, "push", root)).code == 0
    assert await tags(pg, "greet") == {"production": 1, "staging": 2}
    pulled = tmp_path / "pulled"
    result = await run(pg, "pull", pulled, "--prompt", "greet", "--tag", "production")
    assert result.code == 0, result
    assert "pulled  greet version 1" in result.out
    assert [p.name for p in (pulled / "prompts").iterdir()] == ["greet.yaml"]
    text = (pulled / "prompts" / "greet.yaml").read_text()
    assert "Greet {{ person }}" in text and "tags:\n  - production\n" in text
    # The file matches what production serves: pushing it changes nothing.
    again = await run(pg, "push", pulled)
    assert "unchanged  greet: version 1" in again.out and "up to date" in again.out
    assert (await prompt(pg, "greet")).latest_version == 2
    skipped = await run(pg, "pull", pulled, "--tag", "canary")
    assert "skipped demo: no release tag 'canary'" in skipped.out


# Entry points


async def test_both_promptgate_entry_points_run_prompts(pg: Running, tmp_path: Path) -> None:
    root = folder(tmp_path, greet=GREET)
    by_server = await run(pg, "push", root, "--dry-run", entry=server_main)
    by_client = await run(pg, "push", root, "--dry-run", entry=client_main)
    assert by_server.code == by_client.code == 0
    assert by_server.out == by_client.out
    assert "create     greet" in by_server.out


async def subprocess_run(*args: str, env: dict[str, str] | None = None) -> Result:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


# Runs a module with the server package made unimportable: a client-only install.
CLIENT_ONLY = """
import runpy, sys
sys.modules["promptgate"] = None
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


async def test_the_command_works_with_the_client_package_only(pg: Running, tmp_path: Path) -> None:
    root = folder(tmp_path / "repo", greet=GREET)
    module = "promptgate_client.prompts_as_code"
    env = {"PROMPTGATE_ADDRESS": pg.address, "PROMPTGATE_API_KEY": pg.key}
    pushed = await subprocess_run(
        sys.executable, "-c", CLIENT_ONLY, module, "push", str(root), env=env
    )
    assert pushed.code == 0, pushed
    assert "created greet version 1" in pushed.out
    assert (await prompt(pg, "greet")).latest_version == 1
    pulled = await subprocess_run(
        sys.executable, "-c", CLIENT_ONLY, module, "pull", str(tmp_path / "out"), env=env
    )
    assert pulled.code == 0, pulled
    assert (tmp_path / "out" / "prompts" / "greet.yaml").is_file()
    # The client's `promptgate` script without the server: prompts work, serve explains.
    script = "from promptgate_client.prompts_as_code.cli import main; raise SystemExit(main())"
    entry = CLIENT_ONLY.replace(
        'runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)', script
    )
    serve = await subprocess_run(sys.executable, "-c", entry, "promptgate", "serve")
    assert serve.code == 2
    assert "need the promptgate server package" in serve.err
    planned = await subprocess_run(
        sys.executable,
        "-c",
        entry,
        "promptgate",
        "prompts",
        "push",
        str(root),
        "--dry-run",
        env=env,
    )
    assert planned.code == 0, planned
    assert "unchanged  greet: version 1" in planned.out


async def test_the_installed_promptgate_script_runs_prompts(pg: Running, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "promptgate"
    root = folder(tmp_path, greet=GREET)
    result = await subprocess_run(
        str(script), "prompts", "push", str(root), "--dry-run", *connection(pg)
    )
    assert result.code == 0, result
    assert "create     greet: new prompt, version 1" in result.out
    helped = await subprocess_run(str(script), "--help")
    assert "prompts" in helped.out and "serve" in helped.out
