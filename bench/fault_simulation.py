"""Issue 15's fault simulation: one seeded fault trace per scenario, replayed through the
`Router` with the resilience defaults from before issue 15 and with today's, and what each cost
the callers.

    .venv/bin/python bench/fault_simulation.py [--seed N] [--requests N] [--seeds K]

`--seeds K` replays the traces of K seeds and adds them up: one trace is one history of a
provider, and whether a breaker trips early or late in it moves the counts a lot.

The chain is `primary` (OpenAI protocol) then `backup` (Anthropic protocol), both served by one
in-process `FakeUpstream`. A request arrives every 0.25 s of simulated time (4 a second). The
scenarios happen to the primary:

- **flapping**: it alternates between healthy stretches (10 to 40 s) and failing bursts (5 to
  20 s, every call a 500);
- **brown-out 50%**: for the middle 80% of the run, each of its calls fails (500 or 503) with
  probability 1/2;
- **slow provider**: for 30% of the run, two calls in three take 40 to 60 s, past its 30 s
  `timeout_s` (the others 5 to 10 s), and the task has a 50 s `deadline_s`;
- **hard outage**: it answers every call 503 for 40% of the run, then recovers;
- **brown-out 67%**: as the brown-out, two calls in three failing (issue 15's example);
- **occasional 429s**, a control: healthy, but 5% of its calls answered 429 throughout; no
  breaker should open on that.

In every scenario the backup fails 2% of its calls (a 500), so a request sent down the chain is
not served for free.

The trace is drawn from the seed before anything runs: for request *i*, the fault of each call
it may make to each provider (retries included). Both runs of a scenario replay it identically:
the *k*-th call request *i* makes to a provider gets that call's fault, so the runs differ only
in which calls their policy chose to make.

**Time.** Breakers, failure-rate windows, slow start and latency estimates read a virtual clock
that the simulation sets to each request's arrival time: a request runs whole (every call,
retry and fall-through) at its arrival instant, then the clock moves to the next arrival. So
`reset_timeout_s`, `window_s` and `ramp_s` keep their real values and the runs are
deterministic, whatever the machine's speed. What the router times with the wall clock (each
call's `timeout_s`, the task's `deadline_s`, retry backoffs) and the upstream's latencies are
compressed 500 times (`WALL_COMPRESSION`): a 30 s timeout lasts 60 ms. Backoff waits are
skipped (`set_waits_enabled(False)`). The whole simulation takes about 20 s.

**Old defaults** are what a policy with nothing set gave before issue 15, written out here so
they stay that whatever the defaults become: `timeout_s` 30, retry 3 attempts, breaker
`fail_max` 5 consecutive failures, `reset_timeout_s` 30, no `failure_rate`, no `ramp_s`. **New
defaults** are today's: the same policy parsed with nothing set.

Per run it counts, over the requests: those **served after paying a failed call** (a call that
failed, retried or not, before the answer), those **lost** (no answer: every candidate failed
or was skipped, or the deadline ran out), the failed calls, the calls to each provider, and how
often the primary's breaker opened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import inspect
import logging
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pybreaker
from pydantic import BaseModel

import gateway._resilience as resilience
import gateway.testing as testing
from gateway import AttemptOutcome, BreakerState, Router
from gateway.errors import ErrorKind, GatewayError
from gateway.hooks import BaseHooks
from gateway.policy import BreakerPolicy, Policy, RetryPolicy, parse_policy
from gateway.state.memory import MemoryState
from gateway.testing import FakeUpstream, Fault, set_waits_enabled
from gateway.types import Message

ARRIVAL_S = 0.25
"""Simulated seconds between two requests' arrivals."""
WALL_COMPRESSION = 500.0
"""Durations the router and the upstream measure on the wall clock (timeouts, deadlines,
backoffs, latencies) run this many times faster than written."""
WALL_FIELDS = frozenset(
    {"timeout_s", "deadline_s", "first_token_timeout_s", "initial_backoff_s", "max_backoff_s"}
)
"""The policy's durations timed on the wall clock; every other one reads the virtual clock."""
CALLS_PER_REQUEST = 8
"""Calls per provider per request the trace gives faults for (retries included); the default
three attempts per provider never need more."""
BACKUP_FAILURE_RATE = 0.02
NOISY_RATE_LIMITS = 0.05

PRIMARY_MODEL = "sim-primary"
BACKUP_MODEL = "sim-backup"
DEADLINE_S = 50.0

POLICY = f"""
version: 1
providers:
  primary: {{type: openai, model: {PRIMARY_MODEL}, base_url: "${{FAKE}}/v1", api_key: sim}}
  backup: {{type: anthropic, model: {BACKUP_MODEL}, base_url: "${{FAKE}}", api_key: sim}}
prices:  # priced, so the router does not warn about unpriced models
  {PRIMARY_MODEL}: {{input: 0, output: 0}}
  {BACKUP_MODEL}: {{input: 0, output: 0}}
tasks:
  default: {{chain: [primary, backup], deadline_s: {DEADLINE_S:g}}}
"""
"""Only what the scenarios need; every resilience key is left to the defaults."""

# What `Defaults()` gave before issue 15 (the parent of commit 8ff101f), spelled out.
OLD_TIMEOUT_S = 30.0
OLD_RETRY_ON = frozenset(
    {
        ErrorKind.RATE_LIMIT,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.SERVER_ERROR,
        ErrorKind.OVERLOADED,
    }
)
OLD_RETRY: dict[str, Any] = {
    "attempts": 3,
    "initial_backoff_s": 0.25,
    "max_backoff_s": 8.0,
    "jitter": True,
    "on": OLD_RETRY_ON,
}
OLD_BREAKER: dict[str, Any] = {
    "fail_max": 5,
    "reset_timeout_s": 30.0,
    "success_threshold": 1,
    "trip_on": OLD_RETRY_ON | {ErrorKind.AUTH},
    "failure_rate": None,  # did not exist: consecutive failures only
    "ramp_s": None,  # did not exist: full traffic the moment the breaker closes
}
OLD_TASK: dict[str, Any] = {"stop_on": frozenset(), "redirect": (), "explore": 0.0}
"""Task keys added by issue 15, at the values that reproduce the behaviour before it (`explore`
matters only to `fastest`, which the simulation does not use)."""


# --- the fault trace -----------------------------------------------------------------------

CallFaults = tuple[Fault, ...]
"""The fault of each successive call one request makes to one provider."""

OK = Fault.ok()


@dataclass(frozen=True, slots=True)
class Trace:
    scenario: str
    summary: str
    primary: tuple[CallFaults, ...]
    """Per request."""
    backup: tuple[CallFaults, ...]


def _wall(seconds: float) -> float:
    """A simulated duration the upstream spends on the wall clock."""
    return seconds / WALL_COMPRESSION


def _requests_in(seconds: float) -> int:
    return max(1, round(seconds / ARRIVAL_S))


def _every_call(fault: Fault) -> CallFaults:
    return (fault,) * CALLS_PER_REQUEST


def _stretch(requests: int, start: float, end: float) -> range:
    return range(round(requests * start), round(requests * end))


def _flapping(rng: random.Random, requests: int) -> tuple[list[CallFaults], str]:
    primary: list[CallFaults] = []
    failing = False
    while len(primary) < requests:
        seconds = rng.uniform(5, 20) if failing else rng.uniform(10, 40)
        fault = Fault.server_error() if failing else OK
        primary.extend(_every_call(fault) for _ in range(_requests_in(seconds)))
        failing = not failing
    return primary[:requests], "failing bursts of 5-20 s (every call a 500), healthy 10-40 s"


def _brownout(share: float, rng: random.Random, requests: int) -> tuple[list[CallFaults], str]:
    stretch = _stretch(requests, 0.1, 0.9)

    def call() -> Fault:
        if rng.random() < share:
            return rng.choice((Fault.server_error(), Fault.unavailable()))
        return OK

    primary = [
        tuple(call() for _ in range(CALLS_PER_REQUEST)) if i in stretch else _every_call(OK)
        for i in range(requests)
    ]
    return primary, f"{share:.0%} of calls fail (500, 503) for {len(stretch) * ARRIVAL_S:g} s"


def _slow(rng: random.Random, requests: int) -> tuple[list[CallFaults], str]:
    stretch = _stretch(requests, 0.2, 0.5)

    def call() -> Fault:
        seconds = rng.uniform(40, 60) if rng.random() < 2 / 3 else rng.uniform(5, 10)
        return Fault.hang(_wall(seconds))

    primary = [
        tuple(call() for _ in range(CALLS_PER_REQUEST)) if i in stretch else _every_call(OK)
        for i in range(requests)
    ]
    return primary, (
        f"2 calls in 3 take 40-60 s (timeout_s 30 s), the rest 5-10 s, "
        f"for {len(stretch) * ARRIVAL_S:g} s"
    )


def _outage(rng: random.Random, requests: int) -> tuple[list[CallFaults], str]:
    stretch = _stretch(requests, 0.2, 0.6)
    primary = [_every_call(Fault.unavailable() if i in stretch else OK) for i in range(requests)]
    return primary, f"every call a 503 for {len(stretch) * ARRIVAL_S:g} s"


def _noisy(rng: random.Random, requests: int) -> tuple[list[CallFaults], str]:
    primary = [
        tuple(
            Fault.rate_limit() if rng.random() < NOISY_RATE_LIMITS else OK
            for _ in range(CALLS_PER_REQUEST)
        )
        for _ in range(requests)
    ]
    return primary, f"healthy but {NOISY_RATE_LIMITS:.0%} of calls a 429, throughout"


SCENARIOS: dict[str, Callable[[random.Random, int], tuple[list[CallFaults], str]]] = {
    "flapping": _flapping,
    "brown-out 50%": functools.partial(_brownout, 0.5),
    "slow provider": _slow,
    "hard outage": _outage,
    "brown-out 67%": functools.partial(_brownout, 2 / 3),
    "occasional 429s": _noisy,
}
"""The four scenarios of issue 15, then the issue's own example of a rate the consecutive count
misses (2 calls in 3 failing), and a control: a healthy provider with occasional 429s, which no
breaker should open on."""


def build_trace(scenario: str, seed: int, requests: int) -> Trace:
    primary, summary = SCENARIOS[scenario](random.Random(f"{seed}:{scenario}:primary"), requests)
    rng = random.Random(f"{seed}:{scenario}:backup")
    backup = tuple(
        tuple(
            Fault.server_error() if rng.random() < BACKUP_FAILURE_RATE else OK
            for _ in range(CALLS_PER_REQUEST)
        )
        for _ in range(requests)
    )
    return Trace(scenario, summary, tuple(primary), backup)


def request_messages(index: int) -> list[Message]:
    return [{"role": "user", "content": f"simulated request {index}: say something short"}]


WARM_UP: list[Message] = [{"role": "user", "content": "warming up"}]


# --- the virtual clock ---------------------------------------------------------------------


class VirtualClock:
    """Simulated monotonic seconds, moved by the simulation only."""

    EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def datetime_class(self) -> type[datetime]:
        """A `datetime` whose `now()` is this clock (pybreaker times its reset with it)."""
        clock = self

        class VirtualDatetime(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
                moment = clock.EPOCH + timedelta(seconds=clock.now)
                return moment if tz is not None else moment.replace(tzinfo=None)

        return VirtualDatetime


@contextlib.contextmanager
def virtual_time(clock: VirtualClock) -> Iterator[None]:
    """Breakers (pybreaker's reset timeout and the gateway's view of it) and routing decisions
    (slow start, latency estimates) read `clock` inside the block; rate windows get it from
    the state backend the simulation builds (`_state`)."""
    patched = [(pybreaker, "datetime"), (resilience, "datetime")]
    saved = [getattr(module, name) for module, name in patched]
    fake = clock.datetime_class()
    set_clock = getattr(testing, "set_routing_clock", None)  # with issue 15's routing clock
    set_rng = getattr(testing, "set_routing_rng", None)
    try:
        for module, name in patched:
            setattr(module, name, fake)
        if set_clock is not None:
            set_clock(clock)
        yield
    finally:
        for (module, name), value in zip(patched, saved, strict=True):
            setattr(module, name, value)
        if set_clock is not None:
            set_clock(None)
        if set_rng is not None:
            set_rng(None)


def _state(policy: Policy, clock: VirtualClock) -> MemoryState:
    """The memory backend, its breakers' failure-rate windows on `clock` where it takes one."""
    build: Any = MemoryState  # `clock` is new with issue 15's rate windows
    if "clock" in inspect.signature(MemoryState).parameters:
        return cast(MemoryState, build(policy.state, clock=clock))
    return MemoryState(policy.state)


# --- the two policies ----------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _known(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of `model` (a key removed since is ignored)."""
    return {name: value for name, value in values.items() if name in model.model_fields}


def compress(model: M, factor: float = WALL_COMPRESSION) -> M:
    """`model` with every wall-clock duration in it (`WALL_FIELDS`, at any depth) divided by
    `factor`."""

    def scaled(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return compress(value, factor)
        if isinstance(value, dict):
            return {key: scaled(item) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(scaled(item) for item in value)
        return value

    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name in WALL_FIELDS and isinstance(value, int | float) and value is not None:
            update[name] = value / factor
        elif isinstance(value, BaseModel | dict | tuple):
            update[name] = scaled(value)
    return model.model_copy(update=update)


def new_policy(upstream_url: str) -> Policy:
    """Today's defaults: the simulation's policy with no resilience key set."""
    return parse_policy(POLICY, environ={"FAKE": upstream_url})


def old_policy(upstream_url: str) -> Policy:
    """The same policy with the resilience defaults from before issue 15, set explicitly."""
    policy = new_policy(upstream_url)
    retry = RetryPolicy(**_known(RetryPolicy, OLD_RETRY))
    breaker = BreakerPolicy(**_known(BreakerPolicy, OLD_BREAKER))
    resilience_keys = {"timeout_s": OLD_TIMEOUT_S, "retry": retry, "breaker": breaker}
    providers = {
        name: spec.model_copy(update=resilience_keys) for name, spec in policy.providers.items()
    }
    tasks = {
        name: spec.model_copy(update=_known(type(spec), OLD_TASK))
        for name, spec in policy.tasks.items()
    }
    fall_through: dict[str, Any] = {"stop_on": frozenset(), "redirect": {}}
    defaults = policy.defaults.model_copy(
        update={**resilience_keys, **_known(type(policy.defaults), fall_through)}
    )
    return policy.model_copy(update={"providers": providers, "tasks": tasks, "defaults": defaults})


def describe(policy: Policy) -> str:
    """The primary's resilience settings, in simulated seconds."""
    spec = policy.providers["primary"]
    breaker = spec.breaker
    parts = [
        f"timeout_s {spec.timeout_s:g}",
        f"retry attempts {spec.retry.attempts}",
        f"fail_max {breaker.fail_max}",
        f"reset_timeout_s {breaker.reset_timeout_s:g}",
    ]
    rate = getattr(breaker, "failure_rate", None)
    if rate is None:
        parts.append("failure_rate off")
    else:
        parts.append(
            f"failure_rate {{window_s: {rate.window_s:g}, min_calls: {rate.min_calls}, "
            f"threshold: {rate.threshold:g}}}"
        )
    ramp = getattr(breaker, "ramp_s", None)
    parts.append("ramp_s off" if ramp is None else f"ramp_s {ramp:g}")
    return ", ".join(parts)


# --- running -------------------------------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    """One replay of one scenario's trace with one policy."""

    requests: int = 0
    served: int = 0
    paid: int = 0
    """Served after at least one failed call on the way (a failed attempt, or a retry)."""
    lost: int = 0
    """Not served: every candidate failed or was skipped, or the deadline ran out."""
    failed_calls: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    """Upstream calls made, by provider."""
    opened: int = 0
    """Times the primary's breaker opened."""
    trips: Counter[str] = field(default_factory=Counter)
    """The primary's breaker openings by reason (consecutive, failure_rate, probe), where the
    router reports them."""
    lost_by: Counter[str] = field(default_factory=Counter)
    """Lost requests by the error's class."""
    seconds: float = 0.0
    """Wall-clock time of the run."""


@dataclass(slots=True)
class ScenarioResult:
    scenario: str
    summary: str
    old: RunResult
    new: RunResult


class _BreakerCounter(BaseHooks):
    """A router hook counting the primary's breaker openings, and their reasons where the
    router reports them (`on_breaker_trip`)."""

    def __init__(self) -> None:
        self.opened = 0
        self.trips: Counter[str] = Counter()

    def on_breaker_state(self, *, provider: str, state: BreakerState) -> None:
        if provider == "primary" and state == BreakerState.OPEN:
            self.opened += 1

    def on_breaker_trip(self, *, provider: str, reason: Any) -> None:
        if provider == "primary":
            self.trips[str(reason)] += 1


def _failed_calls(attempts: Sequence[Any]) -> int:
    failed = 0
    for attempt in attempts:
        outcome = AttemptOutcome(attempt.outcome)
        if outcome.skipped:
            continue
        failed += attempt.retries + (0 if outcome == AttemptOutcome.SUCCESS else 1)
    return failed


async def _one(router: Router, index: int, result: RunResult) -> None:
    try:
        answer = await router.generate(request_messages(index))
    except GatewayError as exc:
        result.lost += 1
        result.lost_by[type(exc).__name__] += 1
        result.failed_calls += _failed_calls(getattr(exc, "attempts", ()))
        return
    result.served += 1
    failed = _failed_calls(answer.attempts)
    result.failed_calls += failed
    if failed:
        result.paid += 1


async def _warm_up(router: Router) -> None:
    """Each provider's first call builds its client, which takes longer than a compressed
    timeout: make that call outside the router, so no breaker or estimate sees it."""
    for candidate in router.candidates.values():
        if candidate.client is not None:
            await candidate.client.complete(WARM_UP, timeout_s=10.0)


async def replay(upstream: FakeUpstream, trace: Trace, policy: Policy, seed: int) -> RunResult:
    """Send the trace's requests, one after the other, through a fresh router on `policy`."""
    random.seed(f"{seed}:{trace.scenario}")  # retry jitter, where the router draws any
    gc.collect()  # not in the middle of the run, where a long pause could outlast a timeout
    clock = VirtualClock()
    counter = _BreakerCounter()
    result = RunResult(requests=len(trace.primary))
    started = time.perf_counter()
    compressed = compress(policy)
    with virtual_time(clock):
        set_rng = getattr(testing, "set_routing_rng", None)
        if set_rng is not None:
            set_rng(random.Random(f"{seed}:{trace.scenario}:routing"))
        router = Router(compressed, hooks=[counter], state=_state(compressed, clock))
        async with router:
            upstream.heal()
            await _warm_up(router)
            upstream.reset_counts()
            start = clock.now
            for index in range(result.requests):
                clock.now = start + index * ARRIVAL_S
                upstream.heal()
                upstream.script(PRIMARY_MODEL, *trace.primary[index])
                upstream.script(BACKUP_MODEL, *trace.backup[index])
                await _one(router, index, result)
            upstream.heal()
    result.seconds = time.perf_counter() - started
    result.opened = counter.opened
    result.trips = counter.trips
    result.calls = Counter(
        {"primary": upstream.count(PRIMARY_MODEL), "backup": upstream.count(BACKUP_MODEL)}
    )
    return result


async def simulate(
    seed: int = 1, requests: int = 1000, scenarios: Sequence[str] | None = None
) -> list[ScenarioResult]:
    """Each scenario's trace replayed with the old defaults, then with the new."""
    waits_before = getattr(resilience, "_waits_enabled", True)
    set_waits_enabled(False)
    results = []
    try:
        async with FakeUpstream() as upstream:
            old, new = old_policy(upstream.url), new_policy(upstream.url)
            for scenario in scenarios or SCENARIOS:
                trace = build_trace(scenario, seed, requests)
                old_run = await replay(upstream, trace, old, seed)
                new_run = await replay(upstream, trace, new, seed)
                results.append(ScenarioResult(scenario, trace.summary, old_run, new_run))
    finally:
        set_waits_enabled(waits_before)
    return results


def _add(runs: Sequence[RunResult]) -> RunResult:
    total = RunResult()
    for run in runs:
        total.requests += run.requests
        total.served += run.served
        total.paid += run.paid
        total.lost += run.lost
        total.failed_calls += run.failed_calls
        total.calls.update(run.calls)
        total.opened += run.opened
        total.trips.update(run.trips)
        total.lost_by.update(run.lost_by)
        total.seconds += run.seconds
    return total


def added_up(per_seed: Sequence[Sequence[ScenarioResult]]) -> list[ScenarioResult]:
    """Scenario by scenario, the runs of several seeds as one (the first seed's summary)."""
    if len(per_seed) == 1:
        return list(per_seed[0])
    return [
        ScenarioResult(
            rows[0].scenario,
            rows[0].summary,
            _add([row.old for row in rows]),
            _add([row.new for row in rows]),
        )
        for rows in zip(*per_seed, strict=True)
    ]


# --- report --------------------------------------------------------------------------------


def markdown_table(results: Sequence[ScenarioResult]) -> str:
    """The table for docs/reliability.md."""
    lines = [
        "| scenario | old: paid a failed call | new: paid | old: lost | new: lost |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.old.paid} | {r.new.paid} | {r.old.lost} | {r.new.lost} |"
        )
    return "\n".join(lines)


def details_table(results: Sequence[ScenarioResult]) -> str:
    lines = [
        "| scenario | the primary's trace | failed calls old / new "
        "| calls to primary old / new | calls to backup old / new "
        "| primary's breaker opened old / new |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        o, n = r.old, r.new
        lines.append(
            f"| {r.scenario} | {r.summary} | {o.failed_calls} / {n.failed_calls} "
            f"| {o.calls['primary']} / {n.calls['primary']} "
            f"| {o.calls['backup']} / {n.calls['backup']} "
            f"| {o.opened} / {n.opened}{_reasons(n)} |"
        )
    return "\n".join(lines)


def _reasons(run: RunResult) -> str:
    if not run.trips:
        return ""
    shown = ", ".join(f"{reason} {n}" for reason, n in sorted(run.trips.items()))
    return f" (new: {shown})"


def _head() -> str:
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()[:100]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/fault_simulation.py",
        description="Replay seeded fault traces with the resilience defaults from before "
        "issue 15 and with today's; print what each cost the callers.",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault traces (1)")
    parser.add_argument(
        "--requests", type=int, default=1000, help="requests per scenario and run (1000)"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="replay the traces of this many seeds (--seed, --seed + 1...) and add them up (1)",
    )
    args = parser.parse_args(argv)
    if args.requests < 20:
        parser.error("--requests: at least 20, so every scenario has its phases")
    if args.seeds < 1:
        parser.error("--seeds: at least 1")
    logging.getLogger("gateway").setLevel(logging.ERROR)  # breaker openings are counted here
    started = time.perf_counter()
    seeds = range(args.seed, args.seed + args.seeds)
    results = added_up(
        [asyncio.run(simulate(seed, args.requests, args.scenario)) for seed in seeds]
    )
    old, new = old_policy("http://127.0.0.1:1"), new_policy("http://127.0.0.1:1")
    shown = f"seed {args.seed}" if args.seeds == 1 else f"seeds {seeds[0]}-{seeds[-1]} added up"
    print(
        f"Fault simulation, {shown}: {args.requests} requests per scenario, one every "
        f"{ARRIVAL_S:g} s ({args.requests * ARRIVAL_S:g} s), chain primary -> backup, "
        f"task deadline_s {DEADLINE_S:g}. Code: {_head()}"
    )
    print(f"old defaults: {describe(old)}")
    print(f"new defaults: {describe(new)}")
    print()
    print(markdown_table(results))
    print()
    print(details_table(results))
    print(f"\n({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
