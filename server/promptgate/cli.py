"""The ``promptgate`` command.

    promptgate serve [--host H] [--port P] [--database-url URL] [--dev] ...

Flags override the PROMPTGATE_* environment variables (see config.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from promptgate.config import Settings
from promptgate.observability.logging import configure_logging


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
        "--dev",
        action="store_true",
        default=None,
        help="seed a demo prompt and print example grpcurl commands",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``promptgate`` command."""
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k != "command" and v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"promptgate: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "serve":
        from promptgate.server import serve

        return asyncio.run(serve(settings))
    return 2


if __name__ == "__main__":
    sys.exit(main())
