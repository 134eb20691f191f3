"""An upstream answer's size is bounded after decompression, as it is read.

A gzip bomb (a small body that inflates hugely) and a plain oversized body are each an
`invalid_response` of the provider that sent them, and the router moves on to the next
candidate; the process's memory grows by a bounded amount, not by the inflated size.
FakeUpstream runs in this process and writes its oversized answers a piece at a time, so
the peak measured here is the client's side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway import Router
from gateway.errors import ConfigurationError, ErrorKind, PolicyError, ProviderError
from gateway.metrics import GatewayMetrics
from gateway.policy import parse_policy
from gateway.providers import LLMFactory, MockResponse, MockTransport
from gateway.testing import FakeUpstream, Fault

MiB = 1024 * 1024
BIG = "gpt-big"  # the candidate that misbehaves
GOOD = "gpt-good"  # its healthy backup
MESSAGES = [{"role": "user", "content": "Summarize: routers route."}]
# What one oversized answer may add to the process's peak memory: the bound (16 MiB by
# default), its parse, and the loop's buffers. Reading it whole would add the inflated size.
PEAK_GROWTH_BYTES = 64 * MiB


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux `clear_refs` 5); returns it."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return peak_rss_bytes()


def policy(url: str, **big: Any) -> str:
    doc = {
        "version": 1,
        "defaults": {"timeout_s": 30, "retry": {"attempts": 1}},
        "providers": {
            "big": {"type": "openai", "model": BIG, "base_url": f"{url}/v1", "api_key": "k", **big},
            "good": {"type": "openai", "model": GOOD, "base_url": f"{url}/v1", "api_key": "k"},
        },
        "tasks": {"default": {"chain": ["big", "good"]}},
    }
    return yaml.safe_dump(doc)


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def router(up: FakeUpstream) -> AsyncIterator[Router]:
    r = Router(parse_policy(policy(up.url)), hooks=[GatewayMetrics(CollectorRegistry())])
    yield r
    await r.aclose()


async def falls_through(router: Router, *, stream: bool) -> list[tuple[str, str]]:
    if stream:
        async with router.stream(MESSAGES) as chunks:
            text = "".join([delta async for delta in chunks])
        result: Any = chunks
    else:
        result = await router.generate(MESSAGES)
        text = result.text
    assert text and "xxxx" not in text
    assert result.provider == "good"
    return [(a.provider, a.outcome) for a in result.attempts]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault.gzip_bomb(200 * MiB), id="gzip-bomb-200MiB"),
        pytest.param(Fault.huge_body(50 * MiB), id="plain-50MiB"),
    ],
)
async def test_an_oversized_answer_falls_through_with_memory_bounded(
    up: FakeUpstream, router: Router, fault: Fault
) -> None:
    await router.generate(MESSAGES)  # pools, codecs and imports warmed outside the measure
    before = reset_peak_rss()
    up.script(BIG, fault)
    attempts = await falls_through(router, stream=False)
    growth = peak_rss_bytes() - before
    assert attempts == [("big", "invalid_response"), ("good", "success")]
    assert growth < PEAK_GROWTH_BYTES, f"peak memory grew by {growth / MiB:.0f} MiB"


async def test_a_stream_event_past_the_bound_falls_through_before_any_text(
    up: FakeUpstream, router: Router
) -> None:
    up.script(BIG, Fault.huge_body(40 * MiB))  # one event carrying all of it, on one line
    before = reset_peak_rss()
    attempts = await falls_through(router, stream=True)
    assert attempts == [("big", "invalid_response"), ("good", "success")]
    assert peak_rss_bytes() - before < PEAK_GROWTH_BYTES


async def test_a_stream_is_bounded_in_all_at_a_multiple_of_the_setting(
    up: FakeUpstream,
) -> None:
    # Events of 64 KiB each, gzip-compressed together: each is fine, their sum is not.
    up.script(BIG, Fault.gzip_bomb(20 * MiB))
    llm = LLMFactory.create(
        "openai", model=BIG, base_url=f"{up.url}/v1", api_key="k", max_response_bytes=MiB
    )
    received = 0
    async with llm:
        with pytest.raises(ProviderError) as caught:
            async with llm.stream(MESSAGES) as chunks:
                async for delta in chunks:
                    received += len(delta)
    assert caught.value.kind is ErrorKind.INVALID_RESPONSE
    assert "larger than" in str(caught.value)
    assert 0 < received <= 8 * MiB  # STREAM_BYTES_FACTOR times the setting, then the error


async def test_the_bound_is_set_per_provider_in_the_policy(
    up: FakeUpstream, router: Router
) -> None:
    up.script(BIG, Fault.huge_body(2 * MiB))
    answer = await router.generate(MESSAGES)  # the default, 16 MiB, takes it
    assert (answer.provider, len(answer.text)) == ("big", 2 * MiB)

    bounded = Router(parse_policy(policy(up.url, max_response_bytes=MiB)))
    try:
        up.script(BIG, Fault.huge_body(2 * MiB))
        assert await falls_through(bounded, stream=False) == [
            ("big", "invalid_response"),
            ("good", "success"),
        ]
    finally:
        await bounded.aclose()


async def test_an_answer_within_the_bound_is_read_whole(up: FakeUpstream) -> None:
    up.script(BIG, Fault.huge_body(MiB - 4096))
    llm = LLMFactory.create(
        "openai", model=BIG, base_url=f"{up.url}/v1", api_key="k", max_response_bytes=MiB
    )
    async with llm:
        completion = await llm.complete(MESSAGES)
    assert completion.text == "x" * (MiB - 4096)


def test_the_setting_is_checked_where_it_is_written() -> None:
    url = "http://127.0.0.1:9"
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy(url, max_response_bytes=0))
    assert caught.value.path == "providers.big.max_response_bytes"
    with pytest.raises(PolicyError) as caught:
        parse_policy(policy(url, options={"max_response_bytes": 10}))
    assert "move it out of options" in str(caught.value)
    with pytest.raises(ConfigurationError, match="client: http"):
        LLMFactory.create("openai", model=BIG, api_key="k", client="sdk", max_response_bytes=MiB)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["openai", "azure_openai", "anthropic", "ollama"])
@pytest.mark.parametrize("fault", [Fault.huge_body, Fault.gzip_bomb], ids=["plain", "gzip"])
async def test_every_protocol_refuses_an_oversized_answer(
    up: FakeUpstream, kind: str, stream: bool, fault: Any
) -> None:
    base_url = {
        "openai": f"{up.url}/v1",
        "azure_openai": up.azure_endpoint,
        "anthropic": up.anthropic_base_url,
        "ollama": up.ollama_base_url,
    }[kind]
    up.script_next(fault(4 * MiB) if not stream or fault is Fault.huge_body else fault(16 * MiB))
    llm = LLMFactory.create(
        kind, model="m", base_url=base_url, api_key="k", max_response_bytes=MiB, timeout_s=10
    )
    async with llm:
        with pytest.raises(ProviderError) as caught:
            if stream:
                async with llm.stream(MESSAGES) as chunks:
                    async for _ in chunks:
                        pass
            else:
                await llm.complete(MESSAGES)
    assert caught.value.kind is ErrorKind.INVALID_RESPONSE
    assert "max_response_bytes" in str(caught.value)


async def test_an_answer_announced_too_long_is_refused_before_it_is_read() -> None:
    reply = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    transport = MockTransport(
        lambda request: MockResponse(json=reply, headers={"content-length": str(2 * MiB)})
    )
    llm = LLMFactory.create(
        "openai", model=BIG, api_key="k", transport=transport, max_response_bytes=MiB
    )
    with pytest.raises(ProviderError) as caught:
        await llm.complete(MESSAGES)
    assert caught.value.kind is ErrorKind.INVALID_RESPONSE
