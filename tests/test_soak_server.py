"""Chaos soak through `gateway serve`, with the openai SDK as the client.

The same faults, outages and policy rewrites as tests/test_soak.py, but every request
crosses HTTP twice: callers use the official SDK against the gateway's OpenAI-compatible
API, some of them leave mid-stream or give up before the answer, and what they saw is
compared with the server's own /metrics.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import soak
from server_harness import ServerProcess
from soak import Ending

from gateway.testing._replies import default_text

pytestmark = pytest.mark.slow

SEED = 20_240_612
CLIENT_KEY = "soak-client-key"
# Why a request may overrun its deadline a little: the gateway and its callers run in two
# processes on a shared machine, and each response crosses HTTP; a timer or a write can be
# late by scheduling delay.
DEADLINE_SLACK_S = 2.0
HUNG_AFTER_S = soak.DEADLINE_S + 15.0  # a hang guard, not a speed goal
CHUNK_DELAY_S = 0.02  # streams take a few tenths of a second, so callers can leave mid-way
# Server memory the second half may add over the first: allocator noise and pools are a few
# MB; a leak of a request's context over 1,000 requests would be far more.
SERVER_RSS_GROWTH_LIMIT = 48 * 2**20


def _mode(index: int) -> tuple[str, str]:
    """(mode, task) for request `index`; seeded, so every run sends the same mix."""
    rng = random.Random(SEED * 7_919 + index)
    roll = rng.random()
    streamed = index % 2 == 1
    if roll < 0.05:
        return ("stream_abandoned" if streamed else "generate_abandoned"), "abandon"
    if streamed:
        return "stream", "streamed"
    return "generate", "other" if roll < 0.10 else "chat"


def _label(task: str) -> str:
    return "default" if task == "other" else task  # `default` serves unknown tasks


def _status_outcome(status: int) -> str:
    return {504: "deadline", 502: "exhausted", 400: "rejected", 404: "rejected"}.get(
        status, f"unexpected HTTP {status}"
    )


def _make_request(sdk: openai.AsyncOpenAI) -> Callable[[int], Awaitable[Ending]]:
    async def one(index: int) -> Ending:
        mode, task = _mode(index)
        ending = Ending(index=index, mode=mode, task=task)
        messages = [{"role": "user", "content": soak.prompt_for(index)}]
        began = time.perf_counter()
        try:
            async with asyncio.timeout(HUNG_AFTER_S):
                if mode.startswith("stream"):
                    await _stream(sdk, messages, ending, index)
                else:
                    await _generate(sdk, messages, ending, index)
        except TimeoutError:
            ending.outcome = "hung"
        ending.elapsed_s = time.perf_counter() - began
        ending.task = _label(task)
        return ending

    return one


async def _generate(
    sdk: openai.AsyncOpenAI, messages: list[dict[str, str]], ending: Ending, index: int
) -> None:
    client = sdk
    if ending.mode == "generate_abandoned":
        # The caller gives up before the answer; the gateway sees the connection close.
        client = sdk.with_options(timeout=random.Random(SEED + index).uniform(0.01, 0.2))
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=ending.task,
            messages=messages,  # type: ignore[arg-type]
        )
    except openai.APITimeoutError:
        ending.outcome = "left"
        return
    except openai.APIStatusError as exc:
        ending.outcome = _status_outcome(exc.status_code)
        ending.error = exc.message[:300]
        ending.attempts = _attempts_of_body(exc.body)
        return
    except openai.OpenAIError as exc:
        ending.outcome = f"unexpected {type(exc).__name__}"
        ending.error = str(exc)[:300]
        return
    completion = raw.parse()
    ending.outcome = "success"
    ending.text = completion.choices[0].message.content or ""
    ending.model = completion.model
    ending.provider = raw.headers.get("x-gateway-provider")
    ending.cost_usd = float(raw.headers.get("x-gateway-cost-usd", "nan"))
    assert completion.usage is not None
    ending.input_tokens = completion.usage.prompt_tokens
    ending.output_tokens = completion.usage.completion_tokens
    ending.attempts = _attempts_of_header(raw.headers.get("x-gateway-attempts-detail", ""))


async def _stream(
    sdk: openai.AsyncOpenAI, messages: list[dict[str, str]], ending: Ending, index: int
) -> None:
    received: list[str] = []
    try:
        stream = await sdk.chat.completions.create(  # type: ignore[call-overload]
            model=ending.task,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    ending.input_tokens = chunk.usage.prompt_tokens
                    ending.output_tokens = chunk.usage.completion_tokens
                ending.model = chunk.model or ending.model
                for choice in chunk.choices:
                    if choice.delta.content:
                        received.append(choice.delta.content)
                if received and ending.mode == "stream_abandoned":
                    ending.outcome = "left"  # leaving the block closes the connection
                    return
    except openai.APIStatusError as exc:  # failed before the first delta: a real status
        ending.outcome = _status_outcome(exc.status_code)
        ending.error = exc.message[:300]
        return
    except openai.APIError as exc:  # an error event after text: the answer is incomplete
        code = exc.body.get("code") if isinstance(exc.body, dict) else None
        ending.outcome = "exhausted" if code == "stream_interrupted" else f"unexpected {code}"
        ending.error = exc.message[:300]
        ending.text = "".join(received)
        return
    ending.outcome = "success" if ending.mode == "stream" else "left"
    ending.text = "".join(received)


def _attempts_of_header(detail: str) -> list[tuple[str, str, int, float]]:
    pairs = [item.rsplit(":", 1) for item in detail.split(",") if item]
    return [(provider, outcome, 0, 0.0) for provider, outcome in pairs]


def _attempts_of_body(body: Any) -> list[tuple[str, str, int, float]]:
    attempts = body.get("attempts") if isinstance(body, dict) else None
    return [(a["provider"], a["outcome"], 0, 0.0) for a in attempts or ()]


def _answer_problems(ending: Ending) -> list[str]:
    """An answer that is someone else's, doubled, or cut (resumed streams excepted)."""
    if ending.outcome != "success":
        return []
    expected = default_text(ending.model or "")
    resumed = ending.text != expected
    # A resumed stream's chunks keep the first candidate's model name; its text ends with
    # the whole answer of whichever candidate finished it.
    finished_by_one = any(
        ending.text.endswith(default_text(m)) for m in soak.PROVIDER_MODELS.values()
    )
    if resumed and not (ending.mode == "stream" and finished_by_one):
        return [f"request {ending.index}: text {ending.text!r} is not {expected!r}"]
    prompt_tokens = soak.expected_input_tokens(soak.prompt_for(ending.index))
    if not resumed and ending.input_tokens != prompt_tokens:
        return [f"request {ending.index}: {ending.input_tokens} input tokens, not {prompt_tokens}"]
    if ending.output_tokens < 1:
        return [f"request {ending.index}: success without usage"]
    return []


def _process_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _process_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
async def upstreams() -> AsyncIterator[soak.Upstreams]:
    async with soak.Upstreams(SEED) as ups:
        for upstream in ups.by_provider.values():
            upstream.reply(None, chunk_delay_s=CHUNK_DELAY_S)
        yield ups


async def test_chaos_soak_through_the_server(upstreams: soak.Upstreams, tmp_path: Path) -> None:
    profile = soak.server_profile()
    path = tmp_path / "routing.yaml"
    soak.write_atomically(path, soak.valid_policy_text(upstreams, 0))
    env = {"GATEWAY_API_KEYS": CLIENT_KEY, "GATEWAY_POLICY_WATCH_S": "0.1"}
    server = ServerProcess(path, log_path=tmp_path / "server.log", env=env)
    rewrites = soak.RewriteLog()
    try:
        await asyncio.to_thread(server.wait_ready)
        http = httpx.AsyncClient(
            base_url=server.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}
        )
        sdk = openai.AsyncOpenAI(
            base_url=server.url + "/v1",
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=HUNG_AFTER_S,  # the SDK's own pool (1,000 connections) is ample for 50
        )

        async def scrape() -> str:
            response = await http.get("/metrics")
            response.raise_for_status()
            return response.text

        async def reloads_seen() -> float:
            return soak.total(await scrape(), "gateway_policy_reloads_total")

        async with asyncio.timeout(profile.guard_s), http, sdk:
            fds_before = _process_fds(server.pid)
            workload = soak.Workload(profile.requests, profile.concurrency, _make_request(sdk))
            half = profile.requests // 2
            stop = asyncio.Event()
            began = time.perf_counter()
            async with soak.background(
                soak.rewrite_loop(path, upstreams, stop, rewrites, reloads_seen),
                upstreams.outage_loop(stop, every_s=5.0, lasting_s=1.0),
            ):
                await workload.run(0, half)
                rss_first_half = _process_rss(server.pid)
                await workload.run(half, profile.requests - half)
                rss_second_half = _process_rss(server.pid)
                stop.set()
            duration = time.perf_counter() - began
            # Every stream the callers left must have been let go by the gateway too.
            await soak.settle(lambda: upstreams.open_connections() <= 3 * soak.MAX_CONCURRENCY)
            # A caller that left may have done so before the server noticed: that request is
            # still running upstream and is counted when it ends, at the latest by its deadline.
            # Wait (boundedly) until the server has counted as many requests as callers made;
            # fewer remain only if some left before the server read them (see below).
            expected = len(workload.endings)
            until = time.monotonic() + soak.DEADLINE_S + DEADLINE_SLACK_S
            while time.monotonic() < until:
                if soak.total(await scrape(), "gateway_requests_total") >= expected:
                    break
                await asyncio.sleep(0.1)
            metrics = await scrape()
            fds_after = _process_fds(server.pid)
    finally:
        await asyncio.to_thread(server.stop)
    log = server.log()

    endings = workload.endings
    outcomes = Counter(e.outcome for e in endings.values())
    injected = upstreams.injected()
    counted = soak.counter_by(metrics, "gateway_requests_total", "task", "outcome")
    figures = {
        "soak": "server",
        "profile": profile.name,
        "requests": profile.requests,
        "concurrency": profile.concurrency,
        "streamed": sum(e.mode.startswith("stream") for e in endings.values()),
        "callers_who_left": outcomes["left"],
        "duration_s": round(duration, 1),
        "upstream_calls": upstreams.calls(),
        "faults_injected": dict(sorted(injected.items())),
        "faults_injected_total": sum(injected.values()),
        "outages": upstreams.outages,
        "policy_rewrites": {"valid": rewrites.valid, "invalid": rewrites.invalid},
        "outcomes": dict(sorted(outcomes.items())),
        "gateway_outcomes": {"/".join(k): v for k, v in sorted(counted.items())},
        "lost": profile.requests - len(endings),
        "duplicated": len(workload.duplicates),
        "max_elapsed_s": round(max(e.elapsed_s for e in endings.values()), 2),
        "server_fds": [fds_before, fds_after],
        "server_rss_mb_second_half": round((rss_second_half - rss_first_half) / 2**20, 1),
    }
    soak.write_report(figures)
    print(figures)

    # Nothing lost or duplicated; every caller got an answer, an error status or left.
    assert sorted(endings) == list(range(profile.requests))
    assert workload.duplicates == []
    assert set(outcomes) <= {*soak.REQUEST_OUTCOMES, "left"}, {
        e.index: (e.outcome, e.error)
        for e in endings.values()
        if e.outcome not in {*soak.REQUEST_OUTCOMES, "left"}
    }
    late = [e for e in endings.values() if e.elapsed_s > soak.DEADLINE_S + DEADLINE_SLACK_S]
    assert late == []
    problems = [p for e in endings.values() for p in _answer_problems(e)]
    assert problems == []
    assert set(injected) >= set(soak.CHAOS_RATES)
    # Enough answers that the success paths were exercised by the hundred; how many more
    # depends on how long every breaker happened to be open (see docs/reliability.md).
    assert outcomes["success"] >= profile.requests / 10, "the soak hardly answered: tune it"
    assert outcomes["left"] > 0, "no caller left early: the disconnect paths went untested"
    assert rewrites.unseen == 0 and rewrites.invalid >= 1 and rewrites.valid >= 1

    # The server's metrics say what the callers saw. Callers who left cannot know how the
    # gateway ended their request (cancelled, or finished just before it noticed), so the
    # `abandon` task is checked by count only.
    observed = soak.outcome_counts(e for e in endings.values() if e.task != "abandon")
    assert {k: v for k, v in counted.items() if k[0] != "abandon"} == observed
    abandoned = [e for e in endings.values() if e.task == "abandon"]
    # Any caller that got an answer, a status or a first delta was certainly routed, so it is
    # certainly counted. A whole-answer caller that gave up within 10-200 ms may have closed
    # its connection before the server read the body: such a request never reached the router
    # (it had no task yet) and is not counted. So the count lies between the two.
    routed_for_sure = sum(
        not (e.mode == "generate_abandoned" and e.outcome == "left") for e in abandoned
    )
    counted_abandon = sum(v for k, v in counted.items() if k[0] == "abandon")
    assert routed_for_sure <= counted_abandon <= len(abandoned)
    assert counted[("abandon", "cancelled")] > 0
    observed_attempts = Counter(
        (provider, outcome)
        for e in endings.values()
        if e.task in {"chat", "default"}  # whole answers list every attempt in headers/bodies
        for provider, outcome, *_ in e.attempts
    )
    counted_attempts: Counter[tuple[str, str]] = Counter()
    by_task = soak.counter_by(metrics, "gateway_attempts_total", "task", "provider", "outcome")
    for (task, provider, outcome), n in by_task.items():
        if task in {"chat", "default"}:
            counted_attempts[(provider, outcome)] += n
    assert counted_attempts == observed_attempts
    for task in ("chat", "default"):
        header_costs = [e.cost_usd for e in endings.values() if e.task == task and e.cost_usd]
        # Headers carry 8 decimals: each may be off by half of the last one.
        assert soak.total(metrics, "gateway_cost_usd_total", task=task) == pytest.approx(
            sum(header_costs), abs=5e-9 * len(header_costs) + 1e-12
        )
    assert soak.total(metrics, "gateway_policy_reloads_total", outcome="rejected") == (
        rewrites.invalid
    )
    assert soak.total(metrics, "gateway_policy_reloads_total", outcome="applied") == (
        1 + rewrites.valid
    )

    # The server lets go of what it took: connections beyond its pools, descriptors, memory.
    assert upstreams.open_connections() <= 3 * soak.MAX_CONCURRENCY
    assert fds_after <= fds_before + 2 * 3 * soak.MAX_CONCURRENCY, figures["server_fds"]
    assert rss_second_half - rss_first_half < SERVER_RSS_GROWTH_LIMIT, figures
    assert "Traceback" not in log, log[log.find("Traceback") :][:3000]
