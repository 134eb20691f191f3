"""Issue 15: running out of our own connection pool is never blamed on the upstream.

A call that finds every connection of its provider's pool busy waits at most `pool_wait_s`
for one (a provider option, `options: {pool_wait_s: ...}` in a policy), then is `saturated`:
nothing was sent, the provider's breaker is not told of a failure, and the next candidate in
the chain is tried. Through the public API on FakeUpstreams, over the default aiohttp
transport and the OpenAI SDK (`client: sdk`, on its aiohttp adapter and on httpx2's pool).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gateway import AllProvidersFailed, AttemptOutcome, BreakerState, DeadlineExceeded, Router
from gateway.errors import ConfigurationError, ProviderSaturated
from gateway.policy import Policy, parse_policy
from gateway.providers import LLMFactory, OpenAIService
from gateway.testing import FakeUpstream

POOL = 4
CALLS = 12
WAIT_S = 0.1
WORDS = 8
CHUNK_DELAY_S = 0.1  # a stream on the small pool lasts ~0.8 s, far past the pool wait
MODEL = "gpt-4o-mini"
QUESTION = [{"role": "user", "content": "hi"}]

POLICY = """
version: 1
defaults:
  retry: {attempts: 1}
  breaker: {fail_max: 2, reset_timeout_s: 60}
providers:
  small:
    type: small_pool_openai
    model: gpt-4o-mini
    base_url: "${SMALL}/v1"
    api_key: unused
    options: {pool_wait_s: 0.1, client: CLIENT, http_transport: TRANSPORT}
  backup: {type: openai, model: gpt-4o-mini, base_url: "${BACKUP}/v1", api_key: unused}
tasks:
  chat: {chain: [small, backup]}
  alone: {chain: [small]}
"""

CLIENTS = [
    pytest.param(("http", "null"), id="aiohttp"),
    pytest.param(("sdk", "aiohttp"), id="sdk"),
    pytest.param(("sdk", "httpx2"), id="sdk-httpx2"),
]


class SmallPoolOpenAI(OpenAIService):
    """An OpenAI provider whose pool is smaller than the calls sent to it at once (in a policy
    the pool is `max_concurrency`, which the walk also enforces by skipping the provider)."""

    type_name = "small_pool_openai"

    def __init__(self, **options: Any) -> None:
        super().__init__(**{**options, "max_connections": POOL})


@pytest.fixture(autouse=True)
def small_pool_type() -> Iterator[None]:
    LLMFactory.register(SmallPoolOpenAI.type_name, SmallPoolOpenAI)
    yield
    LLMFactory.unregister(SmallPoolOpenAI.type_name)


@pytest.fixture
async def backup() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


def policy_text(client: tuple[str, str]) -> str:
    kind, transport = client
    text = POLICY.replace("CLIENT", kind).replace("TRANSPORT", transport)
    return text if kind == "sdk" else text.replace(", http_transport: null", "")


@contextlib.asynccontextmanager
async def peak_connections(up: FakeUpstream) -> AsyncIterator[list[int]]:
    """The most connections `up` had open at once while the block ran (sampled)."""
    peak = [0]

    async def watch() -> None:
        while True:
            peak[0] = max(peak[0], up.open_connections)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        yield peak
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        peak[0] = max(peak[0], up.open_connections)


@pytest.mark.parametrize("client", CLIENTS)
async def test_streams_past_the_pool_are_saturated_and_fall_through_with_the_breaker_closed(
    upstream: FakeUpstream, backup: FakeUpstream, client: tuple[str, str]
) -> None:
    text = " ".join(["word"] * WORDS)
    upstream.reply(MODEL, text, chunk_delay_s=CHUNK_DELAY_S)
    backup.reply(MODEL, text)
    policy = parse_policy(
        policy_text(client), environ={"SMALL": upstream.url, "BACKUP": backup.url}
    )
    async with Router(policy) as router:

        async def one() -> tuple[str, str | None, list[Any]]:
            stream = router.stream(QUESTION, task="chat")
            answer = "".join([delta async for delta in stream])
            return answer, stream.provider, stream.attempts

        async with peak_connections(upstream) as peak:
            results = await asyncio.gather(*(one() for _ in range(CALLS)))

        assert [answer for answer, _, _ in results] == [text] * CALLS
        served = [provider for _, provider, _ in results]
        assert served.count("small") == POOL
        assert served.count("backup") == CALLS - POOL
        for _, provider, attempts in results:
            outcomes = [a.outcome for a in attempts]
            if provider == "small":
                assert outcomes == [AttemptOutcome.SUCCESS]
            else:
                assert outcomes == [AttemptOutcome.SATURATED, AttemptOutcome.SUCCESS]
                assert f"came free within pool_wait_s={WAIT_S:g}" in (attempts[0].error or "")
        # Nothing of the wait reached the upstream, and nothing of it was the upstream's fault.
        assert peak[0] == POOL
        assert upstream.count(model=MODEL) == POOL
        assert router.candidates["small"].breaker.state == BreakerState.CLOSED


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_chain_of_one_reports_saturated_and_the_provider_keeps_serving(
    upstream: FakeUpstream, backup: FakeUpstream, client: tuple[str, str]
) -> None:
    upstream.reply(MODEL, "slow but fine", latency_s=0.6)
    policy = parse_policy(
        policy_text(client), environ={"SMALL": upstream.url, "BACKUP": backup.url}
    )
    async with Router(policy) as router:

        async def one() -> list[Any]:
            try:
                answer = await router.generate(QUESTION, task="alone")
            except AllProvidersFailed as failed:
                return list(failed.attempts)
            return list(answer.attempts)

        async with peak_connections(upstream) as peak:
            results = await asyncio.gather(*(one() for _ in range(CALLS)))

        outcomes = sorted(str(a.outcome) for attempts in results for a in attempts)
        assert outcomes == sorted(
            [str(AttemptOutcome.SUCCESS)] * POOL + [str(AttemptOutcome.SATURATED)] * (CALLS - POOL)
        )
        assert peak[0] <= POOL
        # Eight saturated attempts against fail_max 2: the breaker heard of none of them.
        assert router.candidates["small"].breaker.state == BreakerState.CLOSED
        upstream.reply(MODEL, "still here")
        answer = await router.generate(QUESTION, task="alone")
        assert (answer.provider, answer.text) == ("small", "still here")


async def test_a_slot_that_frees_within_the_wait_is_taken(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    upstream.reply(MODEL, "ok", latency_s=0.05)
    llm = OpenAIService(
        model=MODEL, base_url=upstream.openai_base_url, api_key="k", max_connections=1
    )
    async with llm:
        assert llm.pool_wait_s == 1.0  # the default
        answers = await asyncio.gather(*(llm.complete(QUESTION) for _ in range(4)))
        assert [a.text for a in answers] == ["ok"] * 4


@pytest.mark.parametrize("options", [{}, {"client": "sdk"}], ids=["aiohttp", "sdk"])
async def test_no_wait_at_all_is_saturated_at_once(
    upstream: FakeUpstream, isolated_settings: object, options: dict[str, Any]
) -> None:
    upstream.reply(MODEL, "a b c", chunk_delay_s=0.1)
    async with OpenAIService(
        model=MODEL,
        base_url=upstream.openai_base_url,
        api_key="k",
        max_connections=1,
        pool_wait_s=0,
        **options,
    ) as llm:
        async with llm.stream(QUESTION) as held:
            assert await held.__anext__() == "a"
            with pytest.raises(ProviderSaturated, match=r"within pool_wait_s=0;.*1 of its"):
                await llm.complete(QUESTION)
        assert upstream.count(model=MODEL) == 1


@pytest.mark.parametrize("wait", [-1, float("inf"), "1", True])
def test_a_bad_pool_wait_is_refused_naming_the_fix(isolated_settings: object, wait: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"pool_wait_s is .*seconds >= 0"):
        OpenAIService(model=MODEL, api_key="k", pool_wait_s=wait)


async def test_the_sdk_pools_own_timeout_is_saturated_too(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    # Without the gateway's slots in front, httpx2's pool itself runs dry: its PoolTimeout
    # (inside the SDK's APITimeoutError) is still our pool, not the provider.
    upstream.reply(MODEL, "a b c d", chunk_delay_s=0.1)
    llm = OpenAIService(
        model=MODEL,
        base_url=upstream.openai_base_url,
        api_key="k",
        max_connections=1,
        timeout_s=0.3,
        client="sdk",
        http_transport="httpx2",
    )
    async with llm:
        llm.transport.slots = None
        async with llm.stream(QUESTION) as held:
            assert await held.__anext__() == "a"
            with pytest.raises(ProviderSaturated, match=r"the SDK pool's timeout \(0\.3 s\)"):
                await llm.complete(QUESTION)
        assert upstream.count(model=MODEL) == 1


async def test_litellm_waits_for_its_own_slots_as_boundedly(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    upstream.reply("lite-test", "a b c", chunk_delay_s=0.1)
    llm = LLMFactory.create(
        "litellm",
        model="openai/lite-test",
        base_url=upstream.openai_base_url,
        api_key="k",
        max_connections=1,
        pool_wait_s=0.05,
    )
    try:
        async with llm.stream(QUESTION) as held:
            assert await held.__anext__() == "a"
            with pytest.raises(ProviderSaturated, match=r"within pool_wait_s=0\.05"):
                await llm.complete(QUESTION)
        # The slot is back once the stream is closed.
        assert (await llm.complete(QUESTION)).text == "a b c"
    finally:
        await llm.aclose()


class OneConnectionOpenAI(OpenAIService):
    type_name = "one_connection_openai"

    def __init__(self, **options: Any) -> None:
        super().__init__(**{**options, "max_connections": 1})


@pytest.fixture
def one_connection_type() -> Iterator[None]:
    LLMFactory.register(OneConnectionOpenAI.type_name, OneConnectionOpenAI)
    yield
    LLMFactory.unregister(OneConnectionOpenAI.type_name)


def one_connection_policy(up: FakeUpstream, *, defaults: str, limits: str, tasks: str) -> Policy:
    """A policy whose provider `one` has a single connection to `up`, with `limits` (its
    timeout_s and options) and the given `defaults` and `tasks` (YAML flow mappings)."""
    return parse_policy(
        "version: 1\n"
        f"defaults: {defaults}\n"
        "providers:\n"
        "  one: {type: one_connection_openai, model: gpt-4o-mini, base_url: "
        f'"${{FAKE}}/v1", api_key: unused, {limits}}}\n'
        f"tasks: {tasks}\n",
        environ={"FAKE": up.url},
    )


async def test_the_providers_timeout_starts_once_a_connection_is_held(
    upstream: FakeUpstream, one_connection_type: None
) -> None:
    # Each call takes 0.4 s at the provider, within its timeout_s of 0.6; the second waits
    # ~0.4 s for the one connection first. Counting the wait as the provider's time made it a
    # `timeout` and a breaker failure.
    upstream.reply(MODEL, latency_s=0.4)
    policy = one_connection_policy(
        upstream,
        defaults="{retry: {attempts: 1}, breaker: {fail_max: 1}}",
        limits="timeout_s: 0.6, options: {pool_wait_s: 0.5}",
        tasks="{default: {chain: [one]}}",
    )
    async with Router(policy) as router:
        answers = await asyncio.gather(router.generate(QUESTION), router.generate(QUESTION))
        assert [a.attempts[0].outcome for a in answers] == [AttemptOutcome.SUCCESS] * 2
        assert router.candidates["one"].breaker.state == BreakerState.CLOSED


async def test_a_deadline_bounds_the_wait_for_a_connection_too(
    upstream: FakeUpstream, one_connection_type: None
) -> None:
    # The provider bounds its own calls (aiohttp's timeout starts once a connection is held),
    # so the router sets no timer around them; under a deadline it still does. The second
    # request waits for the one connection, which is busy for 2 s, with 10 s of pool_wait_s
    # and a 0.3 s deadline: the deadline ends it, not the pool a second and a half later.
    upstream.reply(MODEL, latency_s=2.0)
    policy = one_connection_policy(
        upstream,
        defaults="{retry: {attempts: 1}}",
        limits="timeout_s: 30, options: {pool_wait_s: 10}",
        tasks="{default: {chain: [one]}, hurried: {chain: [one], deadline_s: 0.3}}",
    )
    async with Router(policy) as router:
        holder = asyncio.create_task(router.generate(QUESTION))
        while upstream.open_connections < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded) as raised:
            await router.generate(QUESTION, task="hurried")
        assert [a.outcome for a in raised.value.attempts] == [AttemptOutcome.DEADLINE]
        assert not holder.done()  # it was the deadline, not the first call ending
        assert (await holder).attempts[0].outcome is AttemptOutcome.SUCCESS
        assert router.candidates["one"].breaker.state == BreakerState.CLOSED
