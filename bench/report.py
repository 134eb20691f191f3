"""docs/performance.md: the run's tables and targets, above a hand-written reading guide.

Everything above `ANALYSIS_MARKER` is rewritten by each run; everything below it is kept as
it is, so the guide can be edited by hand and survives re-runs (a file without the marker gets
`READING_GUIDE`). The guide is for users: how to read the tables. Analysis of particular runs
and of what changed in the code belongs in docs/engineering/performance-notes.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report_peers
from bench.imports import CORE_DEPENDENCIES
from bench.runner import MAIN_SCENARIOS, Results, ScenarioResult
from bench.scenarios import REPLY_TEXT
from bench.stats import Summary

ANALYSIS_MARKER = (
    "<!-- Hand-written reading guide below: `make bench` rewrites everything above this line "
    "and keeps everything below it. -->"
)
READING_GUIDE = """## Reading these numbers

- **What is measured is the gateway's own cost.** The fake upstream answers at once, so every
  figure is work on the client's side. A real model takes hundreds of milliseconds or more to
  answer; next to that, the Router's tens of microseconds and the HTTP server's millisecond
  are small.
- **"added" and "vs direct"** compare each client with the OpenAI SDK's typed call, measured in
  the same rounds. A negative "added" means faster than the SDK: the gateway's providers speak
  the protocol over aiohttp without building the SDK's typed models. What routing itself
  costs (retries, breakers, metrics) is in "The Router over its own provider" and in the layer
  tables.
- **Round by round** shows how far a figure moved between rounds on a shared machine. A figure
  near its goal can be met in one run and not in the next; p50 differences of a few tens of
  µs between two processes are within that noise.
- **The in-process layer table is a lower bound.** A tight loop keeps the code in the CPU's
  caches; between real HTTP calls the same code costs two to three times more, as the
  over-HTTP layer table shows.
- **`gateway serve`** adds an HTTP hop. Its floor, a bare uvicorn app that forwards with
  aiohttp, is what any Python server in its place costs; the rest is the gateway's request
  checks, routing and access log.
- **On your machine**: `make bench` (a few minutes) rewrites the tables above and keeps this
  guide. `python -m bench.layers` times the router's layers alone, and
  `python -m bench.layers_http --upstream URL` over HTTP, against a FakeUpstream that
  `python -m gateway.testing.fake_upstream --port 0` starts (it prints its URL);
  `python -m bench.profile` profiles the hot path.
"""

BASELINE = "direct"
PROVIDER = "provider"
"""The gateway's OpenAI provider called alone: what the Router adds is measured against it."""


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    goal: str
    measure: Callable[[Results], float | None]
    show: Callable[[float], str]
    met: Callable[[float], bool]
    spread: Callable[[Results], list[float]] = lambda results: []
    """The same figure round by round (the clients took turns): how much it moved."""


def _p50(result: ScenarioResult | None, attribute: str = "sequential") -> float | None:
    if result is None or result.not_run is not None:
        return None
    values = getattr(result, attribute)
    return Summary.of(values).p50 if values else None


def _throughput(results: Results, name: str) -> float | None:
    result = results.scenarios.get(name)
    if result is None or result.not_run is not None:
        return None
    return result.throughput


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _added(results: Results, name: str, over: str) -> float | None:
    a, b = _p50(results.scenarios.get(name)), _p50(results.scenarios.get(over))
    return None if a is None or b is None else a - b


def _ran(results: Results, *names: str) -> list[ScenarioResult] | None:
    found = [results.scenarios.get(name) for name in names]
    if any(result is None or result.not_run is not None for result in found):
        return None
    return [result for result in found if result is not None]


def _round_ratios(results: Results, name: str, over: str) -> list[float]:
    pair = _ran(results, name, over)
    if pair is None:
        return []
    a, b = (result.round_throughputs() for result in pair)
    return [x / y for x, y in zip(a, b, strict=False) if y > 0]


def _round_added(results: Results, name: str, over: str) -> list[float]:
    pair = _ran(results, name, over)
    if pair is None:
        return []
    a, b = (result.round_p50s() for result in pair)
    return [x - y for x, y in zip(a, b, strict=False)]


def _import_added(results: Results) -> float | None:
    return results.imports.gateway_over_deps_s if results.imports else None


TARGETS = (
    Target(
        "Router throughput / direct SDK throughput",
        ">= 0.95",
        lambda r: _ratio(_throughput(r, "router"), _throughput(r, BASELINE)),
        lambda v: f"{v:.2f}",
        lambda v: v >= 0.95,
        lambda r: _round_ratios(r, "router", BASELINE),
    ),
    Target(
        "Router p50 added latency over direct SDK",
        "<= 100 µs",
        lambda r: _added(r, "router", BASELINE),
        lambda v: f"{v * 1e6:+.0f} µs",
        lambda v: v <= 100e-6,
        lambda r: _round_added(r, "router", BASELINE),
    ),
    Target(
        "Router throughput / LiteLLM Router throughput",
        ">= 5",
        lambda r: _ratio(_throughput(r, "router"), _throughput(r, "litellm")),
        lambda v: f"{v:.2f}",
        lambda v: v >= 5,
        lambda r: _round_ratios(r, "router", "litellm"),
    ),
    Target(
        "`from gateway import Router` over importing its core dependencies",
        "<= 100 ms added",
        _import_added,
        lambda v: f"{v * 1e3:.0f} ms",
        lambda v: v <= 0.100,
    ),
    Target(
        "failover past an open breaker, added (p50)",
        "<= 200 µs",
        lambda r: _added(r, "failover_open", "failover_without"),
        lambda v: f"{v * 1e6:+.0f} µs",
        lambda v: v <= 200e-6,
        lambda r: _round_added(r, "failover_open", "failover_without"),
    ),
    Target(
        "`gateway serve` p50 added over calling the upstream directly",
        "<= 1 ms",
        lambda r: _added(r, "serve", BASELINE),
        lambda v: f"{v * 1e3:+.2f} ms",
        lambda v: v <= 1e-3,
        lambda r: _round_added(r, "serve", BASELINE),
    ),
    Target(
        "the same, the server's chain on the `openai_http` provider",
        "<= 1 ms",
        lambda r: _added(r, "serve_http", BASELINE),
        lambda v: f"{v * 1e3:+.2f} ms",
        lambda v: v <= 1e-3,
        lambda r: _round_added(r, "serve_http", BASELINE),
    ),
)


# The gateway's provider is faster than the typed SDK call of the baseline, which flatters the
# first two targets: the same figures against the provider alone show what the Router itself
# costs. Shown beside the targets, not as targets (the goals are set against the SDK).
OVERHEAD = (
    Target(
        "Router throughput / its own provider's throughput, no router",
        ">= 0.95",
        lambda r: _ratio(_throughput(r, "router"), _throughput(r, PROVIDER)),
        lambda v: f"{v:.2f}",
        lambda v: v >= 0.95,
        lambda r: _round_ratios(r, "router", PROVIDER),
    ),
    Target(
        "Router p50 added over its own provider, no router",
        "<= 100 µs",
        lambda r: _added(r, "router", PROVIDER),
        lambda v: f"{v * 1e6:+.0f} µs",
        lambda v: v <= 100e-6,
        lambda r: _round_added(r, "router", PROVIDER),
    ),
)


# The floor (bench/floor_server.py) is a bare forwarder on the same uvicorn and aiohttp: what
# any Python server in `gateway serve`'s place adds. Shown to split serve's added latency into
# the stack's share and the gateway's own.
FLOOR = "serve_floor"


def _floor_figure(label: str, name: str, over: str) -> Target:
    return Target(
        label,
        "",
        lambda r: _added(r, name, over),
        lambda v: f"{v * 1e3:+.2f} ms",
        lambda v: True,
        lambda r: _round_added(r, name, over),
    )


FLOOR_FIGURES = (
    _floor_figure("the floor: p50 added over calling the upstream directly", FLOOR, BASELINE),
    _floor_figure("`gateway serve` p50 added over the floor", "serve", FLOOR),
    _floor_figure(
        "`gateway serve`, `openai_http` provider, p50 added over the floor", "serve_http", FLOOR
    ),
)


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.2f} ms"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _mb(kb: int | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.0f} MB"


def _us_delta(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e6:+.0f} µs"


def _rate(per_s: float | None) -> str:
    return "—" if per_s is None else f"{per_s:,.0f}/s"


def header(results: Results) -> list[str]:
    plan, machine = results.plan, results.machine
    versions = ", ".join(f"{name} {version}" for name, version in machine.versions.items())
    load = (
        f"{results.load_before:.2f} before, {results.load_after:.2f} after"
        if results.load_before is not None and results.load_after is not None
        else "unknown"
    )
    lines = [
        "# Performance",
        "",
        f"Generated by `{results.command}` on {results.started}, in "
        f"{results.duration_s / 60:.1f} min.",
        "",
    ]
    if plan.quick:
        lines += [
            "> **Quick run**: tiny counts to check the harness works. These numbers mean "
            "nothing; run `make bench` for real ones.",
            "",
        ]
    lines += [
        f"- **Machine**: {machine.cpu}, {machine.cores} cores, {machine.python}, {machine.system}",
        f"- **Load average** (1 min): {load}. The machine is shared; everything below is "
        "measured in alternating rounds so that other load hits every client alike.",
        f"- **Versions**: {versions}",
        f"- **Workload**: a FakeUpstream in its own process answers every request at once "
        f"(0 ms latency) with the same {len(REPLY_TEXT)}-character reply "
        f"({len(REPLY_TEXT.split())} stream chunks). Each client runs in its own process, "
        f"warmed up with {plan.warmup} requests; then per client {plan.sequential:,} sequential "
        f"requests, {plan.concurrent:,} with {plan.in_flight} in flight and {plan.streams:,} "
        f"streams, in {plan.rounds} rounds where the clients take turns.",
        "",
    ]
    return lines


def targets_table(results: Results) -> list[str]:
    lines = [
        "## Targets",
        "",
        "Measured over the whole run; beside it, the lowest and highest of the same figure "
        "taken round by round, to show how much the shared machine moved it.",
        "",
        "| target | goal | measured | round by round | |",
        "|---|---|---|---|---|",
    ]
    for target in TARGETS:
        value = target.measure(results)
        if value is None:
            lines.append(f"| {target.label} | {target.goal} | not measured | | — |")
            continue
        rounds = target.spread(results)
        spread = f"{target.show(min(rounds))} to {target.show(max(rounds))}" if rounds else ""
        verdict = "**met**" if target.met(value) else "**not met**"
        lines.append(
            f"| {target.label} | {target.goal} | {target.show(value)} | {spread} | {verdict} |"
        )
    lines += [
        "",
        "### The Router over its own provider",
        "",
        "The gateway's providers speak OpenAI's protocol over aiohttp without building the "
        "SDK's typed request and response models, which makes them faster than the typed SDK "
        "call of the baseline above. Against the gateway's own "
        "provider called alone, the same figures show what routing, retries, breakers and "
        "metrics cost by themselves (for reading, not targets: the goals above are set against "
        "the SDK).",
        "",
        "| figure | measured | round by round |",
        "|---|---|---|",
    ]
    lines += _figure_rows(OVERHEAD, results)
    lines += [
        "",
        "### `gateway serve` against the floor",
        "",
        "The floor is a bare ASGI app on the same uvicorn, event loop and HTTP parser that "
        "passes each request on to the upstream with aiohttp and the answer back "
        "(`bench/floor_server.py`): no routing, retries, breakers, metrics, validation or "
        "access log. Any Python server in `gateway serve`'s place adds at least this much; "
        "what the server adds over it is the gateway's own work (for reading, not targets).",
        "",
        "| figure | measured | round by round |",
        "|---|---|---|",
        *_figure_rows(FLOOR_FIGURES, results),
    ]
    return [*lines, ""]


def _figure_rows(figures: tuple[Target, ...], results: Results) -> list[str]:
    rows = []
    for figure in figures:
        value = figure.measure(results)
        shown = "not measured" if value is None else figure.show(value)
        rounds = figure.spread(results)
        spread = f"{figure.show(min(rounds))} to {figure.show(max(rounds))}" if rounds else ""
        rows.append(f"| {figure.label} | {shown} | {spread} |")
    return rows


def scenario_table(results: Results) -> list[str]:
    base = results.scenarios.get(BASELINE)
    base_p50 = _p50(base)
    base_rate = base.throughput if base else None
    base_ttft = _p50(base, "ttft")
    base_rss = base.peak_rss_kb if base else None
    lines = [
        "## Each client, against the OpenAI SDK called directly",
        "",
        "Latency is per request, one request at a time. Throughput is requests completed per "
        f"second with {results.plan.in_flight} in flight (p99 is the latency under that load). "
        "TTFT is the time from the call to the first text delta of a stream. Peak RSS is the "
        "client process's own (for `gateway serve`, the server process's is given apart).",
        "",
        "| client | p50 | p99 | p50 added | throughput | vs direct | p99 loaded | TTFT p50 "
        "| TTFT vs direct | peak RSS | RSS vs direct |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name in MAIN_SCENARIOS:
        result = results.scenarios[name]
        if result.not_run is not None:
            lines.append(f"| {result.label} | not run | | | | | | | | | |")
            notes.append(f"- {result.label}: not run: {result.not_run.splitlines()[0]}")
            continue
        seq = Summary.of(result.sequential) if result.sequential else None
        loaded = Summary.of(result.concurrent) if result.concurrent else None
        ttft = _p50(result, "ttft")
        p50 = seq.p50 if seq else None
        added = None if p50 is None or base_p50 is None or name == BASELINE else p50 - base_p50
        lines.append(
            f"| {result.label} | {_ms(p50)} | {_ms(seq.p99 if seq else None)} "
            f"| {_us_delta(added)} | {_rate(result.throughput)} "
            f"| {_times(_ratio(result.throughput, base_rate))} "
            f"| {_ms(loaded.p99 if loaded else None)} | {_ms(ttft)} "
            f"| {_times(_ratio(ttft, base_ttft))} | {_mb(result.peak_rss_kb)} "
            f"| {_times(_ratio(result.peak_rss_kb, base_rss))} |"
        )
        if result.server_peak_rss_kb is not None:
            notes.append(
                f"- `gateway serve`'s own process peaked at {_mb(result.server_peak_rss_kb)} "
                "RSS (the row shows its client, the OpenAI SDK)."
            )
    return [*lines, "", *notes, *([""] if notes else [])]


def imports_table(results: Results) -> list[str]:
    lines = ["## Import time", ""]
    times = results.imports
    if times is None:
        return [*lines, f"Not measured: {results.imports_error}", ""]
    best = times.best_s
    lines += [
        f"Each import in a fresh interpreter, timed around the import statement alone; the "
        f"best of {times.repeats}.",
        "",
        "| import | time |",
        "|---|---|",
        f"| `import openai` | {_ms(best['openai'])} |",
        f"| `from gateway import Router` | {_ms(best['gateway'])} |",
        f"| `import litellm` | {_ms(best['litellm'])} |",
        f"| core dependencies: `import {', '.join(CORE_DEPENDENCIES)}` "
        f"| {_ms(best['core_deps'])} |",
        f"| **`from gateway import Router` once those are imported** "
        f"| **{_ms(times.gateway_over_deps_s)}** |",
        "",
    ]
    if times.slowest_gateway_modules:
        slowest = ", ".join(
            f"`{module}` {seconds * 1e3:.1f} ms"
            for module, seconds in times.slowest_gateway_modules
        )
        lines += [
            "Where the added time goes (`python -X importtime`, self time, which its own "
            f"overhead inflates): {slowest}.",
            "",
        ]
    return lines


def failover_table(results: Results) -> list[str]:
    lines = [
        "## Failover past an open breaker",
        "",
        "The same router and upstream, sequential requests over HTTP: a chain whose first "
        "provider's breaker is open (the upstream fails it on every request; its breaker "
        "opened during warm-up and stays open) against the chain without that provider.",
        "",
        "| chain | p50 | p99 |",
        "|---|---|---|",
    ]
    summaries = {}
    for name in ("failover_open", "failover_without"):
        result = results.scenarios[name]
        if result.not_run is not None or not result.sequential:
            lines.append(f"| {result.label} | not run | |")
            continue
        summaries[name] = Summary.of(result.sequential)
        lines.append(
            f"| {result.label} | {_ms(summaries[name].p50)} | {_ms(summaries[name].p99)} |"
        )
    if len(summaries) == 2:
        added = summaries["failover_open"].p50 - summaries["failover_without"].p50
        lines.append(f"| **added by the open breaker** | **{_us_delta(added)}** | |")
    if results.dead_calls_while_measured is not None:
        lines += [
            "",
            f"Requests that reached the failing provider while this was measured: "
            f"{results.dead_calls_while_measured} (0 means every one was skipped by its breaker).",
        ]
    return [*lines, ""]


def _layer_rows(rows: list[dict[str, Any]], error: str | None, digits: int) -> list[str]:
    if error:
        return [f"Not measured: {error}", ""]
    lines = ["| what | µs | |", "|---|---|---|"]
    for layer in rows:
        lines.append(f"| {layer['name']} | {layer['us']:.{digits}f} | {layer['note']} |")
    return [*lines, ""]


def layers_table(results: Results) -> list[str]:
    return [
        "## The router's hot path, layer by layer",
        "",
        "**In-process, no HTTP** (`python -m bench.layers`): an in-process provider that "
        "answers at once, so only the gateway's own work is timed. Each figure is the best of "
        "several interleaved batches, in µs per request, less the cost of the loop. A tight "
        "loop keeps the code in the CPU's caches: these are lower bounds.",
        "",
        *_layer_rows(results.layers, results.layers_error, 1),
        "**Over HTTP** (`python -m bench.layers_http --upstream URL`): the gateway's OpenAI "
        "provider and the FakeUpstream, each row adding one layer to the one above, in one "
        f"process, the rows taking turns in batches; p50 in µs over "
        f"{results.plan.layer_http_requests:,} "
        "requests each. Between HTTP calls the caches are cold, so the same layers cost more "
        "here than in the tight loop above.",
        "",
        *_layer_rows(results.layers_http, results.layers_http_error, 0),
    ]


def sanity(results: Results) -> list[str]:
    counts = ", ".join(f"`{model}` {n:,}" for model, n in results.upstream_counts.items())
    return [
        "## Upstream requests",
        "",
        f"What the FakeUpstream served during the run: {counts}. The backup model is only "
        "reached on a fallback, and none is expected; the failing model only while its breaker "
        "was being opened.",
        "",
    ]


def shared_state(results: Results) -> list[str]:
    if results.shared_state:  # bench/shared_state.py prints its own section, heading included
        return [results.shared_state, ""]
    if results.shared_state_note:
        return ["## Shared breaker state (Redis)", "", results.shared_state_note, ""]
    return []


def tracing_cost(results: Results) -> list[str]:
    lines = [
        "## Tracing (OpenTelemetry)",
        "",
        "The router in process against the FakeUpstream, one attempt per request, with tracing "
        "off (no `OTEL_*` variable: no hook is added) and on (`TracingHooks`, spans kept in "
        "memory, or batched to an exporter that drops them): `python -m bench.tracing_cost`. "
        "Off costs nothing by construction; the rows on show what a traced request adds. "
        "[observability.md](observability.md#what-it-costs) says what a trace holds.",
        "",
    ]
    if results.tracing_cost:
        return [*lines, results.tracing_cost, ""]
    return [*lines, results.tracing_cost_note or "not run", ""]


def generated(results: Results) -> str:
    lines = [
        *header(results),
        *targets_table(results),
        *report_peers.section(results),
        *scenario_table(results),
        *imports_table(results),
        *failover_table(results),
        *layers_table(results),
        *sanity(results),
        *shared_state(results),
        *tracing_cost(results),
    ]
    return "\n".join(lines)


def write(results: Results, path: Path) -> None:
    """Rewrite the generated part of `path`, keeping the reading guide below the marker."""
    analysis = READING_GUIDE
    if path.exists():
        _, found, kept = path.read_text().partition(ANALYSIS_MARKER)
        if found:
            analysis = kept.lstrip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{generated(results)}\n{ANALYSIS_MARKER}\n\n{analysis}")
