"""The bench harness keeps working: a `--quick` run writes a report with every row.

No timing is asserted anywhere: the quick run's numbers mean nothing. What is checked is that
every scenario ran (each with as many samples as asked), every target has a verdict, and the
hand-written analysis of docs/performance.md survives a re-run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from bench import report, report_peers  # noqa: E402
from bench.layers import Layer  # noqa: E402
from bench.machine import Machine  # noqa: E402
from bench.peer_run import HTTPRow, MemoryRow, StreamRow  # noqa: E402
from bench.plan import QUICK  # noqa: E402
from bench.runner import FAILOVER_SCENARIOS, MAIN_SCENARIOS, Results, ScenarioResult  # noqa: E402
from bench.scenarios import LONG_CHUNKS, SCENARIOS  # noqa: E402
from bench.stats import Summary, percentile  # noqa: E402

HAND_WRITTEN = "## Analysis\n\nWritten by hand; must survive the run.\n"


def _seeded_report(path: Path) -> None:
    path.write_text(f"# stale tables\n\n{report.ANALYSIS_MARKER}\n\n{HAND_WRITTEN}")


@pytest.mark.slow
def test_quick_run_writes_every_row_and_keeps_the_analysis(tmp_path: Path) -> None:
    out, raw = tmp_path / "performance.md", tmp_path / "bench.json"
    _seeded_report(out)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--json", str(raw)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()

    assert "# stale tables" not in text
    assert text.endswith(f"{report.ANALYSIS_MARKER}\n\n{HAND_WRITTEN}")
    assert "Quick run" in text
    for target in report.TARGETS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {target.label} |"))
        assert "**met**" in row or "**not met**" in row, row
    for figure in (*report.OVERHEAD, *report.FLOOR_FIGURES):
        assert f"| {figure.label} |" in text
    for name in (*MAIN_SCENARIOS, *FAILOVER_SCENARIOS):
        assert f"| {SCENARIOS[name].label} |" in text
    for statement in ("`import openai`", "`from gateway import Router`", "`import litellm`"):
        assert f"| {statement} |" in text
    assert "**added by the open breaker**" in text
    assert "| Router.generate, hooks=[] |" in text and "| Router.generate, metrics on |" in text
    assert "| + retry wrapper (tenacity) |" in text, "the over-HTTP layer table is missing"
    assert "## Tracing (OpenTelemetry)" in text and "| off (no hook) |" in text
    assert "not run" not in text, "a scenario did not run: see its reason in the report"
    assert "Not measured" not in text and "not measured" not in text

    data = json.loads(raw.read_text())
    rounds = QUICK.rounds
    for name in MAIN_SCENARIOS:
        scenario = data["scenarios"][name]
        assert len(scenario["sequential"]) == QUICK.per_round(QUICK.sequential) * rounds
        assert len(scenario["concurrent"]) == QUICK.per_round(QUICK.concurrent) * rounds
        assert len(scenario["ttft"]) == QUICK.per_round(QUICK.streams) * rounds
        assert scenario["peak_rss_kb"] > 0
    for name in FAILOVER_SCENARIOS:
        assert (
            len(data["scenarios"][name]["sequential"]) == QUICK.per_round(QUICK.failover) * rounds
        )
    assert data["dead_calls_while_measured"] == 0
    assert data["upstream_counts"]["gpt-4o"] == 0, "no request should have fallen back"

    # The peers are never installed by a quick run (so never by `make test`): each is skipped
    # with its reason, while `gateway serve` and the Router are measured by the same harness.
    assert "## Against the strongest peers" in text
    for target in report_peers.PEER_TARGETS:
        assert f"| {target.label} |" in text
    peers = data["peers"]
    assert set(peers["skipped"]) == {"tensorzero", "litellm_proxy", "portkey"}
    assert all("--quick" in reason for reason in peers["skipped"].values())
    assert text.count("skipped in --quick runs") >= 3
    served = peers["http"]["serve"]
    if shutil.which("wrk") is None:  # `make bench` installs it; `make test` does not
        assert "wrk is not installed" in served["skipped"]
    else:
        assert served["skipped"] is None and served["rate"] > 0
    for name in ("serve", "router"):
        streamed = peers["streams"][name]
        assert streamed["skipped"] is None, streamed["skipped"]
        assert streamed["chunks"] == QUICK.stream_load * LONG_CHUNKS
        assert len(streamed["ttft"]) == QUICK.long_streams
    held = peers["memory"]["serve"]
    assert held["skipped"] is None and held["streams"] == held["opened"] == QUICK.held_streams
    assert held["held_rss_kb"] > 0 and held["idle_rss_kb"] > 0


def _result(name: str, p50_s: float, throughput: float) -> ScenarioResult:
    result = ScenarioResult(name, SCENARIOS[name].label)
    result.sequential = [p50_s] * 10
    result.rounds = 2
    result.concurrent = [p50_s] * 100
    result.concurrent_walls = [50 / throughput, 50 / throughput]
    result.ttft = [p50_s] * 5
    result.peak_rss_kb = 50_000
    return result


def test_report_verdicts_follow_the_goals_and_the_analysis_is_kept(tmp_path: Path) -> None:
    results = Results(QUICK, Machine(), "2030-01-01 00:00 UTC", "python -m bench --quick")
    results.scenarios = {
        "direct": _result("direct", 0.001000, 1000.0),
        "router": _result("router", 0.001050, 960.0),  # 0.96x: met; +50 µs: met
        "litellm": _result("litellm", 0.010, 200.0),  # 960 / 200 = 4.8x: not met
        "failover_open": _result("failover_open", 0.001300, 1.0),
        "failover_without": _result("failover_without", 0.001050, 1.0),  # +250 µs: not met
    }
    for name in ("raw_http", "provider", "router_http", "serve", "serve_http", "serve_floor"):
        results.scenarios[name] = ScenarioResult(name, SCENARIOS[name].label, not_run="skipped")
    results.layers = [asdict(Layer("Router.generate, hooks=[]", 12.5, "+10.0 µs"))]
    out = tmp_path / "performance.md"
    _seeded_report(out)

    report.write(results, out)
    text = out.read_text()

    verdicts = {
        target.label: next(
            line for line in text.splitlines() if line.startswith(f"| {target.label}")
        )
        for target in report.TARGETS
    }
    assert "**met**" in verdicts["Router throughput / direct SDK throughput"]
    assert "**met**" in verdicts["Router p50 added latency over direct SDK"]
    assert "**not met**" in verdicts["Router throughput / LiteLLM Router throughput"]
    assert "**not met**" in verdicts["failover past an open breaker, added (p50)"]
    assert (
        "not measured" in verdicts["`gateway serve` p50 added over calling the upstream directly"]
    )
    assert "| gateway serve (via OpenAI SDK) | not run |" in text
    assert text.endswith(HAND_WRITTEN)

    report.write(results, out)  # a second run rewrites the tables, not the analysis
    assert out.read_text() == text


def test_percentile_is_nearest_rank_and_refuses_nonsense() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0
    assert Summary.of([2.0, 4.0]).mean == 3.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([1.0], 1.5)


def test_peer_targets_compare_figures_of_one_run_and_name_what_is_missing(
    tmp_path: Path,
) -> None:
    results = Results(QUICK, Machine(), "2030-01-01 00:00 UTC", "python -m bench")
    results.scenarios = {
        "router": _result("router", 0.000400, 4800.0),
        "tensorzero": _result("tensorzero", 0.000500, 3500.0),  # 1.37x: met; p50 0.8: met
    }
    results.peers.http = {
        "serve": HTTPRow("serve", "gateway serve", p50_s=0.001, p99_s=0.002, rate=2000.0),
        "portkey": HTTPRow("portkey", "Portkey", p50_s=0.001, p99_s=0.002, rate=1000.0),
        "litellm_proxy": HTTPRow("litellm_proxy", "LiteLLM proxy", skipped="failed: 500"),
    }
    results.peers.streams = {
        "serve": StreamRow("serve", "gateway serve", ttft=[0.01], chunks=1000, wall_s=1, cpu_s=1)
    }
    results.peers.memory = {
        "serve": MemoryRow(
            "serve",
            "gateway serve",
            streams=1000,
            opened=1000,
            idle_rss_kb=80_000,
            held_rss_kb=140_000,
        )  # 60 KB a stream: not met
    }
    results.peers.skipped["portkey"] = "its streams fail"
    text = "\n".join(report_peers.section(results))

    rows = {
        target.label: next(
            line for line in text.splitlines() if line.startswith(f"| {target.label}")
        )
        for target in report_peers.PEER_TARGETS
    }
    labels = [target.label for target in report_peers.PEER_TARGETS]
    assert "| 1.37 |" in rows[labels[0]] and "**met**" in rows[labels[0]]
    assert "| 0.80 |" in rows[labels[1]] and "**met**" in rows[labels[1]]
    assert (
        "| 2.00 |" in rows[labels[2]]
        and "**not met** (20% short: 1.25x more needed)" in rows[labels[2]]
    )
    assert "no figure: LiteLLM proxy: failed: 500" in rows[labels[3]]
    assert "no figure: Portkey gateway skipped: its streams fail" in rows[labels[4]]
    assert "| 60.0 KB |" in rows[labels[5]] and "**not met**" in rows[labels[5]]
    assert "- **Portkey gateway skipped**: its streams fail" in text
    assert "| gateway serve | 1,000 | 78.1 MB | 136.7 MB | 60.0 KB |" in text
