"""One scenario's client in a process of its own, driven by the runner over stdin/stdout.

    python -m bench.client --scenario router --upstream http://127.0.0.1:PORT [--server URL]

It imports its library, builds the client, warms it up, then prints one JSON line
`{"ready": true, ...}` and waits. Each JSON line on stdin is a command; each gets one JSON line
back:

    {"op": "sequential", "n": 500}                  -> {"latencies": [seconds, ...]}
    {"op": "concurrent", "n": 1250, "in_flight": 50} -> {"wall_s": s, "latencies": [...]}
    {"op": "streams", "n": 100}                      -> {"ttft": [seconds, ...]}
    {"op": "long_streams", "n": 20}                  -> {"ttft": [seconds, ...]}
    {"op": "stream_load", "n": 200, "in_flight": 50} -> {"wall_s": s, "chunks": k, "cpu_s": s}
    {"op": "rss"}                                    -> {"peak_rss_kb": kb}
    {"op": "quit"}                                   -> {"bye": true}, then exit

A failure answers `{"error": "..."}` and exits with status 1. The protocol has the process's
real stdout to itself: anything a library prints goes to stderr instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any, TextIO

from bench.proc import cpu_seconds
from bench.scenarios import SCENARIOS, Scenario


async def sequential(scenario: Scenario, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        began = time.perf_counter()
        await scenario.call()
        latencies.append(time.perf_counter() - began)
    return latencies


async def concurrent(scenario: Scenario, n: int, in_flight: int) -> tuple[float, list[float]]:
    """`n` calls by `in_flight` workers, each starting its next call when the last one ends."""
    latencies: list[float] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            await scenario.call()
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(in_flight, n)):
            group.create_task(worker())
    return time.perf_counter() - began, latencies


async def streams(scenario: Scenario, n: int) -> list[float]:
    return [await scenario.first_token() for _ in range(n)]


async def long_streams(scenario: Scenario, n: int) -> list[float]:
    return [(await scenario.long_stream())[0] for _ in range(n)]


async def stream_load(scenario: Scenario, n: int, in_flight: int) -> dict[str, float]:
    """`n` long streams, `in_flight` at a time: wall time, deltas, and this process's CPU
    seconds (the in-process gateway's own, plus the little it takes to drain the deltas)."""
    chunks = 0
    remaining = n

    async def worker() -> None:
        nonlocal chunks, remaining
        while remaining > 0:
            remaining -= 1
            _, got = await scenario.long_stream()
            chunks += got  # after the await: `chunks += await ...` would read it before

    cpu_before = cpu_seconds(os.getpid())
    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(in_flight, n)):
            group.create_task(worker())
    wall = time.perf_counter() - began
    return {"wall_s": wall, "chunks": chunks, "cpu_s": cpu_seconds(os.getpid()) - cpu_before}


def peak_rss_kb() -> int:
    # Linux reports ru_maxrss in kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def warm_up(scenario: Scenario, n: int, in_flight: int) -> None:
    """Fill connection pools, caches and lazy imports before anything is timed."""
    await sequential(scenario, n)
    await concurrent(scenario, max(n, 2 * in_flight), in_flight)
    if scenario.streams:
        await streams(scenario, max(1, n // 10))


async def handle(scenario: Scenario, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "sequential":
        return {"latencies": await sequential(scenario, int(command["n"]))}
    if op == "concurrent":
        wall, latencies = await concurrent(scenario, int(command["n"]), int(command["in_flight"]))
        return {"wall_s": wall, "latencies": latencies}
    if op == "streams":
        return {"ttft": await streams(scenario, int(command["n"]))}
    if op == "long_streams":
        return {"ttft": await long_streams(scenario, int(command["n"]))}
    if op == "stream_load":
        return await stream_load(scenario, int(command["n"]), int(command["in_flight"]))
    if op == "rss":
        return {"peak_rss_kb": peak_rss_kb()}
    raise ValueError(f"unknown op {op!r}; use sequential, concurrent, streams, rss or quit")


def describe(exc: BaseException) -> str:
    """One line naming the failure; for a group (failed concurrent calls), its first members."""
    if isinstance(exc, BaseExceptionGroup):
        members = exc.exceptions
        shown = "; ".join(describe(member) for member in members[:3])
        more = f" (and {len(members) - 3} more)" if len(members) > 3 else ""
        return f"{len(members)} concurrent call(s) failed: {shown}{more}"
    return f"{type(exc).__name__}: {exc}"


async def serve(args: argparse.Namespace, out: TextIO) -> int:
    scenario = SCENARIOS[args.scenario](args.upstream, args.server)
    loop = asyncio.get_running_loop()

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    try:
        began = time.perf_counter()
        await scenario.start()
        started_s = time.perf_counter() - began
        rss_started = peak_rss_kb()
        await warm_up(scenario, args.warmup, args.in_flight)
    except Exception as exc:
        send({"error": describe(exc)})
        return 1
    send({"ready": True, "start_s": started_s, "rss_after_start_kb": rss_started})
    try:
        while True:
            # The read blocks a worker thread only between commands, never during one.
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return 0
            command = json.loads(line)
            if command.get("op") == "quit":
                send({"bye": True})
                return 0
            send(await handle(scenario, command))
    except Exception as exc:
        send({"error": describe(exc)})
        return 1
    finally:
        await scenario.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--upstream", required=True, help="the FakeUpstream's URL")
    parser.add_argument("--server", default=None, help="gateway serve's URL (serve scenario)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests")
    parser.add_argument("--in-flight", type=int, default=50, help="concurrency of the warm-up")
    args = parser.parse_args(argv)
    # Keep the real stdout for the protocol; route everything else printed to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return asyncio.run(serve(args, out))


if __name__ == "__main__":
    raise SystemExit(main())
