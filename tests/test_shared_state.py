"""Breaker state shared by every replica through a real redis-server (issue 6).

The first half drives `SharedBreaker`s of two `RedisState`s in this process (two replicas'
worth of state, each with its own connection) for the fine-grained rules. The second half runs
two real gateway processes (tests/shared_state_driver.py, each a Router from a policy with
`state.backend: redis`) against one FakeUpstream, and counts the calls that reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError
from redis_harness import RedisServer, free_port

from gateway import Router
from gateway._resilience import Admission, Breaker, TripReason
from gateway._secrets import mask_url
from gateway.errors import ErrorKind
from gateway.policy import Policy, parse_policy
from gateway.state import open_state_backend
from gateway.state.memory import MemoryState
from gateway.state.redis import RedisState, breaker_key, lease_key, window_key
from gateway.state.shared_breaker import SharedBreaker
from gateway.testing import FakeUpstream, Fault

DRIVER = Path(__file__).with_name("shared_state_driver.py")
PRIMARY, BACKUP = "primary-model", "backup-model"
FAST_REFRESH_S = 0.05

POLICY = """
version: 1
defaults:
  timeout_s: 10
  retry: {{attempts: 1}}
  breaker: {{fail_max: {fail_max}, reset_timeout_s: {reset_s}, success_threshold: {successes},
            trip_on: [server_error, timeout, connection]{rate}}}
providers:
  primary: {{type: openai, model: {primary}, base_url: "{upstream}/v1", api_key: test-key}}
  backup: {{type: openai, model: {backup}, base_url: "{upstream}/v1", api_key: test-key}}
tasks:
  default: {{chain: [primary, backup]}}
state: {{backend: redis, url: "{redis}", namespace: "{namespace}"}}
"""


def policy_text(
    redis_url: str,
    namespace: str,
    *,
    upstream: str = "http://127.0.0.1:9",
    fail_max: int = 3,
    reset_s: float = 30,
    successes: int = 1,
    failure_rate: str = "null",
) -> str:
    """`failure_rate` is the YAML of the breaker's rate rule (null: consecutive only; "": the
    default rule)."""
    return POLICY.format(
        redis=redis_url,
        namespace=namespace,
        upstream=upstream,
        fail_max=fail_max,
        reset_s=reset_s,
        successes=successes,
        rate=f", failure_rate: {failure_rate}" if failure_rate else "",
        primary=PRIMARY,
        backup=BACKUP,
    )


def make_policy(redis_url: str, namespace: str, **kwargs: Any) -> Policy:
    return parse_policy(policy_text(redis_url, namespace, **kwargs))


async def eventually(
    check: Callable[[], bool], *, within_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll `check` until it holds; generous bound, for a shared and noisy machine."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within_s}s")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


class Replica:
    """The shared state of one replica, with a breaker for the provider `primary`."""

    def __init__(self, policy: Policy, **state_options: Any) -> None:
        self.errors: list[str] = []
        self.changes: list[str] = []
        self.trips: list[TripReason] = []
        options = {"refresh_interval_s": FAST_REFRESH_S, **state_options}
        self.state = RedisState(policy.state, on_error=self.errors.append, **options)
        build = self.state.breaker_factory(
            lambda _name, state: self.changes.append(state),
            on_trip=lambda _name, reason: self.trips.append(reason),
        )
        breaker = build(policy.providers["primary"])
        assert isinstance(breaker, SharedBreaker)
        self.breaker = breaker

    def fail(self, times: int = 1) -> None:
        for _ in range(times):
            self.breaker.failure(self.breaker.admit(), ErrorKind.SERVER_ERROR)

    def succeed(self, times: int = 1) -> None:
        for _ in range(times):
            self.breaker.success(self.breaker.admit())

    async def connected(self) -> None:
        self.breaker.admit()  # the first admit starts the background task
        await eventually(lambda: self.state.round_trips > 0, what="a first round trip")
        assert self.state.shared and self.state.errors == 0


@pytest.fixture
async def replicas(
    redis_server: RedisServer, namespace: str
) -> AsyncIterator[Callable[..., Awaitable[tuple[Replica, Replica]]]]:
    made: list[Replica] = []

    async def make(**policy_options: Any) -> tuple[Replica, Replica]:
        policy = make_policy(redis_server.url, namespace, **policy_options)
        pair = Replica(policy), Replica(policy)
        made.extend(pair)
        for replica in pair:
            await replica.connected()
        return pair

    yield make
    for replica in made:
        await replica.state.aclose()


# --- the shared rules, in one process ----------------------------------------------------------


async def test_failures_through_one_replica_open_the_breaker_in_the_other(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
    redis_server: RedisServer,
    namespace: str,
) -> None:
    a, b = await replicas(fail_max=3)
    a.fail(2)
    await eventually(lambda: b.breaker.failure_count == 2, what="B sees A's two failures")
    assert b.breaker.state == "closed"
    assert b.breaker.admit() is Admission.CALL

    a.fail()
    await eventually(lambda: b.breaker.state == "open", what="B sees it open")
    assert b.breaker.admit() is Admission.REJECT
    assert b.changes[-1] == "open"  # B's listeners (metrics, logs) heard of it too
    record = redis_server.client().hgetall(breaker_key(namespace, "primary"))
    assert record["state"] == "open"
    assert record["failures"] == "3"


async def test_a_success_resets_the_shared_failure_count(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
) -> None:
    a, b = await replicas(fail_max=3)
    a.fail(2)
    await eventually(lambda: b.breaker.failure_count == 2, what="B sees two failures")
    b.breaker.success(b.breaker.admit())
    await eventually(lambda: a.breaker.failure_count == 0, what="A sees the reset")
    a.fail(2)  # two more after the reset do not reach fail_max=3
    await eventually(lambda: b.breaker.failure_count == 2, what="B sees the new failures")
    assert a.breaker.state == b.breaker.state == "closed"


async def test_half_open_lets_exactly_one_replica_probe(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
) -> None:
    a, b = await replicas(fail_max=1, reset_s=0.3)
    a.fail()
    await eventually(lambda: b.breaker.state == "open", what="B sees it open")

    # Both replicas keep asking while the breaker goes half-open; one probe in all.
    probes: list[tuple[Replica, Admission]] = []
    until = time.monotonic() + 1.0
    while time.monotonic() < until:
        for replica in (a, b):
            admission = replica.breaker.admit()
            if admission is Admission.PROBE:
                probes.append((replica, admission))
            else:
                assert admission is Admission.REJECT
        await asyncio.sleep(0.01)
    assert len(probes) == 1

    # The probe fails: open again for a new period, then again exactly one probe.
    prober, admission = probes[0]
    prober.breaker.failure(admission, ErrorKind.SERVER_ERROR)
    await eventually(lambda: a.breaker.state == b.breaker.state == "open", what="reopened")
    second: list[tuple[Replica, Admission]] = []
    until = time.monotonic() + 1.0
    while time.monotonic() < until:
        for replica in (a, b):
            admission = replica.breaker.admit()
            if admission is Admission.PROBE:
                second.append((replica, admission))
        await asyncio.sleep(0.01)
    assert len(second) == 1

    prober, admission = second[0]
    prober.breaker.success(admission)
    await eventually(lambda: a.breaker.state == b.breaker.state == "closed", what="closed")
    assert a.breaker.admit() is Admission.CALL
    assert b.breaker.admit() is Admission.CALL


async def test_success_threshold_counts_probes_from_every_replica(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
) -> None:
    a, b = await replicas(fail_max=1, reset_s=0.2, successes=2)
    a.fail()
    await eventually(lambda: b.breaker.state == "open", what="B sees it open")
    closed_after = 0
    deadline = time.monotonic() + 5
    while a.breaker.state != "closed" or b.breaker.state != "closed":
        assert time.monotonic() < deadline, "two successful probes did not close it"
        for replica in (a, b):
            admission = replica.breaker.admit()
            if admission is Admission.PROBE:
                closed_after += 1
                replica.breaker.success(admission)
        await asyncio.sleep(0.01)
    assert closed_after == 2


async def test_an_unused_probe_lease_is_given_back(
    redis_server: RedisServer, namespace: str
) -> None:
    policy = make_policy(redis_server.url, namespace, fail_max=1, reset_s=0.2)
    idle, busy = Replica(policy, grant_hold_s=0.3), Replica(policy, grant_hold_s=0.3)
    try:
        await idle.connected()
        await busy.connected()
        idle.fail()
        await eventually(lambda: busy.breaker.state == "open", what="busy sees it open")
        # `idle` asks for a probe once and then gets no more traffic for this provider.
        assert idle.breaker.admit() is Admission.REJECT
        await eventually(
            lambda: redis_server.client().get(lease_key(namespace, "primary")) is not None,
            what="a lease was handed out",
        )
        got: list[Admission] = []

        def busy_probes() -> bool:
            got.append(busy.breaker.admit())
            return got[-1] is Admission.PROBE

        await eventually(busy_probes, what="the busy replica gets the probe")
    finally:
        await idle.state.aclose()
        await busy.state.aclose()


async def test_concurrent_failures_from_two_replicas_are_counted_exactly(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
    redis_server: RedisServer,
    namespace: str,
) -> None:
    a, b = await replicas(fail_max=100_000)  # and no rate rule: the count is the point here
    per_replica = 500

    async def hammer(replica: Replica) -> None:
        for i in range(per_replica):
            replica.fail()
            if i % 25 == 0:
                await asyncio.sleep(0)  # let the background tasks send while failures arrive

    await asyncio.gather(hammer(a), hammer(b))
    client = redis_server.client()
    key = breaker_key(namespace, "primary")
    await eventually(
        lambda: client.hget(key, "failures") == str(2 * per_replica), what="all failures counted"
    )
    await asyncio.sleep(0.2)
    assert client.hget(key, "failures") == str(2 * per_replica)
    assert a.errors == b.errors == []


# --- the failure-rate window, shared -----------------------------------------------------------

RATE = "{window_s: 30, min_calls: 10, threshold: 0.5}"


def window_totals(client: Any, namespace: str) -> tuple[int, int]:
    """(calls, failures) in the shared window, from Redis itself; (-1, -1) if malformed."""
    try:
        fields = client.hgetall(window_key(namespace, "primary"))
        calls = sum(int(v) for k, v in fields.items() if k.startswith("c:"))
        return calls, sum(int(v) for k, v in fields.items() if k.startswith("f:"))
    except (ValueError, ResponseError):
        return -1, -1


async def test_two_replicas_fill_one_rate_window(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """Each replica alone sees 5 calls (too few to judge); together 10, 6 failed: open. The
    replica whose failure opened it reports the one trip, and both see it open."""
    a, b = await replicas(fail_max=100, failure_rate=RATE)
    client = redis_server.client()
    a.succeed(2)
    a.fail(3)
    await eventually(lambda: window_totals(client, namespace) == (5, 3), what="A's 5 calls")
    assert a.breaker.state == b.breaker.state == "closed"
    b.succeed(2)
    b.fail(3)
    await eventually(lambda: a.breaker.state == b.breaker.state == "open", what="both open")
    assert a.trips == [] and b.trips == [TripReason.FAILURE_RATE]
    assert b.breaker.last_trip is TripReason.FAILURE_RATE
    # The next closed period starts from an empty window.
    assert client.exists(window_key(namespace, "primary")) == 0
    assert client.hget(breaker_key(namespace, "primary"), "state") == "open"


async def test_healthy_traffic_reaches_the_window_in_tallies_not_per_request(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """A's successes queue nothing on the request path; its background task hands them over
    in a TALLY per turn. They count for B's failures: 10 failed of 22 is under half."""
    a, b = await replicas(fail_max=100, failure_rate=RATE)
    client = redis_server.client()
    a.succeed(12)
    assert a.state._pending == []  # nothing queued, nobody woken by healthy requests
    await eventually(lambda: window_totals(client, namespace) == (12, 0), what="A's tally")
    b.fail(10)
    await eventually(lambda: window_totals(client, namespace) == (22, 10), what="B's failures")
    await asyncio.sleep(0.2)
    assert a.breaker.state == b.breaker.state == "closed"
    assert a.trips == b.trips == []
    b.fail(2)  # 12 of 24: half
    await eventually(lambda: a.breaker.state == b.breaker.state == "open", what="both open")
    assert b.trips == [TripReason.FAILURE_RATE]


async def test_merged_failures_keep_the_successes_each_carried(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """Queued failures of one replica go in one script call; the successes seen before each
    of them still all reach the window."""
    a, _b = await replicas(fail_max=100, failure_rate=RATE)
    a.succeed(2)
    a.fail()
    a.succeed(3)  # the view still says 0 failures: nothing queued, carried by the next failure
    a.fail()
    assert [(op.kind.value, op.ok, op.count) for op in a.state._pending] == [
        ("failure", 2, 1),
        ("failure", 3, 1),
    ]
    client = redis_server.client()
    await eventually(lambda: window_totals(client, namespace) == (7, 2), what="all 7 calls")


async def test_old_buckets_leave_the_shared_window(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """A 1 s window (ten buckets of 100 ms on Redis's clock): failures older than that stop
    counting, and their buckets are deleted."""
    a, b = await replicas(fail_max=100, failure_rate="{window_s: 1, min_calls: 6, threshold: 0.5}")
    client = redis_server.client()
    a.fail(5)
    await eventually(lambda: window_totals(client, namespace) == (5, 5), what="A's failures")
    await asyncio.sleep(1.2)
    b.fail(1)  # 6 of 6 had the first five still counted
    await eventually(lambda: window_totals(client, namespace) == (1, 1), what="old ones gone")
    await asyncio.sleep(0.2)
    assert a.breaker.state == b.breaker.state == "closed"
    assert a.trips == b.trips == []


async def test_a_malformed_window_is_rewritten_by_the_next_outcome(
    replicas: Callable[..., Awaitable[tuple[Replica, Replica]]],
    redis_server: RedisServer,
    namespace: str,
) -> None:
    a, _b = await replicas(fail_max=100, failure_rate=RATE)
    client = redis_server.client()
    client.hset(window_key(namespace, "primary"), mapping={"c:oops": "x", "f:1": "-3"})
    a.fail(1)
    await eventually(lambda: window_totals(client, namespace) == (1, 1), what="rewritten")
    client.delete(window_key(namespace, "primary"))
    client.set(window_key(namespace, "primary"), "not a hash")
    a.fail(1)
    await eventually(lambda: window_totals(client, namespace) == (1, 1), what="replaced")
    assert a.breaker.state == "closed"
    assert a.state.shared
    assert a.errors == ["redis", "redis"]  # each turn that met a malformed window is counted


# --- Redis out of reach ------------------------------------------------------------------------


async def test_unreachable_redis_leaves_local_breakers_working(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    replica = Replica(make_policy(url, namespace, fail_max=3), command_timeout_s=0.2)
    caplog.set_level(logging.WARNING, logger="gateway")
    try:
        replica.breaker.admit()
        await eventually(lambda: len(replica.errors) >= 3, what="three failed reconnects")
        assert not replica.state.shared
        assert replica.errors == ["redis"] * len(replica.errors)

        replica.fail(3)  # the local state machine takes over
        assert replica.breaker.state == "open"
        assert replica.breaker.admit() is Admission.REJECT
    finally:
        await replica.state.aclose()
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, "one outage is logged once"
    assert "hunter2-secret" not in caplog.text
    assert "hunter2-secret" not in repr(replica.state)
    assert mask_url(url) in warnings[0].getMessage()


async def test_replicas_rejoin_shared_state_when_redis_returns(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer()  # chosen port, not started yet
    policy = make_policy(server.url, namespace, fail_max=2)
    a, b = Replica(policy, command_timeout_s=0.2), Replica(policy, command_timeout_s=0.2)
    caplog.set_level(logging.WARNING, logger="gateway")
    try:
        for replica in (a, b):
            replica.breaker.admit()
        await eventually(lambda: bool(a.errors and b.errors), what="both notice Redis is away")
        a.fail()  # counted locally only
        assert a.breaker.failure_count == 1

        server.start()
        await eventually(lambda: a.state.shared and b.state.shared, what="both rejoin")
        assert a.breaker.failure_count == 0  # the shared record (empty) replaced local state
        a.fail(2)
        await eventually(lambda: b.breaker.state == "open", what="B sees A's breaker open")
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        await a.state.aclose()
        await b.state.aclose()
        server.close()


@pytest.mark.parametrize("failure_rate", ["null", "{window_s: 30, min_calls: 10, threshold: 0.5}"])
async def test_a_silent_redis_never_delays_a_request(
    upstream: FakeUpstream, namespace: str, failure_rate: str
) -> None:
    """A Redis that accepts connections and never answers: requests are served at once (with
    and without the rate rule, whose window then lives in the local breaker)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    policy = make_policy(
        f"redis://127.0.0.1:{port}/0", namespace, upstream=upstream.url, failure_rate=failure_rate
    )
    errors: list[str] = []
    state = RedisState(policy.state, on_error=errors.append, command_timeout_s=2.0)
    upstream.fail_always(PRIMARY, Fault.server_error())
    router = Router(policy, hooks=[], state=state, watch_interval_s=None)
    hello = [{"role": "user", "content": "hi"}]
    try:
        served = [(await router.generate(hello)).provider for _ in range(6)]
        assert served == ["backup"] * 6
        # Redis has not answered yet (it never will): no request waited for it.
        assert errors == []
        assert state.shared

        await eventually(lambda: errors == ["redis"], what="the timeout is reported")
        # The failures Redis never took went to the local breaker, which is open now.
        assert router.candidates["primary"].breaker.state == "open"
        upstream.reset_counts()
        served = [(await router.generate(hello)).provider for _ in range(3)]
        assert served == ["backup"] * 3
        assert upstream.count(PRIMARY) == 0
    finally:
        await router.aclose()
        silent.close()
        for writer in held:
            writer.close()


TWO_IN_THREE = (Fault.server_error(), Fault.server_error(), Fault.ok())


async def test_with_redis_down_the_rate_rule_trips_locally_and_no_request_fails(
    upstream: FakeUpstream, namespace: str
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    policy = make_policy(url, namespace, upstream=upstream.url, fail_max=5, failure_rate=RATE)
    errors: list[str] = []
    state = RedisState(policy.state, on_error=errors.append, refresh_interval_s=FAST_REFRESH_S)
    router = Router(policy, hooks=[], state=state, watch_interval_s=None)
    try:
        router.candidates["primary"].breaker.admit()  # starts the background task
        await eventually(lambda: not state.shared, what="the outage is noticed")
        upstream.script(PRIMARY, *(TWO_IN_THREE * 10))
        hello = [{"role": "user", "content": "hi"}]
        served = [(await router.generate(hello)).provider for _ in range(30)]
        assert served.count("primary") == 3  # the OKs among its first 10 calls
        assert served.count("backup") == 27
        assert upstream.count(PRIMARY) == 10  # opened on the rate at its 10th call
        breaker = router.candidates["primary"].breaker
        assert breaker.state == "open"
        assert breaker.last_trip is TripReason.FAILURE_RATE
        assert errors  # the outage was reported, not hidden
    finally:
        await router.aclose()


# --- wiring ------------------------------------------------------------------------------------


def test_memory_backend_builds_plain_local_breakers() -> None:
    policy = parse_policy(
        "version: 1\nproviders:\n  p: {type: openai, model: m, api_key: k}\n"
        "tasks:\n  default: {chain: [p]}\n"
    )
    backend = open_state_backend(policy.state)
    assert isinstance(backend, MemoryState)
    breaker = backend.breaker_factory()(policy.providers["p"])
    assert type(breaker) is Breaker


async def test_router_builds_shared_breakers_from_the_policy(
    redis_server: RedisServer, namespace: str
) -> None:
    policy = make_policy(redis_server.url, namespace)
    router = Router(policy, hooks=[], watch_interval_s=None)
    try:
        assert all(isinstance(c.breaker, SharedBreaker) for c in router.candidates.values())
    finally:
        await router.aclose()


async def test_a_reloaded_provider_keeps_its_shared_breaker(
    redis_server: RedisServer, namespace: str
) -> None:
    policy = make_policy(redis_server.url, namespace, fail_max=2)
    router = Router(policy, hooks=[], watch_interval_s=None)
    try:
        old = router.candidates["primary"].breaker
        for _ in range(2):
            old.failure(old.admit(), ErrorKind.SERVER_ERROR)
        await eventually(lambda: old.state == "open", what="the breaker opens")
        # A changed timeout makes a new client and breaker; the shared record stays.
        await router.apply_policy(
            parse_policy(policy_text(redis_server.url, namespace, fail_max=2, reset_s=31))
        )
        new = router.candidates["primary"].breaker
        assert new is not old
        new.admit()
        await eventually(lambda: new.state == "open", what="the new breaker adopts it")
    finally:
        await router.aclose()


# --- two gateway processes ---------------------------------------------------------------------


class Gateway:
    """A gateway process (tests/shared_state_driver.py) and its JSON-lines command channel."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, policy_path: Path) -> Gateway:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(DRIVER),
            str(policy_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(DRIVER.parent.parent),
        )
        gateway = cls(process)
        assert (await gateway._read()) == {"ready": True}
        return gateway

    async def _read(self) -> Any:
        assert self.process.stdout is not None
        async with asyncio.timeout(60):
            line = await self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the gateway process exited ({await self.process.wait()})")
        return json.loads(line)

    async def command(self, op: str, **args: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await self.process.stdin.drain()
        return await self._read()

    async def breaker(self, provider: str = "primary") -> str:
        status = await self.command("status")
        return str(status["breakers"][provider]["state"])

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(AssertionError, ConnectionError):
                await self.command("quit")
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def wait_for_state(gateway: Gateway, state: str, *, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while (seen := await gateway.breaker()) != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"breaker is {seen}, not {state}, after {within_s}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def gateways(
    upstream: FakeUpstream, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[tuple[Gateway, Gateway]]]]:
    started: list[Gateway] = []

    async def start(server: RedisServer = redis_server, **policy: Any) -> tuple[Gateway, Gateway]:
        path = tmp_path / "routing.yaml"
        path.write_text(policy_text(server.url, namespace, upstream=upstream.url, **policy))
        pair = await asyncio.gather(Gateway.start(path), Gateway.start(path))
        started.extend(pair)
        return pair[0], pair[1]

    yield start
    await asyncio.gather(*(g.close() for g in started))


@pytest.mark.slow
async def test_two_processes_one_opens_the_other_skips_without_a_call(
    gateways: Callable[..., Awaitable[tuple[Gateway, Gateway]]], upstream: FakeUpstream
) -> None:
    a, b = await gateways(fail_max=3)
    upstream.fail_always(PRIMARY, Fault.server_error())
    sent = await a.command("send", n=3)
    assert sent["served"] == {"backup": 3}
    assert upstream.count(PRIMARY) == 3
    # A's local view follows Redis's reply to its third failure: under load that takes a moment.
    await wait_for_state(a, "open")
    await wait_for_state(b, "open")
    sent = await b.command("send", n=10, concurrency=2)
    assert sent["served"] == {"backup": 10}
    assert "primary" not in sent["calls"]
    assert upstream.count(PRIMARY) == 3  # B never called the dead provider


@pytest.mark.slow
async def test_two_processes_probe_once_then_both_recover(
    gateways: Callable[..., Awaitable[tuple[Gateway, Gateway]]], upstream: FakeUpstream
) -> None:
    a, b = await gateways(fail_max=2, reset_s=1.0)
    upstream.fail_always(PRIMARY, Fault.server_error())
    await a.command("send", n=2)
    await wait_for_state(b, "open")

    # Recovered, but the first answer (the probe) is slow, so the half-open state lasts.
    upstream.heal(PRIMARY)
    upstream.script(PRIMARY, Fault.hang(4.0))
    upstream.reset_counts()
    both = asyncio.gather(
        a.command("traffic", seconds=6.0, concurrency=2),
        b.command("traffic", seconds=6.0, concurrency=2),
    )
    await eventually(lambda: upstream.count(PRIMARY) >= 1, within_s=5.0, what="a probe")
    await asyncio.sleep(1.5)  # well inside the probe's 4 s: nobody else may call
    assert upstream.count(PRIMARY) == 1
    traffic_a, traffic_b = await both
    assert traffic_a["failed"] == traffic_b["failed"] == {}

    # The probe succeeded: the breaker is closed for both, and both use the primary again.
    await wait_for_state(a, "closed", within_s=10)
    await wait_for_state(b, "closed", within_s=10)
    for gateway in (a, b):
        sent = await gateway.command("send", n=3)
        assert sent["served"] == {"primary": 3}


@pytest.mark.slow
async def test_killing_redis_loses_no_request_and_both_rejoin(
    gateways: Callable[..., Awaitable[tuple[Gateway, Gateway]]],
    upstream: FakeUpstream,
    namespace: str,
) -> None:
    server = RedisServer().start()
    try:
        a, b = await gateways(server=server, fail_max=3)
        both = asyncio.gather(
            a.command("traffic", seconds=3.0, concurrency=2),
            b.command("traffic", seconds=3.0, concurrency=2),
        )
        await asyncio.sleep(0.8)
        server.kill()
        await asyncio.sleep(1.2)
        server.start()  # same port, empty
        traffic_a, traffic_b = await both
        for traffic in (traffic_a, traffic_b):
            assert traffic["failed"] == {}
            assert sum(traffic["served"].values()) > 20

        for gateway in (a, b):
            status = await gateway.command("status")
            assert status["backend_errors"] >= 1
        deadline = time.monotonic() + 10
        while not all([(await g.command("status"))["shared"] for g in (a, b)]):
            assert time.monotonic() < deadline, "the gateways did not rejoin shared state"
            await asyncio.sleep(0.1)

        # Shared again: failures through A open the breaker B uses.
        upstream.fail_always(PRIMARY, Fault.server_error())
        upstream.reset_counts()
        await a.command("send", n=3)
        await wait_for_state(b, "open")
        sent = await b.command("send", n=5)
        assert sent["served"] == {"backup": 5}
        assert upstream.count(PRIMARY) == 3
        record = server.client().hgetall(breaker_key(namespace, "primary"))
        assert record["state"] == "open"
    finally:
        server.close()


@pytest.mark.slow
async def test_two_processes_count_concurrent_failures_exactly(
    gateways: Callable[..., Awaitable[tuple[Gateway, Gateway]]],
    upstream: FakeUpstream,
    redis_server: RedisServer,
    namespace: str,
) -> None:
    a, b = await gateways(fail_max=100_000)
    upstream.fail_always(PRIMARY, Fault.server_error())
    per_process = 150
    sent = await asyncio.gather(
        a.command("send", n=per_process, concurrency=25),
        b.command("send", n=per_process, concurrency=25),
    )
    for summary in sent:
        assert summary["calls"]["primary"] == per_process
        assert summary["served"] == {"backup": per_process}
    assert upstream.count(PRIMARY) == 2 * per_process
    client = redis_server.client()
    key = breaker_key(namespace, "primary")
    await eventually(
        lambda: client.hget(key, "failures") == str(2 * per_process), what="all counted"
    )
    await asyncio.sleep(0.3)
    assert client.hget(key, "failures") == str(2 * per_process)


@pytest.mark.slow
async def test_two_processes_share_one_rate_window(
    gateways: Callable[..., Awaitable[tuple[Gateway, Gateway]]],
    upstream: FakeUpstream,
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """A provider failing 2 calls in 3. Each process makes 6 calls, too few for min_calls 10
    alone; in the window both fill in Redis, 8 of 12 failed: it opens, for both."""
    a, b = await gateways(fail_max=5, failure_rate=RATE)
    upstream.script(PRIMARY, *(TWO_IN_THREE * 10))
    sent = await a.command("send", n=6)
    assert sent["calls"] == {"primary": 6, "backup": 4}
    client = redis_server.client()
    await eventually(lambda: window_totals(client, namespace) == (6, 4), what="A's calls")
    assert await a.breaker() == await b.breaker() == "closed"

    sent = await b.command("send", n=6)
    await wait_for_state(a, "open")
    await wait_for_state(b, "open")
    # B's view opens with Redis's reply to its 4th or 5th call (the 10th or 11th in all).
    assert 4 <= sent["calls"]["primary"] <= 6
    status_a, status_b = await a.command("status"), await b.command("status")
    trips = [s["breakers"]["primary"]["last_trip"] for s in (status_a, status_b)]
    assert trips == [None, "failure_rate"]  # B's failure opened it; A only sees it open
    assert client.hget(breaker_key(namespace, "primary"), "state") == "open"

    before = upstream.count(PRIMARY)
    for gateway in (a, b):
        sent = await gateway.command("send", n=5)
        assert sent["served"] == {"backup": 5}
    assert upstream.count(PRIMARY) == before


@pytest.mark.slow
async def test_killing_redis_during_a_brownout_loses_no_request(
    gateways: Callable[..., Awaitable[tuple[Gateway, Gateway]]],
    upstream: FakeUpstream,
) -> None:
    """The rate rule on, the primary failing 2 calls in 3, and Redis killed and restarted (empty)
    under traffic: no request fails, the breaker trips on the rate, and both rejoin."""
    server = RedisServer().start()
    try:
        a, b = await gateways(server=server, fail_max=5, failure_rate=RATE, reset_s=0.5)
        upstream.script(PRIMARY, *(TWO_IN_THREE * 2000))
        both = asyncio.gather(
            a.command("traffic", seconds=3.0, concurrency=2),
            b.command("traffic", seconds=3.0, concurrency=2),
        )
        await asyncio.sleep(0.8)
        server.kill()
        await asyncio.sleep(1.2)
        server.start()  # same port, empty
        traffic_a, traffic_b = await both
        for traffic in (traffic_a, traffic_b):
            assert traffic["failed"] == {}
            assert sum(traffic["served"].values()) > 20
        statuses = [await g.command("status") for g in (a, b)]
        # Every trip, not the last: a breaker cycling open and half-open for 3 s may have last
        # opened on a failed probe.
        assert any(["primary", "failure_rate"] in s["trips"] for s in statuses)
        assert all(s["backend_errors"] >= 1 for s in statuses)
        deadline = time.monotonic() + 10
        while not all([(await g.command("status"))["shared"] for g in (a, b)]):
            assert time.monotonic() < deadline, "the gateways did not rejoin shared state"
            await asyncio.sleep(0.1)
    finally:
        server.close()
