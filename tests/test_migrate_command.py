"""``promptgate migrate`` as a user runs it (a real process), and the installed package.

``--sql`` prints the upgrade for the URL's kind of database without touching
one, and that SQL, applied by hand, gives a database at head; ``--current``
says where a database is; ``migrate`` upgrades; a newer database is refused by
``migrate`` and ``serve`` alike. A wheel of the server, unpacked outside the
source tree, finds its migration scripts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg
import pytest

from promptgate.store.migrations.runner import head_revision, schema_status, upgrade_schema
from tests.legacy_db import create_legacy_database, model_differences, scalar

REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_S = 60


def promptgate(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m promptgate ARGS`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "promptgate", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        cwd=cwd,
        env={**os.environ, "PROMPTGATE_LOG_LEVEL": "WARNING", **(env or {})},
        check=False,
    )


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def pg_tables(url: str) -> list[str]:
    conn = await asyncpg.connect(plain_dsn(url))
    try:
        found = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return sorted(r["tablename"] for r in found)
    finally:
        await conn.close()


async def pg_execute(url: str, script: str) -> None:
    conn = await asyncpg.connect(plain_dsn(url))
    try:
        await conn.execute(script)
    finally:
        await conn.close()


def assert_upgrade_sql(out: str) -> None:
    statements = [s.strip() for s in out.split(";") if s.strip()]
    assert (statements[0], statements[-1]) == ("BEGIN", "COMMIT"), "one transaction"
    assert "CREATE TABLE alembic_version" in out
    assert "CREATE TABLE executions (" in out
    assert "CREATE INDEX ix_executions_chain ON executions (chain_execution_id)" in out
    # The first revision inserts its number; every later one moves it on, ending at head.
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in out
    head = head_revision()
    assert head == "0001" or f"SET version_num='{head}'" in out


def test_sql_for_sqlite_touches_nothing_and_applies_by_hand(tmp_path: Path) -> None:
    target = tmp_path / "not-yet" / "promptgate.db"
    url = f"sqlite+aiosqlite:///{target}"
    printed = promptgate("migrate", "--sql", "--database-url", url)
    assert printed.returncode == 0, printed.stderr
    assert_upgrade_sql(printed.stdout)
    assert not target.parent.exists(), "--sql must not create the database"

    applied = tmp_path / "by-hand.db"
    with sqlite3.connect(applied) as conn:
        conn.executescript(printed.stdout)
    applied_url = f"sqlite+aiosqlite:///{applied}"
    assert asyncio.run(schema_status(applied_url)).at_head
    assert asyncio.run(model_differences(applied_url)) == []

    nothing = promptgate("migrate", "--sql", "--from", head_revision(), "--database-url", url)
    assert nothing.returncode == 0, nothing.stderr
    assert "CREATE TABLE" not in nothing.stdout


@pytest.mark.postgres
def test_sql_for_postgres_touches_nothing_and_applies_by_hand(postgres_url: str) -> None:
    printed = promptgate("migrate", "--sql", "--database-url", postgres_url)
    assert printed.returncode == 0, printed.stderr
    assert_upgrade_sql(printed.stdout)
    assert "BIGSERIAL" in printed.stdout, "PostgreSQL's DDL, not SQLite's"
    assert asyncio.run(pg_tables(postgres_url)) == [], "--sql must not touch the database"

    asyncio.run(pg_execute(postgres_url, printed.stdout))
    assert asyncio.run(schema_status(postgres_url)).at_head
    assert asyncio.run(model_differences(postgres_url)) == []


def test_sql_from_an_unknown_revision_is_an_error(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = promptgate("migrate", "--sql", "--from", "9999", "--database-url", url)
    assert result.returncode == 1
    assert "9999" in result.stderr and "Traceback" not in result.stderr


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'promptgate.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_migrate_says_where_the_database_is_and_upgrades_it(
    database_url: str, tmp_path: Path
) -> None:
    head = head_revision()
    empty = promptgate("migrate", "--current", "--database-url", database_url)
    assert (empty.returncode, empty.stdout) == (
        1,
        f"database at revision none (empty)\nhead: {head}\n",
    ), empty.stderr
    if database_url.startswith("sqlite"):
        assert not (tmp_path / "promptgate.db").exists(), "--current must not create it"

    asyncio.run(create_legacy_database(database_url, 4))
    legacy = promptgate("migrate", "--current", "--database-url", database_url)
    assert (legacy.returncode, legacy.stdout) == (
        1,
        f"database at schema version 4 (before Alembic)\nhead: {head}\n",
    ), legacy.stderr

    upgraded = promptgate("migrate", "--database-url", database_url)
    assert (upgraded.returncode, upgraded.stdout) == (0, f"database at revision {head} (head)\n")
    current = promptgate("migrate", "--current", "--database-url", database_url)
    assert (current.returncode, current.stdout) == (
        0,
        f"database at revision {head} (head)\nhead: {head}\n",
    )
    again = promptgate("migrate", "--database-url", database_url)
    assert (again.returncode, again.stdout) == (0, f"database at revision {head} (head)\n")


def test_migrate_and_serve_refuse_a_newer_database(database_url: str) -> None:
    asyncio.run(upgrade_schema(database_url))
    asyncio.run(_set_revision(database_url, "9999"))
    for command in (
        ["migrate", "--database-url", database_url],
        ["serve", "--port", "0", "--database-url", database_url],
    ):
        result = promptgate(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "revision 9999" in result.stderr and "upgrade promptgate" in result.stderr
        assert "Traceback" not in result.stderr
    assert asyncio.run(scalar(database_url, "SELECT version_num FROM alembic_version")) == "9999"


async def _set_revision(url: str, revision: str) -> None:
    from sqlalchemy import text

    from promptgate.store.engine import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        await engine.dispose()


def test_an_installed_server_finds_its_migrations(tmp_path: Path) -> None:
    """A wheel (not the editable source tree) carries env.py, the template and the revisions."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "server",
        source / "server",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))",
            str(wheels),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheels / built.stdout.strip().splitlines()[-1]) as wheel:
        wheel.extractall(installed)
    assert (installed / "promptgate/store/migrations/versions/0001_baseline.py").is_file()

    env = {"PYTHONPATH": str(installed)}
    where = subprocess.run(
        [sys.executable, "-c", "import promptgate; print(promptgate.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
        timeout=COMMAND_TIMEOUT_S,
        check=True,
    )
    assert where.stdout.startswith(str(installed)), where.stdout
    url = f"sqlite+aiosqlite:///{tmp_path / 'installed.db'}"
    migrated = promptgate("migrate", "--database-url", url, cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == f"database at revision {head_revision()} (head)\n"
    assert asyncio.run(model_differences(url)) == []
