"""The benchmark suite runs (in its few-seconds mode) and loses no execution.

Speed is never asserted here: only that every scenario runs (the hostile-callers
scenario reports a misbehaving server, it never fails the run), and that the
rows recorded equal the successful answers (and that recording off stores none).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_bench_quick_runs_and_loses_nothing(tmp_path: Path) -> None:
    out, figures = tmp_path / "RESULTS.md", tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--json", str(figures)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(figures.read_text())
    for section in (
        "unary_max",
        "unary_latency",
        "stream_latency",
        "stream_load",
        "recording",
        "hostile",
        "metrics",
    ):
        assert report["sections"].get(section), f"scenario {section} did not run"
    # Hostile callers: the baseline and one row per attack class (figures are
    # reported, never asserted: the scenario measures whatever server is checked out).
    assert len(report["sections"]["hostile"]) == 10
    runs = report["recording"]
    assert {(r["store"], r["recording"]) for r in runs} >= {
        ("SQLite", "on"),
        ("SQLite", "off"),
        ("PostgreSQL", "on"),
        ("PostgreSQL", "off"),
    }
    for run in runs:
        assert run["answers"] > 0, run
        expected = run["answers"] if run["recording"] == "on" else 0
        assert run["rows"] == expected, run
    # With metrics on, a scrape counted exactly the answers (else a note says otherwise).
    assert not [n for n in report["notes"] if n.startswith("metrics:")], report["notes"]
    text = out.read_text()
    assert "## Machine" in text and "## Commands" in text
