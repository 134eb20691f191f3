"""Profile the router's hot path with pyinstrument: where a request's time goes, by function.

    python -m bench.profile [--requests N] [--http] [--flat]

Without --http the router calls an in-process provider (the layers benchmark's), so the
profile is the router alone; with --http it calls a FakeUpstream in its own process through
the real OpenAI SDK, showing the router's share beside the SDK's.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from prometheus_client import CollectorRegistry
from pyinstrument import Profiler

from bench.layers import POLICY, no_sleep, open_dead_breaker, register_fakes
from bench.scenarios import (
    DEAD_MODEL,
    FAILOVER_TASK,
    MESSAGES,
    POLICY_PATH,
    REPLY_TEXT,
    SINGLE_TASK,
    TASK,
    UPSTREAM_ENV,
)
from gateway import Router
from gateway.metrics import GatewayMetrics
from gateway.policy import load_policy, parse_policy
from gateway.testing import FakeUpstream, Fault


async def _profile(router: Router, requests: int, *, stream: bool, task: str) -> Profiler:
    async def one() -> None:
        if stream:
            async for _ in router.stream(MESSAGES, task=task):
                pass
        else:
            await router.generate(MESSAGES, task=task)

    for _ in range(min(200, requests)):
        await one()
    profiler = Profiler(interval=0.0001)
    profiler.start()
    for _ in range(requests):
        await one()
    profiler.stop()
    return profiler


async def profile_in_process(requests: int, *, stream: bool, task: str) -> Profiler:
    register_fakes()
    policy = parse_policy(POLICY, source="bench.profile")
    router = Router(policy, hooks=[GatewayMetrics(CollectorRegistry())], sleep=no_sleep)
    try:
        if task == FAILOVER_TASK:
            await open_dead_breaker(router)
        return await _profile(router, requests, stream=stream, task=task)
    finally:
        await router.aclose()


async def profile_over_http(url: str, requests: int, *, stream: bool, task: str) -> Profiler:
    os.environ[UPSTREAM_ENV] = url
    router = Router(load_policy(POLICY_PATH), hooks=[GatewayMetrics(CollectorRegistry())])
    try:
        if task == FAILOVER_TASK:
            await open_dead_breaker(router)
        return await _profile(router, requests, stream=stream, task=task)
    finally:
        await router.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--http", action="store_true", help="through the SDK to a FakeUpstream")
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    parser.add_argument("--flat", action="store_true", help="a flat list of self times")
    parser.add_argument(
        "--task",
        default=TASK,
        choices=[TASK, FAILOVER_TASK, SINGLE_TASK],
        help=f"{FAILOVER_TASK}: through a provider whose breaker is open",
    )
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.http:
        with FakeUpstream.spawn() as upstream:
            upstream.client.reply(None, REPLY_TEXT)
            upstream.client.fail_always(DEAD_MODEL, Fault.server_error())
            profiler = asyncio.run(
                profile_over_http(upstream.url, args.requests, stream=args.stream, task=args.task)
            )
    else:
        profiler = asyncio.run(
            profile_in_process(args.requests, stream=args.stream, task=args.task)
        )
    print(profiler.output_text(unicode=True, flat=args.flat, short_mode=not args.flat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
