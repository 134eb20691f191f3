"""The console across processes: `gateway serve --workers 2` (figures and recent requests of
every worker, a drain that reaches every worker) and two replicas sharing breakers in Redis
(a drain on one is seen, and kept, by the other). Plus the breaker's forced opening itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from console_harness import (
    ADMIN_KEY,
    KEYS_ENV,
    PRIMARY_MODEL,
    SECRET_PROMPT,
    ask,
    auth,
    eventually,
    live,
    policy_text,
    recent,
)
from redis_harness import RedisServer
from server_harness import GATEWAY_SERVE, ServerProcess

from gateway._resilience import Admission, Breaker
from gateway.errors import ErrorKind
from gateway.policy import BreakerPolicy
from gateway.testing import SpawnedFakeUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[SpawnedFakeUpstream]:
    fake = SpawnedFakeUpstream.start()
    try:
        yield fake
    finally:
        fake.process.terminate()
        fake.process.wait(timeout=10)


def primary_calls(upstream: SpawnedFakeUpstream) -> int:
    return upstream.client.count(model=PRIMARY_MODEL)


# --- the breaker itself -----------------------------------------------------------------------


def test_a_forced_breaker_is_not_probed_by_its_timer_until_reset() -> None:
    breaker = Breaker("p", BreakerPolicy(fail_max=1, reset_timeout_s=0.01))
    admitted = breaker.admit()
    breaker.force_open()
    # A call admitted before the drain ends after it: its outcome changes nothing.
    breaker.failure(admitted, ErrorKind.SERVER_ERROR)
    time.sleep(0.05)  # well past reset_timeout_s: an ordinary open breaker would probe now
    assert (breaker.state, breaker.forced) == ("open", True)
    assert breaker.admit() is Admission.REJECT
    assert breaker.refusing()
    assert breaker.seconds_until_probe() is None

    breaker.reset()
    assert (breaker.state, breaker.forced, breaker.failure_count) == ("closed", False, 0)
    assert breaker.admit() is Admission.CALL


# --- several workers ----------------------------------------------------------------------------


def test_workers_share_figures_recent_requests_and_drains(
    upstream: SpawnedFakeUpstream, tmp_path: Path
) -> None:
    policy = tmp_path / "routing.yaml"
    policy.write_text(policy_text(upstream.url))
    env = {**KEYS_ENV, "PROMETHEUS_MULTIPROC_DIR": ""}  # serve makes one for its workers
    server = ServerProcess(
        policy,
        log_path=tmp_path / "workers.log",
        env=env,
        command=GATEWAY_SERVE,
        extra_args=["--workers", "2"],
    )
    with server:
        server.wait_ready()
        # Each worker's figures count from its first sample, taken as it starts (before its
        # first status file): with both files there, both count every request sent from now.
        eventually(lambda: len(live(server.url)["workers"]) == 2, what="both workers started")
        sent = 0

        def both_workers_answered() -> bool:
            nonlocal sent
            ask(server.url, "chat")  # each on a new connection: the kernel spreads them
            sent += 1
            workers = {row["worker"] for row in recent(server.url, task="chat")["requests"]}
            return len(workers) == 2

        eventually(both_workers_answered, timeout_s=30, what="requests on both workers")

        seen: list[tuple[int, int, int, int]] = []

        def merged() -> bool:
            view = live(server.url)
            calls = view["providers"]["primary"]["calls"]
            requests = view["tasks"][0]["requests_total"]
            listed = recent(server.url, task="chat")["requests"]
            seen.append((len(view["workers"]), calls, requests, len(listed)))
            return len(view["workers"]) == 2 and calls == requests == len(listed) == sent

        # Once every status file is fresh (at most SYNC_INTERVAL_S old), whichever worker
        # answers counts every worker's calls and requests and lists all their requests.
        def merged_everywhere() -> bool:
            return all(merged() for _ in range(6))

        try:
            eventually(merged_everywhere, what=f"{sent} calls over 2 workers, on every worker")
        except AssertionError as exc:  # (workers, calls, requests, listed), last polls
            raise AssertionError(f"{exc}; last seen {seen[-6:]}") from None
        assert SECRET_PROMPT not in (tmp_path / "workers.log").read_text()

        drained = httpx.post(
            server.url + "/console/api/breakers/primary/force-open", headers=auth(ADMIN_KEY)
        )
        assert drained.status_code == 200

        def drained_everywhere() -> bool:
            primary = live(server.url)["providers"]["primary"]
            return primary["forced"] and primary["forced_workers"] == primary["workers"] == 2

        eventually(drained_everywhere, what="the drain on every worker")
        before = primary_calls(upstream)
        assert {ask(server.url, "chat") for _ in range(12)} == {"backup"}
        assert primary_calls(upstream) == before
        httpx.post(server.url + "/console/api/breakers/primary/reset", headers=auth(ADMIN_KEY))

        # A policy applied through one worker is what every worker serves next.
        with httpx.Client(base_url=server.url, headers=auth(ADMIN_KEY)) as http:
            loaded = http.get("/console/api/policy").json()
            edited = loaded["text"].replace("[primary, backup]", "[backup, primary]")
            applied = http.post(
                "/console/api/policy/apply",
                json={"text": edited, "loaded_sha256": loaded["sha256"]},
            )
            assert applied.status_code == 200, applied.text
        new_sha = applied.json()["sha256"]

        def every_worker_serves_it() -> bool:
            return all(live(server.url)["policy_sha256"] == new_sha for _ in range(6))

        eventually(every_worker_serves_it, what="the applied policy on every worker")
        assert {ask(server.url, "chat") for _ in range(12)} == {"backup"}
        assert primary_calls(upstream) == before


# --- replicas sharing breakers in Redis -------------------------------------------------------


def test_a_drain_through_one_replica_is_kept_by_the_other_through_redis(
    upstream: SpawnedFakeUpstream, tmp_path: Path
) -> None:
    with RedisServer() as redis_server:
        redis_server.start()
        state = f'state: {{backend: redis, url: "{redis_server.url}", namespace: console}}\n'
        text = policy_text(upstream.url, state=state).replace(
            "reset_timeout_s: 600", "reset_timeout_s: 0.5"
        )
        replicas = []
        for name in ("a", "b"):
            policy = tmp_path / f"routing-{name}.yaml"
            policy.write_text(text)
            replicas.append(
                ServerProcess(
                    policy, log_path=tmp_path / f"{name}.log", env=KEYS_ENV, command=GATEWAY_SERVE
                )
            )
        first, second = replicas
        with first, second:
            first.wait_ready()
            second.wait_ready()
            drained = httpx.post(
                first.url + "/console/api/breakers/primary/force-open", headers=auth(ADMIN_KEY)
            )
            assert drained.status_code == 200

            def seen_by_second() -> bool:
                row = live(second.url)["providers"]["primary"]
                return bool(row["forced"] and row["breaker"] == "open")

            eventually(seen_by_second, what="the drain seen through Redis")
            before = primary_calls(upstream)
            time.sleep(1.0)  # twice reset_timeout_s: an ordinary opening would be probed now
            assert {ask(second.url, "chat") for _ in range(5)} == {"backup"}
            assert primary_calls(upstream) == before
            assert live(second.url)["providers"]["primary"]["seconds_until_probe"] is None

            reset = httpx.post(
                first.url + "/console/api/breakers/primary/reset", headers=auth(ADMIN_KEY)
            )
            assert reset.status_code == 200
            eventually(
                lambda: live(second.url)["providers"]["primary"]["breaker"] == "closed",
                what="the reset seen through Redis",
            )
            assert ask(second.url, "chat") == "primary"
