"""Issue 15: the breaker judges the provider only, never the caller or our own limits.

Through the public API on a FakeUpstream: a caller's own deadline that runs out while a
healthy call is in flight is `deadline` on the attempt and leaves the provider's breaker
closed for every other task.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway import AllProvidersFailed, AttemptOutcome, BreakerState, DeadlineExceeded, Router
from gateway.policy import parse_policy
from gateway.testing import FakeUpstream, set_waits_enabled

POLICY = """
version: 1
defaults:
  retry: {attempts: 1}
  breaker: {fail_max: 2, reset_timeout_s: 60}
providers:
  slow: {type: openai, model: gpt-4o-mini, base_url: "${FAKE}/v1", api_key: unused}
tasks:
  tight: {chain: [slow], deadline_s: 0.2}
  patient: {chain: [slow]}
"""
QUESTION = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def no_waits() -> Iterator[None]:
    set_waits_enabled(False)
    yield
    set_waits_enabled(True)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_callers_deadline_does_not_open_a_healthy_providers_breaker(
    upstream: FakeUpstream, stream: bool
) -> None:
    upstream.reply("gpt-4o-mini", latency_s=0.5)  # healthy, only slower than tight's deadline
    policy = parse_policy(POLICY, environ={"FAKE": upstream.url})
    async with Router(policy) as router:
        for _ in range(4):  # twice fail_max
            with pytest.raises(DeadlineExceeded) as ran_out:
                if stream:
                    async with router.stream(QUESTION, task="tight") as chunks:
                        [delta async for delta in chunks]
                else:
                    await router.generate(QUESTION, task="tight")
            assert [a.outcome for a in ran_out.value.attempts] == [AttemptOutcome.DEADLINE]
        assert router.candidates["slow"].breaker.state == BreakerState.CLOSED
        # Every other task sharing the provider is served as before.
        answer = await router.generate(QUESTION, task="patient")
        assert answer.provider == "slow"
        assert [a.outcome for a in answer.attempts] == [AttemptOutcome.SUCCESS]


async def test_the_providers_own_timeout_still_counts_against_it(upstream: FakeUpstream) -> None:
    upstream.reply("gpt-4o-mini", latency_s=0.5)
    policy = parse_policy(
        POLICY.replace("api_key: unused}", "api_key: unused, timeout_s: 0.1}"),
        environ={"FAKE": upstream.url},
    )
    async with Router(policy) as router:
        for _ in range(2):
            with pytest.raises(AllProvidersFailed) as failed:
                await router.generate(QUESTION, task="patient")
            assert [a.outcome for a in failed.value.attempts] == [AttemptOutcome.TIMEOUT]
        assert router.candidates["slow"].breaker.state == BreakerState.OPEN
