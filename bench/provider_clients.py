"""What one provider call costs on each client: `client: http` (the default transport) and
`client: sdk` (the official SDK, over its aiohttp adapter or httpx2's pool).

Sequential `complete` calls against an in-process `FakeUpstream` on 127.0.0.1, so the figure
is the client's own cost per call plus the fake's, which is the same for every row:

    .venv/bin/python -m bench.provider_clients [calls]
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from gateway.providers import LLMFactory
from gateway.testing import FakeUpstream

MESSAGES = [{"role": "user", "content": "Say something short."}]
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("openai", "http", {}),
    ("openai", "sdk (aiohttp adapter)", {"client": "sdk"}),
    ("openai", "sdk (httpx2)", {"client": "sdk", "http_transport": "httpx2"}),
    ("anthropic", "http", {}),
    ("anthropic", "sdk (aiohttp adapter)", {"client": "sdk"}),
    ("ollama", "http", {}),
]


async def per_call_us(up: FakeUpstream, provider: str, options: dict[str, Any], n: int) -> float:
    base_url = {
        "openai": up.openai_base_url,
        "anthropic": up.anthropic_base_url,
        "ollama": up.ollama_base_url,
    }[provider]
    async with LLMFactory.create(
        provider, model="bench-m", api_key="bench-key", base_url=base_url, **options
    ) as llm:
        for _ in range(50):  # warm the pool and the code paths
            await llm.complete(MESSAGES)
        started = time.perf_counter()
        for _ in range(n):
            await llm.complete(MESSAGES)
        return (time.perf_counter() - started) / n * 1e6


async def main(n: int) -> None:
    async with FakeUpstream() as up:
        print(f"{'type':<10} {'client':<24} µs/call ({n} sequential calls)")
        for provider, label, options in ROWS:
            us = await per_call_us(up, provider, options, n)
            print(f"{provider:<10} {label:<24} {us:8.0f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
