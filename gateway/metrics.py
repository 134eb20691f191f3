"""Prometheus series for the router's events, and the ways to expose them.

`GatewayMetrics` implements `RouterHooks`: register it with the router and every request,
attempt, retry, fallback, token bill and breaker change lands in the `gateway_*` series listed
in docs/metrics.md (their names and labels are a contract shared with the alert rules and the
Grafana dashboard in deploy/).

Exposition: `exposition()` for a handler you write, `asgi_app()` to mount in FastAPI, `serve()`
for a standalone background HTTP server. When `PROMETHEUS_MULTIPROC_DIR` is set (several worker
processes), all three aggregate every process's values; set that variable before anything
imports prometheus_client, and call `mark_process_dead(pid)` when a worker exits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_asgi_app,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway._outcomes import (
    AttemptOutcome,
    BreakerState,
    ErrorKind,
    PolicyOutcome,
    RequestOutcome,
)
from gateway._resilience import TripReason
from gateway.hooks import BaseHooks
from gateway.types import Usage

__all__ = [
    "ATTEMPT_DURATION_BUCKETS",
    "OVERHEAD_BUCKETS",
    "TTFT_BUCKETS",
    "GatewayMetrics",
    "MetricsServer",
    "asgi_app",
    "default_metrics",
    "exposition",
    "mark_process_dead",
    "serve",
]

log = logging.getLogger(__name__)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# LLM calls take from tens of milliseconds (a cached or tiny reply) to minutes (long generations).
ATTEMPT_DURATION_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300,
)  # fmt: skip
TTFT_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# The router's own work is bookkeeping: microseconds normally, milliseconds is already bad.
OVERHEAD_BUCKETS: Final = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip

# Closed-vocabulary labels: anything outside these sets is recorded as OTHER (and logged once),
# so a caller passing free text by mistake cannot blow up the number of series.
OTHER: Final = "other"
UNKNOWN: Final = "unknown"
REQUEST_OUTCOMES: Final = frozenset(RequestOutcome)
ATTEMPT_OUTCOMES: Final = frozenset(AttemptOutcome) - {AttemptOutcome.STREAMING}
"""How an attempt ended (a stream in progress is never recorded)."""
LEAVE_REASONS: Final = ATTEMPT_OUTCOMES - {AttemptOutcome.SUCCESS}
"""Why a call is retried or a request falls back: an ErrorKind or a skip reason."""
BREAKER_STATES: Final[dict[str, int]] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}
POLICY_OUTCOMES: Final = frozenset(PolicyOutcome)
TRIP_REASONS: Final = frozenset(TripReason)

_MAX_WARNINGS: Final = 200

_MetricT = TypeVar("_MetricT", bound=MetricWrapperBase)


class _Children(Generic[_MetricT]):
    """A metric's labelled children, resolved once per label tuple.

    prometheus_client's `labels()` validates and locks on every call; hooks run on every request,
    so the child for a label tuple is looked up in a plain dict after the first time.
    """

    __slots__ = ("_cache", "metric")

    def __init__(self, metric: _MetricT) -> None:
        self.metric = metric
        self._cache: dict[tuple[str, ...], _MetricT] = {}

    def get(self, *labels: str) -> _MetricT:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self.metric.labels(*labels)
        return child

    def forget(self, *labels: str) -> None:
        """Drop the series for these labels (it reappears if they are used again)."""
        self._cache.pop(labels, None)
        with contextlib.suppress(KeyError):
            self.metric.remove(*labels)


class GatewayMetrics(BaseHooks):
    """`RouterHooks` that record the gateway's Prometheus series on one registry.

    One instance exists per registry: constructing it again with the same registry returns the
    existing instance (registering the same series twice would raise in prometheus_client).
    Every hook is cheap and never raises; odd input is logged once and recorded as best it can
    (unknown vocabulary as `other`, non-finite or negative numbers dropped).
    """

    _instances_lock = threading.Lock()
    # The instance is kept on its registry, not in a module-level map: the two live and die
    # together, and a registry dropped by its owner (tests make many) is not kept alive.
    _ATTRIBUTE: Final = "_gateway_metrics"

    def __new__(cls, registry: CollectorRegistry | None = None) -> GatewayMetrics:
        registry = REGISTRY if registry is None else registry
        with cls._instances_lock:
            instance = getattr(registry, cls._ATTRIBUTE, None)
            if not isinstance(instance, GatewayMetrics):
                instance = super().__new__(cls)
                instance._build(registry)
                setattr(registry, cls._ATTRIBUTE, instance)
            return instance

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Built once, in `__new__`; see the class docstring."""

    def _build(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._breaker_states: dict[str, str] = {}
        self._policy_labels: tuple[str, str] | None = None
        self._warned: set[tuple[str, str]] = set()
        if _multiprocess_dir() and not _values_in_files():
            log.warning(
                "%s is set but prometheus_client was imported before it was: this process's "
                "metrics stay in memory and are missing from the aggregated exposition; "
                "set %s before the process starts",
                MULTIPROC_ENV,
                MULTIPROC_ENV,
            )

        def counter(name: str, doc: str, labels: Iterable[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(
            name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]
        ) -> Histogram:
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        self.requests = _Children(
            counter("gateway_requests_total", "Requests by final outcome.", ("task", "outcome"))
        )
        self.request_duration = _Children(
            histogram(
                "gateway_request_duration_seconds",
                "Whole request time, all attempts and backoff included.",
                ("task",),
                ATTEMPT_DURATION_BUCKETS,
            )
        )
        self.attempts = _Children(
            counter(
                "gateway_attempts_total",
                "Candidates tried or skipped, by outcome (success, error kind or skip reason).",
                ("task", "provider", "model", "outcome"),
            )
        )
        self.attempt_duration = _Children(
            histogram(
                "gateway_attempt_duration_seconds",
                "Time of one upstream call (skipped candidates are not observed).",
                ("provider", "model"),
                ATTEMPT_DURATION_BUCKETS,
            )
        )
        self.ttft = _Children(
            histogram(
                "gateway_time_to_first_token_seconds",
                "Time from the start of a streaming call to its first text delta.",
                ("provider", "model"),
                TTFT_BUCKETS,
            )
        )
        self.retries = _Children(
            counter(
                "gateway_retries_total",
                "Failed calls retried on the same candidate, by error kind.",
                ("provider", "model", "kind"),
            )
        )
        self.fallbacks = _Children(
            counter(
                "gateway_fallbacks_total",
                "Moves from one candidate to the next, by the reason the first was left.",
                ("task", "from_provider", "to_provider", "kind"),
            )
        )
        self.tokens = _Children(
            counter(
                "gateway_tokens_total",
                "Billed tokens; cached_input is the cached subset of input.",
                ("provider", "model", "type"),
            )
        )
        self.cost = _Children(
            counter(
                "gateway_cost_usd_total",
                "Estimated spend in US dollars from the policy's prices.",
                ("task", "provider", "model"),
            )
        )
        self.unpriced = _Children(
            counter(
                "gateway_unpriced_requests_total",
                "Billed calls to a model without a known price (missing from cost).",
                ("provider", "model"),
            )
        )
        self.circuit_state = _Children(
            Gauge(
                "gateway_circuit_state",
                "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                ("provider",),
                registry=registry,
                multiprocess_mode="livemax",
            )
        )
        self.circuit_transitions = _Children(
            counter(
                "gateway_circuit_transitions_total",
                "Circuit breaker state changes, by the state entered.",
                ("provider", "to_state"),
            )
        )
        self.breaker_trips = _Children(
            counter(
                "gateway_breaker_trips_total",
                "Circuit breaker openings decided by this process, by reason: consecutive, "
                "failure_rate or probe (a failed half-open trial call).",
                ("provider", "reason"),
            )
        )
        self.overhead = _Children(
            histogram(
                "gateway_overhead_seconds",
                "Router time per request not spent waiting on an upstream or in backoff.",
                ("task",),
                OVERHEAD_BUCKETS,
            )
        )
        self.policy_reloads = _Children(
            counter(
                "gateway_policy_reloads_total",
                "Policy loads and reloads, applied or rejected.",
                ("outcome",),
            )
        )
        self.policy_info = Gauge(
            "gateway_policy_info",
            "The policy file now serving (always 1).",
            ("version", "sha256"),
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.state_backend_errors = _Children(
            counter(
                "gateway_state_backend_errors_total",
                "Failed reads or writes of shared state (local state was used instead).",
                ("backend",),
            )
        )

    def __repr__(self) -> str:
        return f"GatewayMetrics(registry={self.registry!r})"

    # -- RouterHooks --------------------------------------------------------------------------

    def on_request(
        self, *, task: str, outcome: RequestOutcome, duration_s: float, overhead_s: float
    ) -> None:
        try:
            task = _name(task)
            self.requests.get(task, self._vocab("outcome", outcome, REQUEST_OUTCOMES)).inc()
            seconds = _amount(duration_s)
            if seconds is not None:
                self.request_duration.get(task).observe(seconds)
            overhead = _amount(overhead_s)
            if overhead is not None:
                self.overhead.get(task).observe(overhead)
        except Exception as exc:
            self._hook_failed("on_request", exc)

    def on_attempt(
        self,
        *,
        task: str,
        provider: str,
        model: str,
        outcome: AttemptOutcome,
        duration_s: float | None,
    ) -> None:
        try:
            provider, model = _name(provider), _name(model)
            label = self._vocab("outcome", outcome, ATTEMPT_OUTCOMES)
            self.attempts.get(_name(task), provider, model, label).inc()
            if duration_s is not None:
                seconds = _amount(duration_s)
                if seconds is not None:
                    self.attempt_duration.get(provider, model).observe(seconds)
        except Exception as exc:
            self._hook_failed("on_attempt", exc)

    def on_first_token(self, *, provider: str, model: str, seconds: float) -> None:
        try:
            amount = _amount(seconds)
            if amount is not None:
                self.ttft.get(_name(provider), _name(model)).observe(amount)
        except Exception as exc:
            self._hook_failed("on_first_token", exc)

    def on_retry(self, *, provider: str, model: str, kind: ErrorKind) -> None:
        try:
            label = self._vocab("kind", kind, LEAVE_REASONS)
            self.retries.get(_name(provider), _name(model), label).inc()
        except Exception as exc:
            self._hook_failed("on_retry", exc)

    def on_fallback(
        self, *, task: str, from_provider: str, to_provider: str, kind: AttemptOutcome
    ) -> None:
        try:
            label = self._vocab("kind", kind, LEAVE_REASONS)
            self.fallbacks.get(_name(task), _name(from_provider), _name(to_provider), label).inc()
        except Exception as exc:
            self._hook_failed("on_fallback", exc)

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        try:
            provider, model = _name(provider), _name(model)
            for token_type, count in (
                ("input", getattr(usage, "input_tokens", 0)),
                ("output", getattr(usage, "output_tokens", 0)),
                ("cached_input", getattr(usage, "cached_input_tokens", 0)),
            ):
                tokens = _amount(count)
                if tokens is not None:
                    # The series exists from the first request on; adding 0 would only cost
                    # a lock (most requests have no cached input).
                    child = self.tokens.get(provider, model, token_type)
                    if tokens:
                        child.inc(tokens)
            if cost_usd is None:
                self.unpriced.get(provider, model).inc()
                return
            cost = _amount(cost_usd)
            if cost is None:
                self._warn_once("cost_usd", repr(cost_usd))
            else:
                child = self.cost.get(_name(task), provider, model)
                if cost:
                    child.inc(cost)
        except Exception as exc:
            self._hook_failed("on_usage", exc)

    def on_breaker_state(self, *, provider: str, state: BreakerState) -> None:
        try:
            provider = _name(provider)
            # pybreaker spells it half-open; a hook caller reading it from there may too.
            entered = str(state).replace("-", "_")
            level = BREAKER_STATES.get(entered)
            if level is None:
                self._warn_once("state", repr(state))
                return
            with self._lock:  # so concurrent reports cannot leave the gauge on an older state
                # A new breaker announces itself as closed; that is a birth, not a transition.
                previous = self._breaker_states.get(provider, BreakerState.CLOSED)
                self._breaker_states[provider] = entered
                self.circuit_state.get(provider).set(level)
            if entered != previous:
                self.circuit_transitions.get(provider, entered).inc()
        except Exception as exc:
            self._hook_failed("on_breaker_state", exc)

    def on_breaker_trip(self, *, provider: str, reason: TripReason) -> None:
        try:
            label = self._vocab("reason", reason, TRIP_REASONS)
            self.breaker_trips.get(_name(provider), label).inc()
        except Exception as exc:
            self._hook_failed("on_breaker_trip", exc)

    def on_provider_removed(self, *, provider: str) -> None:
        try:
            provider = _name(provider)
            with self._lock:
                self._breaker_states.pop(provider, None)
                if _values_in_files():
                    # A worker cannot delete a series from its mmap file: 0 (closed) is the
                    # value that keeps the `livemax` aggregate and the alerts quiet.
                    self.circuit_state.get(provider).set(0)
                else:
                    self.circuit_state.forget(provider)
        except Exception as exc:
            self._hook_failed("on_provider_removed", exc)

    def on_state_backend_error(self, *, backend: str) -> None:
        try:
            self.state_backend_errors.get(_name(backend)).inc()
        except Exception as exc:
            self._hook_failed("on_state_backend_error", exc)

    def on_policy(self, *, outcome: PolicyOutcome, version: int | None, sha256: str | None) -> None:
        try:
            label = self._vocab("outcome", outcome, POLICY_OUTCOMES)
            self.policy_reloads.get(label).inc()
            if label == PolicyOutcome.APPLIED:
                self._set_policy_info(_name(version), _name(sha256))
        except Exception as exc:
            self._hook_failed("on_policy", exc)

    # -- helpers ------------------------------------------------------------------------------

    def _set_policy_info(self, version: str, sha256: str) -> None:
        labels = (version, sha256)
        with self._lock:
            previous, self._policy_labels = self._policy_labels, labels
            if previous is not None and previous != labels:
                if _values_in_files():
                    # prometheus_client cannot delete a series from a worker's mmap file;
                    # zero it instead, and the aggregating collector drops zeroed info series.
                    self.policy_info.labels(*previous).set(0)
                else:
                    self.policy_info.remove(*previous)
            self.policy_info.labels(*labels).set(1)

    def _vocab(self, field: str, value: object, allowed: frozenset[str]) -> str:
        if isinstance(value, str) and value in allowed:
            return value.__str__()
        self._warn_once(field, repr(value))
        return OTHER

    def _warn_once(self, field: str, value: str) -> None:
        key = (field, value[:100])
        if key in self._warned or len(self._warned) >= _MAX_WARNINGS:
            return
        self._warned.add(key)
        log.warning("metrics: unexpected %s %s, recorded as %r", field, key[1], OTHER)

    def _hook_failed(self, hook: str, exc: Exception) -> None:
        # A metrics bug must never fail a request; say so once per hook and error type.
        key = (hook, type(exc).__name__)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning("metrics: %s failed and was skipped: %r", hook, exc)


def _name(value: object) -> str:
    """A policy-given name as a label value; an absent one shows up as `unknown`."""
    if type(value) is str and value:
        return value
    if value is None or value == "":
        return UNKNOWN
    return str(value)


def _amount(value: object) -> float | None:
    """A finite, non-negative number, or None (counters cannot go down; NaN poisons sums)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number


def default_metrics() -> GatewayMetrics:
    """The `GatewayMetrics` on prometheus_client's default registry."""
    return GatewayMetrics(REGISTRY)


# -- exposition -------------------------------------------------------------------------------


def _multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _values_in_files() -> bool:
    """Whether this process stores values in multiprocess files (fixed when the client loaded)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _AllProcesses(Collector):
    """Every live worker's values, summed or combined per each series' multiprocess mode."""

    def __init__(self, path: str) -> None:
        self._inner = multiprocess.MultiProcessCollector(None, path=path)

    def collect(self) -> Iterable[Metric]:
        for metric in self._inner.collect():
            if metric.name == "gateway_policy_info":
                # Zero marks a label set a worker has moved on from (see _set_policy_info).
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric


def _serving_registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    """The registry to expose: the one given, else all processes' or the default one."""
    if registry is not None:
        return registry
    path = _multiprocess_dir()
    if path is None:
        return REGISTRY
    aggregated = CollectorRegistry()
    aggregated.register(_AllProcesses(path))
    return aggregated


def exposition(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The text exposition body and its content type, for a /metrics handler."""
    return generate_latest(_serving_registry(registry)), CONTENT_TYPE_PLAIN_0_0_4


def asgi_app(registry: CollectorRegistry | None = None) -> Any:
    """An ASGI app serving the exposition, e.g. `app.mount("/metrics", asgi_app())`."""
    return make_asgi_app(_serving_registry(registry))


@dataclass
class MetricsServer:
    """A background /metrics HTTP server started by `serve`; `shutdown()` stops it."""

    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve the exposition over HTTP from a daemon thread; port 0 picks a free port."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535 (0 picks a free one), got {port!r}")
    httpd, thread = start_http_server(port, addr=addr, registry=_serving_registry(registry))
    return MetricsServer(host=addr, port=int(httpd.server_address[1]), _httpd=httpd, _thread=thread)


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Drop an exited worker's live gauges (breaker state, policy info) from the aggregate.

    Call it from the process manager's worker-exit hook (e.g. gunicorn's `child_exit`).
    Its counters and histograms stay: they are totals the worker already contributed.
    """
    path = path or _multiprocess_dir()
    if path is None:
        raise ValueError(
            f"mark_process_dead needs the metrics directory: set {MULTIPROC_ENV} or pass path="
        )
    multiprocess.mark_process_dead(pid, path)
