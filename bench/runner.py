"""One bench run: an upstream, the server, a client process per scenario, turns, results.

The FakeUpstream runs in its own process, as does `gateway serve` and every client, so no two
share an event loop and each client's peak RSS is its own. All clients start and warm up
first; then, for each measurement, the scenarios take turns round by round (the order rotating
each round) and only one client works at a time.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench import http_load, imports, peer_run, peers
from bench.machine import Machine, load_average
from bench.peer_run import Endpoint, PeerResults, StreamRow
from bench.plan import Plan
from bench.proc import raise_open_files_limit, stop
from bench.scenarios import (
    BACKUP_MODEL,
    DEAD_MODEL,
    IDLE_MODEL,
    LONG_BACKUP_MODEL,
    LONG_MODEL,
    LONG_TEXT,
    MODEL,
    POLICY_PATH,
    REPLY_TEXT,
    SCENARIOS,
    TENSORZERO_CONFIG_ENV,
    UPSTREAM_ENV,
)
from bench.stats import percentile
from gateway.testing import FakeUpstream, Fault

REPO = Path(__file__).resolve().parents[1]

MAIN_SCENARIOS = (
    "direct",
    "raw_http",
    "provider",
    "router",
    "router_http",
    "litellm",
    "serve",
    "serve_http",
    "serve_floor",
)
"""Measured for latency, throughput and streams, in this order in the report."""
SERVE_SCENARIOS = ("serve", "serve_http")
"""The clients of the one `gateway serve` process the run starts."""
FLOOR_SCENARIO = "serve_floor"
"""The client of `bench.floor_server`, the bare forwarder measured beside `gateway serve`."""
FAILOVER_SCENARIOS = ("failover_open", "failover_without")
"""Measured for sequential latency only, against each other."""
PEER_SCENARIO = "tensorzero"
PEER_FAILOVER_SCENARIO = "tensorzero_failover"
"""TensorZero with a first provider failing every request: measured like the failover chain,
after it (its calls to the failing model would otherwise count in that chain's check)."""
"""TensorZero's embedded gateway: a client process on its own venv's Python, measured in the
same rounds as the main scenarios when it could be installed."""
IN_PROCESS_STREAMERS = ("router", PEER_SCENARIO)
"""The in-process clients whose long streams are measured by their own client process."""

READY_TIMEOUT_S = 180.0  # LiteLLM's import alone takes 5-10 s on a busy 2-core machine
COMMAND_TIMEOUT_S = 600.0
SERVER_READY_TIMEOUT_S = 60.0


class ClientFailed(RuntimeError):
    """A client process failed or went silent; the message says why, with its stderr tail."""


@dataclass
class ScenarioResult:
    name: str
    label: str
    not_run: str | None = None
    """Why the scenario has no results (None: it ran)."""
    sequential: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    concurrent_walls: list[float] = field(default_factory=list)
    """Each round's wall time for its share of `concurrent`."""
    ttft: list[float] = field(default_factory=list)
    peak_rss_kb: int | None = None
    rss_after_start_kb: int | None = None
    start_s: float | None = None
    server_peak_rss_kb: int | None = None
    """For `serve`: the server process's own peak RSS."""
    rounds: int = 0
    """Rounds of sequential requests this scenario took part in."""

    @property
    def throughput(self) -> float | None:
        wall = sum(self.concurrent_walls)
        if not self.concurrent or wall <= 0:
            return None
        return len(self.concurrent) / wall

    def round_throughputs(self) -> list[float]:
        """Requests a second in each round (every round has the same number of requests)."""
        if not self.concurrent_walls:
            return []
        per_round = len(self.concurrent) / len(self.concurrent_walls)
        return [per_round / wall for wall in self.concurrent_walls if wall > 0]

    def round_p50s(self) -> list[float]:
        """The sequential p50 of each round."""
        rounds = self.rounds or 1
        size = len(self.sequential) // rounds
        if size == 0:
            return []
        return [percentile(self.sequential[i * size : (i + 1) * size], 0.5) for i in range(rounds)]


@dataclass
class Results:
    plan: Plan
    machine: Machine
    started: str
    command: str
    duration_s: float = 0.0
    load_before: float | None = None
    load_after: float | None = None
    scenarios: dict[str, ScenarioResult] = field(default_factory=dict)
    imports: imports.ImportTimes | None = None
    imports_error: str | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    layers_error: str | None = None
    layers_http: list[dict[str, Any]] = field(default_factory=list)
    layers_http_error: str | None = None
    upstream_counts: dict[str, int] = field(default_factory=dict)
    dead_calls_while_measured: int | None = None
    """Requests that reached the failing provider while the failover chain was measured (must
    be 0: the open breaker skips it)."""
    shared_state: str | None = None
    """Markdown from bench/shared_state.py, when that module exists."""
    shared_state_note: str = ""
    tracing_cost: str | None = None
    """Markdown table from bench/tracing_cost.py: the router with tracing off and on."""
    tracing_cost_note: str = ""
    peers: PeerResults = field(default_factory=PeerResults)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_environment(upstream_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env[UPSTREAM_ENV] = upstream_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def peak_rss_of(pid: int) -> int | None:
    """A live process's peak RSS in kB (Linux: VmHWM), or None where that is unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class ClientProcess:
    """`python -m bench.client` for one scenario, spoken to one JSON line at a time."""

    def __init__(self, name: str, process: subprocess.Popen[str], log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @classmethod
    def start(
        cls,
        name: str,
        *,
        upstream_url: str,
        server_url: str | None,
        plan: Plan,
        log_dir: Path,
        python: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> ClientProcess:
        """`python`: the interpreter (a peer's venv); bench.client itself needs only the
        standard library and the library it measures."""
        log = log_dir / f"client-{name}.log"
        command = [
            str(python or sys.executable),
            "-m",
            "bench.client",
            "--scenario",
            name,
            "--upstream",
            upstream_url,
            "--warmup",
            str(plan.warmup),
            "--in-flight",
            str(plan.in_flight),
        ]
        if server_url:
            command += ["--server", server_url]
        with log.open("w") as stderr:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=REPO,
                env={**child_environment(upstream_url), **(extra_env or {})},
            )
        return cls(name, process, log)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientFailed(f"{self.name}: no answer within {timeout_s:g} s")
            readable, _, _ = select.select([stdout], [], [], left)
            if not readable:
                continue
            line = stdout.readline()
            if not line:
                code = self.process.wait(5)
                raise ClientFailed(
                    f"{self.name}: the client exited (code {code}); its log:\n{_tail(self.log)}"
                )
            message: dict[str, Any] = json.loads(line)
            if "error" in message:
                raise ClientFailed(f"{self.name}: {message['error']}\n{_tail(self.log)}")
            return message

    def ready(self) -> dict[str, Any]:
        return self._read(READY_TIMEOUT_S)

    def ask(self, **command: Any) -> dict[str, Any]:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(command) + "\n")
            stdin.flush()
        except BrokenPipeError as exc:
            raise ClientFailed(f"{self.name}: the client is gone\n{_tail(self.log)}") from exc
        return self._read(COMMAND_TIMEOUT_S)

    def request_quit(self) -> None:
        """Ask the client to exit, without waiting (so that many can exit at once)."""
        stdin = self.process.stdin
        if self.process.poll() is None and stdin is not None and not stdin.closed:
            with suppress(BrokenPipeError):
                stdin.write(json.dumps({"op": "quit"}) + "\n")
                stdin.flush()

    def close(self) -> None:
        self.request_quit()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with suppress(BrokenPipeError):
                    pipe.close()


class ServerProcess:
    """A server in its own process until closed: `gateway serve` on bench/routing.yaml, or
    the bare forwarder `bench.floor_server` (`floor=True`)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path, name: str) -> None:
        self.process = process
        self.url = url
        self.log = log
        self.name = name

    @classmethod
    def start(
        cls,
        upstream_url: str,
        log_dir: Path,
        *,
        floor: bool = False,
        extra_env: dict[str, str] | None = None,
        log_name: str = "server.log",
    ) -> ServerProcess:
        """Start and wait until /healthz answers; `RuntimeError` with the reason otherwise."""
        port = free_port()
        if floor:
            name, log = "the floor server", log_dir / "floor_server.log"
            arguments = ["bench.floor_server", "--port", str(port)]
        else:
            name, log = "gateway serve", log_dir / log_name
            arguments = ["gateway.server", "--policy", str(POLICY_PATH), "--port", str(port)]
        command = [sys.executable, "-m", *arguments]
        with log.open("w") as output:
            process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**child_environment(upstream_url), **(extra_env or {})},
            )
        server = cls(process, f"http://127.0.0.1:{port}", log, name)
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"`{' '.join(command[1:])}` exited with code {process.returncode}: "
                    f"{_tail(log, 5)}"
                )
            try:
                if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        server.close()
        raise RuntimeError(f"{name} did not answer /healthz within {SERVER_READY_TIMEOUT_S:g} s")

    def peak_rss_kb(self) -> int | None:
        return peak_rss_of(self.process.pid)

    def close(self) -> None:
        stop(self.process)


def rotated(names: Sequence[str], turn: int) -> list[str]:
    """`names` starting at a different one each turn, so none always goes first."""
    if not names:
        return []
    k = turn % len(names)
    return [*names[k:], *names[:k]]


class Run:
    def __init__(self, plan: Plan, results: Results, progress: Callable[[str], None]) -> None:
        self.plan = plan
        self.results = results
        self.progress = progress
        self.clients: dict[str, ClientProcess] = {}
        self.pythons: dict[str, Path] = {}
        """A client's interpreter when it is not this one (a peer's venv)."""
        self.client_env: dict[str, dict[str, str]] = {}

    def _drop(self, name: str, reason: str) -> None:
        self.results.scenarios[name].not_run = reason
        client = self.clients.pop(name, None)
        if client is not None:
            client.close()
        self.progress(f"  {name}: not run: {reason.splitlines()[0]}")

    def start_clients(
        self,
        names: Sequence[str],
        upstream_url: str,
        server_urls: dict[str, str],
        log_dir: Path,
    ) -> None:
        """`server_urls`: the server each server scenario's client talks to."""
        for name in names:
            if self.results.scenarios[name].not_run is None:
                self.clients[name] = ClientProcess.start(
                    name,
                    upstream_url=upstream_url,
                    server_url=server_urls.get(name),
                    plan=self.plan,
                    log_dir=log_dir,
                    python=self.pythons.get(name),
                    extra_env=self.client_env.get(name),
                )
        # They import and warm up in parallel; nothing is measured until all are ready.
        for name in list(self.clients):
            try:
                ready = self.clients[name].ready()
            except ClientFailed as exc:
                self._drop(name, str(exc))
                continue
            result = self.results.scenarios[name]
            result.start_s = ready.get("start_s")
            result.rss_after_start_kb = ready.get("rss_after_start_kb")
            self.progress(f"  {name}: ready (library loaded in {result.start_s:.2f} s)")

    def measure(self, names: Sequence[str], op: str, total: int, **extra: Any) -> None:
        per_round = self.plan.per_round(total)
        for turn in range(self.plan.rounds):
            for name in rotated([n for n in names if n in self.clients], turn):
                try:
                    answer = self.clients[name].ask(op=op, n=per_round, **extra)
                except ClientFailed as exc:
                    self._drop(name, str(exc))
                    continue
                result = self.results.scenarios[name]
                if op == "sequential":
                    result.sequential += answer["latencies"]
                    result.rounds += 1
                elif op == "concurrent":
                    result.concurrent += answer["latencies"]
                    result.concurrent_walls.append(answer["wall_s"])
                elif op == "streams":
                    result.ttft += answer["ttft"]

    def measure_long_streams(self, names: Sequence[str]) -> None:
        """Each in-process client's long streams: time to first token one at a time, then
        chunks a second and its own CPU with `in_flight` at once."""
        for name in names:
            client = self.clients.get(name)
            if client is None:
                continue
            row = StreamRow(name, self.results.scenarios[name].label)
            row.cpu_of = "the client process (the gateway runs in it)"
            try:
                row.ttft = client.ask(op="long_streams", n=self.plan.long_streams)["ttft"]
                loaded = client.ask(
                    op="stream_load", n=self.plan.stream_load, in_flight=self.plan.in_flight
                )
            except ClientFailed as exc:
                row.skipped = f"failed: {str(exc).splitlines()[0]}"
                self.results.peers.streams[name] = row
                continue
            row.chunks, row.wall_s, row.cpu_s = loaded["chunks"], loaded["wall_s"], loaded["cpu_s"]
            self.results.peers.streams[name] = row

    def collect_rss(self) -> None:
        for name, client in list(self.clients.items()):
            try:
                self.results.scenarios[name].peak_rss_kb = client.ask(op="rss")["peak_rss_kb"]
            except ClientFailed as exc:
                self._drop(name, str(exc))

    def close_clients(self) -> None:
        for client in self.clients.values():
            client.request_quit()
        for client in self.clients.values():
            client.close()
        self.clients.clear()


def _json_from(module: str, *arguments: str, upstream_url: str = "") -> list[dict[str, Any]]:
    """Run `python -m module arguments...` and read the JSON on its last line of output."""
    done = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=child_environment(upstream_url),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`{module}` exited with {done.returncode}: {done.stderr[-600:]}")
    try:
        rows: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise RuntimeError(f"`{module}` printed no JSON result: {done.stdout[-300:]!r}") from exc
    return rows


def _run_layers(plan: Plan, results: Results) -> None:
    iterations, repeats = str(plan.layer_iterations), str(plan.layer_repeats)
    try:
        results.layers = _json_from(
            "bench.layers", "--iterations", iterations, "--repeats", repeats
        )
    except RuntimeError as exc:
        results.layers_error = str(exc)


def _run_layers_http(plan: Plan, results: Results, upstream_url: str) -> None:
    try:
        results.layers_http = _json_from(
            "bench.layers_http",
            "--upstream",
            upstream_url,
            "--requests",
            str(plan.layer_http_requests),
            upstream_url=upstream_url,
        )
    except RuntimeError as exc:
        results.layers_http_error = str(exc)


def _markdown_of(module: str, *arguments: str) -> tuple[str | None, str]:
    """(what `python -m module arguments` printed, "") or (None, why it did not run)."""
    command = [sys.executable, "-m", module, *arguments]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=child_environment(""), check=False
    )
    if done.returncode != 0:
        return None, (
            f"not run: `python -m {module}` exited with code {done.returncode}: "
            f"{done.stderr.strip()[-400:]}"
        )
    return done.stdout.strip(), ""


def _run_shared_state(plan: Plan, results: Results) -> None:
    """bench/shared_state.py is another engineer's; run it when it exists."""
    if not (REPO / "bench" / "shared_state.py").exists():
        results.shared_state_note = "not run: bench/shared_state.py does not exist"
        return
    arguments = ["--quick"] if plan.quick else []
    results.shared_state, results.shared_state_note = _markdown_of("bench.shared_state", *arguments)


def _run_tracing_cost(plan: Plan, results: Results) -> None:
    """The router with tracing off (no hook) and on, in its own process."""
    requests = "20" if plan.quick else "500"
    results.tracing_cost, results.tracing_cost_note = _markdown_of(
        "bench.tracing_cost", "--requests", requests
    )


def _measure_imports(repeats: int) -> imports.ImportTimes | str:
    """The import times, or why they could not be measured."""
    try:
        return imports.measure(repeats)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return str(exc)


def _take_imports(outcome: imports.ImportTimes | str, results: Results) -> None:
    if isinstance(outcome, str):
        results.imports_error = outcome
    else:
        results.imports = outcome


def run(plan: Plan, results: Results, progress: Callable[[str], None]) -> Results:
    began = time.perf_counter()
    raise_open_files_limit()  # for the held streams; every process started here inherits it
    results.load_before = load_average()
    for name in (*MAIN_SCENARIOS, *FAILOVER_SCENARIOS):
        results.scenarios[name] = ScenarioResult(name, SCENARIOS[name].label)
    installed = peer_run.install(plan, results.peers, progress)
    bench_run = Run(plan, results, progress)
    measured: tuple[str, ...] = MAIN_SCENARIOS
    peer_failover: tuple[str, ...] = ()
    pending_imports: Future[imports.ImportTimes | str] | None = None
    with ExitStack() as stack:
        if plan.overlap_imports:
            progress("import times, while everything else starts")
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            pending_imports = pool.submit(_measure_imports, plan.import_repeats)
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
        progress("starting the FakeUpstream process")
        upstream = stack.enter_context(FakeUpstream.spawn())
        upstream.client.reply(None, REPLY_TEXT)
        upstream.client.fail_always(DEAD_MODEL, Fault.server_error())
        for model in (LONG_MODEL, LONG_BACKUP_MODEL):
            upstream.client.reply(model, LONG_TEXT)
        # The held streams: one chunk, then silence until the client goes.
        upstream.client.reply(IDLE_MODEL, LONG_TEXT)
        upstream.client.fail_always(IDLE_MODEL, Fault.stall(after_chunks=1))
        if installed.tensorzero is not None:
            config = peers.tensorzero_config(upstream.url, log_dir)
            results.scenarios[PEER_SCENARIO] = ScenarioResult(
                PEER_SCENARIO, SCENARIOS[PEER_SCENARIO].label
            )
            bench_run.pythons[PEER_SCENARIO] = installed.tensorzero
            bench_run.client_env[PEER_SCENARIO] = {
                TENSORZERO_CONFIG_ENV: str(config),
                **peers.tensorzero_environment(),
            }
            measured = (*MAIN_SCENARIOS, PEER_SCENARIO)
            results.scenarios[PEER_FAILOVER_SCENARIO] = ScenarioResult(
                PEER_FAILOVER_SCENARIO, SCENARIOS[PEER_FAILOVER_SCENARIO].label
            )
            bench_run.pythons[PEER_FAILOVER_SCENARIO] = installed.tensorzero
            bench_run.client_env[PEER_FAILOVER_SCENARIO] = bench_run.client_env[PEER_SCENARIO]
            peer_failover = (PEER_FAILOVER_SCENARIO,)
        server_urls: dict[str, str] = {}
        server: ServerProcess | None = None
        for floor, names in ((False, SERVE_SCENARIOS), (True, (FLOOR_SCENARIO,))):
            progress("starting the floor server" if floor else "starting gateway serve")
            try:
                started = ServerProcess.start(upstream.url, log_dir, floor=floor)
            except (RuntimeError, OSError) as exc:
                for name in names:
                    results.scenarios[name].not_run = f"the server could not start: {exc}"
                progress(f"  {', '.join(names)}: not run: {exc}")
                continue
            stack.callback(started.close)
            server_urls.update(dict.fromkeys(names, started.url))
            if not floor:
                server = started
        stack.callback(bench_run.close_clients)
        progress("starting the clients (imports and warm-up)")
        bench_run.start_clients(
            (*measured, *FAILOVER_SCENARIOS, *peer_failover), upstream.url, server_urls, log_dir
        )
        if PEER_SCENARIO in results.scenarios and results.scenarios[PEER_SCENARIO].not_run:
            results.peers.skipped[PEER_SCENARIO] = results.scenarios[PEER_SCENARIO].not_run or ""
        progress(f"sequential: {plan.sequential} requests each, {plan.rounds} rounds")
        bench_run.measure(measured, "sequential", plan.sequential)
        progress(f"concurrent: {plan.concurrent} requests each, {plan.in_flight} in flight")
        bench_run.measure(measured, "concurrent", plan.concurrent, in_flight=plan.in_flight)
        progress(f"streams: {plan.streams} each, time to first token")
        bench_run.measure(measured, "streams", plan.streams)
        progress(
            f"long streams in-process: {plan.long_streams} one at a time, "
            f"{plan.stream_load} with {plan.in_flight} at once"
        )
        bench_run.measure_long_streams(IN_PROCESS_STREAMERS)
        progress(f"failover: {plan.failover} requests per chain")
        dead_before = upstream.client.count(DEAD_MODEL)
        bench_run.measure(FAILOVER_SCENARIOS, "sequential", plan.failover)
        results.dead_calls_while_measured = upstream.client.count(DEAD_MODEL) - dead_before
        bench_run.measure(peer_failover, "sequential", plan.failover)
        progress("peak RSS, then stopping the clients")
        bench_run.collect_rss()
        if server is not None:
            results.scenarios["serve"].server_peak_rss_kb = server.peak_rss_kb()
        bench_run.close_clients()
        _measure_servers(plan, results, installed, server, upstream.url, log_dir, progress)
        progress(f"hot-path layers over HTTP: {plan.layer_http_requests} requests per variant")
        _run_layers_http(plan, results, upstream.url)
        results.upstream_counts = {
            model: upstream.client.count(model) for model in (MODEL, BACKUP_MODEL, DEAD_MODEL)
        }
    if pending_imports is not None:
        _take_imports(pending_imports.result(), results)
    else:
        progress(f"import times: best of {plan.import_repeats} fresh interpreters")
        _take_imports(_measure_imports(plan.import_repeats), results)
    progress("hot-path layers in-process (no HTTP)")
    _run_layers(plan, results)
    progress("shared breaker state (bench/shared_state.py)")
    _run_shared_state(plan, results)
    progress("tracing off and on (bench/tracing_cost.py)")
    _run_tracing_cost(plan, results)
    results.load_after = load_average()
    results.duration_s = time.perf_counter() - began
    return results


def _start_peer_servers(
    installed: peer_run.Installed,
    results: Results,
    upstream_url: str,
    log_dir: Path,
    stack: ExitStack,
) -> list[Endpoint]:
    """LiteLLM's proxy and Portkey, started where installed; a failure is a skip."""
    endpoints = []
    env = child_environment(upstream_url)
    if installed.litellm is not None:
        config = peers.litellm_proxy_config(upstream_url, log_dir)
        try:
            server = peers.start_litellm_proxy(
                installed.litellm, config, free_port(), log_dir / "litellm_proxy.log", env
            )
        except peers.PeerUnavailable as exc:
            results.peers.skipped["litellm_proxy"] = str(exc)
        else:
            stack.callback(server.close)
            endpoints.append(peer_run.litellm_endpoint(server))
    if installed.portkey is not None:
        try:
            server = peers.start_portkey(
                installed.portkey, free_port(), log_dir / "portkey.log", env
            )
        except peers.PeerUnavailable as exc:
            results.peers.skipped["portkey"] = str(exc)
        else:
            stack.callback(server.close)
            endpoints.append(peer_run.portkey_endpoint(server, upstream_url))
    return endpoints


def _measure_servers(
    plan: Plan,
    results: Results,
    installed: peer_run.Installed,
    server: ServerProcess | None,
    upstream_url: str,
    log_dir: Path,
    progress: Callable[[str], None],
) -> None:
    """`gateway serve` and the peers' servers over HTTP: wrk, long streams, open streams."""
    unavailable = http_load.available()
    with ExitStack() as stack:
        endpoints = []
        if server is not None:
            endpoints.append(
                peer_run.serve_endpoint(
                    "serve", "gateway serve (one worker)", server.url, server.process.pid
                )
            )
        progress("starting the peers' servers")
        endpoints += _start_peer_servers(installed, results, upstream_url, log_dir, stack)
        env = child_environment(upstream_url)
        for endpoint in endpoints:
            if unavailable:
                results.peers.http[endpoint.name] = peer_run.HTTPRow(
                    endpoint.name, endpoint.label, skipped=unavailable
                )
            else:
                progress(f"wrk: {endpoint.label}")
                results.peers.http[endpoint.name] = peer_run.measure_http(endpoint, plan)
            progress(f"long streams: {endpoint.label}")
            results.peers.streams[endpoint.name] = peer_run.measure_streams(
                endpoint, plan, env, REPO
            )
        progress(f"memory: {plan.held_streams} open streams per server")
        try:
            # Its own process, started for this: an RSS not grown by the runs above, and room
            # for the held streams over the default connection limit.
            held = ServerProcess.start(
                upstream_url,
                log_dir,
                extra_env={"GATEWAY_MAX_CONNECTIONS": str(plan.held_streams + 200)},
                log_name="server-memory.log",
            )
        except (RuntimeError, OSError) as exc:
            results.peers.memory["serve"] = peer_run.MemoryRow(
                "serve", "gateway serve", skipped=f"could not start: {exc}"
            )
        else:
            stack.callback(held.close)
            fresh = peer_run.serve_endpoint(
                "serve", "gateway serve (one worker)", held.url, held.process.pid
            )
            peer_run.warm_streams(fresh, env, REPO)
            endpoints = [fresh, *endpoints[1:]] if server is not None else [fresh, *endpoints]
        for endpoint in endpoints:
            progress(f"memory: {endpoint.label}")
            results.peers.memory[endpoint.name] = peer_run.measure_memory(
                endpoint, plan.held_streams, env, REPO
            )


def write_json(results: Results, path: Path) -> None:
    """The raw numbers, for anyone who wants more than the report's tables."""
    from dataclasses import asdict

    data = asdict(results)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


class Progress:
    """Progress lines on stderr, each with the time since the run began."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self._stream = stream
        self._began = time.perf_counter()

    def __call__(self, message: str) -> None:
        self._stream.write(f"[bench {time.perf_counter() - self._began:6.1f} s] {message}\n")
        self._stream.flush()
