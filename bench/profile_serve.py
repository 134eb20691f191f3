"""Where `gateway serve` spends a request, by package: the server process under cProfile.

    python -m bench.profile_serve [--requests N] [--stream] [--long]

`--long` streams the bench's 500-chunk answer (the `long` task): the per-chunk path.

Starts a FakeUpstream, runs `python -m cProfile -m gateway.server` on bench/routing.yaml,
sends N requests with the OpenAI SDK, stops the server (SIGINT, so cProfile writes its stats)
and prints each package's own time per request. cProfile's per-call overhead inflates
pure-Python code, so read the shares, not the absolute figures.
"""

from __future__ import annotations

import argparse
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.runner import REPO, child_environment, free_port
from bench.scenarios import (
    LEAN_TASK,
    LONG_MODEL,
    LONG_TASK,
    LONG_TEXT,
    REPLY_TEXT,
    SDK_MESSAGES,
    TASK,
)
from gateway.testing import FakeUpstream

READY_TIMEOUT_S = 60.0

CATEGORIES: dict[str, tuple[str, ...]] = {
    "the OpenAI SDK and its HTTP client (server to upstream)": (
        "openai",
        "stdlib: typing.py",
        "typing_extensions.py",
        "httpx2",
        "httpcore2",
        "aiohttp",
        "yarl",
        "multidict",
    ),
    "the HTTP server: uvicorn, FastAPI, Starlette, pydantic": (
        "uvicorn",
        "fastapi",
        "starlette",
        "pydantic",
        "pydantic_core",
        "C: <method 'validate_python'",
    ),
    "anyio and h11 (both sides)": ("anyio", "h11"),
    "gateway code": ("gateway/",),
    "tenacity, pybreaker, prometheus_client": ("tenacity", "pybreaker", "prometheus_client"),
    # Under uvloop the loop runs in C inside asyncio.Runner.run: its own time is the waiting
    # (epoll) and the socket reads and writes libuv does; under asyncio's loop they show apart.
    "the event loop in C: waiting for the network, socket I/O (uvloop)": ("stdlib: runners.py",),
    "waiting for the network (epoll)": ("C: <method 'poll'",),
    "socket sends": ("C: <method 'send'",),
}
"""Owners grouped by what they are there for; the rest is counted as `other`."""


def package_of(filename: str, function: str) -> str:
    """A profile entry's owner: a site-packages package, a gateway module, or the stdlib."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/gateway/" in filename:
        return "gateway/" + filename.split("/gateway/", 1)[1]
    if filename == "~":  # C functions: name the interesting ones
        return f"C: {function}"
    return "stdlib: " + Path(filename).name


def own_time_by_package(stats_path: Path) -> Counter[str]:
    stats = pstats.Stats(str(stats_path))
    totals: Counter[str] = Counter()
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        own_seconds = row[2]
        totals[package_of(filename, function)] += own_seconds
    return totals


def by_category(totals: Counter[str]) -> Counter[str]:
    grouped: Counter[str] = Counter()
    for owner, seconds in totals.items():
        category = next(
            (name for name, prefixes in CATEGORIES.items() if owner.startswith(prefixes)),
            "other (stdlib, asyncio, start-up imports)",
        )
        grouped[category] += seconds
    return grouped


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the profiled server exited with code {process.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the profiled server did not answer within {READY_TIMEOUT_S:g} s")


def drive(url: str, requests: int, *, stream: bool, task: str = TASK) -> float:
    """Send the requests one at a time; seconds per request."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench-key", max_retries=0)
    began = time.perf_counter()
    for _ in range(requests):
        if stream:
            for _chunk in client.chat.completions.create(
                model=task, messages=SDK_MESSAGES, stream=True
            ):
                pass
        else:
            client.chat.completions.create(model=task, messages=SDK_MESSAGES)
    client.close()
    return (time.perf_counter() - began) / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_serve", description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--stream", action="store_true", help="streamed requests")
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument(
        "--lean", action="store_true", help="the task on the openai_http provider (no SDK)"
    )
    parser.add_argument(
        "--long", action="store_true", help="stream the 500-chunk answer (implies --stream)"
    )
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    with tempfile.TemporaryDirectory(prefix="gateway-profile-") as folder:
        stats_path = Path(folder) / "serve.prof"
        with FakeUpstream.spawn() as upstream:
            upstream.client.reply(None, REPLY_TEXT)
            upstream.client.reply(LONG_MODEL, LONG_TEXT)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = [sys.executable, "-m", "cProfile", "-o", str(stats_path)]
            command += ["-m", "gateway.server", "--policy", str(REPO / "bench" / "routing.yaml")]
            command += ["--port", str(port)]
            server = subprocess.Popen(
                command,
                cwd=REPO,
                env=child_environment(upstream.url),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_ready(url, server)
                task = LONG_TASK if args.long else LEAN_TASK if args.lean else TASK
                stream = args.stream or args.long
                drive(url, min(100, args.requests), stream=stream, task=task)  # warm-up
                per_request = drive(url, args.requests, stream=stream, task=task)
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(60)
        totals = own_time_by_package(stats_path)
    served = args.requests + min(100, args.requests)
    everything = sum(totals.values())
    print(f"{per_request * 1e3:.2f} ms per request as the client saw it (under cProfile)\n")
    for title, rows in (
        ("by purpose", by_category(totals).most_common()),
        ("by owner", totals.most_common(args.top)),
    ):
        print(f"{'µs/request':>10}  {'share':>6}  {title} (own time; start-up included)")
        for owner, seconds in rows:
            share = seconds / everything * 100
            print(f"{seconds / served * 1e6:10.1f}  {share:5.1f}%  {owner}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
