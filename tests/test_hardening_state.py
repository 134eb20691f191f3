"""A malformed breaker record in Redis is isolated to its own provider (issue 16).

Someone (or something) writes a value the gateway never writes into one provider's record or
probe lease. That provider falls back to each replica's local breaker, the record is
overwritten by the next write, each replica logs it once (with the key and the masked URL)
and counts it, and every other provider's breaker stays shared. Against a real redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis_harness import RedisServer
from test_shared_state import FAST_REFRESH_S, PRIMARY, eventually, make_policy

from gateway import Router
from gateway._resilience import Admission
from gateway._secrets import mask_url
from gateway.errors import ErrorKind
from gateway.metrics import GatewayMetrics
from gateway.policy import Policy
from gateway.state.redis import RedisState, breaker_key, lease_key
from gateway.state.shared_breaker import SharedBreaker
from gateway.testing import FakeUpstream, Fault

PASSWORD = "hunter2-record-secret"
FRESH_AFTER_ONE_FAILURE = {"state": "closed", "failures": "1", "successes": "0", "opened_at": "0"}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        # A user with a password, so that the URL the gateway logs has a secret to hide.
        server.client().acl_setuser(
            "gateway", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], categories=["+@all"]
        )
        yield server


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def url_of(server: RedisServer) -> str:
    return f"redis://gateway:{PASSWORD}@127.0.0.1:{server.port}/0"


class Replica:
    """One replica's shared state, with breakers for both providers, `primary` and `backup`."""

    def __init__(self, policy: Policy) -> None:
        self.errors: list[str] = []
        self.state = RedisState(
            policy.state, on_error=self.errors.append, refresh_interval_s=FAST_REFRESH_S
        )
        build = self.state.breaker_factory()
        self.breakers: dict[str, SharedBreaker] = {}
        for name in ("primary", "backup"):
            breaker = build(policy.providers[name])
            assert isinstance(breaker, SharedBreaker)
            self.breakers[name] = breaker

    def fail(self, provider: str, times: int = 1) -> None:
        breaker = self.breakers[provider]
        for _ in range(times):
            breaker.failure(breaker.admit(), ErrorKind.SERVER_ERROR)

    async def refreshes(self, count: int) -> None:
        """Wait for `count` more round trips (each refreshes every breaker)."""
        until = self.state.round_trips + count
        await eventually(lambda: self.state.round_trips >= until, what=f"{count} refreshes")


@pytest.fixture
async def pair(redis_server: RedisServer, namespace: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[Replica] = []

    async def make(**policy_options: Any) -> tuple[Replica, Replica]:
        policy = make_policy(url_of(redis_server), namespace, **policy_options)
        a, b = Replica(policy), Replica(policy)
        made.extend((a, b))
        for replica in (a, b):
            replica.breakers["primary"].admit()  # starts the background task
            await eventually(lambda r=replica: r.state.round_trips > 0, what="connected")
            assert replica.state.shared and replica.errors == []
        return a, b

    yield make
    for replica in made:
        await replica.state.aclose()


def lines_naming(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_a_malformed_state_leaves_every_other_provider_shared(
    pair: Callable[..., Any],
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    a, b = await pair(fail_max=3)
    client = redis_server.client()
    key = breaker_key(namespace, "backup")
    client.hset(key, "state", "banana")
    await a.refreshes(5)
    await b.refreshes(5)

    # The other provider is still shared: failures through A open B's breaker.
    a.fail("primary", 3)
    await eventually(lambda: b.breakers["primary"].state == "open", what="B sees primary open")
    assert a.state.shared and b.state.shared

    # The malformed one falls back to each replica's local breaker, which still admits.
    assert b.breakers["backup"].admit() is Admission.CALL
    # Counted (every refresh that could not read it), logged once per replica, no traceback.
    assert a.errors and b.errors and set(a.errors + b.errors) == {"redis"}
    warned = lines_naming(caplog, key)
    assert len(warned) == 2, [r.getMessage() for r in warned]
    assert all(mask_url(url_of(redis_server)) in r.getMessage() for r in warned)
    assert all(r.exc_info is None for r in caplog.records)
    assert PASSWORD not in caplog.text

    # The next write overwrites it; both replicas share that provider's breaker again.
    a.fail("backup")
    await eventually(
        lambda: client.hgetall(key) == FRESH_AFTER_ONE_FAILURE, what="the record rewritten"
    )
    await eventually(lambda: b.breakers["backup"].failure_count == 1, what="B reads it again")
    a.fail("backup", 2)
    await eventually(lambda: b.breakers["backup"].state == "open", what="B sees backup open")
    errors_then = len(b.errors)
    await b.refreshes(5)
    assert len(b.errors) == errors_then, "a repaired record is no longer counted"
    assert len(lines_naming(caplog, key)) <= 4  # at most once more each: "usable again"
    assert PASSWORD not in caplog.text


def far_future_ms() -> str:
    return str(int((time.time() + 10 * 365 * 86400) * 1000))


MALFORMED = {
    "state banana": {"state": "banana"},
    "state only": None,  # the record is `state open` and nothing else
    "failures not a number": {"failures": "many"},
    "failures negative": {"failures": "-5"},
    "failures fractional": {"failures": "1.5"},
    "failures inf": {"failures": "inf"},
    "failures nan": {"failures": "nan"},
    "failures huge": {"failures": "1e400"},
    "failures too many digits": {"failures": "99999999999999999999"},
    "successes negative": {"successes": "-1"},
    "opened_at not a number": {"state": "open", "opened_at": "yesterday"},
    "opened_at negative": {"state": "open", "opened_at": "-1"},
    "opened_at in ten years": {"state": "open", "opened_at": far_future_ms()},
}


@pytest.mark.parametrize("fields", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_each_malformed_field_is_isolated_and_overwritten_by_the_next_write(
    pair: Callable[..., Any],
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    fields: dict[str, str] | None,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway")
    a, b = await pair(fail_max=3)
    client = redis_server.client()
    key = breaker_key(namespace, "backup")
    record = {"state": "closed", "failures": "1", "successes": "0", "opened_at": "0"}
    if fields is None:
        client.hset(key, "state", "open")
    else:
        client.hset(key, mapping={**record, **fields})
    await eventually(lambda: bool(a.errors and b.errors), what="both replicas count it")
    await b.refreshes(5)

    assert b.state.shared
    # Never read as it stands (an open breaker that never reopens, a count that never
    # reaches fail_max): the replica's own breaker decides, from the last good view.
    assert b.breakers["backup"].admit() is Admission.CALL
    assert len(lines_naming(caplog, key)) == 2  # once per replica, not once per refresh

    a.fail("backup")
    await eventually(
        lambda: client.hgetall(key) == FRESH_AFTER_ONE_FAILURE, what="the record rewritten"
    )
    await eventually(lambda: b.breakers["backup"].failure_count == 1, what="B reads it again")
    a.fail("primary", 3)
    await eventually(lambda: b.breakers["primary"].state == "open", what="B sees primary open")


@pytest.mark.parametrize("garbage", ["no expiry", "not a token", "wrong type"])
async def test_garbage_in_the_probe_lease_does_not_stop_probing(
    pair: Callable[..., Any],
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    garbage: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway")
    a, b = await pair(fail_max=1, reset_s=0.2)
    client = redis_server.client()
    lease = lease_key(namespace, "primary")
    # Half-open since an hour ago, with a lease no replica holds and none can take.
    opened_at = int((time.time() - 3600) * 1000)
    client.hset(
        breaker_key(namespace, "primary"),
        mapping={"state": "half_open", "failures": "1", "successes": "0", "opened_at": opened_at},
    )
    if garbage == "no expiry":
        client.set(lease, uuid.uuid4().hex)
    elif garbage == "not a token":
        client.set(lease, "banana", ex=86400)
    else:
        client.rpush(lease, "banana")
    await eventually(
        lambda: a.breakers["primary"].state == b.breakers["primary"].state == "half_open",
        what="both see it half-open",
    )

    probes: list[tuple[Replica, Admission]] = []

    def probed() -> bool:
        for replica in (a, b):
            admission = replica.breakers["primary"].admit()
            if admission is Admission.PROBE:
                probes.append((replica, admission))
        return bool(probes)

    await eventually(probed, what="a probe")
    prober, admission = probes[0]
    prober.breakers["primary"].success(admission)
    await eventually(
        lambda: a.breakers["primary"].state == b.breakers["primary"].state == "closed",
        what="closed by the probe",
    )
    assert a.state.shared and b.state.shared
    assert len(probes) == 1
    assert 1 <= len(lines_naming(caplog, lease)) <= 2  # the replica that cleared it said so
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_wrong_typed_record_leaves_the_provider_a_working_local_breaker(
    pair: Callable[..., Any],
    redis_server: RedisServer,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis refuses every script on that key: the local breaker opens, and probes, alone."""
    caplog.set_level(logging.WARNING, logger="gateway")
    a, b = await pair(fail_max=2, reset_s=0.3)
    client = redis_server.client()
    key = breaker_key(namespace, "backup")
    client.set(key, "not a hash")
    await b.refreshes(3)
    b.fail("backup", 2)
    await eventually(lambda: b.breakers["backup"].state == "open", what="B's own breaker opens")
    assert b.breakers["backup"].admit() is Admission.REJECT
    await asyncio.sleep(0.35)
    assert b.breakers["backup"].admit() is Admission.PROBE  # local probing, no lease needed
    a.fail("primary", 3)
    await eventually(lambda: b.breakers["primary"].state == "open", what="primary still shared")
    assert len(lines_naming(caplog, key)) == 2  # once per replica
    assert all(r.exc_info is None for r in caplog.records)
    client.delete(key)
    await eventually(lambda: b.breakers["backup"].state == "closed", what="shared again")


async def test_a_router_counts_the_malformed_record_and_keeps_serving(
    upstream: FakeUpstream, redis_server: RedisServer, namespace: str
) -> None:
    registry = CollectorRegistry()
    policy = make_policy(url_of(redis_server), namespace, upstream=upstream.url, fail_max=2)
    router = Router(policy, hooks=[GatewayMetrics(registry)], watch_interval_s=None)
    errors = lambda: registry.get_sample_value(  # noqa: E731
        "gateway_state_backend_errors_total", {"backend": "redis"}
    )
    hello = [{"role": "user", "content": "hi"}]
    try:
        assert (await router.generate(hello)).provider == "primary"
        redis_server.client().hset(breaker_key(namespace, "primary"), "failures", "-1000000")
        await eventually(lambda: (errors() or 0) >= 3, what="three refreshes counted")
        # Read as it stands, the record would take a million failures to open. The first
        # failure rewrites it instead, and fail_max failures open it for every replica.
        upstream.fail_always(PRIMARY, Fault.server_error())
        served = [(await router.generate(hello)).provider for _ in range(4)]
        assert served == ["backup"] * 4

        # Failures reach Redis from the background batch: wait for it, not for a sleep.
        def shared_record() -> dict[str, str]:
            return redis_server.client().hgetall(breaker_key(namespace, "primary"))

        await eventually(lambda: shared_record().get("state") == "open", what="shared open")
        record = shared_record()
        assert record["state"] == "open" and int(record["failures"]) >= 2
    finally:
        await router.aclose()


async def test_a_redis_refusing_every_update_is_one_line_and_local_breakers(
    pair: Callable[..., Any], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis reads but refuses every write (as out of memory or a read-only replica would; here
    the gateway's user loses HSET): no record is to blame, so it is said once, and what Redis
    refused stays in the local breaker rather than being undone by the next read."""
    caplog.set_level(logging.WARNING, logger="gateway")
    a, _ = await pair(fail_max=2)
    client = redis_server.client()
    client.execute_command("ACL", "SETUSER", "gateway", "-hset")
    try:
        a.fail("primary", 2)  # refused, so applied to A's own breaker
        await eventually(lambda: a.breakers["primary"].state == "open", what="A's breaker opens")
        a.fail("backup")
        await a.refreshes(5)  # reads still work, and do not undo what Redis refused
        assert a.breakers["primary"].state == "open"
        assert a.breakers["primary"].admit() is Admission.REJECT
        assert a.state.shared and a.errors
    finally:
        client.execute_command("ACL", "SETUSER", "gateway", "+hset")
    a.fail("primary")  # taken by Redis: the shared record is A's breaker again
    await eventually(
        lambda: a.breakers["primary"].failure_count == 1, what="the shared record again"
    )
    refusals = [r for r in caplog.records if "refuses breaker updates" in r.getMessage()]
    assert len(refusals) == 1, "one line, not one per provider, write or refresh"
    assert len(caplog.records) == 1
    assert PASSWORD not in caplog.text
