"""Issue 15: latency routing that stays true, `least_busy`, and slow start after recovery.

Through the public API (`Router` on a `FakeUpstream`). Latencies are real (shaped by
`upstream.reply(latency_s=...)`); the routing clock that dates measurements and ramps, and the
random source of exploration and slow start, are replaced so time can be stepped and draws
repeated without sleeping.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from gateway import BreakerState, Router
from gateway._runtime import set_routing_clock, set_routing_rng
from gateway.policy import parse_policy
from gateway.testing import FakeUpstream, Fault, set_waits_enabled

QUESTION = [{"role": "user", "content": "hi"}]
PROVIDERS = """
version: 1
defaults:
  retry: {attempts: 1}
providers:
  a: {type: openai, model: model-a, base_url: "${FAKE}/v1", api_key: unused}
  b: {type: openai, model: model-b, base_url: "${FAKE}/v1", api_key: unused}
"""


class SteppedClock:
    """A routing clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[SteppedClock]:
    stepped = SteppedClock()
    set_routing_clock(stepped)
    set_routing_rng(random.Random(15))
    set_waits_enabled(False)
    yield stepped
    set_routing_clock(None)
    set_routing_rng(None)
    set_waits_enabled(True)


def router_for(upstream: FakeUpstream, tasks: str, providers: str = PROVIDERS) -> Router:
    policy = parse_policy(providers + "tasks:\n" + tasks, environ={"FAKE": upstream.url})
    return Router(policy, hooks=[])


async def served_by(router: Router, task: str, n: int = 1) -> list[str]:
    return [(await router.generate(QUESTION, task=task)).provider for _ in range(n)]


# --- fastest: a demoted provider is measured again --------------------------------------------


async def test_fastest_retries_a_provider_idle_for_a_half_life_and_ranks_it_first_again(
    upstream: FakeUpstream, clock: SteppedClock
) -> None:
    upstream.reply("model-a", latency_s=0.1)
    upstream.reply("model-b", latency_s=0.04)
    tasks = "  quick: {strategy: fastest, chain: [a, b], explore: 0, latency_half_life_s: 60}\n"
    async with router_for(upstream, tasks) as router:
        # Each is measured once, in chain order; then a, the slower, is demoted.
        assert await served_by(router, "quick", 5) == ["a", "b", "b", "b", "b"]
        upstream.reply("model-a", latency_s=0.0)  # a is fast now, but nobody knows
        clock.now += 30  # under a half-life: no re-try yet
        assert await served_by(router, "quick", 3) == ["b", "b", "b"]
        a, b = router.candidates["a"], router.candidates["b"]
        assert a.latency_s is not None and b.latency_s is not None
        assert a.latency_s > b.latency_s

        clock.now += 150  # a has not been measured for three half-lives
        # One request re-tries a; its fresh measurement outweighs the stale one...
        assert await served_by(router, "quick") == ["a"]
        assert a.latency_s < b.latency_s
        # ...then b, last measured 150 s ago, gets its own re-try (once), and a leads again.
        assert await served_by(router, "quick", 5) == ["b", "a", "a", "a", "a"]
        assert a.latency_s < b.latency_s


async def test_fastest_explores_a_share_of_requests_so_a_demoted_provider_wins_back(
    upstream: FakeUpstream, clock: SteppedClock
) -> None:
    upstream.reply("model-a", latency_s=0.08)
    upstream.reply("model-b", latency_s=0.03)
    tasks = "  quick: {strategy: fastest, chain: [a, b], explore: 0.25}\n"
    async with router_for(upstream, tasks) as router:
        assert await served_by(router, "quick", 2) == ["a", "b"]
        upstream.reply("model-a", latency_s=0.0)
        # No time passes: only exploration sends requests to a.
        providers = await served_by(router, "quick", 40)
        a, b = router.candidates["a"], router.candidates["b"]
        assert a.latency_s is not None and b.latency_s is not None
        assert a.latency_s < b.latency_s  # re-measured and ranked first again
        assert providers.index("a") > 0  # it was demoted: b led until a draw explored a
        # Now ahead, a takes about 1 - explore of the requests; the explored share goes to b.
        after = await served_by(router, "quick", 40)
        assert 24 <= after.count("a") < 40


async def test_fastest_without_exploration_keeps_a_demoted_provider_last(
    upstream: FakeUpstream, clock: SteppedClock
) -> None:
    """The baseline the two tests above improve on: explore 0 and no idle period."""
    upstream.reply("model-a", latency_s=0.06)
    upstream.reply("model-b", latency_s=0.02)
    tasks = "  quick: {strategy: fastest, chain: [a, b], explore: 0}\n"
    async with router_for(upstream, tasks) as router:
        await served_by(router, "quick", 2)
        upstream.reply("model-a", latency_s=0.0)
        assert set(await served_by(router, "quick", 10)) == {"b"}


# --- fastest: streams ranked by time to first token, apart from whole answers --------------------


async def test_fastest_ranks_streams_by_first_token_not_by_the_readers_pace(
    upstream: FakeUpstream, clock: SteppedClock
) -> None:
    text = "one two three four five six"
    upstream.reply("model-a", text, latency_s=0.15)  # slow to start
    upstream.reply("model-b", text, chunk_delay_s=0.01)  # quick to start
    tasks = "  quick: {strategy: fastest, chain: [a, b], explore: 0}\n"

    async def stream(pause_s: float) -> str:
        async with router.stream(QUESTION, task="quick") as chunks:
            deltas = 0
            async for _ in chunks:
                deltas += 1
                await asyncio.sleep(pause_s)
            assert deltas > 3
            assert chunks.provider is not None
            return chunks.provider

    async with router_for(upstream, tasks) as router:
        assert await stream(0.0) == "a"
        # b's stream is read slowly: the whole stream takes far longer than a's.
        began = asyncio.get_running_loop().time()
        assert await stream(0.08) == "b"
        assert asyncio.get_running_loop().time() - began > 0.3
        a, b = router.candidates["a"], router.candidates["b"]
        assert a.first_token_s is not None and b.first_token_s is not None
        assert b.first_token_s < 0.1 < a.first_token_s
        # b starts sooner, so streams go to b whatever pace their readers take.
        assert [await stream(0.02) for _ in range(2)] == ["b", "b"]
        # Whole answers are measured apart: none yet, so they start in chain order.
        assert a.latency_s is None and b.latency_s is None
        assert (await router.generate(QUESTION, task="quick")).provider == "a"
        assert a.latency_s is not None and b.latency_s is None
        assert (await router.generate(QUESTION, task="quick")).provider == "b"
        # A slow whole answer from b changes nothing for streams.
        upstream.reply("model-b", text, latency_s=0.0, chunk_delay_s=0.01)
        assert await stream(0.0) == "b"


# --- least_busy ---------------------------------------------------------------------------------


async def test_least_busy_picks_the_candidate_with_fewer_requests_in_flight(
    upstream: FakeUpstream, clock: SteppedClock
) -> None:
    upstream.reply("model-a", latency_s=0.3)
    upstream.reply("model-b", latency_s=0.3)
    tasks = "  busy: {strategy: least_busy, chain: [a, b]}\n"
    async with router_for(upstream, tasks) as router:
        a, b = router.candidates["a"], router.candidates["b"]
        # Nobody busy: chain order.
        first = asyncio.create_task(router.generate(QUESTION, task="busy"))
        while a.in_flight == 0:
            await asyncio.sleep(0.005)
        # a has one in flight, b none: b goes first.
        second = asyncio.create_task(router.generate(QUESTION, task="busy"))
        while b.in_flight == 0:
            await asyncio.sleep(0.005)
        # One each: chain order again.
        third = asyncio.create_task(router.generate(QUESTION, task="busy"))
        while a.in_flight < 2:
            await asyncio.sleep(0.005)
        # a two, b one: b.
        fourth = asyncio.create_task(router.generate(QUESTION, task="busy"))
        answers = await asyncio.gather(first, second, third, fourth)
        assert [answer.provider for answer in answers] == ["a", "b", "a", "b"]
        assert a.in_flight == 0 and b.in_flight == 0


# --- slow start -----------------------------------------------------------------------------------

RAMPED = """
version: 1
defaults:
  retry: {attempts: 1}
providers:
  a: {type: openai, model: model-a, base_url: "${FAKE}/v1", api_key: unused, weight: 1,
      breaker: {fail_max: 1, reset_timeout_s: 0.05, ramp_s: 100}}
  b: {type: openai, model: model-b, base_url: "${FAKE}/v1", api_key: unused, weight: 0}
"""


@pytest.mark.parametrize("strategy", ["ordered", "weighted", "least_busy", "fastest"])
async def test_slow_start_hands_a_recovered_provider_a_growing_share(
    upstream: FakeUpstream, clock: SteppedClock, strategy: str
) -> None:
    extra = ", explore: 0" if strategy == "fastest" else ""
    tasks = f"  main: {{strategy: {strategy}, chain: [a, b]{extra}}}\n"
    async with router_for(upstream, tasks, RAMPED) as router:
        a = router.candidates["a"]
        assert await served_by(router, "main", 3) == ["a"] * 3 or strategy == "fastest"
        if strategy == "fastest":
            # Make a the faster one, so that it is first whenever it is allowed to be.
            upstream.reply("model-b", latency_s=0.05)  # a wide margin, even on a busy machine
            await served_by(router, "main", 3)
            assert await served_by(router, "main", 3) == ["a"] * 3
        assert a.ramp_share is None  # a provider that never failed does not ramp

        # Real failures open a's breaker; b serves meanwhile.
        upstream.fail_always("model-a", Fault.server_error())
        assert await served_by(router, "main", 2) == ["b", "b"]
        assert a.breaker.state == BreakerState.OPEN
        upstream.heal("model-a")
        await asyncio.sleep(0.06)  # past reset_timeout_s: the next request probes a
        assert await served_by(router, "main") == ["a"]
        assert a.breaker.state == BreakerState.CLOSED

        n = 60
        at_start = (await served_by(router, "main", n)).count("a")
        assert a.ramp_share == pytest.approx(0.1)
        clock.now += 50
        assert a.ramp_share == pytest.approx(0.55)
        halfway = (await served_by(router, "main", n)).count("a")
        clock.now += 50
        after = (await served_by(router, "main", n)).count("a")
        assert a.ramp_share is None

        assert at_start <= 0.25 * n
        assert 0.3 * n <= halfway <= 0.8 * n
        assert after == n


async def test_slow_start_starts_again_when_the_breaker_reopens_mid_ramp(
    upstream: FakeUpstream, clock: SteppedClock
) -> None:
    tasks = "  main: {chain: [a, b]}\n"
    async with router_for(upstream, tasks, RAMPED) as router:
        a = router.candidates["a"]

        async def fail_and_recover() -> None:
            upstream.fail_always("model-a", Fault.server_error())
            while a.breaker.state != BreakerState.OPEN:
                await served_by(router, "main")
            await served_by(router, "main")  # an ordering sees it open
            upstream.heal("model-a")
            await asyncio.sleep(0.06)
            while a.breaker.state != BreakerState.CLOSED:
                await served_by(router, "main")
            await served_by(router, "main")  # an ordering sees it closed

        await fail_and_recover()
        clock.now += 80
        assert a.ramp_share == pytest.approx(0.82)
        await fail_and_recover()
        assert a.ramp_share == pytest.approx(0.1)


async def test_without_ramp_s_a_recovered_provider_takes_every_first_pick_at_once(
    upstream: FakeUpstream, clock: SteppedClock
) -> None:
    tasks = "  main: {chain: [a, b]}\n"
    async with router_for(upstream, tasks, RAMPED.replace(", ramp_s: 100", "")) as router:
        a = router.candidates["a"]
        upstream.fail_always("model-a", Fault.server_error())
        assert await served_by(router, "main", 2) == ["b", "b"]
        upstream.heal("model-a")
        await asyncio.sleep(0.06)
        assert await served_by(router, "main", 20) == ["a"] * 20
        assert a.ramp_share is None
