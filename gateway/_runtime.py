"""The live side of a policy: one client, breaker and load gauge per provider instance.

A `Runtime` is built from a `Policy`. On reload, providers whose fingerprint is unchanged are
carried over with their client and breaker state; the others are created anew, and the clients
no request uses any more are closed once the last request holding the old runtime ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway._outcomes import BreakerState
from gateway._resilience import Breaker
from gateway._secrets import mask_text, masked_as, scrub_text
from gateway.policy import ChainEntry, Policy, ProviderSpec, TaskSpec
from gateway.pricing import PriceBook
from gateway.providers import LLMFactory, LLMService, estimate_tokens
from gateway.types import Message, content_text

log = logging.getLogger("gateway")

# Expected output size when the caller gives no max_tokens, for the `cheapest` estimate.
DEFAULT_EXPECTED_OUTPUT_TOKENS = 256
LATENCY_EWMA_WEIGHT = 0.2
"""The least weight a new latency measurement gets; one taken after a gap of a half-life
gets half the weight, after two half-lives three quarters, and so on."""
DEFAULT_LATENCY_HALF_LIFE_S = 300.0
RAMP_START_SHARE = 0.1
"""Slow start: the share of the first picks a provider gets the moment its breaker closes;
it grows linearly to all of them over the breaker's `ramp_s`."""

Clock = Callable[[], float]

# The clock that dates latency measurements and slow-start ramps, and the random source of
# `weighted`, `fastest`'s exploration and slow start. Tests replace them (set_routing_clock,
# set_routing_rng) to step time and draws without sleeping.
_clock: Clock = time.monotonic
_rng: random.Random = random.Random()


def set_routing_clock(clock: Clock | None) -> None:
    """Testing switch: the monotonic clock routing decisions read (None: the real one)."""
    global _clock
    _clock = time.monotonic if clock is None else clock


def set_routing_rng(rng: random.Random | None) -> None:
    """Testing switch: the random source routing decisions draw from (None: a fresh one)."""
    global _rng
    _rng = random.Random() if rng is None else rng


@dataclass(slots=True)
class LatencyEstimate:
    """An exponentially weighted average of one kind of latency, whose old measurements lose
    weight with time: a measurement taken `age` seconds after the previous one gets the weight
    `max(LATENCY_EWMA_WEIGHT, 1 - 0.5 ** (age / half_life))`."""

    value_s: float | None = None
    """The estimate; None until first measured."""
    measured_at: float | None = None
    """When it was last measured (routing clock)."""
    retried_at: float | None = None
    """When `fastest` last put it first because it had gone unmeasured for a half-life."""

    def observe(self, seconds: float, now: float, half_life_s: float) -> None:
        if self.value_s is None or self.measured_at is None:
            self.value_s = seconds
        else:
            age = max(0.0, now - self.measured_at)
            weight = max(LATENCY_EWMA_WEIGHT, 1.0 - 0.5 ** (age / half_life_s))
            self.value_s += weight * (seconds - self.value_s)
        self.measured_at = now

    def idle_s(self, now: float) -> float | None:
        """Seconds since it was last measured or last re-tried for being idle; None when it
        was never measured."""
        if self.measured_at is None:
            return None
        last = self.measured_at
        if self.retried_at is not None and self.retried_at > last:
            last = self.retried_at
        return now - last


@dataclass(eq=False)
class Candidate:
    """A provider instance as the router sees it. Shared by every task whose chain names it."""

    spec: ProviderSpec
    client: LLMService | None
    breaker: Breaker
    unavailable_reason: str | None = None
    in_flight: int = 0
    whole: LatencyEstimate = field(default_factory=LatencyEstimate)
    """Latency of whole (non-streamed) answers, from the call to the full answer."""
    first_token: LatencyEstimate = field(default_factory=LatencyEstimate)
    """Streams' time to their first token; the rest of a stream is paced by its reader."""
    half_life_s: float = DEFAULT_LATENCY_HALF_LIFE_S
    """How fast old latency measurements lose weight: the shortest `latency_half_life_s` of
    the tasks whose chain names this provider (set by `build_runtime`)."""
    breaker_seen: BreakerState | None = None
    """The breaker state the last ordering saw (slow start watches it close)."""
    ramp_from: float | None = None
    """Slow start: when its breaker was seen closing again (routing clock); None: no ramp."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model(self) -> str:
        if self.client is not None and self.client.model:
            return self.client.model
        return self.spec.model or ""

    @property
    def saturated(self) -> bool:
        limit = self.spec.max_concurrency
        return limit is not None and self.in_flight >= limit

    @property
    def latency_s(self) -> float | None:
        """The whole-answer latency estimate (non-streamed requests), seconds."""
        return self.whole.value_s

    @property
    def first_token_s(self) -> float | None:
        """The time-to-first-token estimate (streamed requests), seconds."""
        return self.first_token.value_s

    @property
    def latency_ewma_s(self) -> float | None:
        """The estimate `fastest` ranks non-streamed requests on (`latency_s`); kept for the
        explain rows and the monitoring API that show it under this name."""
        return self.whole.value_s

    @property
    def ramp_share(self) -> float | None:
        """Slow start: the share of first picks it gets now; None when it is not ramping."""
        return self.ramp_share_at(_clock())

    def observe_first_token(self, seconds: float) -> None:
        """A stream's time to its first token."""
        self.first_token.observe(seconds, _clock(), self.half_life_s)

    def observe_latency(self, seconds: float) -> None:
        """A whole answer's latency."""
        self.whole.observe(seconds, _clock(), self.half_life_s)

    def estimate(self, stream: bool) -> LatencyEstimate:
        return self.first_token if stream else self.whole

    def usable(self) -> bool:
        """Built and not behind an open breaker: a call now could reach it."""
        return self.client is not None and not self.breaker.refusing()

    def watch_breaker(self, now: float) -> None:
        """Start a slow-start ramp when the breaker is seen closed after being seen otherwise,
        and drop a ramp when it opens again."""
        state = self.breaker.state
        seen, self.breaker_seen = self.breaker_seen, state
        if state is not BreakerState.CLOSED:
            self.ramp_from = None
        elif seen is not None and seen is not BreakerState.CLOSED:
            self.ramp_from = now

    def ramp_share_at(self, now: float) -> float | None:
        ramp_s = self.spec.breaker.ramp_s
        if ramp_s is None or self.ramp_from is None:
            return None
        progress = (now - self.ramp_from) / ramp_s
        if progress >= 1.0:
            self.ramp_from = None
            return None
        return RAMP_START_SHARE + (1.0 - RAMP_START_SHARE) * max(progress, 0.0)


@dataclass(frozen=True, slots=True)
class Step:
    """One candidate of a task's chain with the per-call parameters the chain gives it."""

    candidate: Candidate
    params: dict[str, Any]
    dimensions: int | None = None
    """Embedding tasks: the length of the vectors this step answers with, when known."""


@dataclass(eq=False)
class Runtime:
    policy: Policy
    candidates: dict[str, Candidate]
    prices: PriceBook
    steps: dict[str, tuple[Step, ...]] = field(default_factory=dict)
    ramped: dict[str, tuple[Candidate, ...]] = field(default_factory=dict)
    """Per task: the chain's candidates with slow start (`breaker.ramp_s`) configured."""
    in_flight: int = 0
    retired: bool = False
    _to_close: list[LLMService] = field(default_factory=list)
    closing: set[asyncio.Task[None]] = field(default_factory=set)
    """Background closes of dropped clients; shared by a router's successive runtimes so the
    last one can wait for them all at shutdown."""

    def chain(self, task: TaskSpec) -> tuple[Step, ...]:
        steps = self.steps.get(task.name)
        if steps is None:
            steps = tuple(_step(self.candidates, entry) for entry in task.chain)
            self.steps[task.name] = steps
        return steps

    def ordered(
        self,
        task: TaskSpec,
        messages: Sequence[Message],
        max_tokens: int | None,
        *,
        stream: bool = False,
        preview: bool = False,
    ) -> Sequence[Step]:
        """The order to try the task's chain in for one request (`stream`: it is streamed).

        `preview`: the order a request would most likely take now, for `explain`: nothing is
        drawn at random and no idle re-try is used up (`weighted` shows its heaviest provider
        first; `fastest` and slow start show the order before exploration and ramping).
        """
        steps = self.chain(task)
        if len(steps) < 2:
            return steps
        now = _clock()
        ramped = self.ramped.get(task.name)
        if ramped is None:
            ramped = self.ramped[task.name] = tuple(
                s.candidate for s in steps if s.candidate.spec.breaker.ramp_s is not None
            )
        for candidate in ramped:
            candidate.watch_breaker(now)
        order = self._by_strategy(task, steps, messages, max_tokens, stream, preview, now)
        if ramped and not preview:
            order = _slow_start(order, now)
        return order

    def _by_strategy(
        self,
        task: TaskSpec,
        steps: tuple[Step, ...],
        messages: Sequence[Message],
        max_tokens: int | None,
        stream: bool,
        preview: bool,
        now: float,
    ) -> Sequence[Step]:
        if task.strategy == "ordered":
            return steps
        if task.strategy == "cheapest":
            input_tokens = prompt_tokens(messages)
            output_tokens = max_tokens or DEFAULT_EXPECTED_OUTPUT_TOKENS

            def expected_cost(step: Step) -> float:
                cost = self.prices.estimate_cost(
                    step.candidate.model, input_tokens, output_tokens, step.candidate.spec.type
                )
                return float("inf") if cost is None else cost

            return sorted(steps, key=expected_cost)
        if task.strategy == "fastest":
            return _fastest(task, steps, stream, preview, now)
        if task.strategy == "least_busy":
            # Stable: equally busy candidates keep their chain order.
            return sorted(steps, key=lambda s: s.candidate.in_flight)
        # weighted: draw the first by weight, keep the rest as written.
        weights = [s.candidate.spec.weight for s in steps]
        if sum(weights) <= 0:
            return steps
        if preview:
            first = weights.index(max(weights))
        else:
            first = _rng.choices(range(len(steps)), weights=weights)[0]
        return _first(steps, first)

    def context_window(self, candidate: Candidate) -> int | None:
        if candidate.spec.max_input_tokens is not None:
            return candidate.spec.max_input_tokens
        return self.prices.context_window(candidate.model, candidate.spec.type)

    async def release(self) -> None:
        """One request holding this runtime ended; close dropped clients when it was the last.

        The close runs in the background: draining a pool can take seconds under load, and
        the request that happens to end last must neither wait for it past its deadline nor,
        if cancelled meanwhile, leave the remaining clients open.
        """
        self.in_flight -= 1
        if self.retired and self.in_flight == 0 and self._to_close:
            task = asyncio.get_running_loop().create_task(
                self.close_dropped(), name="gateway-close-dropped-clients"
            )
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)

    async def close_dropped(self) -> None:
        clients, self._to_close = self._to_close, []
        for client in clients:
            try:
                await client.aclose()
            except Exception:  # closing a pool must never break a reload
                log.warning("closing provider %s failed", client.name, exc_info=True)


def _first(order: Sequence[Step], index: int) -> Sequence[Step]:
    """`order` with the step at `index` moved to the front, the others as they were."""
    if index == 0:
        return order
    return (order[index], *order[:index], *order[index + 1 :])


def _fastest(
    task: TaskSpec, steps: tuple[Step, ...], stream: bool, preview: bool, now: float
) -> Sequence[Step]:
    """Lowest latency estimate first: time to first token for streams, whole-answer latency
    otherwise. Candidates never measured go first, in chain order, so each gets measured.

    Once every callable candidate is measured, one of the others goes first instead: the one
    unmeasured for longest, when that is more than the task's `latency_half_life_s` (one
    request per half-life re-tries it), else, for a share `explore` of requests, one drawn
    at random. So a provider demoted by a slow spell is measured again and can win back.
    """

    def key(step: Step) -> float:
        value = step.candidate.estimate(stream).value_s
        return -1.0 if value is None else value  # latencies are >= 0: unmeasured first

    order = sorted(steps, key=key)
    if preview:
        return order
    callable_at = [i for i, s in enumerate(order) if s.candidate.client is not None]
    if len(callable_at) < 2:
        return order
    if any(order[i].candidate.estimate(stream).value_s is None for i in callable_at):
        return order  # someone is still to be measured, and already goes first
    half_life = task.latency_half_life_s
    idle_at, longest = -1, half_life
    for i in callable_at[1:]:
        idle = order[i].candidate.estimate(stream).idle_s(now)
        if idle is not None and idle > longest and order[i].candidate.usable():
            idle_at, longest = i, idle
    if idle_at >= 0:
        order[idle_at].candidate.estimate(stream).retried_at = now
        return _first(order, idle_at)
    if task.explore > 0 and _rng.random() < task.explore:
        others = [i for i in callable_at[1:] if order[i].candidate.usable()]
        if others:
            return _first(order, _rng.choice(others))
    return order


def _slow_start(order: Sequence[Step], now: float) -> Sequence[Step]:
    """A ramping candidate that would go first keeps that place with the probability of its
    ramp share; otherwise it goes behind the next usable candidate that keeps its own."""
    for i, step in enumerate(order):
        candidate = step.candidate
        share = candidate.ramp_share_at(now)
        if share is None:
            if i == 0 or candidate.usable():
                return _first(order, i)
            continue  # a candidate the walk would skip takes no first pick from a ramp
        if _rng.random() < share:
            return _first(order, i)
    return order  # every candidate held back: the order as it was


def _step(candidates: dict[str, Candidate], entry: ChainEntry) -> Step:
    return Step(candidates[entry.provider], dict(entry.params), entry.dimensions)


def prompt_tokens(messages: Sequence[Message]) -> int:
    """A cheap estimate of the prompt's size, for routing decisions (not for billing)."""
    return estimate_tokens("".join(content_text(m.get("content")) for m in messages))


def build_runtime(
    policy: Policy,
    *,
    previous: Runtime | None = None,
    on_breaker_state: Callable[[str, BreakerState], None] | None = None,
    breaker_factory: Callable[[ProviderSpec], Breaker] | None = None,
) -> Runtime:
    """Create clients and breakers for `policy`, reusing unchanged ones from `previous`."""
    reusable: dict[str, Candidate] = {}
    if previous is not None:
        reusable = {
            c.spec.fingerprint(): c for c in previous.candidates.values() if c.client is not None
        }
    candidates: dict[str, Candidate] = {}
    for name, spec in policy.providers.items():
        old = reusable.pop(spec.fingerprint(), None)
        if old is not None and old.name == name:
            old.spec = spec
            candidates[name] = old
            continue
        if old is not None:
            reusable[old.spec.fingerprint()] = old
        candidates[name] = _new_candidate(spec, on_breaker_state, breaker_factory)
    half_lives: dict[str, float] = {}
    for task in policy.tasks.values():
        for entry in task.chain:
            known = half_lives.get(entry.provider, task.latency_half_life_s)
            half_lives[entry.provider] = min(known, task.latency_half_life_s)
    for name, candidate in candidates.items():
        candidate.half_life_s = half_lives.get(name, DEFAULT_LATENCY_HALF_LIFE_S)
    runtime = Runtime(policy=policy, candidates=candidates, prices=PriceBook(policy.prices))
    for candidate in candidates.values():
        # Look up every context window now, so that reading the bundled price map happens at
        # load, not in the first request.
        runtime.context_window(candidate)
    if previous is not None:
        runtime.closing = previous.closing
        kept = {id(c) for c in candidates.values()}
        previous._to_close.extend(
            c.client
            for c in previous.candidates.values()
            if c.client is not None and id(c) not in kept
        )
    return runtime


def _new_candidate(
    spec: ProviderSpec,
    on_breaker_state: Callable[[str, BreakerState], None] | None,
    breaker_factory: Callable[[ProviderSpec], Breaker] | None,
) -> Candidate:
    breaker = (
        breaker_factory(spec)
        if breaker_factory is not None
        else Breaker(spec.name, spec.breaker, on_state_change=on_breaker_state)
    )
    if on_breaker_state is not None:
        on_breaker_state(spec.name, breaker.state)
    if spec.unavailable_reason:
        return Candidate(spec, None, breaker, unavailable_reason=spec.unavailable_reason)
    try:
        client = LLMFactory.create(spec.type, **spec.factory_options())
    except Exception as exc:
        # A provider that cannot be built is skipped with its reason; the others still serve.
        # The reason is shown (logs, explain, the monitoring API): credentials are masked.
        key = spec.api_key.get_secret_value() if spec.api_key else None
        reason = mask_text(scrub_text(f"{type(exc).__name__}: {exc}", masked_as([key])))
        log.warning("provider %s is unavailable: %s", spec.name, reason)
        return Candidate(spec, None, breaker, unavailable_reason=reason)
    return Candidate(spec, client, breaker)


async def close_runtime(runtime: Runtime) -> None:
    runtime._to_close.extend(c.client for c in runtime.candidates.values() if c.client)
    await runtime.close_dropped()
    if runtime.closing:
        await asyncio.gather(*runtime.closing, return_exceptions=True)
    await asyncio.sleep(0)
