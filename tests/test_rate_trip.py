"""The breaker's rate rule (issue 15): `breaker.failure_rate: {window_s, min_calls, threshold}`.

Through the public API: a `Router` on a `FakeUpstream`, one call per request (`retry:
{attempts: 1}`), requests one after another so the counts are exact. The breakers are built by
a `MemoryState` with an injected clock, so the rate window is moved by the test, not by sleeps;
the breaker's reset timeout is real time and kept short.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from gateway import Router
from gateway._outcomes import BreakerState
from gateway._resilience import Breaker, TripReason
from gateway.policy import BreakerPolicy, Policy, ProviderSpec, parse_policy
from gateway.policy.models import FailureRate
from gateway.state.memory import MemoryState
from gateway.testing import FakeUpstream, Fault

FLAKY, BACKUP = "flaky-model", "backup-model"
MESSAGES = [{"role": "user", "content": "hello"}]

POLICY = """
version: 1
defaults:
  retry: {{attempts: 1}}
  breaker: {{reset_timeout_s: {reset_s}{breaker}}}
providers:
  flaky: {{type: openai, model: {flaky}, base_url: "{upstream}/v1", api_key: test-key}}
  backup: {{type: openai, model: {backup}, base_url: "{upstream}/v1", api_key: test-key}}
tasks:
  default: {{chain: [flaky, backup]}}
"""


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Trips(MemoryState):
    """The memory backend, recording each trip (provider, reason) its breakers report before
    passing it on to the router's own `on_trip`, if it gives one."""

    def __init__(self, policy: Policy, clock: Clock) -> None:
        super().__init__(policy.state, clock=clock)
        self.seen: list[tuple[str, TripReason]] = []

    def breaker_factory(
        self,
        on_state_change: Callable[[str, BreakerState], None] | None = None,
        *,
        on_trip: Callable[[str, TripReason], None] | None = None,
    ) -> Callable[[ProviderSpec], Breaker]:
        def heard(provider: str, reason: TripReason) -> None:
            self.seen.append((provider, reason))
            if on_trip is not None:
                on_trip(provider, reason)

        return super().breaker_factory(on_state_change, on_trip=heard)


def policy_for(upstream: FakeUpstream, *, reset_s: float = 60.0, breaker: str = "") -> Policy:
    text = POLICY.format(
        upstream=upstream.url,
        flaky=FLAKY,
        backup=BACKUP,
        reset_s=reset_s,
        breaker=f", {breaker}" if breaker else "",
    )
    return parse_policy(text)


class Run:
    """A router on `policy` and what its requests went through."""

    def __init__(self, policy: Policy, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.trips = Trips(policy, self.clock)
        self.router = Router(policy, hooks=[], state=self.trips, watch_interval_s=None)
        self.paid = 0  # requests that paid a failed call before being served
        self.served: dict[str, int] = {}
        self.flaky_calls = 0

    @property
    def breaker(self) -> Any:
        return self.router.candidates["flaky"].breaker

    async def send(self, n: int, *, step_s: float = 0.0) -> None:
        for _ in range(n):
            routed = await self.router.generate(MESSAGES)
            self.served[routed.provider] = self.served.get(routed.provider, 0) + 1
            outcomes = [a.outcome for a in routed.attempts]
            if any(a.provider == "flaky" and not a.outcome.skipped for a in routed.attempts):
                self.flaky_calls += 1
            if outcomes[0] not in ("success", "breaker_open"):
                self.paid += 1
            self.clock.now += step_s

    async def aclose(self) -> None:
        await self.router.aclose()


@pytest.fixture
async def runs() -> Any:
    made: list[Run] = []

    def make(policy: Policy, clock: Clock | None = None) -> Run:
        made.append(run := Run(policy, clock))
        return run

    yield make
    for run in made:
        await run.aclose()


TWO_IN_THREE = (Fault.server_error(), Fault.server_error(), Fault.ok())


def test_the_default_is_on_and_tuned_for_the_two_cases() -> None:
    """Default on: 10 calls in 30 s, half of them failed. The 67% pattern trips at its tenth call
    (7 failed); 429s at 10% would need 5 in 10 (binomial tail ~0.0016 per full window of 10)."""
    assert BreakerPolicy().failure_rate == FailureRate(window_s=30, min_calls=10, threshold=0.5)


async def test_a_provider_failing_two_calls_in_three_trips_on_the_rate(
    upstream: FakeUpstream, runs: Callable[..., Run]
) -> None:
    """2 calls in 3 fail, never 3 in a row: the consecutive count (fail_max 5) never trips, so
    without the rate rule 40 of 60 requests pay a failed call first; with the default rule the
    breaker opens at the 10th call (7 of 10 failed) and only those 7 requests pay."""
    results: dict[str, Run] = {}
    for name, breaker in (("consecutive only", "failure_rate: null"), ("with the rate", "")):
        upstream.heal()
        upstream.script(FLAKY, *(TWO_IN_THREE * 20))
        run = runs(policy_for(upstream, breaker=breaker))
        await run.send(60, step_s=0.5)  # 60 requests over 30 s: two per second
        results[name] = run

    consecutive, rated = results["consecutive only"], results["with the rate"]
    assert consecutive.paid == 40
    assert consecutive.flaky_calls == 60
    assert consecutive.breaker.state == "closed"
    assert consecutive.trips.seen == []

    assert rated.paid == 7
    assert rated.flaky_calls == 10  # within the first 5 s of the 30 s window
    assert rated.breaker.state == "open"
    assert rated.trips.seen == [("flaky", TripReason.FAILURE_RATE)]
    assert rated.breaker.last_trip is TripReason.FAILURE_RATE
    assert rated.served == {"flaky": 3, "backup": 57}
    print(f"requests that paid a failed call first: {consecutive.paid} of 60 consecutive-only, "
          f"{rated.paid} of 60 with failure_rate")  # fmt: skip


async def test_consecutive_failures_still_trip_first_and_say_so(
    upstream: FakeUpstream, runs: Callable[..., Run]
) -> None:
    upstream.fail_always(FLAKY, Fault.server_error())
    run = runs(policy_for(upstream, breaker="fail_max: 3"))
    await run.send(5)
    assert run.flaky_calls == 3  # 3 calls < min_calls 10: the consecutive rule decided
    assert run.trips.seen == [("flaky", TripReason.CONSECUTIVE)]


async def test_a_healthy_provider_with_occasional_429s_does_not_trip(
    upstream: FakeUpstream, runs: Callable[..., Run]
) -> None:
    """10% rate limits (seeded, with their bursts) over 600 requests at 2 per second, and a
    short burst of three 429s in a row: the breaker never opens."""
    rng = random.Random(15)
    faults = [Fault.rate_limit() if rng.random() < 0.10 else Fault.ok() for _ in range(600)]
    faults[100:103] = [Fault.rate_limit()] * 3
    limited = sum(1 for f in faults if f != Fault.ok())
    assert 45 <= limited <= 75  # 7.5% to 12.5%
    upstream.script(FLAKY, *faults)
    run = runs(policy_for(upstream))
    await run.send(600, step_s=0.5)
    assert run.trips.seen == []
    assert run.flaky_calls == 600  # never skipped
    assert run.paid == limited
    assert run.breaker.state == "closed"


@pytest.mark.parametrize(("pause_s", "opens"), [(0.0, True), (31.0, False)])
async def test_old_failures_leave_the_window(
    upstream: FakeUpstream, runs: Callable[..., Run], pause_s: float, opens: bool
) -> None:
    """8 calls with 4 failures, a pause, then 5 calls with 4 failures. Without the pause the
    breaker opens at the 10th call (6 of 10 failed); after 31 s the first 8 have left the 30 s
    window, 5 calls are too few to judge, and it stays closed."""
    first = (Fault.server_error(), Fault.ok()) * 4
    second = (Fault.server_error(), Fault.server_error(), Fault.ok(),
              Fault.server_error(), Fault.server_error())  # fmt: skip
    upstream.script(FLAKY, *first, *second)
    run = runs(policy_for(upstream))
    await run.send(8)
    run.clock.now += pause_s
    await run.send(5)
    assert run.flaky_calls == (10 if opens else 13)  # opens at the 10th call: 6 of 10 failed
    if opens:
        assert run.trips.seen == [("flaky", TripReason.FAILURE_RATE)]
        assert run.breaker.state == "open"
    else:
        assert run.trips.seen == []
        assert run.breaker.state == "closed"
        assert run.breaker.window.totals() == (5, 4)


async def test_releases_and_request_errors_are_not_calls(
    upstream: FakeUpstream, runs: Callable[..., Run]
) -> None:
    """Error kinds outside trip_on (a 400 caused by the prompt) say nothing about the provider:
    they are neither failures nor calls in the window."""
    upstream.script(FLAKY, *([Fault.status(400)] * 12), *([Fault.server_error()] * 4))
    run = runs(policy_for(upstream, breaker="fail_max: 5"))
    await run.send(12)
    assert run.served == {"backup": 12}  # each 400 fell through
    assert run.breaker.window.totals() == (0, 0)
    await run.send(4)
    assert run.breaker.window.totals() == (4, 4)
    assert run.breaker.state == "closed"  # 4 calls: too few to judge, and not 5 in a row


async def test_a_rate_trip_goes_through_one_probe_then_closes_with_a_fresh_window(
    upstream: FakeUpstream, runs: Callable[..., Run]
) -> None:
    upstream.script(FLAKY, *(TWO_IN_THREE * 4)[:10])  # trips at its 10th call
    run = runs(policy_for(upstream, reset_s=0.2))
    await run.send(10)
    assert run.breaker.state == "open"
    await run.send(3)
    assert run.flaky_calls == 10  # skipped while open

    await asyncio.sleep(0.25)  # the reset timeout (real time) passes
    upstream.script(FLAKY, Fault.hang(0.3))  # a slow probe keeps the breaker half-open
    probe = asyncio.create_task(run.router.generate(MESSAGES))
    await asyncio.sleep(0.1)
    assert run.breaker.state == "half_open"
    other = await run.router.generate(MESSAGES)  # one probe only: this one is not let through
    assert other.attempts[0].outcome == "breaker_open"
    routed = await probe
    assert routed.provider == "flaky"
    assert run.breaker.state == "closed"

    # The closed period is judged on its own calls: one failure right after is no trip.
    upstream.script(FLAKY, Fault.server_error())
    await run.send(1)
    assert run.breaker.state == "closed"
    assert run.breaker.window.totals() == (1, 1)
    assert run.trips.seen == [("flaky", TripReason.FAILURE_RATE)]


async def test_a_failed_probe_reopens_as_a_probe_trip(
    upstream: FakeUpstream, runs: Callable[..., Run]
) -> None:
    upstream.script(FLAKY, *(TWO_IN_THREE * 4)[:10])
    run = runs(policy_for(upstream, reset_s=0.2))
    await run.send(10)
    await asyncio.sleep(0.25)
    upstream.script(FLAKY, Fault.server_error())
    await run.send(1)
    assert run.breaker.state == "open"
    assert run.trips.seen == [("flaky", TripReason.FAILURE_RATE), ("flaky", TripReason.PROBE)]
