"""The router's layers added one at a time over real HTTP, interleaved in one process.

    python -m bench.layers_http --upstream URL [--requests N]    # prints JSON

The in-process layer benchmark (bench.layers) runs each piece in a tight loop, where its code
and data stay in the CPU's caches; between two SDK calls they do not, and the same Python
costs more. Here each step wraps the gateway's OpenAI provider in one more layer, talking to a
FakeUpstream through the real SDK, and the variants take turns in batches of 50 so that load
on the machine hits them alike. Reported: each variant's p50, in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry

from bench.layers import Layer
from bench.scenarios import BENCH_KEY, MESSAGES, MODEL, POLICY_PATH, UPSTREAM_ENV
from bench.stats import percentile
from gateway import Router
from gateway._resilience import call_with_retries
from gateway.metrics import GatewayMetrics
from gateway.policy import RetryPolicy, load_policy
from gateway.providers import LLMFactory

BATCH = 50
WARMUP = 200


async def measure(upstream_url: str, requests: int) -> list[Layer]:
    os.environ[UPSTREAM_ENV] = upstream_url
    provider = LLMFactory.create(
        "openai", name="bench", model=MODEL, base_url=upstream_url + "/v1", api_key=BENCH_KEY
    )
    plain = Router(load_policy(POLICY_PATH), hooks=[])
    metered = Router(load_policy(POLICY_PATH), hooks=[GatewayMetrics(CollectorRegistry())])
    retry = RetryPolicy()

    async def bare() -> Any:
        return await provider.complete(MESSAGES)

    async def bounded() -> Any:
        async with asyncio.timeout(30):
            return await provider.complete(MESSAGES)

    async def retried() -> Any:
        return await call_with_retries(
            bounded, retry, remaining_s=lambda: None, on_retry=lambda error, wait: None
        )

    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "OpenAIService.complete, alone": bare,
        "+ asyncio.timeout": bounded,
        "+ retry wrapper (tenacity)": retried,
        "Router.generate, hooks=[]": lambda: plain.generate(MESSAGES),
        "Router.generate, metrics on": lambda: metered.generate(MESSAGES),
    }
    try:
        for call in variants.values():
            for _ in range(WARMUP):
                await call()
        latencies: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(max(1, requests // BATCH)):
            for name, call in variants.items():
                for _ in range(BATCH):
                    began = time.perf_counter()
                    await call()
                    latencies[name].append(time.perf_counter() - began)
    finally:
        await provider.aclose()
        await plain.aclose()
        await metered.aclose()
    p50 = {name: percentile(values, 0.5) * 1e6 for name, values in latencies.items()}
    layers = []
    previous: str | None = None
    for name, value in p50.items():
        note = f"{value - p50[previous]:+.0f} µs over the row above" if previous else ""
        layers.append(Layer(name, value, note))
        previous = name
    return layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layers_http", description=__doc__)
    parser.add_argument("--upstream", required=True, help="a FakeUpstream's URL")
    parser.add_argument("--requests", type=int, default=1000, help="per variant")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    layers = asyncio.run(measure(args.upstream.rstrip("/"), args.requests))
    print(json.dumps([asdict(layer) for layer in layers]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
