"""The Go client (clients/go) against a live server.

Builds the example in GOPATH mode (GO111MODULE=off, GOPROXY=off) against the
Debian packages of grpc-go and protobuf, so nothing is fetched, and runs it:
execute, stream, submit an actual, run a batch, read an error's ErrorInfo
reason and hit a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients_common import assert_tour, steps
from tests.live import LiveServer

REPO = Path(__file__).resolve().parent.parent
IMPORT_ROOT = "github.com/promptgate/promptgate"
DEBIAN_GOPATH = "/usr/share/gocode"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None, reason="go is not installed (.ci/run installs golang-go)"
)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gopath = tmp_path_factory.mktemp("gopath")
    link = gopath / "src" / IMPORT_ROOT
    link.parent.mkdir(parents=True)
    link.symlink_to(REPO)
    binary = gopath / "promptgate-example"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOPATH": f"{gopath}:{DEBIAN_GOPATH}",
    }
    built = subprocess.run(
        ["go", "build", "-o", str(binary), f"{IMPORT_ROOT}/clients/go/cmd/promptgate-example"],
        cwd=gopath,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    return binary


def run_example(binary: Path, server: LiveServer, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary)],
        env={"PROMPTGATE_ADDRESS": server.address, "PROMPTGATE_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_go_example_tour(example: Path, live_server: LiveServer) -> None:
    result = run_example(example, live_server, live_server.key)
    assert result.returncode == 0, result.stderr
    assert_tour(steps(result.stdout))


def test_go_example_fails_without_a_valid_key(example: Path, live_server: LiveServer) -> None:
    result = run_example(example, live_server, "pgk_wrong")
    assert result.returncode != 0
    assert "Unauthenticated" in result.stderr, result.stderr
