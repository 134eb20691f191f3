"""`gateway demo`: the router's story on embedded fake upstreams, with a live terminal view.

Four acts, through the real router and the real SDKs over real HTTP on 127.0.0.1:
all healthy; the primary rate-limits (retries honour Retry-After); the primary goes down
(fall-through, its breaker opens, traffic goes straight to the backup); the primary recovers
(a half-open probe closes the breaker). No keys, no network, about 15 seconds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, TextIO

from gateway._outcomes import AttemptOutcome, BreakerState, ErrorKind, RequestOutcome
from gateway._router import Router
from gateway.errors import GatewayError
from gateway.hooks import BaseHooks
from gateway.metrics import GatewayMetrics
from gateway.policy import parse_policy
from gateway.types import Usage

TASK = "summarize"
PRIMARY, BACKUP = "sonnet", "mini"
PRIMARY_MODEL = "claude-sonnet-4-5"


def demo_policy_text() -> str:
    return files("gateway.policy_data").joinpath("demo.yaml").read_text()


@dataclass
class DemoView(BaseHooks):
    """RouterHooks that keep what the live view shows."""

    served: Counter[str] = field(default_factory=Counter)
    attempts: Counter[tuple[str, AttemptOutcome]] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    breakers: dict[str, BreakerState] = field(default_factory=dict)
    transitions: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cost_usd: float = 0.0
    requests: Counter[RequestOutcome] = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)

    def on_request(
        self, *, task: str, outcome: RequestOutcome, duration_s: float, overhead_s: float
    ) -> None:
        self.requests[outcome] += 1

    def on_attempt(
        self,
        *,
        task: str,
        provider: str,
        model: str,
        outcome: AttemptOutcome,
        duration_s: float | None,
    ) -> None:
        self.attempts[(provider, outcome)] += 1
        if outcome is AttemptOutcome.SUCCESS:
            self.served[provider] += 1
            if duration_s is not None:
                self.latencies[provider].append(duration_s)

    def on_retry(self, *, provider: str, model: str, kind: ErrorKind) -> None:
        self.retries[provider] += 1

    def on_fallback(
        self, *, task: str, from_provider: str, to_provider: str, kind: AttemptOutcome
    ) -> None:
        self.fallbacks[(from_provider, to_provider)] += 1

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        self.cost_usd += cost_usd or 0.0

    def on_breaker_state(self, *, provider: str, state: BreakerState) -> None:
        if self.breakers.get(provider, state) != state:
            elapsed = time.perf_counter() - self.started
            self.transitions.append(
                f"{elapsed:5.1f}s  {provider}: {self.breakers[provider]} -> {state}"
            )
        self.breakers[provider] = state

    def render(self, act: str) -> str:
        lines = [f"gateway demo — {act}", ""]
        # One header per column, each one word, so that the table reads the same to a person
        # and to `split()`.
        lines.append(
            f"{'provider':<10}{'served':>8}{'retries':>9}{'failed':>8}{'skipped':>9}"
            f"{'p50_ms':>9}  breaker"
        )
        for provider in sorted(self.breakers):
            outcomes = {o: n for (p, o), n in self.attempts.items() if p == provider}
            skipped = sum(n for o, n in outcomes.items() if o.skipped)
            errors = sum(outcomes.values()) - skipped - outcomes.get(AttemptOutcome.SUCCESS, 0)
            lat = sorted(self.latencies.get(provider, []))
            p50 = f"{lat[len(lat) // 2] * 1000:.1f}" if lat else "-"
            lines.append(
                f"{provider:<10}{self.served[provider]:>8}{self.retries[provider]:>9}{errors:>8}"
                f"{skipped:>9}"
                f"{p50:>9}  {self.breakers[provider]}"
            )
        lines.append("")
        falls = ", ".join(f"{a}->{b}: {n}" for (a, b), n in sorted(self.fallbacks.items()))
        lines.append(f"fallbacks: {falls or 'none'}")
        ended = {str(outcome): n for outcome, n in self.requests.items()}
        lines.append(f"requests: {ended}   cost: ${self.cost_usd:.6f}")
        if self.transitions:
            lines.append("breaker transitions:")
            lines.extend(f"  {t}" for t in self.transitions[-6:])
        return "\n".join(lines)


class _Screen:
    """Redraws in place on a terminal; prints each act's final view otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty() and os.environ.get("TERM") != "dumb"
        self._lines = 0

    def draw(self, text: str, final: bool = False) -> None:
        if self.live:
            if self._lines:
                self.out.write(f"\x1b[{self._lines}F\x1b[J")
            self.out.write(text + "\n")
            self._lines = text.count("\n") + 1
            if final:
                self._lines = 0
                self.out.write("\n")
        elif final:
            self.out.write(text + "\n\n")
        self.out.flush()


async def run_demo(out: TextIO = sys.stdout, *, requests_per_act: int = 20) -> DemoView:
    from gateway.testing import FakeUpstream, Fault

    view = DemoView()
    screen = _Screen(out)
    messages = [{"role": "user", "content": "Summarize: the gateway keeps answering."}]
    async with FakeUpstream() as upstream:
        policy = parse_policy(
            demo_policy_text(), source="demo.yaml", environ={"FAKE_UPSTREAM_URL": upstream.url}
        )
        # Metrics go to a private registry so the demo never touches a host app's.
        from prometheus_client import CollectorRegistry

        router = Router(policy, hooks=[view, GatewayMetrics(CollectorRegistry())])
        try:

            async def act(title: str, count: int, pause_s: float = 0.05) -> None:
                for _ in range(count):
                    try:
                        if view.requests.total() % 3 == 2:
                            async for _delta in router.stream(messages, task=TASK):
                                pass
                        else:
                            await router.generate(messages, task=TASK)
                    except GatewayError:
                        pass
                    screen.draw(view.render(title))
                    await asyncio.sleep(pause_s)
                screen.draw(view.render(title), final=True)

            await act("1/4 all healthy: the primary (sonnet) serves", requests_per_act)

            upstream.script(
                PRIMARY_MODEL, Fault.rate_limit(retry_after=0.3), Fault.rate_limit(retry_after=0.3)
            )
            await act("2/4 the primary rate-limits: retries honour Retry-After", 3)

            upstream.fail_always(PRIMARY_MODEL, Fault.server_error())
            await act(
                "3/4 the primary is down: fall-through, breaker opens, backup serves",
                requests_per_act,
            )

            upstream.heal(PRIMARY_MODEL)
            await asyncio.sleep(policy.providers[PRIMARY].breaker.reset_timeout_s)
            await act(
                "4/4 the primary recovers: a half-open probe closes its breaker", requests_per_act
            )
        finally:
            await router.aclose()
    out.write(_summary(view))
    out.flush()
    return view


def _summary(view: DemoView) -> str:
    total = view.requests.total()
    ok = view.requests[RequestOutcome.SUCCESS]
    elapsed = time.perf_counter() - view.started
    return (
        f"summary: {ok}/{total} requests answered in {elapsed:.1f}s; "
        f"served by {dict(view.served)}; {sum(view.retries.values())} retries; "
        f"{sum(view.fallbacks.values())} fallbacks; {len(view.transitions)} breaker transitions; "
        f"cost ${view.cost_usd:.6f}\n"
    )


def main(argv: list[str] | None = None) -> int:
    view = asyncio.run(run_demo())
    healthy = view.requests[RequestOutcome.SUCCESS] == view.requests.total()
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())


__all__: list[Any] = ["DemoView", "demo_policy_text", "main", "run_demo"]
