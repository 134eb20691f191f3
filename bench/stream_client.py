"""The one streaming client for every HTTP server, in a process of its own (aiohttp).

    python -m bench.stream_client --url URL --request JSON [--headers JSON] --expect N MODE

MODE is one of:

    ttft --n N                  N streams one after another: each one's time to first content
                                chunk, and its content chunks
    load --n N --in-flight C    N streams, C at a time: the wall time and all content chunks
    hold --n N [--within S]     N streams held open: once each has its first content chunk
                                (or S seconds have passed) it prints {"held": K} (the streams
                                that got one), keeps them until stdin closes or says
                                anything, then closes them and exits

A content chunk is an SSE `data:` line whose JSON has a non-empty `"content"` string,
whatever the server's spacing. It is counted by one regular expression over each read, not
by parsing every chunk's JSON: on a 2-core machine the reader shares the CPU with the server,
and the less it takes the more the figure is the server's. Every stream must bring
`--expect` of them (for `hold`, at least one); otherwise it fails with the server's answer in
the message. It prints one JSON line with the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.proc import raise_open_files_limit


class StreamFailed(RuntimeError):
    """A stream ended with the wrong number of chunks, or was refused."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    body: bytes
    headers: dict[str, str]
    expect: int


CONTENT_CHUNK = re.compile(rb'^data:[^\n]*?"content"\s*:\s*"[^"]', re.MULTILINE)
"""A `data:` line with a non-empty content string (text inside JSON strings has its quotes
escaped, so it cannot fake one)."""


class ChunkCounter:
    """Content chunks in a body read piece by piece, counted on complete lines only."""

    def __init__(self) -> None:
        self.count = 0
        self._tail = b""

    def feed(self, data: bytes) -> int:
        buffer = self._tail + data if self._tail else data
        end = buffer.rfind(b"\n") + 1
        self._tail = buffer[end:]
        found = len(CONTENT_CHUNK.findall(buffer, 0, end))
        self.count += found
        return found


async def _open(session: aiohttp.ClientSession, target: Target) -> aiohttp.ClientResponse:
    response = await session.post(target.url, data=target.body, headers=target.headers)
    if response.status != 200:
        text = (await response.read())[:400]
        response.release()
        raise StreamFailed(f"{target.url} answered {response.status}: {text!r}")
    return response


async def one_stream(session: aiohttp.ClientSession, target: Target) -> tuple[float, int]:
    """Seconds to the first content chunk, and the content chunks, of one whole stream."""
    began = time.perf_counter()
    first: float | None = None
    response = await _open(session, target)
    counter = ChunkCounter()
    async with response:
        async for data in response.content.iter_any():
            if counter.feed(data) and first is None:
                first = time.perf_counter() - began
    chunks = counter.count
    if first is None or chunks != target.expect:
        raise StreamFailed(f"a stream brought {chunks} content chunks, expected {target.expect}")
    return first, chunks


async def ttft(target: Target, n: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        results = [await one_stream(session, target) for _ in range(n)]
    return {"ttft": [first for first, _ in results], "chunks": sum(c for _, c in results)}


async def load(target: Target, n: int, in_flight: int) -> dict[str, Any]:
    remaining = n
    chunks = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, chunks
        while remaining > 0:
            remaining -= 1
            _, got = await one_stream(session, target)
            chunks += got  # after the await: `chunks += await ...` would read it before

    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        await one_stream(session, target)  # the pool's first connection, untimed
        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(min(n, in_flight)):
                group.create_task(worker(session))
        wall = time.perf_counter() - began
    return {"wall_s": wall, "chunks": chunks, "streams": n}


async def hold(target: Target, n: int, within_s: float) -> dict[str, Any]:
    """Open `n` streams, wait up to `within_s` for each one's first content chunk, report how
    many got it, hold them all, close."""
    loop = asyncio.get_running_loop()
    responses: list[aiohttp.ClientResponse] = []
    opened = 0

    async def open_one(session: aiohttp.ClientSession) -> None:
        nonlocal opened
        response = await _open(session, target)
        responses.append(response)
        counter = ChunkCounter()
        async for data in response.content.iter_any():
            if counter.feed(data):
                opened += 1
                return
        raise StreamFailed("a held stream ended before its first content chunk")

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(open_one(session)) for _ in range(n)]
        try:
            done, _ = await asyncio.wait(tasks, timeout=within_s)
            for task in done:
                task.result()  # a stream refused or cut fails the measurement
            print(json.dumps({"held": opened}), flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)
        finally:
            for task in tasks:
                task.cancel()
            for response in responses:
                response.close()
    return {"closed": len(responses)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_client", description=__doc__)
    parser.add_argument("mode", choices=("ttft", "load", "hold"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--request", required=True, help="the JSON body")
    parser.add_argument("--headers", default="{}", help="extra headers, as JSON")
    parser.add_argument("--expect", type=int, required=True, help="content chunks per stream")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--within", type=float, default=60.0, help="hold: seconds to open")
    args = parser.parse_args(argv)
    raise_open_files_limit()
    headers = {"content-type": "application/json", **json.loads(args.headers)}
    target = Target(args.url, args.request.encode(), headers, args.expect)
    try:
        if args.mode == "ttft":
            result = asyncio.run(ttft(target, args.n))
        elif args.mode == "load":
            result = asyncio.run(load(target, args.n, args.in_flight))
        else:
            result = asyncio.run(hold(target, args.n, args.within))
    except Exception as exc:
        # One line the runner can quote, not a traceback's last line.
        while isinstance(exc, ExceptionGroup):
            exc = exc.exceptions[0]
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
