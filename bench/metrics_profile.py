"""The share of promptgate's CPU spent counting metrics, from a py-spy profile.

    python -m bench.metrics_profile            # 15 s at concurrency 64, metrics on

Starts the upstream and one promptgate with metrics on (as ``make bench``
does), loads it with unary ExecutePrompt, scrapes /metrics every 5 s, and
samples the server with py-spy (``--gil``: samples where Python runs, so the
shares are of the CPU time that limits throughput). A sample counts as
metrics when its innermost promptgate or prometheus-client frame is metrics
code: prometheus-client, ``promptgate/observability/{metrics,grpc_metrics,
exposition,http_server}.py``, or aiohttp serving a scrape. Unlike throughput
on a shared machine, the share barely moves with the machine's load, so it
measures the cost of metrics where throughput comparisons drown in noise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from pathlib import Path

from bench import metrics_cost
from bench.loadgen import LoadSpec, run
from bench.run import EXECUTE, PYTHON, Proc, Report, start_promptgate

PY_SPY = str(Path(sys.executable).parent / "py-spy")
METRICS_FILES = (
    "promptgate/observability/metrics.py",
    "promptgate/observability/grpc_metrics.py",
    "promptgate/observability/exposition.py",
    "promptgate/observability/http_server.py",
)


def classify(stack: str) -> str:
    """``metrics``, ``promptgate`` (other promptgate code on top) or ``other``."""
    for frame in reversed(stack.split(";")):
        if "prometheus_client" in frame or "aiohttp/web" in frame:
            return "metrics"
        if "promptgate/" in frame:
            return "metrics" if any(f in frame for f in METRICS_FILES) else "promptgate"
    return "other"


def _metrics_frame(stack: str) -> str:
    """The innermost metrics frame of a metrics sample, and the leaf."""
    frames = stack.split(";")
    for frame in reversed(frames):
        if "prometheus_client" in frame or any(f in frame for f in METRICS_FILES):
            return f"{frame}  <-leaf-  {frames[-1]}"
    return frames[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=0, help="print the top metrics frames")
    args = parser.parse_args(argv)
    report = Report()
    upstream = Proc(
        report, [PYTHON, "-m", "bench.upstream", "--port", "0"], {}, r"listening on [^:]+:(\d+)"
    )
    with tempfile.TemporaryDirectory(prefix="promptgate-profile-") as work:
        url = f"sqlite+aiosqlite:///{work}/profile.db"
        server = start_promptgate(
            report, upstream.port, url, recording=True, workers=1, metrics=True
        )
        scrape_url = metrics_cost.metrics_url(server.proc)
        raw = Path(work) / "profile.txt"
        try:
            spy = subprocess.Popen(
                [
                    PY_SPY,
                    "record",
                    "--gil",
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--duration",
                    str(int(args.duration) + 1),
                    "--pid",
                    str(server.proc.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            stop = threading.Event()

            def scrape() -> None:
                while not stop.wait(5.0):
                    with urllib.request.urlopen(scrape_url, timeout=10) as response:
                        response.read()

            scraper = threading.Thread(target=scrape, daemon=True)
            scraper.start()
            result = run(
                LoadSpec(
                    kind="grpc-unary",
                    target=server.target,
                    path=EXECUTE,
                    body=server.execute_body,
                    metadata=server.metadata,
                    concurrency=args.concurrency,
                    duration_s=args.duration,
                    warmup_s=1.0,
                    processes=2,
                )
            )
            stop.set()
            _, problems = spy.communicate(timeout=60)
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy failed: {problems}")
        finally:
            server.proc.stop()
            upstream.stop()
        shares: Counter[str] = Counter()
        top: Counter[str] = Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                kind = classify(stack)
                shares[kind] += int(count)
                if kind == "metrics":
                    top[_metrics_frame(stack)] += int(count)
    if args.top:
        for frame, count in top.most_common(args.top):
            print(f"{count:6d}  {frame}")
    total = sum(shares.values()) or 1
    print(
        f"rps {result.rps:.0f}, errors {result.errors}, GIL samples {total}: "
        + ", ".join(f"{k} {100 * v / total:.2f}%" for k, v in shares.most_common())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
