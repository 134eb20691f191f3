"""The ops assets in deploy/ agree with promtool and with the series GatewayMetrics defines.

promtool is Debian's (package `prometheus`); `make system-deps` installs it. Without it these
tests fail rather than skip, so a machine that cannot check the alert rules never looks green.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway._resilience import TripReason
from gateway.metrics import GatewayMetrics, exposition
from gateway.types import Usage

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy/prometheus/alerts.yaml"
ALERT_TESTS = ROOT / "deploy/prometheus/alerts.test.yaml"
SCRAPE_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
DASHBOARD = ROOT / "deploy/grafana/gateway.json"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed (Debian package 'prometheus'): run `make system-deps`",
            pytrace=False,
        )
    return subprocess.run(
        [binary, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def exercise_every_hook(metrics: GatewayMetrics) -> None:
    """One of each event kind, so every series has at least one sample."""
    metrics.on_request(task="chat", outcome="success", duration_s=1.2, overhead_s=0.0004)
    metrics.on_request(task="chat", outcome="exhausted", duration_s=9.0, overhead_s=0.001)
    metrics.on_attempt(
        task="chat", provider="openai", model="gpt-4o", outcome="timeout", duration_s=5.0
    )
    metrics.on_attempt(
        task="chat", provider="anthropic", model="claude", outcome="breaker_open", duration_s=None
    )
    metrics.on_first_token(provider="openai", model="gpt-4o", seconds=0.4)
    metrics.on_retry(provider="openai", model="gpt-4o", kind="rate_limit")
    metrics.on_fallback(
        task="chat", from_provider="openai", to_provider="anthropic", kind="timeout"
    )
    metrics.on_usage(
        task="chat", provider="openai", model="gpt-4o", usage=Usage(100, 20, 40), cost_usd=0.002
    )
    metrics.on_usage(task="chat", provider="ollama", model="llama", usage=Usage(5), cost_usd=None)
    metrics.on_breaker_state(provider="openai", state="closed")
    metrics.on_breaker_state(provider="openai", state="open")
    metrics.on_breaker_trip(provider="openai", reason=TripReason.FAILURE_RATE)
    metrics.on_state_backend_error(backend="redis")
    metrics.on_policy(outcome="applied", version=4, sha256="ab" * 32)
    metrics.on_policy(outcome="rejected", version=4, sha256="ab" * 32)


@pytest.fixture(scope="module")
def series_names() -> frozenset[str]:
    """Every sample name a fully exercised GatewayMetrics exposes."""
    registry = CollectorRegistry()
    exercise_every_hook(GatewayMetrics(registry))
    return frozenset(
        sample.name
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    )


# -- PromQL: which series an expression reads -----------------------------------------------

_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*(?!\w)(?!\s*\()")


def series_in(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)  # Grafana variables
    text = re.sub(r"\{[^{}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.95, sum by (le, provider) (rate(a_bucket{x="y"}[5m])))',
            {"a_bucket"},
        ),
        ("sum(rate(a_total[$__rate_interval])) by (task) / on() group_left b", {"a_total", "b"}),
        ("rate(x[5m] offset 1h) > 1e-5 and bool y unless z:rule", {"x", "y", "z:rule"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
    ],
)
def test_series_in_finds_only_metric_names(expr, names):
    assert series_in(expr) == names


def dashboard_exprs(node: Any) -> Iterator[str]:
    """Every PromQL `expr` in a piece of a Grafana dashboard (panels nest in rows)."""
    if isinstance(node, dict):
        for field, value in node.items():
            if field == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def template_series(query: str) -> set[str]:
    """The series a Grafana variable query reads: label_values(metric, label) or PromQL."""
    match = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
    return series_in(match.group(1)) if match else series_in(query)


# -- promtool -----------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", str(ALERTS))

    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass():
    result = promtool("test", "rules", str(ALERT_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_scrape_config_is_valid():
    result = promtool("check", "config", str(SCRAPE_CONFIG))

    assert result.returncode == 0, result.stdout + result.stderr


def test_exposition_passes_promtool_metric_lint():
    registry = CollectorRegistry()
    exercise_every_hook(GatewayMetrics(registry))
    body, _ = exposition(registry)

    result = promtool("check", "metrics", stdin=body)

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_contract_series_is_exposed(series_names):
    contract = {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_attempts_total",
        "gateway_attempt_duration_seconds_bucket",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_retries_total",
        "gateway_fallbacks_total",
        "gateway_tokens_total",
        "gateway_cost_usd_total",
        "gateway_unpriced_requests_total",
        "gateway_circuit_state",
        "gateway_circuit_transitions_total",
        "gateway_breaker_trips_total",
        "gateway_overhead_seconds_bucket",
        "gateway_policy_reloads_total",
        "gateway_policy_info",
        "gateway_state_backend_errors_total",
    }
    assert contract <= series_names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_read_only_gateway_series(series_names):
    rules = alert_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}

    for rule in rules:
        unknown = series_in(rule["expr"]) - series_names - recorded
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads {unknown}"


def test_each_alert_explains_itself_and_is_unit_tested():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = [rule for rule in alert_rules() if "alert" in rule]

    assert {rule["alert"] for rule in alerts} == {
        "GatewayCircuitOpen",
        "GatewayBreakerRateTrips",
        "GatewayHighFallbackRatio",
        "GatewayChainsExhausted",
        "GatewayCostBurnRateHigh",
    }
    for rule in alerts:
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} has no firing case in alerts.test.yaml"


# -- Grafana dashboard ----------------------------------------------------------------------


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())

    assert dashboard["title"]
    assert dashboard["uid"]
    panels = dashboard["panels"]
    assert len(panels) >= 8
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} has no query"


def test_dashboard_reads_only_gateway_series(series_names):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [expr for panel in dashboard["panels"] for expr in dashboard_exprs(panel)]
    variables = [
        variable["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]

    assert exprs and variables
    for expr in exprs:
        names = series_in(expr)
        assert names, f"no series in {expr!r}"
        assert names <= series_names, f"{expr!r} reads unknown {names - series_names}"
    for variable in variables:
        query = variable["query"] if isinstance(variable, dict) else variable
        names = template_series(query)
        assert names and names <= series_names, f"variable query {query!r} reads {names}"


def test_dashboard_covers_every_series_family(series_names):
    dashboard = json.loads(DASHBOARD.read_text())
    read = set().union(*(series_in(e) for p in dashboard["panels"] for e in dashboard_exprs(p)))
    family = re.compile(r"_(bucket|sum|count)$")

    assert {family.sub("", n) for n in series_names} <= {family.sub("", n) for n in read}


def test_docs_table_lists_every_series(series_names):
    documented = set(
        re.findall(r"^\| `(gateway_\w+)` \|", (ROOT / "docs/metrics.md").read_text(), re.M)
    )
    family = re.compile(r"_(bucket|sum|count)$")

    assert documented == {family.sub("", n) for n in series_names}
