"""``promptgate prompts push|pull DIR``: prompts as code, over gRPC with an API key.

    promptgate prompts push DIR [--dry-run] [--allow-breaking-changes]
    promptgate prompts pull DIR [--prompt NAME ...] [--chain NAME ...] [--tag TAG]

Push plans every partial, prompt and chain file, prints the plan, and (unless
--dry-run, and only when nothing is refused) pushes the partials, checks the
prompts that include changed partials again, pushes the prompts, checks the
chains that make versions again, then pushes the chains. Pull writes prompts,
the partials they need and chains (with the prompts their steps name).

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
from promptgate_client.prompts_as_code import chain_plan
from promptgate_client.prompts_as_code.chain_plan import (
    ChainPlan,
    apply_chains,
    plan_chains,
    prompt_changes,
)
from promptgate_client.prompts_as_code.folder import read_folder
from promptgate_client.prompts_as_code.partial_plan import (
    apply_partials,
    changes,
    plan_partials,
)
from promptgate_client.prompts_as_code.plan import (
    PromptPlan,
    apply_push,
    plan_push,
    recheck,
)
from promptgate_client.prompts_as_code.pull import PROMPT, pull
from promptgate_client.prompts_as_code.report import (
    chain_lines,
    partial_lines,
    plan_lines,
    summary,
)
from promptgate_client.prompts_as_code.yaml_text import FolderError

DEFAULT_ADDRESS = "localhost:50051"


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
        help="create partials, prompts, chains, versions and tag moves from DIR/partials/, "
        "DIR/prompts/ and DIR/chains/",
    )
    push.add_argument("dir", type=Path, help="the folder holding prompts/, partials/ and chains/")
    push.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    push.add_argument(
        "--allow-breaking-changes",
        action="store_true",
        help="move tags even when the new version breaks their callers",
    )
    pull_command = commands.add_parser(
        "pull",
        parents=[connection],
        help="write DIR/prompts/<name>.yaml for each prompt, DIR/partials/<name>.yaml for "
        "each partial, DIR/chains/<name>.yaml for each chain",
    )
    pull_command.add_argument(
        "dir", type=Path, help="the folder to write prompts/, partials/ and chains/ into"
    )
    pull_command.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="only this prompt, and the partials it includes (repeat for several)",
    )
    pull_command.add_argument(
        "--chain",
        action="append",
        default=[],
        help="only this chain, and the prompts its steps name (repeat for several)",
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
        folder = read_folder(args.dir)
    except FolderError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("nothing was pushed: fix the files above", file=sys.stderr)
        return 2
    allow = args.allow_breaking_changes
    with _client(args) as client:
        partials = plan_partials(client, folder.partials)
        changed = changes(partials)
        plans = plan_push(client, folder.prompts, changed)
        chains = plan_chains(client, folder.chains, prompt_changes(plans))
        lines = partial_lines(partials) + plan_lines(plans, allow_breaking_changes=allow)
        for line in lines + chain_lines(chains):
            print(line)
        print(summary(plans, partials, chains))
        refused = _refused(plans, allow)
        if any(p.errors for p in partials) or any(c.error is not None for c in chains):
            refused = "errors"
        if args.dry_run:
            print("dry run: nothing was written")
            return 1 if refused else 0
        if refused:
            print(f"nothing was pushed: {refused}", file=sys.stderr)
            return 1
        prompts_change = bool(changed) or any(p.changes for p in plans)
        if not prompts_change and not any(c.changes for c in chains):
            print("up to date: nothing to push")
            return 0
        try:
            for line in apply_partials(client, partials):
                print(line)
            if changed:
                plans = recheck(client, plans)
                refused = _refused(plans, allow)
                if refused:
                    failed = [p for p in plans if p.error is not None or p.breaking]
                    for line in plan_lines(failed, allow_breaking_changes=allow):
                        print(line)
                    print(f"the partials were pushed, no prompt was: {refused}", file=sys.stderr)
                    return 1
            for line in apply_push(client, plans, allow_breaking_changes=allow):
                print(line)
            if prompts_change:
                chains = chain_plan.recheck(client, chains)
                if _chains_refused(chains):
                    return 1
            for line in apply_chains(client, chains):
                print(line)
        except StatusError as exc:
            print(f"push stopped: {exc!s}", file=sys.stderr)
            return 1
    return 0


def _chains_refused(plans: list[ChainPlan]) -> bool:
    """Print the chains the server refuses once the prompts are pushed; True if any."""
    failed = [p for p in plans if p.error is not None]
    for line in chain_lines(failed):
        print(line)
    if failed:
        print("the prompts and partials were pushed, no chain was: errors", file=sys.stderr)
    return bool(failed)


def _refused(plans: list[PromptPlan], allow_breaking_changes: bool) -> str:
    """Why ``plans`` cannot be pushed ("" when they can)."""
    if any(p.error is not None for p in plans):
        return "errors"
    if not allow_breaking_changes and any(p.breaking for p in plans):
        return "breaking changes (--allow-breaking-changes to push them)"
    return ""


def _pull(args: argparse.Namespace) -> int:
    with _client(args) as client:
        results = pull(client, args.dir, names=args.prompt, chains=args.chain, tag=args.tag)
        for result in results:
            name = result.name if result.kind == PROMPT else f"{result.kind} {result.name}"
            if result.path is None:
                print(f"skipped {name}: {result.skipped}")
            else:
                print(f"pulled  {name} version {result.version} -> {result.path}")
    return 0
