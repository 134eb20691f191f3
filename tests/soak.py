"""Shared machinery of the chaos soaks (tests/test_soak.py, tests/test_soak_server.py).

Three FakeUpstreams (Anthropic, OpenAI and Ollama protocols) inject seeded random faults; a
policy file is rewritten every second with valid and invalid versions; requests are issued by
a fixed number of workers; every request's ending is recorded so the test can count that
nothing was lost and compare what it saw with the gateway's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.testing import FakeUpstream, Fault

PROFILE_ENV = "GATEWAY_SOAK_PROFILE"
REPORT_ENV = "GATEWAY_SOAK_REPORT"


@dataclass(frozen=True, slots=True)
class SoakProfile:
    name: str
    requests: int
    concurrency: int
    guard_s: float
    """A hang guard, not a speed goal: past it the soak is stuck and the test fails."""


_ROUTER_PROFILES = {
    "short": SoakProfile("short", requests=5_000, concurrency=100, guard_s=300),
    "long": SoakProfile("long", requests=50_000, concurrency=100, guard_s=1_800),
}
_SERVER_PROFILES = {
    "short": SoakProfile("short", requests=2_000, concurrency=50, guard_s=300),
    "long": SoakProfile("long", requests=20_000, concurrency=100, guard_s=1_800),
}


def _profile(table: Mapping[str, SoakProfile]) -> SoakProfile:
    name = os.environ.get(PROFILE_ENV, "short").strip() or "short"
    if name not in table:
        raise ValueError(f"{PROFILE_ENV} is {name!r}; use one of: {', '.join(sorted(table))}")
    return table[name]


def router_profile() -> SoakProfile:
    return _profile(_ROUTER_PROFILES)


def server_profile() -> SoakProfile:
    return _profile(_SERVER_PROFILES)


# --- the upstreams ------------------------------------------------------------------------------

CLAUDE, GPT, LLAMA = "claude-sonnet-4-5", "gpt-4o-mini", "llama3.2"
PROVIDER_MODELS = {"claude": CLAUDE, "gpt": GPT, "llama": LLAMA}
PRICES = {  # USD per 1M tokens; every model priced, so every success costs something
    CLAUDE: {"input": 3.0, "output": 15.0},
    GPT: {"input": 0.15, "output": 0.6},
    LLAMA: {"input": 0.01, "output": 0.02},
}

CHAOS_RATES = {
    "rate_limit": 0.07,  # 429 with Retry-After
    "server_error": 0.05,  # 500
    "overloaded": 0.05,  # 529 from Anthropic, 503 from the others
    "hang": 0.02,  # no answer until the client gives up
    "reset": 0.03,  # connection reset before any response
    "cut_stream": 0.05,  # stream (or body) cut after the first chunk
}
RETRY_AFTER_S = 0.05


class Upstreams:
    """One FakeUpstream per provider, so each one's faults and connections are its own."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        # Recording every request would grow memory for the whole run: record none.
        self.by_provider = {name: FakeUpstream(max_recorded_requests=0) for name in PROVIDER_MODELS}
        self.outages = 0

    async def __aenter__(self) -> Upstreams:
        for index, upstream in enumerate(self.by_provider.values()):
            await upstream.start()
            upstream.chaos(self.seed + index, CHAOS_RATES, retry_after=RETRY_AFTER_S)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for upstream in self.by_provider.values():
            await upstream.close()

    def url(self, provider: str) -> str:
        return self.by_provider[provider].url

    def injected(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for upstream in self.by_provider.values():
            total.update(upstream.injected)
        return total

    def calls(self) -> int:
        return sum(upstream.count() for upstream in self.by_provider.values())

    def open_connections(self) -> int:
        return sum(upstream.open_connections for upstream in self.by_provider.values())

    async def outage_loop(self, stop: asyncio.Event, *, every_s: float, lasting_s: float) -> None:
        """Take one provider down at a time (every request a 500), round robin, until `stop`.

        Random faults rarely fail one provider often enough in a row to open its breaker;
        an outage does, so breakers open, probe and close during the run.
        """
        names = list(self.by_provider)
        turn = 0
        while not stop.is_set():
            if await _wait(stop, every_s):
                return
            name = names[turn % len(names)]
            turn += 1
            upstream = self.by_provider[name]
            upstream.fail_always(PROVIDER_MODELS[name], Fault.server_error())
            self.outages += 1
            try:
                await _wait(stop, lasting_s)
            finally:
                upstream.heal(PROVIDER_MODELS[name])


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` or until `event` is set; True when it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


# --- the policy and its rewrites ----------------------------------------------------------------

# Generous against the machine, not the fakes: with 100 requests, three fake upstreams and two
# SDKs sharing one event loop (on a shared CI host), a healthy call can take most of a second.
DEADLINE_S = 6.0
TIMEOUT_S = 2.0
FIRST_TOKEN_TIMEOUT_S = 2.0
MAX_CONCURRENCY = 60


def policy_doc(upstreams: Upstreams, variant: int) -> dict[str, Any]:
    """A valid policy. Variants differ in chain order, strategy, mid-stream handling and,
    every third one, a provider setting that replaces its client and breaker."""
    chains = (["claude", "gpt", "llama"], ["gpt", "llama", "claude"], ["llama", "claude", "gpt"])
    chain = chains[variant % len(chains)]
    claude_timeout = TIMEOUT_S if variant % 3 else TIMEOUT_S * 1.2
    providers: dict[str, Any] = {
        "claude": {
            "type": "anthropic",
            "model": CLAUDE,
            "base_url": upstreams.url("claude"),
            "api_key": "soak-anthropic-key",
            "timeout_s": claude_timeout,
        },
        "gpt": {
            "type": "openai",
            "model": GPT,
            "base_url": upstreams.url("gpt") + "/v1",
            "api_key": "soak-openai-key",
        },
        "llama": {"type": "ollama", "model": LLAMA, "base_url": upstreams.url("llama")},
    }
    for spec in providers.values():
        spec["max_concurrency"] = MAX_CONCURRENCY
    task = {
        "deadline_s": DEADLINE_S,
        "first_token_timeout_s": FIRST_TOKEN_TIMEOUT_S,
        "strategy": "weighted" if variant % 4 == 3 else "ordered",
        "on_midstream_failure": "resume" if variant % 2 else "raise",
    }
    return {
        "version": 1,
        "defaults": {
            "timeout_s": TIMEOUT_S,
            "retry": {"attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.05},
            "breaker": {"fail_max": 5, "reset_timeout_s": 0.5},
        },
        "providers": providers,
        "prices": PRICES,
        "tasks": {
            "chat": {"chain": chain, **task},
            # The same route under other names, so each kind of caller is counted apart.
            "streamed": {"chain": chain, **task},
            "abandon": {"chain": chain, **task},
            "default": {"chain": ["gpt", "llama"], "deadline_s": DEADLINE_S},
        },
    }


def valid_policy_text(upstreams: Upstreams, revision: int, variant: int | None = None) -> str:
    # The comment makes every revision's bytes (and sha256) differ, so each one is applied.
    doc = policy_doc(upstreams, revision if variant is None else variant)
    return f"# soak revision {revision}\n" + yaml.safe_dump(doc)


def invalid_policy_text(upstreams: Upstreams, revision: int, variant: int) -> str:
    """One of several ways a bad deploy can break the file (by `variant`); all are rejected."""
    doc = policy_doc(upstreams, revision)
    kind = variant % 5
    if kind == 0:
        return valid_policy_text(upstreams, revision)[:-40] + "\n  - [unclosed\n"
    if kind == 1:
        doc["tasks"]["chat"]["chain"] = ["claude", "nobody"]
    elif kind == 2:
        doc["providers"]["gpt"]["timeout_s"] = -1
    elif kind == 3:
        doc["tasks"]["chat"]["strategy"] = "fastestest"
    else:
        return "- a list\n- is not a policy\n"
    return f"# soak revision {revision} (invalid)\n" + yaml.safe_dump(doc)


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step, so the watcher never reads half a write."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


@dataclass
class RewriteLog:
    valid: int = 0
    invalid: int = 0
    unseen: int = 0
    """Writes the gateway had not reacted to before the next one (must stay 0)."""


async def rewrite_loop(
    path: Path,
    upstreams: Upstreams,
    stop: asyncio.Event,
    log: RewriteLog,
    reloads_seen: Callable[[], Awaitable[float]],
    *,
    every_s: float = 1.0,
    confirm_within_s: float = 10.0,
) -> None:
    """Rewrite the policy every `every_s`, alternating valid and invalid versions.

    After each write it waits (at most `confirm_within_s`) for the gateway's reload counters
    (applied + rejected) to move, so the test knows exactly how many of each it caused.
    """
    revision = 0
    while not stop.is_set():
        revision += 1
        valid = revision % 2 == 0  # valid and invalid in turn, each kind through its variants
        text = (valid_policy_text if valid else invalid_policy_text)(
            upstreams, revision, revision // 2
        )
        before = await reloads_seen()
        began = time.monotonic()
        write_atomically(path, text)
        if valid:
            log.valid += 1
        else:
            log.invalid += 1
        while await reloads_seen() == before:
            if time.monotonic() - began > confirm_within_s:
                log.unseen += 1
                break
            await asyncio.sleep(0.02)
        if await _wait(stop, max(0.0, every_s - (time.monotonic() - began))):
            return


# --- requests and their endings -----------------------------------------------------------------

REQUEST_OUTCOMES = ("success", "exhausted", "deadline", "rejected", "cancelled")


def prompt_for(index: int) -> str:
    """A prompt whose length (so its token count) varies with the request, to spot mix-ups."""
    return f"request {index:06d}: summarize this. " + "lorem ipsum " * (index % 37)


def expected_input_tokens(prompt: str) -> int:
    # FakeUpstream's count: characters of the message contents // 4, at least 1.
    return max(1, len(prompt) // 4)


@dataclass
class Ending:
    """How one request ended, as its caller saw it."""

    index: int
    mode: str  # generate, stream, stream_abandoned, generate_cancelled, invalid
    task: str
    outcome: str = "lost"
    error: str | None = None
    elapsed_s: float = 0.0
    provider: str | None = None
    model: str | None = None
    text: str = ""
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    attempts: list[tuple[str, str, int, float]] = field(default_factory=list)
    """(provider, outcome, retries, seconds) of every attempt the caller can see."""


def attempts_of(attempts: Iterable[Any]) -> list[tuple[str, str, int, float]]:
    return [(a.provider, a.outcome, a.retries, round(a.latency_s, 3)) for a in attempts]


@dataclass
class Workload:
    """Issues `total` requests from `concurrency` workers, each through `one(index)`."""

    total: int
    concurrency: int
    one: Callable[[int], Awaitable[Ending]]
    endings: dict[int, Ending] = field(default_factory=dict)
    duplicates: list[int] = field(default_factory=list)

    async def run(self, first: int, count: int) -> None:
        indexes = iter(range(first, first + count))

        async def worker() -> None:
            for index in indexes:  # the shared iterator hands each index out exactly once
                ending = await self.one(index)
                if index in self.endings:
                    self.duplicates.append(index)
                self.endings[index] = ending

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))


def outcome_counts(endings: Iterable[Ending]) -> Counter[tuple[str, str]]:
    """(task label, outcome) -> requests, as gateway_requests_total should count them."""
    return Counter((e.task, e.outcome) for e in endings)


# --- resources ------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_tasks() -> int:
    return len(asyncio.all_tasks())


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _per_request_types() -> tuple[type, ...]:
    """What the gateway creates for each request and must drop once it ends."""
    from gateway import RoutedCompletion, RoutedStream
    from gateway._walk import Walk
    from gateway.errors import ProviderError, RoutingError
    from gateway.types import Attempt, ChatStream, Completion

    return (
        Walk,
        RoutedCompletion,
        RoutedStream,
        ChatStream,
        Completion,
        Attempt,
        RoutingError,
        ProviderError,
    )


OBJECT_GROWTH_LIMIT = 20_000
"""Tracked objects the second half may add over the first. The floor of the noise is a few
thousand (how many pooled connections happen to be open); a leak of a request's context
(a coroutine, its frames, futures and records: dozens of objects) over 2,500 requests is far
above it."""


@dataclass(frozen=True, slots=True)
class MemoryMark:
    objects: int
    """Objects the garbage collector tracks."""
    by_type: Counter[str]
    per_request: dict[str, int]
    """Live instances of each per-request type (see `_per_request_types`)."""
    rss_bytes: int

    def growth_since(self, earlier: MemoryMark, top: int = 12) -> list[tuple[str, int]]:
        """The types that grew most since `earlier`, to say what a failure is made of."""
        grown = self.by_type.copy()
        grown.subtract(earlier.by_type)
        return grown.most_common(top)


def memory_mark() -> MemoryMark:
    """Memory at a quiet moment (no request in flight), after a full collection."""
    gc.collect()
    kinds = _per_request_types()
    objects = gc.get_objects()
    by_type: Counter[str] = Counter()
    live: Counter[str] = Counter()
    for obj in objects:
        # type(), not isinstance(): the SDKs keep lazy proxies whose __class__ would import
        # a whole package when asked.
        kind = type(obj)
        by_type[kind.__qualname__] += 1
        if issubclass(kind, kinds):
            live[kind.__name__] += 1
    count = len(objects)
    del objects
    return MemoryMark(count, by_type, dict(live), rss_bytes())


async def settle(
    condition: Callable[[], bool], *, within_s: float = 10.0, step_s: float = 0.05
) -> bool:
    """Poll `condition` until it holds or `within_s` passes; connections close asynchronously."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step_s)
    return True


# --- metrics --------------------------------------------------------------------------------


def samples(text_or_registry: Any, name: str) -> list[tuple[dict[str, str], float]]:
    """Every (labels, value) of sample `name`, from a CollectorRegistry or exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    if isinstance(text_or_registry, str):
        families: Iterable[Any] = text_string_to_metric_families(text_or_registry)
    else:
        families = text_or_registry.collect()
    found = []
    for family in families:
        for sample in family.samples:
            if sample.name == name:
                found.append((dict(sample.labels), float(sample.value)))
    return found


def counter_by(source: Any, name: str, *labels: str) -> Counter[tuple[str, ...]]:
    """A counter's values summed by the given labels (values are whole for count series)."""
    totals: Counter[tuple[str, ...]] = Counter()
    for sample_labels, value in samples(source, name):
        totals[tuple(sample_labels.get(label, "") for label in labels)] += value  # type: ignore[assignment]
    return Counter({key: round(value) for key, value in totals.items() if value})


def total(source: Any, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in samples(source, name)
        if all(labels.get(k) == v for k, v in match.items())
    )


# --- the report -----------------------------------------------------------------------------


def write_report(figures: Mapping[str, Any]) -> Path | None:
    """Write the run's figures as JSON where GATEWAY_SOAK_REPORT says (nowhere when unset)."""
    target = os.environ.get(REPORT_ENV, "").strip()
    if not target:
        return None
    path = Path(target)
    existing: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError):
            existing = json.loads(path.read_text())
    existing[str(figures["soak"])] = dict(figures)
    path.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    return path


def as_dict(value: Any) -> dict[str, Any]:
    return asdict(value)


@contextlib.asynccontextmanager
async def background(
    *coroutines: Awaitable[None], grace_s: float = 15.0
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run helper loops for the duration of a block; their errors surface when it ends.

    The block should end by telling the loops to stop; they get `grace_s` to finish what they
    were doing (a rewrite waiting for its reload) before they are cancelled.
    """
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        yield tasks
    finally:
        await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            if not task.done():
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
