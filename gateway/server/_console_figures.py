"""The console's figures over the last minutes, from the Prometheus series every worker shares.

`gateway serve --workers N` aggregates the metrics of all workers (`gateway.metrics`), so
reading them here gives the same figures whichever worker answers. Counters only grow, so a
rate over the last minutes is the difference between now and a sample taken that long ago:
each worker samples the shared totals every `SAMPLE_INTERVAL_S` (`ConsoleFeed`) and keeps
`WINDOW_S` of samples. Until it has that much, the window is as long as its oldest sample
(from when the worker started), and the answer says how long it is.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway._outcomes import AttemptOutcome
from gateway.metrics import exposition

WINDOW_S = 300.0
SAMPLE_INTERVAL_S = 10.0

# Candidates skipped without a call: neither a call made nor the provider's failure.
_NOT_CALLED = frozenset(
    str(o)
    for o in (
        AttemptOutcome.BREAKER_OPEN,
        AttemptOutcome.SATURATED,
        AttemptOutcome.SKIPPED_CONTEXT,
        AttemptOutcome.UNAVAILABLE,
        AttemptOutcome.UNSUPPORTED,
        AttemptOutcome.DEADLINE,
        AttemptOutcome.CANCELLED,
    )
)


@dataclass
class Totals:
    """Cumulative counts, summed over every worker."""

    calls: dict[str, float] = field(default_factory=dict)
    failures: dict[str, float] = field(default_factory=dict)
    latency_sum: dict[str, float] = field(default_factory=dict)
    latency_count: dict[str, float] = field(default_factory=dict)
    cost_by_provider: dict[str, float] = field(default_factory=dict)
    cost_by_task: dict[str, float] = field(default_factory=dict)
    requests: dict[str, float] = field(default_factory=dict)


def _add(table: dict[str, float], key: str, value: float) -> None:
    table[key] = table.get(key, 0.0) + value


def read_totals(text: str) -> Totals:
    totals = Totals()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "gateway_attempts_total":
                provider, outcome = labels.get("provider", ""), labels.get("outcome", "")
                if outcome in _NOT_CALLED:
                    continue
                _add(totals.calls, provider, sample.value)
                if outcome != str(AttemptOutcome.SUCCESS):
                    _add(totals.failures, provider, sample.value)
            elif sample.name == "gateway_attempt_duration_seconds_sum":
                _add(totals.latency_sum, labels.get("provider", ""), sample.value)
            elif sample.name == "gateway_attempt_duration_seconds_count":
                _add(totals.latency_count, labels.get("provider", ""), sample.value)
            elif sample.name == "gateway_cost_usd_total":
                _add(totals.cost_by_provider, labels.get("provider", ""), sample.value)
                _add(totals.cost_by_task, labels.get("task", ""), sample.value)
            elif sample.name == "gateway_requests_total":
                _add(totals.requests, labels.get("task", ""), sample.value)
    return totals


def _totals_now() -> Totals:
    body, _ = exposition()
    return read_totals(body.decode())


def _since(now: dict[str, float], then: dict[str, float], key: str) -> float:
    return max(0.0, now.get(key, 0.0) - then.get(key, 0.0))


class Figures:
    """Samples of the shared totals, and the rates over the last `window_s` they give."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, Totals]] = deque()

    def __repr__(self) -> str:
        return f"Figures({len(self._samples)} samples, window {self.window_s:g}s)"

    def sample(self) -> None:
        """Keep the totals as they are now, as the start of a later window."""
        now = time.monotonic()
        self._samples.append((now, _totals_now()))
        # The oldest kept sample is the first one at most window_s old: rates always span
        # close to the whole window once there is that much history.
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def read(self) -> dict[str, Any]:
        now = time.monotonic()
        current = _totals_now()
        if self._samples:
            start, base = self._samples[0]
            window: float | None = now - start
        else:
            base, window = Totals(), None
        providers = {}
        for name in set(current.calls) | set(current.latency_count) | set(current.cost_by_provider):
            calls = _since(current.calls, base.calls, name)
            failures = _since(current.failures, base.failures, name)
            timed = _since(current.latency_count, base.latency_count, name)
            spent = _since(current.latency_sum, base.latency_sum, name)
            providers[name] = {
                "calls": int(calls),
                "failures": int(failures),
                "error_rate": round(failures / calls, 4) if calls else None,
                "latency_avg_s": round(spent / timed, 4) if timed else None,
                "cost_usd_total": round(current.cost_by_provider.get(name, 0.0), 6),
            }
        tasks = {
            name: {
                "requests_total": int(current.requests.get(name, 0.0)),
                "cost_usd_total": round(current.cost_by_task.get(name, 0.0), 6),
            }
            for name in set(current.requests) | set(current.cost_by_task)
        }
        return {
            "window_s": None if window is None else round(window, 1),
            "providers": providers,
            "tasks": tasks,
            "cost_usd_total": round(sum(current.cost_by_task.values()), 6),
        }
