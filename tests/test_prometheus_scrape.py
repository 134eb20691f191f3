"""A real Prometheus scrapes `gateway.metrics.serve()` and its query API sees the known values.

Also checks that every PromQL expression shipped in deploy/ and docs/ is one Prometheus accepts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_harness import PrometheusError, PrometheusServer

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

# Serves a GatewayMetrics that has seen a fixed set of events, until its stdin closes.
EXPORTER = textwrap.dedent(
    """
    import sys
    from prometheus_client import CollectorRegistry
    from gateway.metrics import GatewayMetrics, serve
    from gateway.types import Usage

    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    for task, provider, cost in [
        ("chat", "openai", 0.25), ("chat", "anthropic", 0.5), ("summarize", "openai", 1.25)
    ]:
        metrics.on_usage(task=task, provider=provider, model="m", usage=Usage(100, 10),
                         cost_usd=cost)
    metrics.on_usage(task="chat", provider="ollama", model="llama", usage=Usage(5), cost_usd=None)
    for outcome, times in [("success", 3), ("timeout", 2), ("breaker_open", 1), ("rate_limit", 1)]:
        for _ in range(times):
            metrics.on_attempt(task="chat", provider="openai", model="m", outcome=outcome,
                               duration_s=None if outcome == "breaker_open" else 0.5)
    metrics.on_breaker_state(provider="anthropic", state="open")

    server = serve(0, registry=registry)
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown()
    """
)


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", EXPORTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    line = process.stdout.readline()
    if not line.strip():
        process.kill()
        pytest.fail(f"exporter did not start: {process.communicate(timeout=5)[1]}")
    try:
        yield f"127.0.0.1:{int(line)}"
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def prometheus(exporter: str) -> Iterator[PrometheusServer]:
    try:
        server = PrometheusServer(targets=[exporter]).start()
    except PrometheusError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        server.wait_for_targets_up()
        yield server
    finally:
        server.stop()


def test_scraped_cost_is_the_sum_of_reported_costs(prometheus):
    result = prometheus.wait_for("sum(gateway_cost_usd_total)", bool)

    assert result == {(): pytest.approx(2.0)}


def test_scraped_attempts_count_each_outcome(prometheus):
    result = prometheus.wait_for("sum by (outcome) (gateway_attempts_total)", bool)

    assert result == {
        (("outcome", "success"),): 3.0,
        (("outcome", "timeout"),): 2.0,
        (("outcome", "breaker_open"),): 1.0,
        (("outcome", "rate_limit"),): 1.0,
    }


def test_scraped_breaker_state_and_unpriced_calls(prometheus):
    state = prometheus.wait_for("max by (job, provider) (gateway_circuit_state)", bool)
    unpriced = prometheus.query("sum by (provider) (gateway_unpriced_requests_total)")

    assert state == {(("job", "gateway"), ("provider", "anthropic")): 2.0}
    assert unpriced == {(("provider", "ollama"),): 1.0}


def test_query_errors_carry_prometheus_reason(prometheus):
    with pytest.raises(PrometheusError, match="parse error"):
        prometheus.query("sum by (outcome (gateway_attempts_total)")


# -- every shipped expression parses -------------------------------------------------------


def grafana_to_promql(expr: str) -> str:
    """Substitute the dashboard's variables with values Prometheus accepts."""
    for variable, value in {
        "$__rate_interval": "1m",
        "$__range": "1h",
        "$task": ".*",
        "$provider": ".*",
    }.items():
        expr = expr.replace(variable, value)
    return expr


def shipped_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((ROOT / "deploy/grafana/gateway.json").read_text())
    found = [
        (f"dashboard: {panel['title']}", grafana_to_promql(target["expr"]))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    found += [
        (f"alerts.yaml: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in alerts["groups"]
        for rule in group["rules"]
    ]
    docs = ROOT / "docs/metrics.md"
    found += [
        ("docs/metrics.md", expr.strip())
        for expr in re.findall(r"`([^`]*\bgateway_\w+[^`]*)`", docs.read_text())
        if re.search(r"[({\[]", expr)  # an expression, not a bare series name
    ]
    return found


def test_every_shipped_expression_is_valid_promql(prometheus):
    expressions = shipped_expressions()
    assert len(expressions) > 30

    rejected = []
    for where, expr in expressions:
        try:
            prometheus.query(expr)
        except PrometheusError as error:
            rejected.append(f"{where}: {expr}\n    {error}")

    assert not rejected, "\n".join(rejected)
