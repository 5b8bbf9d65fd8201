"""The TypeScript client (clients/typescript) against a live server.

Builds the package with tsc (dependencies from its package-lock.json) and runs
its example, which executes, streams, submits an actual, runs a batch, reads an
error's ErrorInfo reason and hits a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients_common import assert_tour, steps
from tests.live import LiveServer

PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "typescript"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not installed (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def built() -> Path:
    if not (PACKAGE / "node_modules" / ".bin" / "tsc").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PACKAGE,
            check=True,
            timeout=300,
        )
    subprocess.run(
        [str(PACKAGE / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"],
        cwd=PACKAGE,
        check=True,
        timeout=120,
    )
    return PACKAGE / "dist" / "example.js"


def run_example(example: Path, server: LiveServer, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(example)],
        env={
            "PATH": os.environ["PATH"],
            "PROMPTGATE_URL": f"http://{server.address}",
            "PROMPTGATE_API_KEY": key,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_typescript_example_tour(built: Path, live_server: LiveServer) -> None:
    result = run_example(built, live_server, live_server.key)
    assert result.returncode == 0, result.stderr
    assert_tour(steps(result.stdout))


def test_typescript_example_fails_without_a_valid_key(built: Path, live_server: LiveServer) -> None:
    result = run_example(built, live_server, "pgk_wrong")
    assert result.returncode != 0
    assert "Unauthenticated" in result.stderr or "unauthenticated" in result.stderr
