"""The peers' measurements: servers over HTTP (wrk), long streams, and memory per open stream.

Every HTTP server is measured the same way: wrk for whole requests (`bench.http_load`), the
one aiohttp stream reader (`bench.stream_client`) for streams, and /proc for the server
process's CPU and memory (`bench.proc`). In-process clients (the Router, TensorZero embedded)
are measured by their client processes (`bench.client`'s `long_streams` and `stream_load`).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import http_load, peers
from bench.plan import Plan
from bench.proc import cpu_seconds, rss_kb
from bench.scenarios import (
    BACKUP_MODEL,
    BENCH_KEY,
    IDLE_MODEL,
    IDLE_TASK,
    LONG_BACKUP_MODEL,
    LONG_CHUNKS,
    LONG_MODEL,
    LONG_TASK,
    MESSAGES,
    MODEL,
    REPLY_TEXT,
    TASK,
)

HOLD_WITHIN_S = 60.0
"""How long the held streams may take to open; the figure is per stream that opened."""
CHAT_PATH = "/v1/chat/completions"


@dataclass
class HTTPRow:
    name: str
    label: str
    skipped: str | None = None
    p50_s: float | None = None
    p99_s: float | None = None
    rate: float | None = None
    loaded_p99_s: float | None = None


@dataclass
class StreamRow:
    name: str
    label: str
    skipped: str | None = None
    ttft: list[float] = field(default_factory=list)
    chunks: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cpu_of: str = "the server process"

    @property
    def chunks_per_s(self) -> float | None:
        return self.chunks / self.wall_s if self.wall_s > 0 else None

    @property
    def cpu_s_per_1000(self) -> float | None:
        return self.cpu_s / self.chunks * 1000 if self.chunks and self.cpu_s > 0 else None

    @property
    def chunks_per_cpu_s(self) -> float | None:
        return self.chunks / self.cpu_s if self.cpu_s > 0 else None


@dataclass
class MemoryRow:
    name: str
    label: str
    skipped: str | None = None
    streams: int = 0
    opened: int = 0
    """Streams that got their first chunk within `HOLD_WITHIN_S` (all, for a server that
    keeps up)."""
    idle_rss_kb: int | None = None
    held_rss_kb: int | None = None

    @property
    def per_stream_kb(self) -> float | None:
        if self.idle_rss_kb is None or self.held_rss_kb is None or not self.opened:
            return None
        return (self.held_rss_kb - self.idle_rss_kb) / self.opened


@dataclass
class PeerResults:
    versions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Peers that could not be installed or started, and why."""
    http: dict[str, HTTPRow] = field(default_factory=dict)
    streams: dict[str, StreamRow] = field(default_factory=dict)
    memory: dict[str, MemoryRow] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """One HTTP server under test: where, its process, and its three requests (a whole
    answer, a long stream, a stream its upstream holds open), each a body and headers."""

    name: str
    label: str
    url: str
    pid: int
    whole: tuple[dict[str, Any], dict[str, str]]
    long: tuple[dict[str, Any], dict[str, str]]
    idle: tuple[dict[str, Any], dict[str, str]]


def _check_answer(endpoint: Endpoint) -> None:
    body, headers = endpoint.whole
    response = httpx.post(endpoint.url + CHAT_PATH, json=body, headers=headers, timeout=30)
    if response.status_code != 200:
        raise http_load.LoadFailed(f"answered {response.status_code}: {response.text[:300]}")
    text = response.json()["choices"][0]["message"]["content"]
    if text != REPLY_TEXT:
        raise http_load.LoadFailed(f"answered {text!r}, not the upstream's reply")


def measure_http(endpoint: Endpoint, plan: Plan) -> HTTPRow:
    """p50 one request at a time (1 connection) and throughput (`in_flight` connections)."""
    row = HTTPRow(endpoint.name, endpoint.label)
    body, headers = endpoint.whole
    try:
        _check_answer(endpoint)
        url = endpoint.url
        common = {"duration_s": plan.wrk_warmup_s, "connections": plan.in_flight}
        http_load.run(url, CHAT_PATH, body, headers, **common)  # warm-up
        one = http_load.run(
            url, CHAT_PATH, body, headers, connections=1, duration_s=plan.wrk_latency_s
        )
        many = http_load.run(
            url,
            CHAT_PATH,
            body,
            headers,
            connections=plan.in_flight,
            duration_s=plan.wrk_throughput_s,
        )
    except (http_load.LoadFailed, httpx.HTTPError, KeyError, ValueError) as exc:
        row.skipped = f"failed: {exc}".splitlines()[0][:300]
        return row
    row.p50_s, row.p99_s, row.rate, row.loaded_p99_s = one.p50_s, one.p99_s, many.rate, many.p99_s
    return row


def _stream_command(endpoint: Endpoint, which: str, mode: str, n: int, **extra: int) -> list[str]:
    body, headers = endpoint.long if which == "long" else endpoint.idle
    command = [sys.executable, "-m", "bench.stream_client", mode, "--url", endpoint.url + CHAT_PATH]
    command += ["--request", json.dumps(body), "--headers", json.dumps(headers)]
    command += ["--expect", str(LONG_CHUNKS), "--n", str(n)]
    for name, value in extra.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def _stream_client(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False
    )
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise http_load.LoadFailed(f"the stream client failed: {last[0][:300]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def warm_streams(endpoint: Endpoint, env: dict[str, str], cwd: Path) -> None:
    """A few long streams, so that what the first stream loads is in the idle RSS."""
    _stream_client(_stream_command(endpoint, "long", "ttft", 3), env, cwd)


def measure_streams(endpoint: Endpoint, plan: Plan, env: dict[str, str], cwd: Path) -> StreamRow:
    """Time to first token (streams one at a time), then chunks a second with `in_flight`
    streams at once and the server process's CPU seconds over that load."""
    row = StreamRow(endpoint.name, endpoint.label)
    try:
        first = _stream_client(
            _stream_command(endpoint, "long", "ttft", plan.long_streams), env, cwd
        )
        command = _stream_command(
            endpoint, "long", "load", plan.stream_load, in_flight=plan.in_flight
        )
        cpu_before = cpu_seconds(endpoint.pid)
        loaded = _stream_client(command, env, cwd)
        row.cpu_s = cpu_seconds(endpoint.pid) - cpu_before
    except (http_load.LoadFailed, subprocess.TimeoutExpired, ValueError) as exc:
        row.skipped = f"failed: {exc}".splitlines()[0][:300]
        return row
    row.ttft = first["ttft"]
    row.chunks, row.wall_s = loaded["chunks"], loaded["wall_s"]
    return row


def measure_memory(endpoint: Endpoint, streams: int, env: dict[str, str], cwd: Path) -> MemoryRow:
    """RSS with `streams` streams held open by an upstream that sent one chunk and holds,
    against RSS just before; the streams are then closed."""
    row = MemoryRow(endpoint.name, endpoint.label, streams=streams)
    time.sleep(0.5)
    row.idle_rss_kb = rss_kb(endpoint.pid)
    holder = subprocess.Popen(
        _stream_command(endpoint, "idle", "hold", streams, within=int(HOLD_WITHIN_S)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        ready, _, _ = select.select([holder.stdout], [], [], HOLD_WITHIN_S + 60)
        line = holder.stdout.readline() if ready else ""
        if '"held"' not in line:
            holder.kill()
            _, errors = holder.communicate(timeout=30)
            why = errors.strip().splitlines()[-1:] or [f"not open within {HOLD_WITHIN_S:g} s"]
            row.skipped = f"failed: {why[0][:300]}"
            return row
        row.opened = json.loads(line)["held"]
        time.sleep(0.5)  # let the last allocations settle
        row.held_rss_kb = rss_kb(endpoint.pid)
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
    return row


# --- installing and starting the peers ----------------------------------------------------

PEER_LABELS = {
    "tensorzero": "TensorZero embedded gateway",
    "litellm_proxy": "LiteLLM proxy",
    "portkey": "Portkey gateway",
}


@dataclass
class Installed:
    """Each peer's entry point, None when it is skipped (the reason is in `PeerResults`)."""

    tensorzero: Path | None = None
    litellm: Path | None = None
    portkey: Path | None = None


def install(plan: Plan, results: PeerResults, progress: Any) -> Installed:
    """Install what is missing under bench/.peers/; a peer that fails is skipped."""
    found = Installed()
    results.versions["node"] = peers.node_version()
    if not plan.peers:
        for name in PEER_LABELS:
            results.skipped[name] = "skipped in --quick runs (peers are installed by the full run)"
        return found
    try:
        progress("peers: TensorZero (pip, bench/.peers/tensorzero)")
        found.tensorzero, results.versions["tensorzero"] = peers.python_peer(
            "tensorzero", "tensorzero", "tensorzero"
        )
    except peers.PeerUnavailable as exc:
        results.skipped["tensorzero"] = str(exc)
    try:
        progress("peers: LiteLLM proxy (pip, bench/.peers/litellm)")
        found.litellm, version = peers.python_peer("litellm", "litellm[proxy]", "litellm")
        results.versions["litellm (proxy venv)"] = version
    except peers.PeerUnavailable as exc:
        results.skipped["litellm_proxy"] = str(exc)
    try:
        progress("peers: Portkey gateway (npm, bench/.peers/portkey)")
        found.portkey, results.versions["@portkey-ai/gateway"] = peers.portkey()
    except peers.PeerUnavailable as exc:
        results.skipped["portkey"] = str(exc)
    for name, reason in results.skipped.items():
        progress(f"  {name}: skipped: {reason}")
    return found


def _requests(
    whole: str, long: str, idle: str, headers: dict[str, str]
) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    return {
        "whole": ({"model": whole, "messages": MESSAGES}, headers),
        "long": ({"model": long, "messages": MESSAGES, "stream": True}, headers),
        "idle": ({"model": idle, "messages": MESSAGES, "stream": True}, headers),
    }


def serve_endpoint(name: str, label: str, url: str, pid: int) -> Endpoint:
    """`gateway serve`: the client names the task as its model."""
    auth = {"authorization": f"Bearer {BENCH_KEY}"}
    return Endpoint(name, label, url, pid, **_requests(TASK, LONG_TASK, IDLE_TASK, auth))


def litellm_endpoint(server: peers.PeerServer) -> Endpoint:
    models = peers.LITELLM_MODELS
    long_name = next(name for name, pair in models.items() if pair[0] == LONG_MODEL)
    whole_name = next(name for name, pair in models.items() if pair[0] == MODEL)
    requests = _requests(whole_name, long_name, peers.LITELLM_IDLE, peers.litellm_headers())
    return Endpoint(
        "litellm_proxy", "LiteLLM proxy (one worker)", server.url, server.pid, **requests
    )


def portkey_endpoint(server: peers.PeerServer, upstream_url: str) -> Endpoint:
    """Portkey: fallback through its `x-portkey-config` header, one config per chain."""

    def request(first: str, second: str, stream: bool) -> tuple[dict[str, Any], dict[str, str]]:
        body: dict[str, Any] = {"model": first, "messages": MESSAGES}
        if stream:
            body["stream"] = True
        config = peers.portkey_config(upstream_url, first, second)
        return body, {"x-portkey-config": config}

    return Endpoint(
        "portkey",
        "Portkey gateway (Node, one process)",
        server.url,
        server.pid,
        whole=request(MODEL, BACKUP_MODEL, False),
        long=request(LONG_MODEL, LONG_BACKUP_MODEL, True),
        idle=request(IDLE_MODEL, LONG_BACKUP_MODEL, True),
    )
