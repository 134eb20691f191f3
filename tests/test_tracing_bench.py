"""`python -m bench.tracing_cost` runs, bounded, and prints its table: one row per mode, and
two spans kept per request in the mode that keeps them (a check that tracing was on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_tracing_cost_bench_prints_a_row_per_mode() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.tracing_cost", "--requests", "20", "--concurrency", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    cells = {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows[2:]}
    assert list(cells) == ["off (no hook)", "on, in-memory exporter", "on, batched, dropped"]
    # 20 warm-up, 20 sequential and 20 concurrent requests: a request span and an attempt
    # span each.
    assert cells["on, in-memory exporter"][-1] == "120"
    assert all(float(row[0]) > 0 and float(row[2]) > 0 for row in cells.values())
