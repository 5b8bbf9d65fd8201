"""Start a new schema revision from what the models have that head lacks.

    .venv/bin/python tools/new_revision.py "executions trace_id"
    .venv/bin/python tools/new_revision.py --empty "backfill chain steps"

Upgrades a scratch SQLite database to head, lets Alembic's autogenerate
compare it with the models (server/promptgate/store/tables.py) and writes
server/promptgate/store/migrations/versions/NNNN_<slug>.py, numbered after
head (``--empty``: the same file without operations, to write by hand).

Read what it wrote before committing: autogenerate sees tables, columns,
indexes, unique constraints and types added, dropped or changed, but a rename
looks like a drop and an add, and server defaults and data changes are not
seen at all. The guard test (tests/test_migrations.py) fails until the
revision and the models agree.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.script import Script
from sqlalchemy import Connection

from promptgate.store.engine import create_engine
from promptgate.store.migrations.runner import alembic_config, head_revision, upgrade_schema


def next_revision_id() -> str:
    """The id after head: 0001 -> 0002."""
    return f"{int(head_revision()) + 1:04d}"


def _write(connection: Connection, message: str, autogenerate: bool) -> Path:
    config = alembic_config()
    config.attributes["connection"] = connection
    script = command.revision(
        config, message=message, autogenerate=autogenerate, rev_id=next_revision_id()
    )
    assert isinstance(script, Script), script
    return Path(script.path)


async def write_revision(message: str, *, autogenerate: bool = True) -> Path:
    """Write the next revision (against a scratch database at head); return its file."""
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite+aiosqlite:///{Path(scratch) / 'head.db'}"
        await upgrade_schema(url)
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_write, message, autogenerate)
        finally:
            await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("message", help='what the revision does, e.g. "executions trace_id"')
    parser.add_argument("--empty", action="store_true", help="no autogenerate: write by hand")
    args = parser.parse_args(argv)
    path = asyncio.run(write_revision(args.message, autogenerate=not args.empty))
    ruff = Path(sys.executable).parent / "ruff"
    if ruff.exists():
        subprocess.run([ruff, "check", "--fix", "--quiet", path], check=False)
        subprocess.run([ruff, "format", "--quiet", path], check=False)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
