"""How much each measurement does: the full run and the `--quick` smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    """Each measurement is split into this many rounds, the scenarios taking turns each round,
    so that drift on a shared machine (another job, thermal throttling) hits them all alike."""
    sequential: int
    """Requests one after another, per scenario, over all rounds."""
    concurrent: int
    """Requests with `in_flight` outstanding at once, per scenario, over all rounds."""
    in_flight: int
    streams: int
    """Streamed requests one after another, for time to first token."""
    warmup: int
    """Requests (and a tenth as many streams) each client makes before it is measured."""
    failover: int
    """Requests per chain (with and without the open-breaker provider), over all rounds."""
    import_repeats: int
    """Fresh interpreters per import measurement; the best is reported."""
    layer_iterations: int
    """Calls per micro-benchmark repeat of a hot-path layer."""
    layer_repeats: int
    layer_http_requests: int
    """Requests per variant when the layers are added one at a time over HTTP."""
    wrk_warmup_s: int = 2
    """wrk's warm-up run per server, before its measured runs (seconds)."""
    wrk_latency_s: int = 5
    """wrk with one connection: p50 one request at a time (seconds)."""
    wrk_throughput_s: int = 10
    """wrk with `in_flight` connections: throughput (seconds)."""
    long_streams: int = 30
    """Long streams (500 chunks) one after another per server, for time to first token."""
    stream_load: int = 150
    """Long streams per server with `in_flight` at once, for chunks a second and CPU."""
    held_streams: int = 1000
    """Streams held open at once for the memory measurement."""
    peers: bool = True
    """Install and measure the peers (TensorZero, LiteLLM's proxy, Portkey)."""
    quick: bool = False
    overlap_imports: bool = False
    """Time imports while the clients start, rather than alone: shorter, but the clients'
    start-up then competes with the probes for the CPU (only for runs whose numbers do not
    matter)."""

    def per_round(self, total: int) -> int:
        return max(1, total // self.rounds)


FULL = Plan(
    rounds=10,
    sequential=2000,
    concurrent=5000,
    in_flight=50,
    streams=400,
    warmup=200,
    failover=2000,
    import_repeats=5,
    layer_iterations=2_000,
    layer_repeats=10,
    layer_http_requests=1000,
)

QUICK = Plan(
    rounds=2,
    sequential=20,
    concurrent=100,
    in_flight=50,
    streams=6,
    warmup=5,
    failover=20,
    import_repeats=1,
    layer_iterations=200,
    layer_repeats=2,
    layer_http_requests=50,
    wrk_warmup_s=1,
    wrk_latency_s=1,
    wrk_throughput_s=1,
    long_streams=2,
    stream_load=10,
    held_streams=20,
    peers=False,
    quick=True,
    overlap_imports=True,
)
