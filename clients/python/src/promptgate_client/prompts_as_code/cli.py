"""``promptgate prompts push|pull DIR``: prompts as code, over gRPC with an API key.

    promptgate prompts push DIR [--dry-run] [--allow-breaking-changes]
    promptgate prompts pull DIR [--prompt NAME ...] [--tag TAG]

Both take --address (PROMPTGATE_ADDRESS, default localhost:50051), --api-key
(PROMPTGATE_API_KEY), --tls or --insecure (the default), --ca-file and
--timeout. ``python -m promptgate_client.prompts_as_code push|pull ...`` is
the same command.

Exit status: 0 done (or, with --dry-run, nothing would break); 1 something
would break or was refused, or the server failed; 2 bad files or usage.

This package also installs a ``promptgate`` command: ``main`` runs
``prompts`` here and hands every other command to the server package's CLI
when it is installed (which hands ``prompts`` back here), so both
``promptgate`` scripts behave the same whichever was installed last.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from promptgate_client._errors import StatusError
from promptgate_client._sync import Client
from promptgate_client.prompts_as_code.files import FolderError, read_folder
from promptgate_client.prompts_as_code.plan import (
    CREATE,
    NEW_VERSION,
    PromptPlan,
    apply_push,
    plan_push,
)
from promptgate_client.prompts_as_code.pull import pull
from promptgate_client.v1 import prompt_service_pb2 as ppb

DEFAULT_ADDRESS = "localhost:50051"
INDENT = " " * 11


def parser(prog: str = "promptgate prompts") -> argparse.ArgumentParser:
    """The ``promptgate prompts`` argument parser."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=os.environ.get("PROMPTGATE_ADDRESS", DEFAULT_ADDRESS),
        help="the server, host:port (env PROMPTGATE_ADDRESS; default %(default)s)",
    )
    group.add_argument(
        "--api-key",
        default=os.environ.get("PROMPTGATE_API_KEY", ""),
        help="an API key with the template.manage scope (env PROMPTGATE_API_KEY)",
    )
    security = group.add_mutually_exclusive_group()
    security.add_argument("--tls", action="store_true", help="connect with TLS")
    security.add_argument(
        "--insecure", action="store_true", help="connect without TLS (the default)"
    )
    group.add_argument("--ca-file", help="PEM root certificates for TLS (implies --tls)")
    group.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per call (default %(default)s)"
    )
    result = argparse.ArgumentParser(
        prog=prog, description="Push prompt files to a promptgate server, or pull them."
    )
    commands = result.add_subparsers(dest="command", required=True)
    push = commands.add_parser(
        "push",
        parents=[connection],
        help="create prompts, versions and tag moves from DIR/prompts/*.yaml",
    )
    push.add_argument("dir", type=Path, help="the folder holding prompts/")
    push.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    push.add_argument(
        "--allow-breaking-changes",
        action="store_true",
        help="move tags even when the new version breaks their callers",
    )
    pull_command = commands.add_parser(
        "pull", parents=[connection], help="write DIR/prompts/<name>.yaml for each prompt"
    )
    pull_command.add_argument("dir", type=Path, help="the folder to write prompts/ into")
    pull_command.add_argument(
        "--prompt", action="append", default=[], help="only this prompt (repeat for several)"
    )
    pull_command.add_argument(
        "--tag", default="", help="the version this release tag points at (default: the latest)"
    )
    return result


def prompts_main(argv: Sequence[str] | None = None, prog: str = "promptgate prompts") -> int:
    """Run ``promptgate prompts`` with ``argv`` (after the word "prompts")."""
    args = parser(prog).parse_args(argv)
    try:
        if args.command == "push":
            return _push(args)
        return _pull(args)
    except StatusError as exc:
        print(f"promptgate prompts: {exc!s}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"promptgate prompts: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """The ``promptgate`` command of the client package (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["prompts"]:
        return prompts_main(args[1:])
    try:
        from promptgate.cli import main as server_main
    except ImportError as exc:
        if exc.name not in ("promptgate", "promptgate.cli"):
            raise  # the server package is there but broken: show why
        return _client_only(args)
    return server_main(args)


def _client_only(args: list[str]) -> int:
    usage = (
        "usage: promptgate prompts {push,pull} DIR [options]\n\n"
        "This installation has the promptgate client only: it runs `promptgate prompts`\n"
        "(push and pull prompt files over gRPC; see `promptgate prompts --help`).\n"
        "`promptgate serve`, `workspaces` and `keys` need the promptgate server package."
    )
    if args[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    print(usage, file=sys.stderr)
    return 2


def _client(args: argparse.Namespace) -> Client:
    credentials = None
    if args.tls or args.ca_file:
        roots = Path(args.ca_file).read_bytes() if args.ca_file else None
        credentials = grpc.ssl_channel_credentials(roots)
    return Client(
        args.address,
        api_key=args.api_key or None,
        timeout=args.timeout,
        credentials=credentials,
    )


def _push(args: argparse.Namespace) -> int:
    try:
        files = read_folder(args.dir)
    except FolderError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("nothing was pushed: fix the files above", file=sys.stderr)
        return 2
    allow = args.allow_breaking_changes
    with _client(args) as client:
        plans = plan_push(client, files)
        for line in plan_lines(plans, allow_breaking_changes=allow):
            print(line)
        print(summary(plans))
        errors = [p for p in plans if p.error is not None]
        refused = [p for p in plans if p.breaking and not allow]
        if args.dry_run:
            print("dry run: nothing was written")
            return 1 if errors or refused else 0
        if errors or refused:
            why = "errors" if errors else "breaking changes (--allow-breaking-changes to push them)"
            print(f"nothing was pushed: {why}", file=sys.stderr)
            return 1
        if not any(p.changes for p in plans):
            print("up to date: nothing to push")
            return 0
        try:
            for line in apply_push(client, plans, allow_breaking_changes=allow):
                print(line)
        except StatusError as exc:
            print(f"push stopped: {exc!s}", file=sys.stderr)
            return 1
    return 0


def _pull(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for result in pull(client, args.dir, names=args.prompt, tag=args.tag):
            if result.path is None:
                print(f"skipped {result.name}: {result.skipped}")
            else:
                print(f"pulled  {result.name} version {result.version} -> {result.path}")
    return 0


def plan_lines(plans: Sequence[PromptPlan], *, allow_breaking_changes: bool) -> list[str]:
    """The plan, one line per action, with indented lines per breaking change."""
    lines: list[str] = []
    for plan in plans:
        name = plan.file.name
        if plan.error is not None:
            lines.append(f"{'error':<10} {name} ({plan.file.path}): {plan.error!s}")
            lines.extend(f"{INDENT}{v.field}: {v.description}" for v in plan.error.violations)
            continue
        if plan.action == CREATE:
            lines.append(f"{'create':<10} {name}: new prompt, version 1")
        elif plan.action == NEW_VERSION:
            lines.append(f"{'version':<10} {name}: new version {plan.version}{_report(plan)}")
            report = plan.compatibility
            # Listed here unless a move of that tag lists them below.
            if report is not None and all(m.tag != report.release_tag for m in plan.moves):
                lines.extend(
                    f"{INDENT}{_short(c.type)} {c.variable}: {c.description}"
                    for c in report.breaking_changes
                )
        else:
            lines.append(f"{'unchanged':<10} {name}: version {plan.version}")
        for move in plan.moves:
            where = (
                f"{move.tag} v{move.from_version} -> v{plan.version}"
                if move.from_version
                else f"{move.tag} -> v{plan.version} (new tag)"
            )
            if move.ends_split:
                where += " (ends its A/B split)"
            if move.breaking and not allow_breaking_changes:
                lines.append(
                    f"{'BREAKING':<10} {name}: {where} refused "
                    "(--allow-breaking-changes to move it)"
                )
            elif move.breaking:
                lines.append(f"{'tag':<10} {name}: {where} (breaking changes allowed)")
            else:
                lines.append(f"{'tag':<10} {name}: {where}")
            lines.extend(f"{INDENT}{v.type} {v.subject}: {v.description}" for v in move.breaking)
        lines.extend(f"{'note':<10} {name}: {note}" for note in plan.notes)
    return lines


def summary(plans: Sequence[PromptPlan]) -> str:
    """One line of counts."""
    count = {
        kind: sum(p.action == kind and p.error is None for p in plans)
        for kind in (CREATE, NEW_VERSION)
    }
    unchanged = sum(not p.changes and p.error is None for p in plans)
    moves = sum(len(p.moves) for p in plans if p.error is None)
    breaking = sum(bool(m.breaking) for p in plans if p.error is None for m in p.moves)
    errors = sum(p.error is not None for p in plans)
    parts = [
        f"{count[CREATE]} to create",
        _count(count[NEW_VERSION], "new version"),
        f"{_count(moves, 'tag move')} ({breaking} breaking)",
        f"{unchanged} up to date",
    ]
    if errors:
        parts.append(_count(errors, "error"))
    return "plan: " + ", ".join(parts)


def _report(plan: PromptPlan) -> str:
    report = plan.compatibility
    if report is None:
        return ""
    served = ", ".join(f"v{n}" for n in report.versions)
    if report.compatible:
        return f" (compatible with {report.release_tag} {served})"
    count = _count(len(report.breaking_changes), "breaking change")
    return f" (breaks callers of {report.release_tag} {served}: {count})"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _short(kind: ppb.BreakingChangeType.ValueType) -> str:
    return ppb.BreakingChangeType.Name(kind).removeprefix("BREAKING_CHANGE_TYPE_")
