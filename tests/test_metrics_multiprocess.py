"""Several worker processes under PROMETHEUS_MULTIPROC_DIR expose one aggregated view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import exposition, mark_process_dead, serve

# A worker: records the events it is told to, prints its pid, exits. The variable is in its
# environment from the start, as it would be under gunicorn or uvicorn --workers.
WORKER = textwrap.dedent(
    """
    import json, os, sys
    from gateway.metrics import GatewayMetrics
    from gateway.types import Usage

    plan = json.loads(sys.argv[1])
    metrics = GatewayMetrics()
    for _ in range(plan["requests"]):
        metrics.on_request(task="chat", outcome="success", duration_s=0.3, overhead_s=0.0001)
        metrics.on_attempt(
            task="chat", provider="openai", model="m", outcome="success", duration_s=0.25
        )
        metrics.on_usage(
            task="chat", provider="openai", model="m", usage=Usage(10, 2), cost_usd=0.001
        )
    for state in plan["breaker"]:
        metrics.on_breaker_state(provider="openai", state=state)
    for version in plan["policies"]:
        metrics.on_policy(outcome="applied", version=version, sha256=f"sha{version}")
    print(os.getpid())
    """
)


def run_workers(directory: Path, plans: list[dict[str, object]]) -> list[int]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(plan)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for plan in plans
    ]
    pids = []
    for worker in workers:
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        pids.append(int(out.strip()))
    return pids


def aggregated(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def multiproc_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def two_workers(multiproc_dir) -> list[int]:
    return run_workers(
        multiproc_dir,
        [
            {"requests": 30, "breaker": ["closed", "open"], "policies": [1, 2]},
            {"requests": 12, "breaker": ["closed"], "policies": [1]},
        ],
    )


def test_counters_and_histograms_sum_across_workers(two_workers):
    samples = aggregated(exposition()[0])

    assert value(samples, "gateway_requests_total", task="chat", outcome="success") == 42
    attempt = {"task": "chat", "provider": "openai", "model": "m", "outcome": "success"}
    assert value(samples, "gateway_attempts_total", **attempt) == 42
    assert value(samples, "gateway_request_duration_seconds_count", task="chat") == 42
    assert value(samples, "gateway_request_duration_seconds_bucket", task="chat", le="0.5") == 42
    assert value(samples, "gateway_request_duration_seconds_bucket", task="chat", le="0.25") == 0
    tokens = {"provider": "openai", "model": "m", "type": "input"}
    assert value(samples, "gateway_tokens_total", **tokens) == 420
    cost = value(samples, "gateway_cost_usd_total", task="chat", provider="openai", model="m")
    assert cost == pytest.approx(0.042)
    assert value(samples, "gateway_circuit_transitions_total", provider="openai", to_state="open")


def test_circuit_state_is_the_worst_live_worker(two_workers, multiproc_dir):
    assert value(aggregated(exposition()[0]), "gateway_circuit_state", provider="openai") == 2

    # The worker that saw the breaker open exits: the survivor's "closed" is what remains.
    mark_process_dead(two_workers[0])

    assert value(aggregated(exposition()[0]), "gateway_circuit_state", provider="openai") == 0


def test_policy_info_shows_each_live_worker_current_policy(two_workers):
    info = {
        (dict(labels)["pid"], dict(labels)["version"]): v
        for (name, labels), v in aggregated(exposition()[0]).items()
        if name == "gateway_policy_info"
    }

    # Worker one moved from version 1 to 2; only its current version is shown.
    first, second = (str(pid) for pid in two_workers)
    assert info == {(first, "2"): 1.0, (second, "1"): 1.0}

    mark_process_dead(two_workers[1])
    remaining = [
        dict(labels)
        for (name, labels), _ in aggregated(exposition()[0]).items()
        if name == "gateway_policy_info"
    ]
    assert remaining == [{"pid": first, "version": "2", "sha256": "sha2"}]


def test_served_endpoint_aggregates_too(two_workers):
    with serve(0) as server, urllib.request.urlopen(server.url, timeout=5) as response:
        samples = aggregated(response.read())

    assert value(samples, "gateway_requests_total", task="chat", outcome="success") == 42


def test_worker_that_imported_the_client_first_is_warned(multiproc_dir):
    late = textwrap.dedent(
        f"""
        import os, prometheus_client
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(multiproc_dir)!r}
        from gateway.metrics import GatewayMetrics
        GatewayMetrics()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}

    result = subprocess.run(
        [sys.executable, "-c", late], env=env, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0, result.stderr
    assert "PROMETHEUS_MULTIPROC_DIR is set but prometheus_client was imported" in result.stderr
