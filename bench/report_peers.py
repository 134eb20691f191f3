"""docs/performance.md's peer section: the targets against the strongest peers, the servers
over HTTP (wrk), long streams, and memory per open stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bench.peer_run import HOLD_WITHIN_S, PEER_LABELS, HTTPRow, MemoryRow, StreamRow
from bench.runner import PEER_FAILOVER_SCENARIO, PEER_SCENARIO, Results
from bench.scenarios import LONG_CHUNKS
from bench.stats import Summary, percentile

Row = HTTPRow | StreamRow | MemoryRow


@dataclass(frozen=True, slots=True)
class PeerTarget:
    label: str
    goal: str
    measure: Callable[[Results], float | None]
    show: Callable[[float], str]
    met: Callable[[float], bool]
    shortfall: Callable[[float], str]
    """How far a value that misses the goal is from it."""
    missing: Callable[[Results], str]
    """Why there is no value (which peer or figure is missing)."""
    spread: Callable[[Results], list[float]] = lambda results: []


def _ran(results: Results, name: str) -> bool:
    result = results.scenarios.get(name)
    return result is not None and result.not_run is None


def _router_over_tensorzero_rate(results: Results) -> float | None:
    if not (_ran(results, "router") and _ran(results, PEER_SCENARIO)):
        return None
    a, b = results.scenarios["router"].throughput, results.scenarios[PEER_SCENARIO].throughput
    return None if a is None or not b else a / b


def _router_over_tensorzero_p50(results: Results) -> float | None:
    if not (_ran(results, "router") and _ran(results, PEER_SCENARIO)):
        return None
    a, b = results.scenarios["router"].sequential, results.scenarios[PEER_SCENARIO].sequential
    return None if not a or not b else Summary.of(a).p50 / Summary.of(b).p50


def _rounds(results: Results, per_round: Callable[[str], list[float]]) -> list[float]:
    if not (_ran(results, "router") and _ran(results, PEER_SCENARIO)):
        return []
    a, b = per_round("router"), per_round(PEER_SCENARIO)
    return [(x / y) for x, y in zip(a, b, strict=False) if y > 0]


def _http_rate(results: Results, name: str) -> float | None:
    row = results.peers.http.get(name)
    return None if row is None or row.skipped else row.rate


def _serve_over(name: str) -> Callable[[Results], float | None]:
    def ratio(results: Results) -> float | None:
        a, b = _http_rate(results, "serve"), _http_rate(results, name)
        return None if a is None or not b else a / b

    return ratio


def _chunks_per_cpu(results: Results, name: str) -> float | None:
    row = results.peers.streams.get(name)
    return None if row is None or row.skipped else row.chunks_per_cpu_s


def _serve_chunks_per_cpu_over_portkey(results: Results) -> float | None:
    a, b = _chunks_per_cpu(results, "serve"), _chunks_per_cpu(results, "portkey")
    return None if a is None or not b else a / b


def _serve_kb_per_stream(results: Results) -> float | None:
    row = results.peers.memory.get("serve")
    return None if row is None or row.skipped else row.per_stream_kb


def _why_missing(*names: str) -> Callable[[Results], str]:
    """The first reason one of `names` (peers or rows) has no figure."""

    def why(results: Results) -> str:
        peers = results.peers
        for name in names:
            for table in (peers.skipped,):
                if name in table:
                    return f"{PEER_LABELS.get(name, name)} skipped: {table[name]}"
            for rows in (peers.http, peers.streams, peers.memory):
                row = rows.get(name)
                if row is not None and row.skipped:
                    return f"{row.label}: {row.skipped}"
            result = results.scenarios.get(name)
            if result is not None and result.not_run:
                return f"{result.label}: {result.not_run.splitlines()[0]}"
        return "a figure is missing (see the tables below)"

    return why


def _at_least(goal: float) -> Callable[[float], str]:
    return lambda v: f"{(1 - v / goal) * 100:.0f}% short: {goal / v:.2f}x more needed"


def _at_most(goal: float, unit: str = "") -> Callable[[float], str]:
    return lambda v: f"{v - goal:.2f}{unit} over: {v / goal:.2f}x the goal"


PEER_TARGETS = (
    PeerTarget(
        "Router throughput / TensorZero embedded throughput (50 in flight, in-process)",
        ">= 1.2",
        _router_over_tensorzero_rate,
        lambda v: f"{v:.2f}",
        lambda v: v >= 1.2,
        _at_least(1.2),
        _why_missing(PEER_SCENARIO, "tensorzero"),
        lambda r: _rounds(r, lambda n: r.scenarios[n].round_throughputs()),
    ),
    PeerTarget(
        "Router p50 / TensorZero embedded p50 (one request at a time)",
        "<= 1.0",
        _router_over_tensorzero_p50,
        lambda v: f"{v:.2f}",
        lambda v: v <= 1.0,
        _at_most(1.0),
        _why_missing(PEER_SCENARIO, "tensorzero"),
        lambda r: _rounds(r, lambda n: r.scenarios[n].round_p50s()),
    ),
    PeerTarget(
        "`gateway serve` throughput / Portkey throughput (wrk, 50 connections, one process each)",
        ">= 2.5",
        _serve_over("portkey"),
        lambda v: f"{v:.2f}",
        lambda v: v >= 2.5,
        _at_least(2.5),
        _why_missing("portkey", "serve"),
    ),
    PeerTarget(
        "`gateway serve` throughput / LiteLLM proxy throughput (wrk, 50 connections, one "
        "worker each)",
        ">= 20",
        _serve_over("litellm_proxy"),
        lambda v: f"{v:.1f}",
        lambda v: v >= 20,
        _at_least(20),
        _why_missing("litellm_proxy", "serve"),
    ),
    PeerTarget(
        "`gateway serve` streamed chunks per CPU-second / Portkey's",
        ">= 2",
        _serve_chunks_per_cpu_over_portkey,
        lambda v: f"{v:.2f}",
        lambda v: v >= 2,
        _at_least(2),
        _why_missing("portkey", "serve"),
    ),
    PeerTarget(
        "`gateway serve` RSS per open stream",
        "<= 50 KB",
        _serve_kb_per_stream,
        lambda v: f"{v:.1f} KB",
        lambda v: v <= 50,
        _at_most(50, " KB"),
        _why_missing("serve"),
    ),
)


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.2f} ms"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}/s"


def _mb(kb: int | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.1f} MB"


def verdict_rows(results: Results) -> list[str]:
    lines = ["| target | goal | measured | round by round | |", "|---|---|---|---|---|"]
    for target in PEER_TARGETS:
        value = target.measure(results)
        if value is None:
            lines.append(
                f"| {target.label} | {target.goal} | no figure: {target.missing(results)} | | — |"
            )
            continue
        rounds = target.spread(results)
        spread = f"{target.show(min(rounds))} to {target.show(max(rounds))}" if rounds else ""
        verdict = "**met**" if target.met(value) else f"**not met** ({target.shortfall(value)})"
        lines.append(
            f"| {target.label} | {target.goal} | {target.show(value)} | {spread} | {verdict} |"
        )
    return lines


def _table(columns: list[str], rows: Iterable[Row], cells: Callable[[Any], list[str]]) -> list[str]:
    """A markdown table: one line a row, its label first; a skipped row says why."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        shown = [f"skipped: {row.skipped}"] + [""] * (len(columns) - 2)
        lines.append("| " + " | ".join([row.label, *(shown if row.skipped else cells(row))]) + " |")
    return lines


def _http_cells(row: HTTPRow) -> list[str]:
    return [_ms(row.p50_s), _ms(row.p99_s), _rate(row.rate), _ms(row.loaded_p99_s)]


def _stream_cells(row: StreamRow) -> list[str]:
    ttft = percentile(row.ttft, 0.5) if row.ttft else None
    per_1000, per_cpu = row.cpu_s_per_1000, row.chunks_per_cpu_s
    return [
        _ms(ttft),
        _rate(row.chunks_per_s),
        "—" if per_1000 is None else f"{per_1000:.3f}",
        "—" if per_cpu is None else f"{per_cpu:,.0f}",
        row.cpu_of,
    ]


def _memory_cells(row: MemoryRow) -> list[str]:
    per = row.per_stream_kb
    held = (
        f"{row.streams:,}"
        if row.opened == row.streams
        else f"{row.opened:,} of {row.streams:,} opened within {HOLD_WITHIN_S:g} s"
    )
    return [
        held,
        _mb(row.idle_rss_kb),
        _mb(row.held_rss_kb),
        "—" if per is None else f"{per:.1f} KB",
    ]


HTTP_COLUMNS = [
    "server",
    "p50, 1 connection",
    "p99, 1 connection",
    "throughput, 50 connections",
    "p99, 50 connections",
]
STREAM_COLUMNS = [
    "client",
    "TTFT p50",
    "chunks/s, 50 streams",
    "CPU s per 1,000 chunks",
    "chunks per CPU-second",
    "CPU of",
]
MEMORY_COLUMNS = ["server", "streams held", "RSS idle", "RSS holding them", "per open stream"]


def _in_process_rows(results: Results) -> list[str]:
    lines = ["| client | p50 | throughput, 50 in flight |", "|---|---|---|"]
    for name in ("router", PEER_SCENARIO, "failover_open", PEER_FAILOVER_SCENARIO):
        result = results.scenarios.get(name)
        if result is None:
            continue
        if result.not_run or not result.sequential:
            lines.append(f"| {result.label} | skipped: {result.not_run} | |")
            continue
        p50 = Summary.of(result.sequential).p50
        lines.append(f"| {result.label} | {_ms(p50)} | {_rate(result.throughput)} |")
    return lines


def section(results: Results) -> list[str]:
    peers, plan = results.peers, results.plan
    versions = ", ".join(f"{name} {version}" for name, version in peers.versions.items())
    lines = [
        "## Against the strongest peers",
        "",
        "Each peer is installed by the bench itself under `bench/.peers/` (its own venv or npm "
        "folder; the project's venv is not touched) and configured with the same chain as the "
        "gateway's rows: two providers, `primary` then `backup`, at the same FakeUpstream. "
        "`gateway serve` runs one process with one worker; so does every peer server (LiteLLM "
        "`--num_workers 1`, Portkey one Node process). Ratios are of figures measured in this "
        "run.",
        "",
        f"- **Peers' versions**: {versions or 'none installed'}",
    ]
    for name, reason in peers.skipped.items():
        lines.append(f"- **{PEER_LABELS.get(name, name)} skipped**: {reason}")
    lines += [
        "",
        "### Targets against the peers",
        "",
        *verdict_rows(results),
        "",
        "### In-process: the Router against TensorZero's embedded gateway",
        "",
        "Both in their own client process in the same alternating rounds as the table of "
        "clients above (TensorZero's on its own venv's Python). The last two rows have a "
        "first provider the upstream fails with 500 on every request: the Router's breaker "
        "has opened and skips it; TensorZero, which has no breaker, tries it every time "
        "(sequential requests only, measured after the Router's failover rows).",
        "",
        *_in_process_rows(results),
        "",
        "### Servers over HTTP (wrk)",
        "",
        f"wrk (one thread) posts the same chat request: with 1 connection for "
        f"{plan.wrk_latency_s} s (p50 one request at a time), then {plan.in_flight} "
        f"connections for {plan.wrk_throughput_s} s (throughput), after a {plan.wrk_warmup_s} s "
        "warm-up. Every server's answer is checked once before.",
        "",
        *_table(HTTP_COLUMNS, peers.http.values(), _http_cells),
        "",
        "### Long streams",
        "",
        f"The upstream streams a {LONG_CHUNKS}-chunk answer (one word a chunk). TTFT is the "
        f"time to the first content chunk over {plan.long_streams} streams one at a time; "
        f"chunks/s is content chunks delivered with {plan.in_flight} streams at once "
        f"({plan.stream_load} streams); CPU is user + system time from /proc/<pid>/stat over "
        "that load. Servers are read by one aiohttp stream reader in its own process "
        "(`bench/stream_client.py`), the same for each; in-process gateways by their client "
        "process, whose CPU then includes draining the deltas.",
        "",
        *_table(STREAM_COLUMNS, peers.streams.values(), _stream_cells),
        "",
        "### Memory per open stream",
        "",
        f"{plan.held_streams:,} streams held open at once by an upstream that sends one chunk "
        "and then holds: the server's RSS while they are open, minus its RSS just before, per "
        "stream. `gateway serve` is a fresh process for this (warmed with a few streams), with "
        "its connection limit raised above the streams held.",
        "",
        *_table(MEMORY_COLUMNS, peers.memory.values(), _memory_cells),
        "",
    ]
    return lines
