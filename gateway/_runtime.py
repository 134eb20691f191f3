"""The live side of a policy: one client, breaker and load gauge per provider instance.

A `Runtime` is built from a `Policy`. On reload, providers whose fingerprint is unchanged are
carried over with their client and breaker state; the others are created anew, and the clients
no request uses any more are closed once the last request holding the old runtime ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
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


@dataclass(eq=False)
class Candidate:
    """A provider instance as the router sees it. Shared by every task whose chain names it."""

    spec: ProviderSpec
    client: LLMService | None
    breaker: Breaker
    unavailable_reason: str | None = None
    in_flight: int = 0
    latency_ewma_s: float | None = None

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

    def observe_first_token(self, seconds: float) -> None:
        """A stream's time to its first token."""
        self.observe_latency(seconds)

    def observe_latency(self, seconds: float) -> None:
        previous = self.latency_ewma_s
        self.latency_ewma_s = (
            seconds if previous is None else previous + LATENCY_EWMA_WEIGHT * (seconds - previous)
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One candidate of a task's chain with the per-call parameters the chain gives it."""

    candidate: Candidate
    params: dict[str, Any]


@dataclass(eq=False)
class Runtime:
    policy: Policy
    candidates: dict[str, Candidate]
    prices: PriceBook
    steps: dict[str, tuple[Step, ...]] = field(default_factory=dict)
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
    ) -> Sequence[Step]:
        """The order to try the task's chain in for one request (`stream`: it is streamed)."""
        steps = self.chain(task)
        if task.strategy == "ordered" or len(steps) < 2:
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
            # Candidates never measured go first, in chain order, so each gets measured once.
            return sorted(steps, key=lambda s: s.candidate.latency_ewma_s or 0.0)
        # weighted: draw the first by weight, keep the rest as written.
        weights = [s.candidate.spec.weight for s in steps]
        if sum(weights) <= 0:
            return steps
        first = random.choices(range(len(steps)), weights=weights)[0]
        return (steps[first], *steps[:first], *steps[first + 1 :])

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


def _step(candidates: dict[str, Candidate], entry: ChainEntry) -> Step:
    return Step(candidates[entry.provider], dict(entry.params))


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
