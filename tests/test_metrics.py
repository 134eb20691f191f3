"""GatewayMetrics: each hook moves exactly its series, and nothing a caller passes can break it."""

from __future__ import annotations

import gc
import inspect
import logging
import math
import urllib.request
import weakref
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.utils import floatToGoString

from gateway._resilience import TripReason
from gateway.errors import ErrorKind
from gateway.hooks import RouterHooks
from gateway.metrics import (
    ATTEMPT_DURATION_BUCKETS,
    OVERHEAD_BUCKETS,
    TTFT_BUCKETS,
    GatewayMetrics,
    asgi_app,
    default_metrics,
    exposition,
    mark_process_dead,
    serve,
)
from gateway.types import Usage

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def key(name: str, **labels: str) -> SampleKey:
    return name, tuple(sorted(labels.items()))


def snapshot(registry: CollectorRegistry) -> dict[SampleKey, float]:
    # _created holds a timestamp, not an event count; leave it out of the comparison.
    return {
        key(sample.name, **sample.labels): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def moved(registry: CollectorRegistry, action: Callable[[], object]) -> dict[SampleKey, float]:
    """How every sample changed across `action` (removed samples count as going to zero)."""
    before = snapshot(registry)
    action()
    after = snapshot(registry)
    changes = {k: v - before.get(k, 0.0) for k, v in after.items()}
    changes.update({k: -v for k, v in before.items() if k not in after})
    return {k: v for k, v in changes.items() if v != 0}


def observed(
    name: str, value: float, buckets: tuple[float, ...], **labels: str
) -> dict[SampleKey, float]:
    """The samples one histogram observation of `value` moves."""
    change = {key(f"{name}_count", **labels): 1.0}
    if value:
        change[key(f"{name}_sum", **labels)] = value
    for bound in (*buckets, math.inf):
        if value <= bound:
            change[key(f"{name}_bucket", le=floatToGoString(bound), **labels)] = 1.0
    return change


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> GatewayMetrics:
    return GatewayMetrics(registry)


def test_request_moves_count_duration_and_overhead(metrics, registry):
    change = moved(
        registry,
        lambda: metrics.on_request(
            task="summarize", outcome="success", duration_s=1.5, overhead_s=0.0002
        ),
    )

    assert change == {
        key("gateway_requests_total", task="summarize", outcome="success"): 1.0,
        **observed(
            "gateway_request_duration_seconds", 1.5, ATTEMPT_DURATION_BUCKETS, task="summarize"
        ),
        **observed("gateway_overhead_seconds", 0.0002, OVERHEAD_BUCKETS, task="summarize"),
    }


@pytest.mark.parametrize("outcome", ["success", "exhausted", "deadline", "rejected", "cancelled"])
def test_every_request_outcome_is_its_own_series(metrics, registry, outcome):
    metrics.on_request(task="t", outcome=outcome, duration_s=0.1, overhead_s=0.0)

    assert registry.get_sample_value("gateway_requests_total", {"task": "t", "outcome": outcome})


def test_attempt_with_a_call_moves_count_and_duration(metrics, registry):
    change = moved(
        registry,
        lambda: metrics.on_attempt(
            task="chat", provider="openai", model="gpt-4o", outcome=ErrorKind.TIMEOUT, duration_s=3
        ),
    )

    assert change == {
        key(
            "gateway_attempts_total",
            task="chat",
            provider="openai",
            model="gpt-4o",
            outcome="timeout",
        ): 1.0,
        **observed(
            "gateway_attempt_duration_seconds",
            3.0,
            ATTEMPT_DURATION_BUCKETS,
            provider="openai",
            model="gpt-4o",
        ),
    }


def test_skipped_attempt_counts_but_is_not_timed(metrics, registry):
    change = moved(
        registry,
        lambda: metrics.on_attempt(
            task="chat", provider="anthropic", model="m", outcome="breaker_open", duration_s=None
        ),
    )

    assert change == {
        key(
            "gateway_attempts_total",
            task="chat",
            provider="anthropic",
            model="m",
            outcome="breaker_open",
        ): 1.0
    }


def test_first_token_is_observed_in_ttft(metrics, registry):
    change = moved(
        registry, lambda: metrics.on_first_token(provider="ollama", model="llama3.2", seconds=0.2)
    )

    assert change == observed(
        "gateway_time_to_first_token_seconds",
        0.2,
        TTFT_BUCKETS,
        provider="ollama",
        model="llama3.2",
    )


def test_retry_counts_by_kind(metrics, registry):
    change = moved(
        registry, lambda: metrics.on_retry(provider="openai", model="m", kind="rate_limit")
    )

    assert change == {
        key("gateway_retries_total", provider="openai", model="m", kind="rate_limit"): 1.0
    }


def test_fallback_counts_from_to_and_why(metrics, registry):
    change = moved(
        registry,
        lambda: metrics.on_fallback(
            task="chat", from_provider="openai", to_provider="anthropic", kind="server_error"
        ),
    )

    assert change == {
        key(
            "gateway_fallbacks_total",
            task="chat",
            from_provider="openai",
            to_provider="anthropic",
            kind="server_error",
        ): 1.0
    }


def test_usage_counts_tokens_and_cost(metrics, registry):
    usage = Usage(input_tokens=1000, output_tokens=200, cached_input_tokens=600)

    change = moved(
        registry,
        lambda: metrics.on_usage(
            task="chat", provider="openai", model="m", usage=usage, cost_usd=0.0125
        ),
    )

    tokens = "gateway_tokens_total"
    assert change == {
        key(tokens, provider="openai", model="m", type="input"): 1000.0,
        key(tokens, provider="openai", model="m", type="output"): 200.0,
        key(tokens, provider="openai", model="m", type="cached_input"): 600.0,
        key("gateway_cost_usd_total", task="chat", provider="openai", model="m"): 0.0125,
    }


def test_usage_without_a_price_counts_as_unpriced_and_costs_nothing(metrics, registry):
    change = moved(
        registry,
        lambda: metrics.on_usage(
            task="chat", provider="ollama", model="x", usage=Usage(10, 5), cost_usd=None
        ),
    )

    assert change == {
        key("gateway_tokens_total", provider="ollama", model="x", type="input"): 10.0,
        key("gateway_tokens_total", provider="ollama", model="x", type="output"): 5.0,
        key("gateway_unpriced_requests_total", provider="ollama", model="x"): 1.0,
    }
    assert registry.get_sample_value("gateway_cost_usd_total", {"provider": "ollama"}) is None


def test_free_model_has_a_zero_cost_series(metrics, registry):
    metrics.on_usage(task="t", provider="ollama", model="x", usage=Usage(1, 1), cost_usd=0.0)

    cost = {"task": "t", "provider": "ollama", "model": "x"}
    assert registry.get_sample_value("gateway_cost_usd_total", cost) == 0.0
    assert registry.get_sample_value("gateway_unpriced_requests_total", cost) is None


def circuit(registry: CollectorRegistry, provider: str) -> tuple[float | None, dict[str, float]]:
    state = registry.get_sample_value("gateway_circuit_state", {"provider": provider})
    transitions = {
        to: registry.get_sample_value(
            "gateway_circuit_transitions_total", {"provider": provider, "to_state": to}
        )
        or 0.0
        for to in ("closed", "half_open", "open")
    }
    return state, {to: n for to, n in transitions.items() if n}


def test_new_breaker_sets_closed_without_counting_a_transition(metrics, registry):
    metrics.on_breaker_state(provider="openai", state="closed")

    assert circuit(registry, "openai") == (0.0, {})


def test_breaker_changes_set_the_gauge_and_count_each_transition(metrics, registry):
    metrics.on_breaker_state(provider="openai", state="closed")
    metrics.on_breaker_state(provider="openai", state="open")
    assert circuit(registry, "openai") == (2.0, {"open": 1.0})

    metrics.on_breaker_state(provider="openai", state="open")  # a repeat is not a change
    assert circuit(registry, "openai") == (2.0, {"open": 1.0})

    metrics.on_breaker_state(provider="openai", state="half_open")
    assert circuit(registry, "openai") == (1.0, {"open": 1.0, "half_open": 1.0})

    metrics.on_breaker_state(provider="openai", state="closed")
    assert circuit(registry, "openai") == (0.0, {"open": 1.0, "half_open": 1.0, "closed": 1.0})


def test_breaker_first_seen_open_counts_as_a_transition(metrics, registry):
    # e.g. a worker that starts while shared state says the breaker is open.
    metrics.on_breaker_state(provider="anthropic", state="open")

    assert circuit(registry, "anthropic") == (2.0, {"open": 1.0})


def test_breakers_are_tracked_per_provider(metrics, registry):
    metrics.on_breaker_state(provider="a", state="open")
    metrics.on_breaker_state(provider="b", state="closed")

    assert circuit(registry, "a") == (2.0, {"open": 1.0})
    assert circuit(registry, "b") == (0.0, {})


def trips(registry: CollectorRegistry, provider: str) -> dict[str, float]:
    found = {
        reason: registry.get_sample_value(
            "gateway_breaker_trips_total", {"provider": provider, "reason": reason}
        )
        for reason in ("consecutive", "failure_rate", "probe", "other")
    }
    return {reason: n for reason, n in found.items() if n}


def test_breaker_trips_count_by_reason(metrics, registry):
    metrics.on_breaker_trip(provider="openai", reason=TripReason.FAILURE_RATE)
    metrics.on_breaker_trip(provider="openai", reason=TripReason.PROBE)
    metrics.on_breaker_trip(provider="openai", reason=TripReason.FAILURE_RATE)
    metrics.on_breaker_trip(provider="anthropic", reason=TripReason.CONSECUTIVE)

    assert trips(registry, "openai") == {"failure_rate": 2.0, "probe": 1.0}
    assert trips(registry, "anthropic") == {"consecutive": 1.0}


def test_a_trip_reason_outside_the_vocabulary_is_other(metrics, registry):
    metrics.on_breaker_trip(provider="openai", reason="a free-text reason")  # type: ignore[arg-type]

    assert trips(registry, "openai") == {"other": 1.0}


def test_half_open_with_a_hyphen_is_the_same_state(metrics, registry):
    metrics.on_breaker_state(provider="a", state="half-open")

    assert circuit(registry, "a") == (1.0, {"half_open": 1.0})


def policy_info(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.labels["version"], s.labels["sha256"]): s.value
        for family in registry.collect()
        if family.name == "gateway_policy_info"
        for s in family.samples
    }


def test_applied_policy_replaces_the_info_series(metrics, registry):
    metrics.on_policy(outcome="applied", version=1, sha256="aa11")
    assert policy_info(registry) == {("1", "aa11"): 1.0}

    metrics.on_policy(outcome="applied", version=2, sha256="bb22")

    assert policy_info(registry) == {("2", "bb22"): 1.0}
    assert registry.get_sample_value("gateway_policy_reloads_total", {"outcome": "applied"}) == 2


def test_rejected_policy_counts_and_leaves_info_alone(metrics, registry):
    metrics.on_policy(outcome="applied", version=1, sha256="aa11")

    change = moved(
        registry, lambda: metrics.on_policy(outcome="rejected", version=1, sha256="aa11")
    )

    assert change == {key("gateway_policy_reloads_total", outcome="rejected"): 1.0}
    assert policy_info(registry) == {("1", "aa11"): 1.0}


def test_reapplying_the_same_policy_keeps_its_info_series(metrics, registry):
    metrics.on_policy(outcome="applied", version=3, sha256="cc")
    metrics.on_policy(outcome="applied", version=3, sha256="cc")

    assert policy_info(registry) == {("3", "cc"): 1.0}


def test_state_backend_error_counts_per_backend(metrics, registry):
    change = moved(registry, lambda: metrics.on_state_backend_error(backend="redis"))

    assert change == {key("gateway_state_backend_errors_total", backend="redis"): 1.0}


def test_one_instance_per_registry(registry):
    first = GatewayMetrics(registry)
    second = GatewayMetrics(registry)
    other = GatewayMetrics(CollectorRegistry())

    first.on_retry(provider="p", model="m", kind="timeout")
    second.on_retry(provider="p", model="m", kind="timeout")

    assert first is second
    assert other is not first
    labels = {"provider": "p", "model": "m", "kind": "timeout"}
    assert registry.get_sample_value("gateway_retries_total", labels) == 2
    assert other.registry.get_sample_value("gateway_retries_total", labels) is None


def test_default_metrics_live_on_the_default_registry():
    assert default_metrics() is GatewayMetrics() is GatewayMetrics(REGISTRY)
    assert default_metrics().registry is REGISTRY


def test_implements_every_router_hook_with_its_keywords():
    hooks = [name for name in vars(RouterHooks) if name.startswith("on_")]
    assert hooks, "RouterHooks declares no hooks?"
    for name in hooks:
        expected = inspect.signature(getattr(RouterHooks, name)).parameters
        actual = inspect.signature(getattr(GatewayMetrics, name)).parameters
        assert list(actual) == list(expected), name


def test_unknown_vocabulary_is_bounded_to_one_other_series(metrics, registry):
    for i in range(300):
        # Free text where a closed word belongs (e.g. an error message by mistake).
        junk = f"upstream said: quota exceeded for key sk-{i:04d}"
        metrics.on_request(task="t", outcome=junk, duration_s=0.1, overhead_s=0.0)
        metrics.on_attempt(task="t", provider="p", model="m", outcome=junk, duration_s=None)
        metrics.on_retry(provider="p", model="m", kind=junk)
        metrics.on_fallback(task="t", from_provider="p", to_provider="q", kind=junk)
        metrics.on_policy(outcome=junk, version=None, sha256=None)

    counts: dict[str, int] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[sample.name] = counts.get(sample.name, 0) + 1
                assert "sk-" not in "".join(sample.labels.values())
    assert counts == {
        "gateway_requests_total": 1,
        "gateway_attempts_total": 1,
        "gateway_retries_total": 1,
        "gateway_fallbacks_total": 1,
        "gateway_policy_reloads_total": 1,
    }
    assert registry.get_sample_value("gateway_requests_total", {"task": "t", "outcome": "other"})
    assert policy_info(registry) == {}


def test_odd_vocabulary_is_logged_once_naming_the_field(metrics, caplog):
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        for _ in range(3):
            metrics.on_retry(provider="p", model="m", kind="melted")

    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "kind" in warnings[0] and "melted" in warnings[0]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no label for you")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.on_request(task=None, outcome=None, duration_s=None, overhead_s=None),
        lambda m: m.on_request(task="t", outcome="success", duration_s=-1, overhead_s=math.nan),
        lambda m: m.on_request(task="t", outcome=["x"], duration_s="1", overhead_s=math.inf),
        lambda m: m.on_attempt(task=1, provider="", model=None, outcome={}, duration_s="soon"),
        lambda m: m.on_first_token(provider="p", model="m", seconds=-0.5),
        lambda m: m.on_retry(provider=object(), model=b"m", kind=42),
        lambda m: m.on_fallback(task="t", from_provider=None, to_provider=None, kind=None),
        lambda m: m.on_usage(task="t", provider="p", model="m", usage=None, cost_usd="abc"),
        lambda m: m.on_usage(task="t", provider="p", model="m", usage={}, cost_usd=-3.0),
        lambda m: m.on_usage(
            task="t", provider="p", model="m", usage=Usage(-5, 1, 0), cost_usd=math.nan
        ),
        lambda m: m.on_breaker_state(provider="p", state="melted"),
        lambda m: m.on_breaker_state(provider=None, state=None),
        lambda m: m.on_breaker_trip(provider=None, reason=None),
        lambda m: m.on_policy(outcome="applied", version=object(), sha256=123),
        lambda m: m.on_state_backend_error(backend=None),
        lambda m: m.on_retry(provider=Unprintable(), model="m", kind="timeout"),
        lambda m: m.on_policy(outcome="applied", version=Unprintable(), sha256="s"),
    ],
)
def test_hooks_never_raise(metrics, registry, call):
    call(metrics)

    for sample in snapshot(registry).values():
        assert math.isfinite(sample) and sample >= 0


def test_bad_numbers_are_dropped_but_the_event_still_counts(metrics, registry):
    metrics.on_request(task="t", outcome="success", duration_s=math.nan, overhead_s=-1)
    metrics.on_usage(task="t", provider="p", model="m", usage=Usage(-5, 7), cost_usd=math.inf)

    assert registry.get_sample_value("gateway_requests_total", {"task": "t", "outcome": "success"})
    assert (
        registry.get_sample_value("gateway_request_duration_seconds_count", {"task": "t"}) is None
    )
    output = {"provider": "p", "model": "m", "type": "output"}
    assert registry.get_sample_value("gateway_tokens_total", output) == 7
    assert registry.get_sample_value("gateway_cost_usd_total", {"task": "t"}) is None


def test_missing_names_show_as_unknown(metrics, registry):
    metrics.on_attempt(task="", provider=None, model="m", outcome="success", duration_s=None)

    labels = {"task": "unknown", "provider": "unknown", "model": "m", "outcome": "success"}
    assert registry.get_sample_value("gateway_attempts_total", labels) == 1


def test_exposition_returns_text_format_and_its_content_type(metrics, registry):
    metrics.on_request(task="t", outcome="success", duration_s=0.1, overhead_s=0.0)

    body, content_type = exposition(registry)

    assert content_type.startswith("text/plain; version=0.0.4")
    assert b'gateway_requests_total{outcome="success",task="t"} 1.0' in body


async def test_asgi_app_serves_the_exposition(metrics, registry):
    metrics.on_retry(provider="p", model="m", kind="timeout")
    transport = httpx.ASGITransport(app=asgi_app(registry))

    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        response = await client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'gateway_retries_total{kind="timeout",model="m",provider="p"} 1.0' in response.text


def test_serve_runs_an_http_server_until_shut_down(metrics, registry):
    metrics.on_state_backend_error(backend="redis")

    with serve(0, registry=registry) as server:
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read().decode()
    assert 'gateway_state_backend_errors_total{backend="redis"} 1.0' in body

    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


@pytest.mark.parametrize("port", [-1, 70000, "9100", True])
def test_serve_rejects_a_bad_port_naming_it(port):
    with pytest.raises(ValueError, match=r"port must be an int from 0 to 65535.*" + str(port)):
        serve(port)


def test_mark_process_dead_without_a_directory_says_what_to_set(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        mark_process_dead(12345)


def test_a_dropped_registry_is_not_kept_alive_by_the_instance_cache():
    registry = CollectorRegistry()
    GatewayMetrics(registry).on_retry(provider="p", model="m", kind="timeout")
    alive = weakref.ref(registry)

    del registry
    gc.collect()

    assert alive() is None


def test_every_hook_event_is_named_in_the_event_type() -> None:
    from gateway.hooks import EVENTS, BaseHooks

    declared = {name for name in vars(BaseHooks) if name.startswith("on_")}
    assert set(EVENTS) == declared
