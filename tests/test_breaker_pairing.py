"""Every breaker admission ends in exactly one outcome, whatever is raised.

A half-open breaker lets one probe through. However the probe's request ends (a reply too
deep to parse, which the caller's check rejects; a schema validator raising a plain
`RuntimeError` the walk does not expect; the caller closing a stream), the probe must be
released: otherwise the breaker stays half-open with no probe in flight and skips the
provider until a restart. Run
over real HTTP against FakeUpstream, for the in-process breaker and the Redis-shared one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from pydantic import BaseModel, field_validator
from redis_harness import RedisServer

from gateway import RoutedStream, Router
from gateway._resilience import Breaker
from gateway.errors import AllProvidersFailed, ErrorKind
from gateway.policy import parse_policy
from gateway.testing import FakeUpstream, Fault

T = TypeVar("T")

MODEL = "probe-model"
RESET_S = 0.2
DEEP_JSON = "[" * 20_000 + "]" * 20_000
"""Valid JSON nested deeper than the parser's recursion limit."""

POLICY = """
version: 1
defaults:
  retry: {{attempts: 1}}
  breaker: {{fail_max: 1, reset_timeout_s: {reset}, success_threshold: 1,
            trip_on: [server_error]}}
providers:
  flaky: {{type: openai, model: {model}, base_url: "{upstream}/v1", api_key: test-key}}
tasks:
  default: {{chain: [flaky]}}
{state}
"""


class Strict(BaseModel):
    answer: str

    @field_validator("answer")
    @classmethod
    def _explode(cls, value: str) -> str:
        raise RuntimeError("a validator with a bug of its own")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def router(request: pytest.FixtureRequest, upstream: FakeUpstream) -> AsyncIterator[Router]:
    state = ""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        state = f'state: {{backend: redis, url: "{server.url}", namespace: "t-{uuid.uuid4().hex}"}}'
    text = POLICY.format(reset=RESET_S, model=MODEL, upstream=upstream.url, state=state)
    policy = parse_policy(text)
    async with Router(policy, hooks=[], watch_interval_s=None) as router:
        yield router


async def open_then_due(router: Router, upstream: FakeUpstream) -> Breaker:
    """Open the breaker with one server error, then wait until a probe is due."""
    upstream.script(MODEL, Fault.server_error())
    with pytest.raises(Exception, match="server_error"):
        await router.generate([{"role": "user", "content": "hi"}])
    breaker = router.candidates["flaky"].breaker
    # The Redis-shared breaker hears of its own failure after a round trip.
    deadline = time.monotonic() + 5
    while breaker.state != "open":
        assert time.monotonic() < deadline, f"the breaker stayed {breaker.state}"
        await asyncio.sleep(0.02)
    await asyncio.sleep(RESET_S * 1.5)
    return breaker


async def admitted(call: Callable[[], Awaitable[T]]) -> T:
    """`call()` once the breaker lets it through. A Redis-shared breaker asks for the probe's
    lease in the background, so the first requests after the reset may still be refused."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return await call()
        except AllProvidersFailed as refused:
            assert refused.attempts[-1].outcome == "breaker_open", refused
            assert time.monotonic() < deadline, "no probe was let through"
            await asyncio.sleep(0.05)


async def served_again(router: Router, upstream: FakeUpstream, breaker: Breaker) -> None:
    """A later request is let through as a probe, answers, and closes the breaker."""
    upstream.reply(MODEL, "fine again")
    routed = await admitted(lambda: router.generate([{"role": "user", "content": "hi"}]))
    assert routed.provider == "flaky"
    assert routed.text == "fine again"
    deadline = time.monotonic() + 5
    while breaker.state != "closed":
        assert time.monotonic() < deadline, f"the breaker stayed {breaker.state}"
        await asyncio.sleep(0.02)


async def test_a_probe_whose_reply_is_too_deep_to_parse_is_released(
    router: Router, upstream: FakeUpstream
) -> None:
    breaker = await open_then_due(router, upstream)
    upstream.reply(MODEL, DEEP_JSON)

    async def probe() -> AllProvidersFailed:
        try:
            await router.generate_json([{"role": "user", "content": "json"}])
        except AllProvidersFailed as failed:
            if failed.attempts[-1].outcome == "breaker_open":
                raise  # not admitted yet: `admitted` tries again
            return failed
        raise AssertionError("a reply nested 20,000 deep was accepted")

    failed = await admitted(probe)
    assert failed.attempts[-1].outcome == "invalid_response"
    await served_again(router, upstream, breaker)


async def test_a_probe_whose_schema_validator_raises_is_released(
    router: Router, upstream: FakeUpstream
) -> None:
    breaker = await open_then_due(router, upstream)
    upstream.reply(MODEL, '{"answer": "42"}')
    with pytest.raises(RuntimeError, match="a bug of its own"):
        await admitted(
            lambda: router.generate_json([{"role": "user", "content": "json"}], schema=Strict)
        )
    await served_again(router, upstream, breaker)


async def test_a_probe_cancelled_mid_stream_is_released(
    router: Router, upstream: FakeUpstream
) -> None:
    breaker = await open_then_due(router, upstream)
    upstream.reply(MODEL, "one two three four", chunk_delay_s=0.05)

    async def first_delta() -> RoutedStream:
        stream = router.stream([{"role": "user", "content": "hi"}])
        try:
            assert await stream.__anext__()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    stream = await admitted(first_delta)
    await stream.aclose()
    assert stream.attempts[-1].outcome == "cancelled"
    await served_again(router, upstream, breaker)


def test_every_error_kind_is_an_attempt_outcome() -> None:
    from gateway import AttemptOutcome

    for kind in ErrorKind:
        assert AttemptOutcome.failed(kind) == kind.value
