"""Every series moves as it should when the real router meets success, retry, fall-through,
an open breaker and recovery; and a real Prometheus scraping a router process agrees."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_harness import PrometheusServer
from test_router import BACKUP, MESSAGES, PRIMARY, policy_doc, with_provider

from gateway import AllProvidersFailed, Router, UnknownTaskError
from gateway.hooks import BaseHooks, Deferred
from gateway.metrics import GatewayMetrics
from gateway.policy import parse_policy
from gateway.testing import FakeUpstream, Fault

ROOT = Path(__file__).resolve().parent.parent


class Samples:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def __call__(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def total(self, family: str, **match: str) -> float:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == family and all(
                    sample.labels.get(k) == v for k, v in match.items()
                ):
                    total += sample.value
        return total


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


async def test_scenario_moves_every_series(up: FakeUpstream) -> None:
    registry = CollectorRegistry()
    sample = Samples(registry)
    doc = with_provider(
        policy_doc(up.url), "primary", breaker={"fail_max": 2, "reset_timeout_s": 0.2}
    )
    doc["providers"]["mystery"] = {
        "type": "openai",
        "model": "mystery-model-9000",
        "base_url": f"{up.url}/v1",
        "api_key": "k3",
    }
    doc["tasks"]["unpriced"] = {"chain": ["mystery"]}
    doc["tasks"]["fragile"] = {"chain": ["backup"]}
    policy = parse_policy(yaml.safe_dump(doc))
    router = Router(policy, hooks=[GatewayMetrics(registry)])
    costs: list[float] = []
    try:
        assert sample("gateway_policy_info", version="1", sha256=policy.sha256) == 1
        assert sample("gateway_policy_reloads_total", outcome="applied") == 1
        assert sample("gateway_circuit_state", provider="primary") == 0

        # 1. success
        r = await router.generate(MESSAGES, task="summarize")
        costs.append(r.cost_usd)
        assert sample("gateway_requests_total", task="summarize", outcome="success") == 1
        assert (
            sample(
                "gateway_attempts_total",
                task="summarize",
                provider="primary",
                model=PRIMARY,
                outcome="success",
            )
            == 1
        )
        assert (
            sample("gateway_tokens_total", provider="primary", model=PRIMARY, type="input")
            == r.usage.input_tokens
        )
        assert (
            sample("gateway_tokens_total", provider="primary", model=PRIMARY, type="output")
            == r.usage.output_tokens
        )
        assert sample(
            "gateway_cost_usd_total", task="summarize", provider="primary", model=PRIMARY
        ) == pytest.approx(r.cost_usd)
        assert sample("gateway_request_duration_seconds_count", task="summarize") == 1
        assert (
            sample("gateway_attempt_duration_seconds_count", provider="primary", model=PRIMARY) == 1
        )
        assert sample("gateway_overhead_seconds_count", task="summarize") == 1
        overhead = sample("gateway_overhead_seconds_sum", task="summarize")
        duration = sample("gateway_request_duration_seconds_sum", task="summarize")
        assert 0 <= overhead < duration

        # 2. retry on the same candidate
        up.script(PRIMARY, Fault.server_error())
        r = await router.generate(MESSAGES, task="summarize")
        costs.append(r.cost_usd)
        assert (
            sample("gateway_retries_total", provider="primary", model=PRIMARY, kind="server_error")
            == 1
        )

        # 3. fall-through at once on a bad request
        up.script(PRIMARY, Fault.status(400))
        r = await router.generate(MESSAGES, task="summarize")
        costs.append(r.cost_usd)
        assert r.provider == "backup"
        assert (
            sample(
                "gateway_fallbacks_total",
                task="summarize",
                from_provider="primary",
                to_provider="backup",
                kind="bad_request",
            )
            == 1
        )
        assert (
            sample(
                "gateway_attempts_total",
                task="summarize",
                provider="primary",
                model=PRIMARY,
                outcome="bad_request",
            )
            == 1
        )

        # 4. the breaker opens, then the primary is skipped with no call
        up.fail_always(PRIMARY, Fault.server_error())
        r = await router.generate(MESSAGES, task="summarize")
        costs.append(r.cost_usd)
        assert sample("gateway_circuit_state", provider="primary") == 2
        assert sample("gateway_circuit_transitions_total", provider="primary", to_state="open") == 1
        r = await router.generate(MESSAGES, task="summarize")
        costs.append(r.cost_usd)
        assert (
            sample(
                "gateway_attempts_total",
                task="summarize",
                provider="primary",
                model=PRIMARY,
                outcome="breaker_open",
            )
            == 1
        )
        assert (
            sample(
                "gateway_fallbacks_total",
                task="summarize",
                from_provider="primary",
                to_provider="backup",
                kind="breaker_open",
            )
            == 1
        )

        # 5. recovery: a half-open probe closes it
        up.heal(PRIMARY)
        await asyncio.sleep(0.3)
        r = await router.generate(MESSAGES, task="summarize")
        costs.append(r.cost_usd)
        assert r.provider == "primary"
        assert sample("gateway_circuit_state", provider="primary") == 0
        assert (
            sample("gateway_circuit_transitions_total", provider="primary", to_state="half_open")
            == 1
        )
        assert (
            sample("gateway_circuit_transitions_total", provider="primary", to_state="closed") == 1
        )

        # 6. streaming: time to first token
        stream = router.stream(MESSAGES, task="summarize")
        assert "".join([d async for d in stream])
        costs.append(stream.cost_usd)
        assert (
            sample("gateway_time_to_first_token_seconds_count", provider="primary", model=PRIMARY)
            == 1
        )

        # 7. an unpriced model costs 0 and is counted
        r = await router.generate(MESSAGES, task="unpriced")
        assert r.cost_usd == 0
        assert (
            sample(
                "gateway_unpriced_requests_total", provider="mystery", model="mystery-model-9000"
            )
            == 1
        )

        # 8. exhausted and rejected requests
        up.fail_always(BACKUP, Fault.unauthorized())
        with pytest.raises(AllProvidersFailed):
            await router.generate(MESSAGES, task="fragile")
        assert sample("gateway_requests_total", task="fragile", outcome="exhausted") == 1
        with pytest.raises(ValueError):
            await router.generate([], task="summarize")
        assert sample("gateway_requests_total", task="summarize", outcome="rejected") == 1

        # 9. a reload swaps the policy info
        changed = parse_policy(
            yaml.safe_dump({**doc, "prices": {"llama3.2": {"input": 1, "output": 1}}})
        )
        await router.apply_policy(changed)
        assert sample("gateway_policy_reloads_total", outcome="applied") == 2
        assert sample("gateway_policy_info", version="1", sha256=changed.sha256) == 1
        assert sample("gateway_policy_info", version="1", sha256=policy.sha256) == 0
    finally:
        await router.aclose()

    # The cost counter is exactly the sum of what callers were told.
    assert sample.total("gateway_cost_usd_total") == pytest.approx(math.fsum(costs))


async def test_unknown_task_without_default_counts_as_rejected(up: FakeUpstream) -> None:
    registry = CollectorRegistry()
    doc = policy_doc(up.url)
    del doc["tasks"]["default"]
    router = Router(parse_policy(yaml.safe_dump(doc)), hooks=[GatewayMetrics(registry)])
    try:
        with pytest.raises(UnknownTaskError):
            await router.generate(MESSAGES, task="nope")
    finally:
        await router.aclose()
    assert Samples(registry).total("gateway_requests_total", outcome="rejected") == 1


async def test_a_provider_removed_by_a_reload_leaves_no_breaker_state_behind(
    up: FakeUpstream,
) -> None:
    registry = CollectorRegistry()
    sample = Samples(registry)
    doc = with_provider(
        policy_doc(up.url), "primary", retry={"attempts": 1}, breaker={"fail_max": 1}
    )
    router = Router(parse_policy(yaml.safe_dump(doc)), hooks=[GatewayMetrics(registry)])
    try:
        up.fail_always(PRIMARY, Fault.server_error())
        await router.generate(MESSAGES, task="summarize")  # answered by backup
        assert sample("gateway_circuit_state", provider="primary") == 2  # open
        assert sample("gateway_circuit_state", provider="backup") == 0

        without = copy.deepcopy(doc)
        del without["providers"]["primary"]
        without["tasks"]["summarize"]["chain"] = ["backup", "local"]
        await router.apply_policy(parse_policy(yaml.safe_dump(without)))
    finally:
        await router.aclose()
    # An open state kept for a provider no longer used would keep its alert firing.
    assert registry.get_sample_value("gateway_circuit_state", {"provider": "primary"}) is None
    assert sample("gateway_circuit_state", provider="backup") == 0
    # Counters keep their history: they only ever say what happened.
    assert sample.total("gateway_attempts_total", provider="primary") == 1


class Recorder(BaseHooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_attempt(self, *, task: str, provider: str, **_: object) -> None:
        self.events.append(("attempt", provider))

    def on_request(self, *, task: str, outcome: str, **_: object) -> None:
        self.events.append(("request", outcome))


class Broken(BaseHooks):
    def on_request(self, **_: object) -> None:
        raise RuntimeError("a bug in a hook")


async def test_deferred_hooks_get_every_event_in_order_once_the_call_has_returned(
    up: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    registry, recorder = CollectorRegistry(), Recorder()
    deferred = Deferred(GatewayMetrics(registry), recorder, Broken())
    doc = with_provider(policy_doc(up.url), "primary", retry={"attempts": 1})
    router = Router(parse_policy(yaml.safe_dump(doc)), hooks=[deferred])
    try:
        up.script(PRIMARY, Fault.server_error())
        routed = await router.generate(MESSAGES, task="summarize")
        # The failed attempt was delivered while the router awaited the backup; what came
        # after the last await is not yet, when the caller gets the answer...
        assert recorder.events == [("attempt", "primary")]
        assert Samples(registry).total("gateway_requests_total") == 0
        await asyncio.sleep(0)  # ...and is once the loop has turned.
    finally:
        await router.aclose()
    assert [a.provider for a in routed.attempts] == ["primary", "backup"]
    assert recorder.events == [
        ("attempt", "primary"),
        ("attempt", "backup"),
        ("request", "success"),
    ]
    assert Samples(registry).total("gateway_requests_total", outcome="success") == 1
    assert "router hook Broken.on_request failed" in caplog.text


def test_deferred_hooks_pass_events_on_at_once_outside_an_event_loop() -> None:
    recorder = Recorder()
    Deferred(recorder).on_request(task="t", outcome="success", duration_s=1.0, overhead_s=0.0)
    assert recorder.events == [("request", "success")]


def test_deferred_events_whose_loop_closed_first_come_with_the_next_loops() -> None:
    """Events of one turn are delivered together; a loop that closes before its turn ends
    does not lose them: they reach the hooks with the next loop's, in order."""
    recorder = Recorder()
    deferred = Deferred(recorder)

    def emit(outcome: str) -> None:
        deferred.on_request(task="t", outcome=outcome, duration_s=1.0, overhead_s=0.0)

    async def emit_and_stop(loop: asyncio.AbstractEventLoop) -> None:
        emit("first")
        loop.stop()  # the loop ends with this turn, before the delivery's

    async def emit_and_turn() -> None:
        emit("second")
        await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    try:
        emitted = loop.create_task(emit_and_stop(loop))
        loop.run_forever()
        assert emitted.done()
    finally:
        loop.close()
    assert recorder.events == []
    asyncio.run(emit_and_turn())
    assert recorder.events == [("request", "first"), ("request", "second")]


# A process running the real router on FakeUpstream, its metrics served for Prometheus.
ROUTER_PROCESS = textwrap.dedent(
    """
    import asyncio, json, math, sys, yaml
    from prometheus_client import CollectorRegistry
    from gateway import Router
    from gateway.metrics import GatewayMetrics, serve
    from gateway.policy import parse_policy
    from gateway.testing import FakeUpstream, Fault
    sys.path.insert(0, sys.argv[1])
    from test_router import PRIMARY, MESSAGES, policy_doc

    async def main():
        registry = CollectorRegistry()
        async with FakeUpstream() as up:
            doc = policy_doc(up.url)
            doc["defaults"]["retry"]["attempts"] = 1
            router = Router(parse_policy(yaml.safe_dump(doc)), hooks=[GatewayMetrics(registry)])
            server = serve(0, registry=registry)
            costs, outcomes = [], {}
            up.script(PRIMARY, Fault.server_error(), Fault.status(400))
            for _ in range(12):
                r = await router.generate(MESSAGES, task="summarize")
                costs.append(r.cost_usd)
                for a in r.attempts:
                    outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
            print(json.dumps({"port": server.port, "cost": math.fsum(costs),
                              "outcomes": outcomes}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            server.shutdown()
            await router.aclose()

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_real_prometheus_scrapes_a_router_and_agrees() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", ROUTER_PROCESS, str(ROOT / "tests")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.stderr else "router process died"
        expected = json.loads(line)
        assert expected["outcomes"] == {"success": 12, "server_error": 1, "bad_request": 1}
        with PrometheusServer(targets=[f"127.0.0.1:{expected['port']}"]) as prom:
            prom.wait_for_targets_up()
            cost = prom.wait_for("sum(gateway_cost_usd_total)", lambda r: bool(r))
            assert sum(cost.values()) == pytest.approx(expected["cost"], rel=1e-9)
            by_outcome = prom.query("sum by (outcome) (gateway_attempts_total)")
            seen = {dict(labels)["outcome"]: value for labels, value in by_outcome.items()}
            assert seen == expected["outcomes"]
    finally:
        if process.stdin:
            process.stdin.close()
        process.wait(timeout=10)


async def test_a_router_counts_each_breaker_trip_with_its_reason(up: FakeUpstream) -> None:
    registry = CollectorRegistry()
    samples = Samples(registry)
    policy = parse_policy(
        "version: 1\n"
        "defaults: {retry: {attempts: 1}, breaker: {fail_max: 2, reset_timeout_s: 60}}\n"
        "providers:\n"
        '  p: {type: openai, model: gpt-4o-mini, base_url: "${FAKE}/v1", api_key: unused}\n'
        "tasks: {default: {chain: [p]}}\n",
        environ={"FAKE": up.url},
    )
    up.fail_always("gpt-4o-mini", Fault.server_error())
    async with Router(policy, hooks=[GatewayMetrics(registry)]) as router:
        for _ in range(2):
            with pytest.raises(AllProvidersFailed):
                await router.generate(MESSAGES)
    assert samples("gateway_breaker_trips_total", provider="p", reason="consecutive") == 1
    assert samples.total("gateway_breaker_trips_total") == 1
