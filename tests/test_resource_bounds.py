"""Resource bounds: a flood of requests to a provider that never answers cannot take more
connections than its pool allows, nor keep file descriptors, tasks or memory once it ends.

Each provider instance has one bounded connection pool (`max_concurrency`, else the
providers' default of 100 connections). Calls beyond it wait for a connection inside their
own `timeout_s`; with `max_concurrency` set, the router skips the provider instead of queueing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway import AllProvidersFailed, DeadlineExceeded, Router
from gateway.metrics import GatewayMetrics
from gateway.policy import parse_policy
from gateway.providers import DEFAULT_MAX_CONNECTIONS
from gateway.testing import FakeUpstream, Fault

FLOOD = 500
TIMEOUT_S = 2.0
MAX_CONCURRENCY = 20
PROTOCOLS = {  # provider type -> (model, base_url suffix)
    "openai": ("gpt-4o-mini", "/v1"),
    "openai_http": ("gpt-4o-mini", "/v1"),
    "anthropic": ("claude-sonnet-4-5", ""),
    "ollama": ("llama3.2", ""),
}
# Memory a flood may add at its peak: 100 KB a waiting request (its task, the SDK's request
# objects, a socket's buffers) is generous; unbounded buffering or a leak is far more.
PEAK_MEMORY_BYTES = FLOOD * 100_000
# FakeUpstream runs in this process, but its own sockets are not counted (it closes its side
# of a dropped connection when it notices, which may be after the client has opened the next
# one). The slack covers the loop's own descriptors (self-pipe, selector) and logging.
FD_SLACK = 16


def open_fds(upstream: FakeUpstream) -> int:
    """This process's open descriptors, less the FakeUpstream's server-side sockets."""
    port = int(upstream.url.rsplit(":", 1)[1])
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                count += 1
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                local = sock.getsockname()
        except OSError:  # closed meanwhile
            continue
        if not (isinstance(local, tuple) and local[1] == port):
            count += 1
    return count


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Peaks:
    connections: int = 0
    fds: int = 0
    rss_bytes: int = 0
    samples: int = 0


async def watch(upstream: FakeUpstream, peaks: Peaks, stop: asyncio.Event) -> None:
    """Sample the upstream's open connections, our descriptors and memory until `stop`."""
    while not stop.is_set():
        peaks.connections = max(peaks.connections, upstream.open_connections)
        peaks.fds = max(peaks.fds, open_fds(upstream))
        peaks.rss_bytes = max(peaks.rss_bytes, rss_bytes())
        peaks.samples += 1
        await asyncio.sleep(0.005)


def hung_policy(url: str, provider_type: str, **provider: Any) -> Router:
    model, suffix = PROTOCOLS[provider_type]
    spec = {"type": provider_type, "model": model, "base_url": url + suffix, "api_key": "k"}
    doc = {
        "version": 1,
        "defaults": {"timeout_s": TIMEOUT_S, "retry": {"attempts": 1}},
        "providers": {"hung": {**spec, **provider}},
        "prices": {model: {"input": 1, "output": 1}},
        "tasks": {"default": {"chain": ["hung"], "first_token_timeout_s": TIMEOUT_S}},
    }
    policy = parse_policy(yaml.safe_dump(doc), source="bounds.yaml")
    return Router(policy, hooks=[GatewayMetrics(CollectorRegistry())])


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(max_recorded_requests=0) as up:
        yield up


async def flood(router: Router) -> Counter[str]:
    """FLOOD requests at once, half streamed; how each one ended, by exception type."""

    async def one(index: int) -> str:
        messages = [{"role": "user", "content": f"request {index}"}]
        try:
            if index % 2:
                async for _ in router.stream(messages):
                    pass
            else:
                await router.generate(messages)
        except (AllProvidersFailed, DeadlineExceeded) as exc:
            return type(exc).__name__
        return "answered"

    # A hang guard far above TIMEOUT_S, not a speed goal: every request is bounded by it.
    async with asyncio.timeout(60):
        return Counter(await asyncio.gather(*(one(i) for i in range(FLOOD))))


async def run_flood(upstream: FakeUpstream, router: Router) -> tuple[Counter[str], Peaks, int]:
    """Flood a hung provider: (endings, peaks, fds before); connections and fds must return."""
    model = router.candidates["hung"].model
    # One healthy call first, so the SDK's first-use imports do not count as the flood's.
    await router.generate([{"role": "user", "content": "warm up"}])
    upstream.fail_always(model, Fault.hang())  # held until the client gives up
    gc.collect()
    fds_before = open_fds(upstream)
    peaks = Peaks(rss_bytes=rss_bytes())
    rss_before = peaks.rss_bytes
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(upstream, peaks, stop))
    try:
        endings = await flood(router)
    finally:
        stop.set()
        await watcher
        await router.aclose()
    for _ in range(200):  # FakeUpstream sees each hang-up a moment after the client's close
        if upstream.open_connections == 0 and open_fds(upstream) <= fds_before:
            break
        await asyncio.sleep(0.025)
    assert upstream.open_connections == 0
    assert open_fds(upstream) <= fds_before, f"descriptors {fds_before} -> {open_fds(upstream)}"
    assert peaks.samples > 10  # the watcher really sampled during the flood
    assert peaks.rss_bytes - rss_before < PEAK_MEMORY_BYTES
    return endings, peaks, fds_before


# The router sheds the same way whatever the protocol: one provider type shows it.
@pytest.mark.parametrize("provider_type", ["anthropic"])
async def test_max_concurrency_bounds_connections_and_sheds_the_rest(
    upstream: FakeUpstream, provider_type: str
) -> None:
    router = hung_policy(upstream.url, provider_type, max_concurrency=MAX_CONCURRENCY)
    endings, peaks, fds_before = await run_flood(upstream, router)
    assert endings == {"AllProvidersFailed": FLOOD}  # nothing answered, nothing hung
    assert 0 < peaks.connections <= MAX_CONCURRENCY
    assert upstream.count() == 1 + MAX_CONCURRENCY  # the warm-up; the rest were never sent
    assert peaks.fds - fds_before <= MAX_CONCURRENCY + FD_SLACK


@pytest.mark.parametrize("provider_type", sorted(PROTOCOLS))
async def test_the_pool_bounds_connections_when_nothing_sheds(
    upstream: FakeUpstream, provider_type: str
) -> None:
    router = hung_policy(upstream.url, provider_type)  # no max_concurrency: all 500 queue
    endings, peaks, fds_before = await run_flood(upstream, router)
    # Every call waited for a connection or for an answer, within its own timeout_s.
    assert endings == {"AllProvidersFailed": FLOOD}
    assert 0 < peaks.connections <= DEFAULT_MAX_CONNECTIONS
    assert peaks.fds - fds_before <= DEFAULT_MAX_CONNECTIONS + FD_SLACK
