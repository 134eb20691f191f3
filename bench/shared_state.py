"""What sharing breaker state through Redis adds to the request path.

    python -m bench.shared_state [--quick] [--redis-url redis://...]

Starts its own redis-server on a free loopback port unless given a URL. Prints a markdown
section: microseconds per breaker call with the memory backend and with the Redis backend
(connected, its background task running on the same event loop), the longest single step of
the event loop while failures stream to Redis, and how long another replica takes to see a
breaker open.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.stats import percentile
from gateway._resilience import Breaker
from gateway.errors import ErrorKind
from gateway.policy import Policy, parse_policy
from gateway.state.memory import MemoryState
from gateway.state.redis import RedisState

POLICY = """
version: 1
defaults:
  breaker: {{fail_max: {fail_max}, reset_timeout_s: 60}}
providers:
  p: {{type: openai, model: m, api_key: k}}
tasks:
  default: {{chain: [p]}}
state: {{backend: redis, url: "{url}", namespace: "bench-{ns}"}}
"""


def _policy(url: str, fail_max: int) -> Policy:
    return parse_policy(POLICY.format(url=url, fail_max=fail_max, ns=uuid.uuid4().hex[:8]))


@contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    # The tests' harness runs a real redis-server in a temp dir; the bench reuses it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from redis_harness import RedisServer

    with RedisServer() as server:
        yield server.url


def _per_call_us(call: Callable[[], None], iterations: int, repeats: int = 5) -> float:
    """Best of `repeats` runs, in microseconds per call (the best is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            call()
        best = min(best, (time.perf_counter() - started) / iterations)
    return best * 1e6


async def _connected(state: RedisState, breaker: Breaker) -> None:
    breaker.admit()
    deadline = time.monotonic() + 10
    while state.round_trips == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if state.round_trips == 0 or not state.shared:
        raise SystemExit("bench.shared_state: Redis did not answer; is redis-server running?")


def _sync_costs(breaker: Breaker, iterations: int) -> tuple[float, float]:
    def admit() -> None:
        breaker.admit()

    def admit_success() -> None:
        breaker.success(breaker.admit())

    return _per_call_us(admit, iterations), _per_call_us(admit_success, iterations)


async def _failure_stream(breaker: Breaker, iterations: int) -> tuple[float, float, float]:
    """µs per admit+failure with the loop turning between calls (so the background task's
    work is included), and the p99 and longest single loop step in ms."""
    steps: list[float] = []
    started = time.perf_counter()
    for _ in range(iterations):
        step = time.perf_counter()
        breaker.failure(breaker.admit(), ErrorKind.SERVER_ERROR)
        await asyncio.sleep(0)
        steps.append(time.perf_counter() - step)
    # Let the last batch reach Redis, so its cost is counted too.
    await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    return elapsed / iterations * 1e6, percentile(steps, 0.99) * 1e3, max(steps) * 1e3


async def _propagation_ms(url: str, trials: int) -> list[float]:
    """From the failure that opens a breaker in replica A to replica B seeing it open."""
    seen: list[float] = []
    for _ in range(trials):
        policy = _policy(url, fail_max=1)
        a, b = RedisState(policy.state), RedisState(policy.state)
        breaker_a = a.breaker_factory()(policy.providers["p"])
        breaker_b = b.breaker_factory()(policy.providers["p"])
        await _connected(a, breaker_a)
        await _connected(b, breaker_b)
        started = time.perf_counter()
        breaker_a.failure(breaker_a.admit(), ErrorKind.SERVER_ERROR)
        while breaker_b.state != "open":
            await asyncio.sleep(0.001)
        seen.append((time.perf_counter() - started) * 1e3)
        await a.aclose()
        await b.aclose()
    return seen


async def run(url: str, quick: bool) -> str:
    iterations = 2_000 if quick else 100_000
    failures = 500 if quick else 20_000
    trials = 3 if quick else 20

    policy = _policy(url, fail_max=10**9)
    spec = policy.providers["p"]
    memory = MemoryState(policy.state).breaker_factory()(spec)
    shared_state = RedisState(policy.state)
    shared = shared_state.breaker_factory()(spec)
    await _connected(shared_state, shared)

    mem_admit, mem_cycle = _sync_costs(memory, iterations)
    red_admit, red_cycle = _sync_costs(shared, iterations)
    mem_fail, mem_p99, mem_max = await _failure_stream(memory, failures)
    red_fail, red_p99, red_max = await _failure_stream(shared, failures)
    await shared_state.aclose()
    seen = await _propagation_ms(url, trials)

    rows = [
        ("admit(), closed breaker (µs)", mem_admit, red_admit),
        ("admit() + success() (µs)", mem_cycle, red_cycle),
        ("admit() + failure(), loop turning, sync included (µs)", mem_fail, red_fail),
        ("event-loop step during those failures, p99 (ms)", mem_p99, red_p99),
        ("event-loop step during those failures, longest (ms)", mem_max, red_max),
    ]
    lines = [
        "## Shared breaker state (Redis)",
        "",
        f"{'Quick run: numbers mean nothing. ' if quick else ''}"
        "Breaker calls on the request path with `state.backend: memory` and `redis` "
        "(real redis-server on loopback, background sync on the same event loop).",
        "",
        "| measurement | memory | redis | added |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, mem, red in rows:
        lines.append(f"| {name} | {mem:.2f} | {red:.2f} | {red - mem:+.2f} |")
    lines += [
        "",
        f"A breaker opened by one replica is seen open by another after "
        f"{percentile(seen, 0.5):.0f} ms (median of {len(seen)}; slowest "
        f"{max(seen):.0f} ms); the refresh interval is 250 ms.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shared_state", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts, to check it runs")
    parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    args = parser.parse_args(argv)
    with _redis(args.redis_url) as url:
        print(asyncio.run(run(url, args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
