"""Chaos soak through the Router: thousands of requests while providers fail and the policy
file is rewritten, counting that every request ends once, in time, and as the metrics say.

`make test` runs the short profile (5,000 requests); `make soak` the long one
(GATEWAY_SOAK_PROFILE=long). GATEWAY_SOAK_REPORT=path writes the figures as JSON.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import soak
from prometheus_client import CollectorRegistry
from soak import Ending

from gateway import (
    AllProvidersFailed,
    DeadlineExceeded,
    GatewayError,
    InvalidRequestError,
    Router,
    StreamInterrupted,
    UnknownTaskError,
)
from gateway._resilience import Admission
from gateway.metrics import GatewayMetrics
from gateway.testing._replies import default_text

pytestmark = pytest.mark.slow

SEED = 20_240_611
# Why a request may overrun its deadline a little: the event loop is shared by 100 requests,
# three fake upstreams and the policy watcher, so a timer can fire late by scheduling delay.
DEADLINE_SLACK_S = 1.0
ABANDON_WITHIN_S = 0.2
# Per-request guard far above the deadline: hitting it means the request hung.
HUNG_AFTER_S = soak.DEADLINE_S + 10.0


def _mode(index: int) -> tuple[str, str]:
    """(mode, task name) for request `index`; seeded, so every run sends the same mix."""
    rng = random.Random(SEED * 7_919 + index)
    roll = rng.random()
    streamed = index % 2 == 1  # exactly half of the requests are streamed
    if roll < 0.01:
        return "invalid", "chat"
    if roll < 0.04:
        return ("stream_abandoned" if streamed else "generate_cancelled"), "abandon"
    task = "other" if roll < 0.09 else "chat"  # "other" is not defined: `default` serves it
    return ("stream" if streamed else "generate"), task


def _task_label(task: str, outcome: str) -> str:
    # A rejected request is counted under the name the caller gave; others under the task
    # that served them.
    if outcome == "rejected" or task != "other":
        return task
    return "default"


def _classify(exc: BaseException) -> str:
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    if isinstance(exc, AllProvidersFailed | StreamInterrupted):
        return "exhausted"
    if isinstance(exc, InvalidRequestError | UnknownTaskError):
        return "rejected"
    if isinstance(exc, GatewayError):
        return f"unexpected {type(exc).__name__}"
    return f"not a GatewayError: {type(exc).__name__}"


def _make_request(router: Router) -> Callable[[int], Awaitable[Ending]]:
    async def one(index: int) -> Ending:
        mode, task = _mode(index)
        prompt = soak.prompt_for(index)
        role = "wizard" if mode == "invalid" else "user"
        messages = [{"role": role, "content": prompt}]
        ending = Ending(index=index, mode=mode, task=task)
        began = time.perf_counter()
        try:
            async with asyncio.timeout(HUNG_AFTER_S):
                if mode.startswith("stream"):
                    await _stream(router, messages, ending, index)
                else:
                    await _generate(router, messages, ending, index)
        except TimeoutError:
            ending.outcome = "hung"
        ending.elapsed_s = time.perf_counter() - began
        ending.task = _task_label(task, ending.outcome)
        return ending

    return one


async def _generate(
    router: Router, messages: list[dict[str, str]], ending: Ending, index: int
) -> None:
    call = asyncio.ensure_future(router.generate(messages, task=ending.task))
    if ending.mode == "generate_cancelled":
        rng = random.Random(SEED + index)
        await asyncio.wait([call], timeout=rng.uniform(0, ABANDON_WITHIN_S))
        call.cancel()
    try:
        result = await call
    except asyncio.CancelledError:
        if not call.cancelled():
            raise  # the soak itself was cancelled, not this request
        ending.outcome = "cancelled"
        return
    except Exception as exc:
        ending.outcome = _classify(exc)
        ending.error = repr(exc)[:300]
        ending.attempts = soak.attempts_of(getattr(exc, "attempts", ()))
        return
    ending.outcome = "success"
    ending.provider, ending.model, ending.text = result.provider, result.model, result.text
    ending.cost_usd = result.cost_usd
    ending.input_tokens = result.usage.input_tokens
    ending.output_tokens = result.usage.output_tokens
    ending.attempts = soak.attempts_of(result.attempts)


async def _stream(
    router: Router, messages: list[dict[str, str]], ending: Ending, index: int
) -> None:
    stream = router.stream(messages, task=ending.task)
    received: list[str] = []
    try:
        async with stream:
            async for delta in stream:
                received.append(delta)
                if ending.mode == "stream_abandoned":
                    break  # the caller stops reading; leaving the block closes the stream
    except Exception as exc:
        ending.outcome = _classify(exc)
        ending.error = repr(exc)[:300]
        ending.attempts = soak.attempts_of(getattr(exc, "attempts", ()))
        if isinstance(exc, StreamInterrupted) and exc.partial_text != "".join(received):
            ending.outcome = "partial_text differs from the deltas received"
        return
    ending.attempts = soak.attempts_of(stream.attempts)
    ending.text = "".join(received)
    if ending.mode == "stream_abandoned" and stream.latency_s is None:  # set once complete
        ending.outcome = "cancelled"
        return
    ending.outcome = "success"
    if stream.text != ending.text:
        ending.outcome = "stream.text differs from the deltas received"
    ending.provider, ending.model = stream.provider, stream.model
    ending.cost_usd = stream.cost_usd
    ending.input_tokens = stream.usage.input_tokens
    ending.output_tokens = stream.usage.output_tokens


def _answer_problems(ending: Ending) -> list[str]:
    """What is wrong with a successful answer: someone else's, doubled, or cut."""
    if ending.outcome != "success" or ending.mode == "stream_abandoned":
        return []
    problems = []
    expected_text = default_text(ending.model or "")
    resumed = ending.text != expected_text
    if resumed and not (ending.mode == "stream" and ending.text.endswith(expected_text)):
        problems.append(f"request {ending.index}: text {ending.text!r} is not {expected_text!r}")
    if not resumed:
        prompt_tokens = soak.expected_input_tokens(soak.prompt_for(ending.index))
        if ending.input_tokens != prompt_tokens:
            problems.append(
                f"request {ending.index}: billed {ending.input_tokens} input tokens for a "
                f"{prompt_tokens}-token prompt (another request's answer?)"
            )
    if ending.output_tokens < 1 or ending.cost_usd <= 0:
        problems.append(f"request {ending.index}: success without usage or cost")
    return problems


async def test_chaos_soak_through_the_router(tmp_path: Path) -> None:
    profile = soak.router_profile()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    path = tmp_path / "routing.yaml"
    rewrites = soak.RewriteLog()

    async def reloads_seen() -> float:
        return soak.total(registry, "gateway_policy_reloads_total")

    async with asyncio.timeout(profile.guard_s), soak.Upstreams(SEED) as upstreams:
        soak.write_atomically(path, soak.valid_policy_text(upstreams, 0))
        await asyncio.sleep(0)
        fds_before, tasks_before = soak.open_fds(), soak.live_tasks()
        router = Router.from_yaml(path, watch_interval_s=0.1, hooks=[metrics])
        workload = soak.Workload(profile.requests, profile.concurrency, _make_request(router))
        half = profile.requests // 2
        stop = asyncio.Event()
        began = time.perf_counter()
        try:
            async with soak.background(
                soak.rewrite_loop(path, upstreams, stop, rewrites, reloads_seen),
                upstreams.outage_loop(stop, every_s=5.0, lasting_s=1.0),
            ):
                await workload.run(0, half)
                first_half = soak.memory_mark()
                await workload.run(half, profile.requests - half)
                second_half = soak.memory_mark()
                stop.set()
            duration = time.perf_counter() - began
            candidates = dict(router.candidates)
        finally:
            await router.aclose()
        released = await soak.settle(
            lambda: (
                upstreams.open_connections() == 0
                and soak.open_fds() <= fds_before
                and soak.live_tasks() <= tasks_before
            )
        )
        fds_after, tasks_after = soak.open_fds(), soak.live_tasks()
        injected = upstreams.injected()
        upstream_calls = upstreams.calls()
        outages = upstreams.outages

    endings = workload.endings
    outcomes = Counter(e.outcome for e in endings.values())
    # The soak's own records (an Ending and its attempts list a request) are left out.
    object_growth = second_half.objects - first_half.objects - 2 * (profile.requests - half)
    figures = {
        "soak": "router",
        "profile": profile.name,
        "requests": profile.requests,
        "concurrency": profile.concurrency,
        "streamed": sum(e.mode.startswith("stream") for e in endings.values()),
        "duration_s": round(duration, 1),
        "upstream_calls": upstream_calls,
        "faults_injected": dict(sorted(injected.items())),
        "faults_injected_total": sum(injected.values()),
        "outages": outages,
        "policy_rewrites": {"valid": rewrites.valid, "invalid": rewrites.invalid},
        "outcomes": dict(sorted(outcomes.items())),
        "lost": profile.requests - len(endings),
        "duplicated": len(workload.duplicates),
        "max_elapsed_s": round(max(e.elapsed_s for e in endings.values()), 2),
        "memory_objects_second_half": object_growth,
        "per_request_objects_live": [first_half.per_request, second_half.per_request],
        "memory_rss_mb_second_half": round(
            (second_half.rss_bytes - first_half.rss_bytes) / 2**20, 1
        ),
        "cost_usd": round(sum(e.cost_usd for e in endings.values()), 6),
        "attempt_outcomes": dict(
            sorted(Counter(o for e in endings.values() for _, o, *_ in e.attempts).items())
        ),
        "breaker_transitions": {
            "/".join(k): v
            for k, v in sorted(
                soak.counter_by(
                    registry, "gateway_circuit_transitions_total", "provider", "to_state"
                ).items()
            )
        },
    }
    soak.write_report(figures)
    print(figures)

    # Nothing lost, nothing duplicated, every ending a result or a GatewayError.
    assert sorted(endings) == list(range(profile.requests))
    assert workload.duplicates == []
    assert set(outcomes) <= set(soak.REQUEST_OUTCOMES), {
        e.index: (e.outcome, e.error)
        for e in endings.values()
        if e.outcome not in soak.REQUEST_OUTCOMES
    }
    # Every request ends within its deadline (plus scheduling slack, see DEADLINE_SLACK_S).
    late = [e for e in endings.values() if e.elapsed_s > soak.DEADLINE_S + DEADLINE_SLACK_S]
    assert late == []
    # Every answer is the one for its own request, once.
    problems = [p for e in endings.values() for p in _answer_problems(e)]
    assert problems == []
    # The chaos was real: faults of every kind were injected and the gateway rode them out.
    assert set(injected) >= set(soak.CHAOS_RATES)
    # Enough answers that the success paths were exercised by the hundred; how many more
    # depends on how long every breaker happened to be open (see docs/reliability.md).
    assert outcomes["success"] >= profile.requests / 10, "the soak hardly answered: tune it"
    assert rewrites.unseen == 0 and rewrites.invalid >= 1 and rewrites.valid >= 1

    # The metrics say exactly what the callers saw.
    assert soak.counter_by(registry, "gateway_requests_total", "task", "outcome") == (
        soak.outcome_counts(endings.values())
    )
    observed_attempts = Counter(
        (e.task, provider, outcome)
        for e in endings.values()
        if e.task != "abandon"  # a cancelled call's attempts are not visible to its caller
        for provider, outcome, *_ in e.attempts
    )
    counted_attempts = soak.counter_by(
        registry, "gateway_attempts_total", "task", "provider", "outcome"
    )
    assert {k: v for k, v in counted_attempts.items() if k[0] != "abandon"} == dict(
        observed_attempts
    )
    successes = [e for e in endings.values() if e.outcome == "success"]
    assert soak.total(registry, "gateway_cost_usd_total") == pytest.approx(
        sum(e.cost_usd for e in successes), rel=1e-9
    )  # float sums in a different order: equal to the last few bits
    assert soak.total(registry, "gateway_tokens_total", type="input") == sum(
        e.input_tokens for e in successes
    )
    assert soak.total(registry, "gateway_tokens_total", type="output") == sum(
        e.output_tokens for e in successes
    )
    assert soak.total(registry, "gateway_policy_reloads_total", outcome="rejected") == (
        rewrites.invalid
    )
    assert soak.total(registry, "gateway_policy_reloads_total", outcome="applied") == (
        1 + rewrites.valid
    )

    # No breaker is stuck half-open with a probe that will never come back; none in flight.
    for name, candidate in candidates.items():
        assert candidate.in_flight == 0, name
        breaker = candidate.breaker
        if breaker.state == "half_open":
            admission = breaker.admit()
            assert admission is Admission.PROBE, f"{name}: half-open but admits no probe"
            breaker.release(admission)

    # Resources come back: connections, file descriptors and tasks; memory stops growing.
    assert released, (
        f"after the soak: {upstreams.open_connections()} upstream connections open, "
        f"fds {fds_before} -> {fds_after}, tasks {tasks_before} -> {tasks_after}"
    )
    assert first_half.per_request == {} and second_half.per_request == {}, (
        "objects of finished requests are still alive"
    )
    assert object_growth < soak.OBJECT_GROWTH_LIMIT, second_half.growth_since(first_half)


# --- what the soak found, pinned as fast tests ----------------------------------------------


def test_a_success_after_concurrent_failures_opened_the_breaker_is_still_an_answer() -> None:
    from gateway._resilience import Breaker
    from gateway.errors import ErrorKind
    from gateway.policy import BreakerPolicy

    breaker = Breaker("p", BreakerPolicy(fail_max=1, reset_timeout_s=30))
    slow, fast = breaker.admit(), breaker.admit()  # both admitted while closed
    breaker.failure(fast, ErrorKind.SERVER_ERROR)  # opens the breaker
    breaker.success(slow)  # the slow call's good answer must not raise
    assert breaker.state == "open"


async def test_a_policy_change_before_the_watcher_starts_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    async with soak.Upstreams(SEED) as upstreams:
        soak.write_atomically(path, soak.valid_policy_text(upstreams, 0))
        router = Router.from_yaml(
            path, watch_interval_s=0.02, hooks=[GatewayMetrics(CollectorRegistry())]
        )
        loaded = router.policy.sha256
        # The watcher starts with the first request; a deploy can land before that.
        soak.write_atomically(path, soak.valid_policy_text(upstreams, 1))
        async with router:
            applied = await soak.settle(lambda: router.policy.sha256 != loaded, within_s=5)
    assert applied, "the file changed after loading but the router kept the old policy"


async def test_the_last_request_on_a_replaced_policy_does_not_wait_for_old_clients_to_close() -> (
    None
):
    from gateway.policy import parse_policy
    from gateway.providers import LLMFactory
    from gateway.testing import FakeLLM

    may_close = asyncio.Event()
    closed: list[str] = []

    class SlowToClose(FakeLLM):
        async def aclose(self) -> None:
            await may_close.wait()  # a pool that takes its time to drain
            closed.append(self.model)
            await super().aclose()

    def doc(model: str) -> str:
        provider = {"type": "slow_close", "model": model, "options": {"latency_s": 0.2}}
        return f"version: 1\nproviders: {{p: {provider}}}\ntasks: {{default: {{chain: [p]}}}}\n"

    LLMFactory.register("slow_close", SlowToClose)
    try:
        router = Router(parse_policy(doc("m1")), hooks=[GatewayMetrics(CollectorRegistry())])
        call = asyncio.ensure_future(router.generate([{"role": "user", "content": "hi"}]))
        await asyncio.sleep(0.05)  # the call is in flight on the first policy's client
        await router.apply_policy(parse_policy(doc("m2")))  # m1's client is now dropped
        # The answer comes back while the dropped client is still closing; 10 s is a hang
        # guard, not a speed goal (the close never finishes until the test allows it).
        done, _ = await asyncio.wait([call], timeout=10)
        assert done, "the request waited for a dropped client to finish closing"
        assert call.result().model == "m1"
        may_close.set()
        await router.aclose()
    finally:
        may_close.set()
        LLMFactory.unregister("slow_close")
    assert sorted(closed) == ["m1", "m2"], "router.aclose() must still close every client"


async def test_a_candidate_reached_after_the_deadline_is_counted_in_the_metrics() -> None:
    """Under load the event loop can be late; the soak saw the deadline pass between two
    candidates. The `deadline` attempt listed on the error must be in the metrics too."""
    import yaml

    from gateway.hooks import BaseHooks
    from gateway.policy import parse_policy
    from gateway.testing import Fault

    class BusyLoop(BaseHooks):
        def on_fallback(self, **_: object) -> None:
            time.sleep(0.3)  # blocks the loop past the 0.2 s deadline, as heavy load would

    registry = CollectorRegistry()
    async with soak.Upstreams(SEED) as upstreams:
        for upstream in upstreams.by_provider.values():
            upstream.stop_chaos()
        upstreams.by_provider["claude"].fail_always(soak.CLAUDE, Fault.status(400))
        doc = soak.policy_doc(upstreams, 0)
        doc["tasks"]["chat"]["deadline_s"] = 0.2
        router = Router(
            parse_policy(yaml.safe_dump(doc)), hooks=[GatewayMetrics(registry), BusyLoop()]
        )
        try:
            with pytest.raises(DeadlineExceeded) as caught:
                await router.generate([{"role": "user", "content": "hi"}], task="chat")
        finally:
            await router.aclose()
    listed = Counter((a.provider, a.outcome) for a in caught.value.attempts)
    assert listed == {("claude", "bad_request"): 1, ("gpt", "deadline"): 1}
    counted = soak.counter_by(registry, "gateway_attempts_total", "provider", "outcome")
    assert counted == listed
