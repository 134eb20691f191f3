"""`python -m bench [--quick] [--out PATH] [--json PATH]`: measure everything, write the report."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.machine import Machine
from bench.plan import FULL, QUICK
from bench.runner import REPO, Progress, Results, run, write_json

DEFAULT_OUT = REPO / "docs" / "performance.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the gateway against the OpenAI SDK and LiteLLM's Router.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny counts: check the harness, not the numbers"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"the report (default {DEFAULT_OUT})"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    shown_args = sys.argv[1:] if argv is None else argv
    results = Results(
        plan=plan,
        machine=Machine(),
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=shlex.join(["python", "-m", "bench", *shown_args]),
    )
    progress = Progress()
    run(plan, results, progress)
    if args.json is not None:  # first: the raw numbers survive a report that fails
        write_json(results, args.json)
    report.write(results, args.out)
    print(report.generated(results))
    progress(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
