"""What tracing costs the router: p50 latency and throughput against a FakeUpstream, with
tracing off (no hook added) and on (spans to an in-memory exporter, and batched to an exporter
that drops them, as a production exporter does off the request's path).

    python -m bench.tracing_cost [--requests N] [--concurrency C]    # prints a markdown table

Each mode runs on its own router over the same local FakeUpstream (OpenAI's protocol, HTTP on
127.0.0.1): a warm-up, N sequential requests for the p50, then N requests C at a time for the
throughput. The modes run in turn, twice, and each keeps its better run, so that a warm-up
of the machine does not favour the mode that runs last. Bounded: about 4 x 2 x N requests.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.stats import percentile
from gateway import Router
from gateway.hooks import RouterHooks
from gateway.policy import parse_policy
from gateway.testing import FakeUpstream
from gateway.tracing import TracingHooks

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello"}]
POLICY = """
version: 1
providers:
  mini: {type: openai, model: gpt-4o-mini, base_url: "URL/v1", api_key: bench}
tasks: {default: {chain: [mini]}}
"""


class DroppingExporter(SpanExporter):
    """Accepts every batch and keeps nothing: the cost of recording, not of sending."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@dataclass(frozen=True, slots=True)
class Result:
    mode: str
    p50_ms: float
    requests_per_s: float
    spans: int


@dataclass(slots=True)
class Tracing:
    hooks: list[RouterHooks]
    provider: TracerProvider | None = None
    kept: InMemorySpanExporter | None = None
    """Where the spans are kept, to count them (a check that tracing did record)."""


def untraced(router: Callable[[], Router | None]) -> Tracing:
    return Tracing([])


def in_memory(router: Callable[[], Router | None]) -> Tracing:
    provider, kept = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    return Tracing([TracingHooks(router, tracer_provider=provider)], provider, kept)


def batched(router: Callable[[], Router | None]) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    return Tracing([TracingHooks(router, tracer_provider=provider)], provider)


MODES: dict[str, Callable[[Callable[[], Router | None]], Tracing]] = {
    "off (no hook)": untraced,
    "on, in-memory exporter": in_memory,
    "on, batched, dropped": batched,
}


async def run_mode(mode: str, url: str, requests: int, concurrency: int) -> Result:
    policy = parse_policy(POLICY.replace("URL", url))
    router: Router | None = None
    tracing = MODES[mode](lambda: router)
    router = Router(policy, hooks=tracing.hooks)
    try:
        for _ in range(min(requests, 100)):  # warm: connections, caches
            await router.generate(MESSAGES)
        timings = []
        for _ in range(requests):
            began = time.perf_counter()
            await router.generate(MESSAGES)
            timings.append(time.perf_counter() - began)
        pending = iter(range(requests))

        async def worker() -> None:
            assert router is not None
            for _ in pending:
                await router.generate(MESSAGES)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await router.aclose()
        if tracing.provider is not None:
            tracing.provider.shutdown()  # flushes
    spans = len(tracing.kept.get_finished_spans()) if tracing.kept is not None else 0
    return Result(mode, percentile(timings, 0.5) * 1e3, requests / elapsed, spans)


async def measure(requests: int, concurrency: int) -> list[Result]:
    best: dict[str, Result] = {}
    async with FakeUpstream() as fake:
        fake.reply(MODEL, "Hello")
        for _ in range(2):
            for mode in MODES:
                result = await run_mode(mode, fake.url, requests, concurrency)
                kept = best.get(mode)
                if kept is None or result.p50_ms < kept.p50_ms:
                    best[mode] = result
    return [best[mode] for mode in MODES]


def table(results: Sequence[Result]) -> str:
    base = results[0]
    lines = [
        "| tracing | p50 (ms) | vs off | throughput (req/s) | vs off | spans kept |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.p50_ms:.3f} | {r.p50_ms - base.p50_ms:+.3f} ms "
            f"| {r.requests_per_s:.0f} | {r.requests_per_s / base.requests_per_s - 1:+.1%} "
            f"| {r.spans or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.requests, args.concurrency))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
