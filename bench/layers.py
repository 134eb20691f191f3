"""What each layer of the router's hot path costs, over an in-process provider (no HTTP, no SDK).

    python -m bench.layers [--iterations N] [--repeats R]    # prints JSON

Whole requests (a bare provider call, the Router with hooks=[], the Router with metrics, the
failover chain) and the pieces a request goes through, each timed alone: the retry wrapper,
the per-attempt timeout, the breaker, the policy lookup, message validation, the price
lookup and the metrics hooks. Each figure is the best of R repeats of N calls, in µs per call,
with the cost of an empty loop (or of awaiting a no-op coroutine) taken off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from bench.scenarios import MESSAGES, MODEL, REPLY_TEXT
from gateway import Router
from gateway._resilience import Breaker, call_with_retries
from gateway._runtime import build_runtime, close_runtime
from gateway.errors import ErrorKind, ProviderError
from gateway.metrics import GatewayMetrics
from gateway.policy import BreakerPolicy, Policy, RetryPolicy, parse_policy
from gateway.providers import LLMFactory, LLMService
from gateway.types import ChatStream, Completion, Message, StreamEnd, Usage, validate_messages

FAKE_TYPE = "bench_fake"
DOWN_TYPE = "bench_down"
REPLY_WORDS = tuple(REPLY_TEXT.split(" "))
YIELD_EVERY = 50

POLICY = f"""
version: 1
defaults:
  retry: {{attempts: 3, initial_backoff_s: 0.05, max_backoff_s: 0.5}}
  breaker: {{fail_max: 5, reset_timeout_s: 30}}
providers:
  primary: {{type: {FAKE_TYPE}, model: {MODEL}}}
  backup: {{type: {FAKE_TYPE}, model: gpt-4o}}
  dead: {{type: {DOWN_TYPE}, model: dead-model, breaker: {{reset_timeout_s: 3600}}}}
tasks:
  default: {{chain: [primary, backup]}}
  failover: {{chain: [dead, primary]}}
  single: {{chain: [primary]}}
"""


class ConstantLLM(LLMService):
    """An in-process provider that validates the messages, as real ones do, and answers the
    same reply at once.

    Not FakeLLM: FakeLLM records every call, and hundreds of thousands of recorded calls make
    the garbage collector's full passes slower and slower, which would bill the heap's growth
    to whichever layer happens to be measured last.
    """

    type_name = FAKE_TYPE

    def __init__(self, *, name: str | None = None, model: str | None = None, **_: Any) -> None:
        super().__init__(name=name, model=model or MODEL)
        self._completion = Completion(
            text=REPLY_TEXT,
            model=self.model,
            finish_reason="stop",
            usage=Usage(input_tokens=20, output_tokens=len(REPLY_WORDS)),
            response_id="bench",
        )

    async def complete(self, messages: Sequence[Message], **params: Any) -> Completion:
        validate_messages(messages)
        return self._completion

    def stream(self, messages: Sequence[Message], **params: Any) -> ChatStream:
        validate_messages(messages)
        return ChatStream(self._events(), model=self.model)

    async def _events(self) -> AsyncIterator[str | StreamEnd]:
        for word in REPLY_WORDS:
            yield word
        completion = self._completion
        yield StreamEnd(completion.usage, completion.finish_reason, self.model, "bench")


class AlwaysDown(ConstantLLM):
    """A provider whose every call fails as an HTTP 500 would: its breaker opens."""

    type_name = DOWN_TYPE

    async def complete(self, messages: Sequence[Message], **params: Any) -> Completion:
        raise ProviderError("bench: always down", kind=ErrorKind.SERVER_ERROR, provider=self.name)


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    us: float
    note: str = ""


_FLOOR = "floor"


async def _noop() -> None:
    return None


async def no_sleep(seconds: float) -> None:
    return None


AsyncCall = Callable[[], Awaitable[Any]]
SyncCall = Callable[[], Any]


class Timer:
    """Best-of-repeats timing, with the variants of one comparison interleaved batch by batch.

    On a shared machine, load comes and goes; interleaving lets every variant see the same
    quiet and busy spells, and the best batch of each is its cost with the least disturbance.
    """

    def __init__(self, iterations: int, repeats: int) -> None:
        self.iterations = iterations
        self.repeats = repeats

    async def _batch_async(self, fn: AsyncCall) -> float:
        began = time.perf_counter()
        for i in range(self.iterations):
            await fn()
            if i % YIELD_EVERY == 0:
                # These calls never suspend, so the loop would never run: the cancelled timers
                # of each request's asyncio.timeout would pile up in its heap (a real request
                # suspends at least once, letting the loop purge them).
                await asyncio.sleep(0)
        return (time.perf_counter() - began) / self.iterations

    def _batch_sync(self, fn: SyncCall) -> float:
        began = time.perf_counter()
        for _ in range(self.iterations):
            fn()
        return (time.perf_counter() - began) / self.iterations

    async def awaited_us(self, variants: dict[str, AsyncCall]) -> dict[str, float]:
        """µs per `await fn()` for each variant, less the cost of awaiting a no-op coroutine."""
        best = dict.fromkeys([_FLOOR, *variants], float("inf"))
        calls = {_FLOOR: _noop, **variants}
        for _ in range(self.repeats):
            for name, fn in calls.items():
                best[name] = min(best[name], await self._batch_async(fn))
        floor = best.pop(_FLOOR)
        return {name: max(0.0, value - floor) * 1e6 for name, value in best.items()}

    def called_us(self, variants: dict[str, SyncCall]) -> dict[str, float]:
        """µs per `fn()` for each variant, less the cost of an empty loop."""
        best = dict.fromkeys([_FLOOR, *variants], float("inf"))
        calls: dict[str, SyncCall] = {_FLOOR: lambda: None, **variants}
        for _ in range(self.repeats):
            for name, fn in calls.items():
                best[name] = min(best[name], self._batch_sync(fn))
        floor = best.pop(_FLOOR)
        return {name: max(0.0, value - floor) * 1e6 for name, value in best.items()}


def register_fakes() -> None:
    LLMFactory.register(FAKE_TYPE, ConstantLLM)
    LLMFactory.register(DOWN_TYPE, AlwaysDown)


async def open_dead_breaker(router: Router) -> None:
    breaker = router.candidates["dead"].breaker
    for _ in range(50):
        if breaker.state == "open":
            return
        await router.generate(MESSAGES, task="failover")
    raise RuntimeError(f"the dead provider's breaker is {breaker.state!r} after 50 requests")


async def measure(iterations: int, repeats: int) -> list[Layer]:
    register_fakes()
    timer = Timer(iterations, repeats)
    policy = parse_policy(POLICY, source="bench.layers")
    messages: Sequence[Message] = MESSAGES
    bare = ConstantLLM(name="bare", model=MODEL)
    plain = Router(policy, hooks=[], sleep=no_sleep)
    metrics = GatewayMetrics(CollectorRegistry())
    metered = Router(policy, hooks=[metrics], sleep=no_sleep)
    try:
        await open_dead_breaker(metered)
        whole = await timer.awaited_us(_whole_requests(bare, plain, metered, messages))
    finally:
        await plain.aclose()
        await metered.aclose()
    pieces = await _pieces(timer, policy, metrics, messages)

    def row(name: str, key: str, over: str | None = None, what: str = "") -> Layer:
        note = f"+{whole[key] - whole[over]:.1f} µs {what}" if over else ""
        return Layer(name, whole[key], note)

    return [
        row("provider.complete, no router", "bare"),
        row("Router.generate, hooks=[]", "plain", "bare", "over the bare provider"),
        row("Router.generate, metrics on", "metered", "plain", "for metrics"),
        row("provider.stream drained, no router", "bare_stream"),
        row("Router.stream drained, metrics on", "stream", "bare_stream", "over the bare stream"),
        row("Router, chain [primary], metrics on", "single"),
        row(
            "Router, chain [dead (breaker open), primary], metrics on",
            "failover",
            "single",
            "to skip the open breaker",
        ),
        *pieces,
    ]


def _whole_requests(
    bare: ConstantLLM, plain: Router, metered: Router, messages: Sequence[Message]
) -> dict[str, AsyncCall]:
    async def bare_stream() -> None:
        async for _ in bare.stream(messages):
            pass

    async def routed_stream() -> None:
        async for _ in metered.stream(messages):
            pass

    return {
        "bare": lambda: bare.complete(messages),
        "plain": lambda: plain.generate(messages),
        "metered": lambda: metered.generate(messages),
        "bare_stream": bare_stream,
        "stream": routed_stream,
        "single": lambda: metered.generate(messages, task="single"),
        "failover": lambda: metered.generate(messages, task="failover"),
    }


async def _pieces(
    timer: Timer, policy: Policy, metrics: GatewayMetrics, messages: Sequence[Message]
) -> list[Layer]:
    """The parts of one successful request, each alone."""
    retry = RetryPolicy()

    async def bounded() -> None:
        async with asyncio.timeout(30):
            await _noop()

    awaited = await timer.awaited_us(
        {
            "retry wrapper (tenacity) around one successful call": lambda: call_with_retries(
                _noop, retry, remaining_s=lambda: None, on_retry=lambda error, wait: None
            ),
            "asyncio.timeout around the call": bounded,
        }
    )

    breaker = Breaker("bench", BreakerPolicy())
    runtime = build_runtime(policy)
    checked = validate_messages(messages)
    usage = Usage(input_tokens=20, output_tokens=20)

    def one_request_of_hooks() -> None:
        metrics.on_attempt(
            task="default", provider="primary", model=MODEL, outcome="success", duration_s=0.001
        )
        metrics.on_usage(
            task="default", provider="primary", model=MODEL, usage=usage, cost_usd=0.00001
        )
        metrics.on_request(task="default", outcome="success", duration_s=0.001, overhead_s=1e-4)

    try:
        called = timer.called_us(
            {
                "breaker: admit + success (pybreaker)": lambda: breaker.success(breaker.admit()),
                "policy lookup: task + ordered chain": lambda: runtime.ordered(
                    policy.task("default"), checked, None
                ),
                "validate_messages (the provider validates again)": lambda: validate_messages(
                    messages
                ),
                "price lookup (PriceBook.cost)": lambda: runtime.prices.cost(
                    MODEL, usage, "openai"
                ),
                "metrics: one request's hooks (attempt, usage, request)": one_request_of_hooks,
            }
        )
    finally:
        await close_runtime(runtime)
    return [Layer(name, us) for name, us in {**awaited, **called}.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.repeats < 1:
        parser.error("--iterations and --repeats must be at least 1")
    layers = asyncio.run(measure(args.iterations, args.repeats))
    print(json.dumps([asdict(layer) for layer in layers]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
