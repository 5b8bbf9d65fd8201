"""The ``promptgate`` command.

    promptgate serve [--host H] [--port P] [--database-url URL] [--dev] ...
    promptgate migrate [--database-url URL] [--sql [--from REV] | --current]
    promptgate workspaces create NAME [--database-url URL]
    promptgate keys create --workspace W --scope S [--scope S ...] [--plan P] [--name N]
    promptgate prompts push|pull DIR ...   (prompts as code, from promptgate-client)

Flags override the PROMPTGATE_* environment variables (see config.py).
``prompts`` runs the client package's command (it talks to a server over gRPC);
the client package installs the same ``promptgate`` script, which hands the
other commands back here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from promptgate.auth.model import DEFAULT_PLAN, PLANS, Scope
from promptgate.config import Settings
from promptgate.observability.logging import configure_logging, settings_secrets


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptgate", description="Execute LLM prompts over gRPC."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="port to listen on; 0 picks a free one (default 50051)"
    )
    serve.add_argument("--database-url", help="SQLAlchemy async URL (default sqlite under ./data)")
    serve.add_argument("--grace-period-s", type=float, help="seconds to drain calls on shutdown")
    serve.add_argument("--openai-base-url", help="OpenAI or OpenAI-compatible server base URL")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port with SO_REUSEPORT (default 1)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on http://HOST:PORT/metrics; 0 picks a free port "
        "(default: off; on a free port with --dev)",
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        default=None,
        help="seed a demo prompt and print example grpcurl commands",
    )
    migrate = commands.add_parser(
        "migrate",
        help="bring the database's schema to this promptgate's newest revision",
        description="Upgrade the database's schema to head (serve does this at start too).",
    )
    migrate.add_argument("--database-url", help="SQLAlchemy async URL (default: as serve)")
    shown = migrate.add_mutually_exclusive_group()
    shown.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL of the upgrade for the URL's database kind; touch no database",
    )
    shown.add_argument(
        "--current",
        action="store_true",
        help="print the database's revision and head; exit 1 if it is not at head",
    )
    migrate.add_argument(
        "--from",
        dest="from_revision",
        metavar="REV",
        help="with --sql: the revision the database is at (default: an empty database)",
    )
    workspaces = commands.add_parser("workspaces", help="manage workspaces")
    workspace_commands = workspaces.add_subparsers(dest="action", required=True)
    create_workspace = workspace_commands.add_parser("create", help="create a workspace")
    create_workspace.add_argument("name")
    create_workspace.add_argument("--database-url")
    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="action", required=True)
    create_key = key_commands.add_parser("create", help="create an API key and print it once")
    create_key.add_argument("--workspace", required=True)
    create_key.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=[s.value for s in Scope],
        help="repeat for several scopes",
    )
    create_key.add_argument("--plan", default=DEFAULT_PLAN, choices=list(PLANS))
    create_key.add_argument("--name", default="")
    create_key.add_argument("--database-url")
    # Listed for --help only: main() hands "prompts ..." to promptgate-client.
    commands.add_parser(
        "prompts", help="push or pull prompt files over gRPC (see: promptgate prompts --help)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``promptgate`` command."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["prompts"]:
        return _prompts(arguments[1:])
    args = _parser().parse_args(arguments)
    options = {
        "host",
        "port",
        "database_url",
        "grace_period_s",
        "openai_base_url",
        "log_level",
        "dev",
        "workers",
        "metrics_port",
    }
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in options and v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"promptgate: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level, fmt=settings.log_format, secrets=settings_secrets(settings)
    )
    if args.command == "serve":
        from promptgate.server import run_loop, serve
        from promptgate.store.migrations import SchemaError
        from promptgate.workers import run_workers

        if settings.workers > 1:
            return run_workers(settings)
        try:
            return run_loop(serve(settings), settings.event_loop)
        except SchemaError as exc:
            print(f"promptgate: {exc}", file=sys.stderr)
            return 1
    if args.command == "migrate":
        return _migrate(args, settings)
    return asyncio.run(_manage(args, settings))


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    """``promptgate migrate``: upgrade to head, print its SQL, or say where the database is."""
    from promptgate.store.migrations import SchemaError
    from promptgate.store.migrations.runner import schema_status, upgrade_schema, write_upgrade_sql

    url = settings.database_url
    try:
        if args.sql:
            write_upgrade_sql(url, sys.stdout, start=args.from_revision)
            return 0
        if args.from_revision:
            print("promptgate: --from goes with --sql", file=sys.stderr)
            return 2
        if args.current:
            status = asyncio.run(schema_status(url))
            if status.at_head:
                print(f"database at revision {status.head} (head)")
            elif status.legacy_version is not None:
                print(f"database at schema version {status.legacy_version} (before Alembic)")
            else:
                print(f"database at revision {', '.join(status.current) or 'none (empty)'}")
            print(f"head: {status.head}")
            return 0 if status.at_head else 1
        head = asyncio.run(upgrade_schema(url))
    except SchemaError as exc:
        print(f"promptgate: {exc}", file=sys.stderr)
        return 1
    print(f"database at revision {head} (head)")
    return 0


def _prompts(argv: list[str]) -> int:
    """``promptgate prompts ...``: the prompts-as-code command of promptgate-client."""
    try:
        from promptgate_client.prompts_as_code.cli import prompts_main
    except ImportError as exc:
        if not (exc.name or "").startswith("promptgate_client"):
            raise
        print(
            "promptgate: `promptgate prompts` needs the promptgate-client package "
            "(pip install ./clients/python)",
            file=sys.stderr,
        )
        return 2
    return prompts_main(argv)


async def _manage(args: argparse.Namespace, settings: Settings) -> int:
    """Workspace and key commands, run against the database directly."""
    from promptgate.audit import CLI, set_actor
    from promptgate.auth.keys import KeyStore
    from promptgate.errors import RequestError
    from promptgate.store.engine import create_engine, session_factory
    from promptgate.store.migrations.runner import upgrade_schema

    set_actor(CLI)  # these changes' audit entries name the CLI
    await upgrade_schema(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        keys = KeyStore(session_factory(engine))
        if args.command == "workspaces":
            created = await keys.ensure_workspace(args.name)
            print(f"workspace {args.name} {'created' if created else 'already exists'}")
            return 0
        await keys.ensure_workspace(args.workspace)
        issued = await keys.create(
            args.workspace,
            name=args.name,
            scopes=[Scope(s) for s in args.scope],
            plan=args.plan,
        )
        print(f"API key {issued.key.prefix} ({', '.join(args.scope)}; {args.plan} plan)")
        print(issued.secret)
        return 0
    except RequestError as exc:
        print(f"promptgate: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
