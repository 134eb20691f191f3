"""The router's rules, shown with the real SDKs over real HTTP against FakeUpstream."""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from gateway import (
    AllProvidersFailed,
    AttemptOutcome,
    DeadlineExceeded,
    LLMFactory,
    PolicyError,
    Router,
    StreamInterrupted,
    UnknownTaskError,
)
from gateway.metrics import GatewayMetrics
from gateway.policy import parse_policy
from gateway.testing import FakeLLM, FakeUpstream, Fault, set_waits_enabled

PRIMARY = "claude-sonnet-4-5"  # anthropic protocol
BACKUP = "gpt-4o-mini"  # openai protocol
LOCAL = "llama3.2"  # ollama protocol
MESSAGES = [{"role": "user", "content": "Summarize: routers route."}]


def policy_doc(url: str, **task_overrides: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "defaults": {
            "timeout_s": 5,
            "retry": {"attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.05},
            "breaker": {"fail_max": 3, "reset_timeout_s": 30},
        },
        "providers": {
            "primary": {"type": "anthropic", "model": PRIMARY, "base_url": url, "api_key": "k1"},
            "backup": {"type": "openai", "model": BACKUP, "base_url": f"{url}/v1", "api_key": "k2"},
            "local": {"type": "ollama", "model": LOCAL, "base_url": url},
        },
        "prices": {LOCAL: {"input": 0, "output": 0}},
        "tasks": {
            "summarize": {"chain": ["primary", "backup", "local"], **task_overrides},
            "default": {"chain": ["backup", "local"]},
        },
    }


def build(doc: dict[str, Any], **router_kwargs: Any) -> Router:
    policy = parse_policy(yaml.safe_dump(doc), source="test.yaml")
    router_kwargs.setdefault("hooks", [GatewayMetrics(CollectorRegistry())])
    return Router(policy, **router_kwargs)


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def router(up: FakeUpstream) -> AsyncIterator[Router]:
    r = build(policy_doc(up.url))
    yield r
    await r.aclose()


def with_provider(doc: dict[str, Any], name: str, **overrides: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["providers"][name].update(overrides)
    return doc


async def test_healthy_primary_answers_with_usage(up: FakeUpstream, router: Router) -> None:
    r = await router.generate(MESSAGES, task="summarize")
    assert r.provider == "primary"
    assert r.model == PRIMARY
    assert r.text
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.cost_usd > 0
    assert [a.outcome for a in r.attempts] == ["success"]
    assert up.count(model=PRIMARY) == 1 and up.count(model=BACKUP) == 0


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.server_error(), "server_error"),
        (Fault.rate_limit(), "rate_limit"),
        (Fault.overloaded(), "overloaded"),
        (Fault.reset(), "connection"),
    ],
)
async def test_retryable_kinds_retry_on_the_same_candidate(
    up: FakeUpstream, router: Router, fault: Fault, kind: str
) -> None:
    up.script(PRIMARY, fault)
    r = await router.generate(MESSAGES, task="summarize")
    assert r.provider == "primary"
    assert r.attempts[0].retries == 1
    assert up.count(model=PRIMARY) == 2 and up.count(model=BACKUP) == 0


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.status(400), "bad_request"),
        (Fault.unauthorized(), "auth"),
        (Fault.context_length(), "context_length"),
        (Fault.not_found(), "not_found"),
    ],
)
async def test_other_kinds_fall_through_at_once(
    up: FakeUpstream, router: Router, fault: Fault, kind: str
) -> None:
    up.script(PRIMARY, fault)
    r = await router.generate(MESSAGES, task="summarize")
    assert r.provider == "backup"
    assert [(a.provider, a.outcome, a.retries) for a in r.attempts] == [
        ("primary", kind, 0),
        ("backup", "success", 0),
    ]
    assert up.count(model=PRIMARY) == 1


async def test_retries_exhausted_then_fall_through(up: FakeUpstream, router: Router) -> None:
    up.fail_always(PRIMARY, Fault.server_error())
    r = await router.generate(MESSAGES, task="summarize")
    assert r.provider == "backup"
    assert r.attempts[0].outcome == "server_error" and r.attempts[0].retries == 2
    assert up.count(model=PRIMARY) == 3


async def test_retry_after_is_honoured(up: FakeUpstream) -> None:
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)

    router = build(policy_doc(up.url), sleep=recording_sleep)
    try:
        up.script(PRIMARY, Fault.rate_limit(retry_after=2))
        r = await router.generate(MESSAGES, task="summarize")
    finally:
        await router.aclose()
    assert r.provider == "primary"
    assert waits == [2.0]


async def test_the_testing_switch_turns_backoff_waits_off(up: FakeUpstream) -> None:
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)

    router = build(policy_doc(up.url), sleep=recording_sleep)
    set_waits_enabled(False)
    try:
        up.script(PRIMARY, Fault.rate_limit(retry_after=2), Fault.server_error())
        r = await router.generate(MESSAGES, task="summarize")
    finally:
        set_waits_enabled(True)
        await router.aclose()
    assert r.provider == "primary"
    assert r.attempts[0].retries == 2, "the retries still happen"
    assert waits == [], "without sleeping between them"


async def test_retry_after_past_the_deadline_falls_through_without_waiting(
    up: FakeUpstream,
) -> None:
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)

    router = build(policy_doc(up.url, deadline_s=3), sleep=recording_sleep)
    try:
        up.script(PRIMARY, Fault.rate_limit(retry_after=30))
        r = await router.generate(MESSAGES, task="summarize")
    finally:
        await router.aclose()
    assert waits == []
    assert r.provider == "backup"
    assert r.attempts[0].outcome == "rate_limit"


async def test_breaker_opens_after_fail_max_and_then_makes_no_call(up: FakeUpstream) -> None:
    doc = with_provider(policy_doc(up.url), "primary", retry={"attempts": 1})
    router = build(doc)
    try:
        up.fail_always(PRIMARY, Fault.server_error())
        for _ in range(3):
            r = await router.generate(MESSAGES, task="summarize")
            assert r.provider == "backup"
        assert router.candidates["primary"].breaker.state == "open"
        calls_before = up.count(model=PRIMARY)
        r = await router.generate(MESSAGES, task="summarize")
        assert up.count(model=PRIMARY) == calls_before == 3
        assert r.attempts[0].outcome == "breaker_open"
        assert r.provider == "backup"
    finally:
        await router.aclose()


async def test_a_bad_request_never_trips_the_breaker(up: FakeUpstream) -> None:
    doc = with_provider(policy_doc(up.url), "primary", retry={"attempts": 1})
    router = build(doc)
    try:
        up.fail_always(PRIMARY, Fault.status(400))
        for _ in range(6):
            await router.generate(MESSAGES, task="summarize")
        assert router.candidates["primary"].breaker.state == "closed"
        assert router.candidates["primary"].breaker.failure_count == 0
    finally:
        await router.aclose()


async def test_half_open_lets_exactly_one_probe_through_under_concurrency(
    up: FakeUpstream,
) -> None:
    doc = with_provider(
        policy_doc(up.url),
        "primary",
        retry={"attempts": 1},
        breaker={"fail_max": 1, "reset_timeout_s": 0.2},
    )
    router = build(doc)
    try:
        up.fail_always(PRIMARY, Fault.server_error())
        await router.generate(MESSAGES, task="summarize")
        assert router.candidates["primary"].breaker.state == "open"
        up.heal(PRIMARY)
        up.reply(PRIMARY, latency_s=0.5)
        await asyncio.sleep(0.3)
        calls_before = up.count(model=PRIMARY)
        results = await asyncio.gather(
            *(router.generate(MESSAGES, task="summarize") for _ in range(10))
        )
        assert up.count(model=PRIMARY) - calls_before == 1
        assert sum(r.provider == "primary" for r in results) == 1
        skipped = [r for r in results if r.provider == "backup"]
        assert len(skipped) == 9
        assert all(r.attempts[0].outcome == "breaker_open" for r in skipped)
        assert router.candidates["primary"].breaker.state == "closed"
    finally:
        await router.aclose()


async def test_a_hung_provider_is_bounded_by_timeout_s(up: FakeUpstream) -> None:
    doc = with_provider(policy_doc(up.url), "primary", timeout_s=0.3, retry={"attempts": 1})
    router = build(doc)
    try:
        up.fail_always(PRIMARY, Fault.hang())
        began = time.perf_counter()
        r = await router.generate(MESSAGES, task="summarize")
        elapsed = time.perf_counter() - began
    finally:
        await router.aclose()
    assert r.provider == "backup"
    assert r.attempts[0].outcome == "timeout"
    assert elapsed < 5  # generous: the bound is 0.3 s
    await asyncio.sleep(0.1)


async def test_a_provider_that_does_not_bound_its_own_calls_is_bounded_by_the_router() -> None:
    # The default transport ends its calls within timeout_s by itself and the router trusts it
    # (`bounds_calls`); a call to any other provider runs under the router's own timer.
    LLMFactory.register("fake", FakeLLM)
    try:
        policy = parse_policy(
            "version: 1\n"
            "defaults: {retry: {attempts: 1}}\n"
            "providers:\n"
            "  slow: {type: fake, model: slow-1, timeout_s: 0.2, options: {latency_s: 30}}\n"
            "  quick: {type: fake, model: quick-1}\n"
            "tasks: {default: {chain: [slow, quick]}}\n"
        )
        async with Router(policy) as router:
            slow = router.candidates["slow"].client
            assert slow is not None and not slow.bounds_calls
            answer = await router.generate(MESSAGES)
    finally:
        LLMFactory.unregister("fake")
    assert answer.provider == "quick"
    assert [a.outcome for a in answer.attempts] == [AttemptOutcome.TIMEOUT, AttemptOutcome.SUCCESS]


async def test_the_deadline_bounds_the_whole_request(up: FakeUpstream) -> None:
    doc = policy_doc(up.url, deadline_s=0.5)
    router = build(doc)
    try:
        for model in (PRIMARY, BACKUP, LOCAL):
            up.fail_always(model, Fault.hang())
        began = time.perf_counter()
        with pytest.raises(DeadlineExceeded) as caught:
            await router.generate(MESSAGES, task="summarize")
        elapsed = time.perf_counter() - began
    finally:
        await router.aclose()
    assert elapsed < 5  # generous: the deadline is 0.5 s
    assert caught.value.attempts
    assert caught.value.attempts[0].provider == "primary"
    assert "deadline_s=0.5" in str(caught.value)


async def test_all_failed_lists_every_candidate(up: FakeUpstream) -> None:
    doc = policy_doc(up.url)
    doc["defaults"]["retry"]["attempts"] = 1
    router = build(doc)
    try:
        up.fail_always(PRIMARY, Fault.server_error())
        up.fail_always(BACKUP, Fault.unauthorized())
        up.fail_always(LOCAL, Fault.status(400))
        with pytest.raises(AllProvidersFailed) as caught:
            await router.generate(MESSAGES, task="summarize")
    finally:
        await router.aclose()
    message = str(caught.value)
    for expected in ("primary", "server_error", "backup", "auth", "local", "bad_request"):
        assert expected in message
    assert [a.outcome for a in caught.value.attempts] == ["server_error", "auth", "bad_request"]
    assert "k1" not in message and "k2" not in message


async def test_saturated_provider_is_skipped_not_queued(up: FakeUpstream) -> None:
    router = build(with_provider(policy_doc(up.url), "primary", max_concurrency=1))
    try:
        up.reply(PRIMARY, latency_s=0.3)
        first, second = await asyncio.gather(
            router.generate(MESSAGES, task="summarize"),
            router.generate(MESSAGES, task="summarize"),
        )
    finally:
        await router.aclose()
    assert sorted([first.provider, second.provider]) == ["backup", "primary"]
    skipped = first if first.provider == "backup" else second
    assert skipped.attempts[0].outcome == "saturated"


async def test_context_precheck_skips_small_windows(up: FakeUpstream) -> None:
    router = build(with_provider(policy_doc(up.url), "primary", max_input_tokens=10))
    try:
        long_prompt = [{"role": "user", "content": "word " * 200}]
        r = await router.generate(long_prompt, task="summarize")
    finally:
        await router.aclose()
    assert r.attempts[0].outcome == "skipped_context"
    assert r.provider == "backup"
    assert up.count(model=PRIMARY) == 0


async def test_a_provider_without_its_key_is_unavailable_and_skipped(up: FakeUpstream) -> None:
    doc = with_provider(policy_doc(up.url), "primary", api_key="${GATEWAY_TEST_UNSET_KEY}")
    router = build(doc)
    try:
        primary = router.candidates["primary"]
        assert primary.client is None
        assert "GATEWAY_TEST_UNSET_KEY" in (primary.unavailable_reason or "")
        r = await router.generate(MESSAGES, task="summarize")
    finally:
        await router.aclose()
    assert r.attempts[0].outcome == "unavailable"
    assert r.provider == "backup"


async def test_unknown_task_uses_default_or_lists_tasks(up: FakeUpstream, router: Router) -> None:
    r = await router.generate(MESSAGES, task="no-such-task")
    assert r.task == "default" and r.provider == "backup"
    doc = policy_doc(up.url)
    del doc["tasks"]["default"]
    strict = build(doc)
    try:
        with pytest.raises(UnknownTaskError, match="summarize"):
            await strict.generate(MESSAGES, task="no-such-task")
    finally:
        await strict.aclose()


async def test_bad_messages_are_rejected_before_any_call(up: FakeUpstream, router: Router) -> None:
    from gateway import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="empty"):
        await router.generate([], task="summarize")
    with pytest.raises(InvalidRequestError, match="role"):
        await router.generate([{"role": "wizard", "content": "x"}], task="summarize")
    assert up.count() == 0


async def test_made_up_task_names_make_one_metric_label_value(up: FakeUpstream) -> None:
    """A task name the policy does not define never becomes a label: every series with a
    `task` label holds the policy's tasks and one fixed value for the unresolved ones."""
    from gateway import InvalidRequestError
    from gateway.hooks import UNRESOLVED_TASK

    registry = CollectorRegistry()
    doc = policy_doc(up.url)
    del doc["tasks"]["default"]  # so that an unknown name is not served by `default`
    router = build(doc, hooks=[GatewayMetrics(registry)])
    try:
        for i in range(50):
            with pytest.raises(UnknownTaskError):
                if i % 2:
                    await router.generate(MESSAGES, task=f"made-up-{i}")
                else:
                    async for _ in router.stream(MESSAGES, task=f"made-up-{i}"):
                        pass
        with pytest.raises(UnknownTaskError):
            await router.generate([], task="made-up-and-invalid")
        # A task the policy defines keeps its name even when its messages are refused.
        with pytest.raises(InvalidRequestError):
            await router.generate([{"role": "wizard", "content": "x"}], task="summarize")
    finally:
        await router.aclose()
    labels: dict[str, set[str]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if "task" in sample.labels:
                labels.setdefault(metric.name, set()).add(sample.labels["task"])
    assert labels == {
        "gateway_requests": {UNRESOLVED_TASK, "summarize"},
        "gateway_request_duration_seconds": {UNRESOLVED_TASK, "summarize"},
        "gateway_overhead_seconds": {UNRESOLVED_TASK, "summarize"},
    }
    rejected = registry.get_sample_value(
        "gateway_requests_total", {"task": UNRESOLVED_TASK, "outcome": "rejected"}
    )
    assert rejected == 51


async def test_caller_cancellation_propagates_and_is_not_a_failure(up: FakeUpstream) -> None:
    router = build(policy_doc(up.url))
    try:
        up.fail_always(PRIMARY, Fault.hang())
        baseline = up.open_connections
        call = asyncio.create_task(router.generate(MESSAGES, task="summarize"))
        while up.count(model=PRIMARY) == 0:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert router.candidates["primary"].breaker.failure_count == 0
        assert router.candidates["primary"].in_flight == 0
        for _ in range(100):
            if up.open_connections <= baseline:
                break
            await asyncio.sleep(0.02)
        assert up.open_connections <= baseline
    finally:
        await router.aclose()


# --- streaming ------------------------------------------------------------------------------


async def test_stream_falls_through_before_first_delta(up: FakeUpstream, router: Router) -> None:
    up.fail_always(PRIMARY, Fault.status(400))
    up.reply(BACKUP, text="backup says hello")
    stream = router.stream(MESSAGES, task="summarize")
    text = "".join([d async for d in stream])
    assert text == "backup says hello"
    assert stream.provider == "backup"
    assert stream.usage.output_tokens > 0
    assert [a.outcome for a in stream.attempts] == ["bad_request", "success"]


async def test_first_token_timeout_gives_up_on_a_silent_candidate(up: FakeUpstream) -> None:
    doc = with_provider(
        policy_doc(up.url, first_token_timeout_s=0.3), "primary", retry={"attempts": 1}
    )
    router = build(doc)
    try:
        up.script(PRIMARY, Fault.slow_first_byte(5))
        stream = router.stream(MESSAGES, task="summarize")
        text = "".join([d async for d in stream])
    finally:
        await router.aclose()
    assert text
    assert stream.provider == "backup"
    assert stream.attempts[0].outcome == "timeout"


async def test_failure_after_the_first_delta_raises_stream_interrupted(
    up: FakeUpstream, router: Router
) -> None:
    up.reply(PRIMARY, text="one two three four five six")
    up.script(PRIMARY, Fault.cut_stream(after_chunks=2))
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as caught:
        async for delta in router.stream(MESSAGES, task="summarize"):
            received.append(delta)
    assert caught.value.partial_text == "".join(received)
    assert received
    assert up.count(model=BACKUP) == 0


async def test_a_stream_that_stalls_after_its_first_delta_is_bounded_by_timeout_s(
    up: FakeUpstream,
) -> None:
    # timeout_s bounds each gap between deltas; the stall never ends by itself.
    router = build(with_provider(policy_doc(up.url), "primary", timeout_s=0.3))
    try:
        up.reply(PRIMARY, text="one two three four five six")
        up.script(PRIMARY, Fault.stall(after_chunks=2))
        received: list[str] = []
        async with asyncio.timeout(10):  # a failure here, not a hung test
            with pytest.raises(StreamInterrupted) as caught:
                async for delta in router.stream(MESSAGES, task="summarize"):
                    received.append(delta)
    finally:
        await router.aclose()
    assert received and caught.value.partial_text == "".join(received)
    assert [a.outcome for a in caught.value.attempts] == ["timeout"]
    assert router.candidates["primary"].in_flight == 0


async def test_a_slow_reader_is_not_a_stalled_stream(up: FakeUpstream) -> None:
    # Only the wait for the upstream counts against timeout_s, not the caller's own pace.
    router = build(with_provider(policy_doc(up.url), "primary", timeout_s=0.2))
    try:
        up.reply(PRIMARY, text="one two three four")
        received: list[str] = []
        async with router.stream(MESSAGES, task="summarize") as stream:
            async for delta in stream:
                received.append(delta)
                await asyncio.sleep(0.3)
    finally:
        await router.aclose()
    assert "".join(received) == "one two three four"
    assert [a.outcome for a in stream.attempts] == ["success"]


async def test_the_deadline_cuts_a_stalled_stream(up: FakeUpstream) -> None:
    router = build(policy_doc(up.url, deadline_s=0.5))
    try:
        up.reply(PRIMARY, text="one two three four five six")
        up.script(PRIMARY, Fault.stall(after_chunks=2))
        began = time.perf_counter()
        async with asyncio.timeout(10):
            with pytest.raises(StreamInterrupted) as caught:
                async for _ in router.stream(MESSAGES, task="summarize"):
                    pass
        waited = time.perf_counter() - began
    finally:
        await router.aclose()
    assert caught.value.partial_text
    assert caught.value.attempts[0].outcome == "deadline"
    assert waited < 5  # timeout_s is 5 s: the deadline, not the gap timeout, ended it
    assert up.count(model=BACKUP) == 0


async def test_cancelling_a_reader_mid_stream_is_not_a_timeout(up: FakeUpstream) -> None:
    router = build(with_provider(policy_doc(up.url), "primary", timeout_s=0.3))
    try:
        up.reply(PRIMARY, text="one two three four five six")
        up.script(PRIMARY, Fault.stall(after_chunks=2))
        first = asyncio.Event()

        async def read() -> None:
            async for _ in router.stream(MESSAGES, task="summarize"):
                first.set()

        reader = asyncio.create_task(read())
        await first.wait()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await asyncio.sleep(0.5)  # past timeout_s: a timer left behind would fire now
        assert router.candidates["primary"].breaker.failure_count == 0
        assert router.candidates["primary"].in_flight == 0
    finally:
        await router.aclose()


async def test_resume_continues_on_the_next_candidate(up: FakeUpstream) -> None:
    router = build(policy_doc(up.url, on_midstream_failure="resume"))
    try:
        up.reply(PRIMARY, text="one two three four five six")
        up.reply(BACKUP, text="seven eight")
        up.script(PRIMARY, Fault.cut_stream(after_chunks=2))
        stream = router.stream(MESSAGES, task="summarize")
        text = "".join([d async for d in stream])
    finally:
        await router.aclose()
    assert stream.provider == "backup"
    assert text.endswith("seven eight")
    assert len(text) > len("seven eight")
    sent_to_backup = up.requests[-1].body["messages"]
    assert sent_to_backup[-1]["role"] == "assistant"
    assert text.startswith(sent_to_backup[-1]["content"])


async def test_closing_a_stream_early_closes_the_upstream_call(
    up: FakeUpstream, router: Router
) -> None:
    up.reply(PRIMARY, text=" ".join(["word"] * 50), chunk_delay_s=0.02)
    baseline = up.open_connections
    stream = router.stream(MESSAGES, task="summarize")
    async for _ in stream:
        break
    await stream.aclose()
    for _ in range(100):
        if up.open_connections <= baseline:
            break
        await asyncio.sleep(0.02)
    assert up.open_connections <= baseline
    assert router.candidates["primary"].in_flight == 0
    assert router.candidates["primary"].breaker.failure_count == 0


# --- JSON -------------------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int


async def test_schema_failure_falls_through(up: FakeUpstream, router: Router) -> None:
    up.reply(BACKUP, text='{"name": "Ada"}')  # missing age
    up.reply(LOCAL, text='{"name": "Ada", "age": 36}')
    doc_router = router
    person = await doc_router.generate_json(MESSAGES, task="default", schema=Person)
    assert person == Person(name="Ada", age=36)
    assert up.count(model=BACKUP) == 1 and up.count(model=LOCAL) == 1


async def test_generate_json_without_schema_gives_dict(up: FakeUpstream, router: Router) -> None:
    up.reply(BACKUP, text='{"ok": true}')
    assert await router.generate_json(MESSAGES, task="default") == {"ok": True}


# --- ordering strategies ----------------------------------------------------------------------


async def test_cheapest_tries_the_cheaper_model_first(up: FakeUpstream) -> None:
    router = build(policy_doc(up.url, strategy="cheapest"))
    try:
        order = [row["provider"] for row in router.explain("summarize", MESSAGES)]
        r = await router.generate(MESSAGES, task="summarize")
    finally:
        await router.aclose()
    # llama3.2 is priced at 0 by the policy; gpt-4o-mini is far cheaper than sonnet.
    assert order == ["local", "backup", "primary"]
    assert r.provider == "local"


async def test_weighted_draws_the_first_candidate_by_weight(up: FakeUpstream) -> None:
    doc = policy_doc(up.url, strategy="weighted")
    doc["providers"]["primary"]["weight"] = 0
    doc["providers"]["backup"]["weight"] = 1
    doc["providers"]["local"]["weight"] = 0
    router = build(doc)
    try:
        firsts = {router.explain("summarize")[0]["provider"] for _ in range(20)}
    finally:
        await router.aclose()
    assert firsts == {"backup"}


async def test_fastest_prefers_the_lower_observed_latency(up: FakeUpstream) -> None:
    router = build(policy_doc(up.url, strategy="fastest"))
    try:
        up.reply(PRIMARY, latency_s=0.2)
        for _ in range(3):
            await router.generate(MESSAGES, task="summarize")
        # primary (slow) and, via never-measured-first, backup and local each got measured.
        order = [row["provider"] for row in router.explain("summarize")]
    finally:
        await router.aclose()
    assert order[-1] == "primary"


# --- live reload ------------------------------------------------------------------------------


async def test_reload_under_concurrent_load_loses_no_request(
    up: FakeUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "routing.yaml"
    doc = policy_doc(up.url)
    path.write_text(yaml.safe_dump(doc))
    router = Router.from_yaml(
        path, watch_interval_s=0.02, hooks=[GatewayMetrics(CollectorRegistry())]
    )
    try:
        up.reply(PRIMARY, latency_s=0.01)
        up.reply(BACKUP, latency_s=0.01)
        first_sha = router.policy.sha256

        async def rewrite() -> None:
            for i in range(6):
                changed = copy.deepcopy(doc)
                changed["tasks"]["summarize"]["chain"] = (
                    ["backup", "primary"] if i % 2 == 0 else ["primary", "backup"]
                )
                changed["tasks"]["summarize"]["deadline_s"] = 10 + i
                path.write_text(yaml.safe_dump(changed))
                await asyncio.sleep(0.08)

        results = await asyncio.gather(
            rewrite(),
            *(router.generate(MESSAGES, task="summarize") for _ in range(200)),
        )
        answers = results[1:]
        assert len(answers) == 200
        assert all(a.text for a in answers)  # type: ignore[union-attr]
        assert router.policy.sha256 != first_sha
        assert up.count() == 200
        # The breaker and client of an unchanged provider survive reloads.
        assert router.candidates["primary"].client is not None
    finally:
        await router.aclose()


async def test_an_invalid_reload_keeps_the_old_policy(up: FakeUpstream, tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(policy_doc(up.url)))
    registry = CollectorRegistry()
    router = Router.from_yaml(path, watch=False, hooks=[GatewayMetrics(registry)])
    try:
        sha = router.policy.sha256
        broken = policy_doc(up.url)
        broken["tasks"]["summarize"]["chain"] = ["primary", "nobody"]
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(PolicyError) as caught:
            await router.reload()
        assert "tasks.summarize.chain" in str(caught.value)
        assert router.policy.sha256 == sha
        r = await router.generate(MESSAGES, task="summarize")
        assert r.provider == "primary"
        rejected = registry.get_sample_value(
            "gateway_policy_reloads_total", {"outcome": "rejected"}
        )
        assert rejected == 1
    finally:
        await router.aclose()


async def wait_for_policy(router: Router, sha256: str, *, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while router.policy.sha256 != sha256:
        assert time.monotonic() < deadline, f"the watcher did not apply the new file in {within_s}s"
        await asyncio.sleep(0.02)


def twin_policies(url: str) -> tuple[str, str]:
    """Two valid policies of the same length that route `summarize` differently."""
    first, second = policy_doc(url), policy_doc(url)
    second["tasks"]["summarize"]["chain"] = ["backup", "primary", "local"]
    texts = yaml.safe_dump(first), yaml.safe_dump(second)
    assert texts[0] != texts[1] and len(texts[0]) == len(texts[1])
    return texts


def same_mtime(*paths: Path) -> None:
    """Give files one mtime, as a Nix store, a tarball or a ConfigMap volume does."""
    stamp = 1_700_000_000_000_000_000
    for path in paths:
        os.utime(path, ns=(stamp, stamp), follow_symlinks=True)


async def watched(path: Path) -> Router:
    router = Router.from_yaml(
        path, watch_interval_s=0.02, hooks=[GatewayMetrics(CollectorRegistry())]
    )
    await router.__aenter__()  # starts the watcher
    await asyncio.sleep(0.1)  # a few polls of the first file
    return router


async def test_the_watcher_sees_a_symlink_swapped_to_a_file_of_the_same_size_and_mtime(
    up: FakeUpstream, tmp_path: Path
) -> None:
    old_text, new_text = twin_policies(up.url)
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(old_text)
    new.write_text(new_text)
    same_mtime(old, new)
    link = tmp_path / "routing.yaml"
    link.symlink_to(old.name)
    router = await watched(link)
    try:
        assert router.explain("summarize")[0]["provider"] == "primary"
        swap = tmp_path / "routing.yaml.next"
        swap.symlink_to(new.name)
        os.replace(swap, link)  # atomic: the path always names one whole file
        assert (old.stat().st_size, old.stat().st_mtime_ns) == (
            new.stat().st_size,
            new.stat().st_mtime_ns,
        )
        await wait_for_policy(router, parse_policy(new_text).sha256)
        assert router.explain("summarize")[0]["provider"] == "backup"
    finally:
        await router.aclose()


async def test_the_watcher_sees_a_configmap_style_data_swap(
    up: FakeUpstream, tmp_path: Path
) -> None:
    """Kubernetes mounts a ConfigMap as `routing.yaml -> ..data/routing.yaml` with
    `..data -> ..<timestamp>`, and updates it by swapping `..data` to a new directory."""
    old_text, new_text = twin_policies(up.url)
    for version, text in (
        ("..2026_01_01_00_00_00.1", old_text),
        ("..2026_01_01_00_01_00.2", new_text),
    ):
        (tmp_path / version).mkdir()
        (tmp_path / version / "routing.yaml").write_text(text)
        same_mtime(tmp_path / version / "routing.yaml")
    (tmp_path / "..data").symlink_to("..2026_01_01_00_00_00.1")
    (tmp_path / "routing.yaml").symlink_to("..data/routing.yaml")
    router = await watched(tmp_path / "routing.yaml")
    try:
        (tmp_path / "..data_tmp").symlink_to("..2026_01_01_00_01_00.2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        await wait_for_policy(router, parse_policy(new_text).sha256)
        assert router.explain("summarize")[0]["provider"] == "backup"
    finally:
        await router.aclose()


async def test_the_watcher_sees_a_rewrite_in_place_that_keeps_size_and_mtime(
    up: FakeUpstream, tmp_path: Path
) -> None:
    old_text, new_text = twin_policies(up.url)
    path = tmp_path / "routing.yaml"
    path.write_text(old_text)
    same_mtime(path)
    router = await watched(path)
    try:
        inode = path.stat().st_ino
        path.write_text(new_text)  # same inode, same size
        same_mtime(path)  # and the old mtime back, as `cp -p` or `rsync -t` leave it
        assert path.stat().st_ino == inode
        await wait_for_policy(router, parse_policy(new_text).sha256)
    finally:
        await router.aclose()


async def test_reload_keeps_breaker_state_of_unchanged_providers(up: FakeUpstream) -> None:
    doc = with_provider(policy_doc(up.url), "primary", retry={"attempts": 1})
    router = build(doc)
    try:
        up.fail_always(PRIMARY, Fault.server_error())
        for _ in range(3):
            await router.generate(MESSAGES, task="summarize")
        assert router.candidates["primary"].breaker.state == "open"
        changed = copy.deepcopy(doc)
        changed["providers"]["backup"]["model"] = "gpt-4o"
        await router.apply_policy(parse_policy(yaml.safe_dump(changed)))
        assert router.candidates["primary"].breaker.state == "open"
        assert router.candidates["backup"].model == "gpt-4o"
    finally:
        await router.aclose()


def test_sync_facade_serves_apps_without_an_event_loop(tmp_path: Path) -> None:
    from gateway import SyncRouter

    path = tmp_path / "routing.yaml"
    with FakeUpstream.spawn() as upstream:
        path.write_text(yaml.safe_dump(policy_doc(upstream.url)))
        with SyncRouter.from_yaml(
            path, watch=False, hooks=[GatewayMetrics(CollectorRegistry())]
        ) as router:
            r = router.generate(MESSAGES, task="summarize")
            assert r.provider == "primary"
            assert "".join(router.stream(MESSAGES, task="summarize"))
        policy = parse_policy(yaml.safe_dump(policy_doc(upstream.url)))
        with SyncRouter(policy, hooks=[GatewayMetrics(CollectorRegistry())]) as router:
            up_json = router.generate_json(MESSAGES, task="default")
            assert isinstance(up_json, dict)


async def test_complete_json_returns_the_routed_answer(up: FakeUpstream, router: Router) -> None:
    up.reply(BACKUP, text='{"name": "Ada", "age": 36}')
    routed = await router.complete_json(MESSAGES, task="default", schema=Person)
    assert routed.parsed == Person(name="Ada", age=36)
    assert routed.provider == "backup" and routed.cost_usd > 0


async def test_stream_names_its_provider_from_the_first_delta(
    up: FakeUpstream, router: Router
) -> None:
    stream = router.stream(MESSAGES, task="summarize")
    assert stream.provider is None
    await stream.__anext__()
    assert stream.provider == "primary" and stream.model == PRIMARY
    await stream.aclose()


async def test_a_provider_specific_refusal_falls_through(up: FakeUpstream, router: Router) -> None:
    # Anthropic needs a user or assistant turn; OpenAI takes a system-only conversation.
    only_system = [{"role": "system", "content": "Say hello."}]
    r = await router.generate(only_system, task="summarize")
    assert r.provider == "backup"
    assert r.attempts[0].outcome == "unsupported"
    assert up.count(model=PRIMARY) == 0
    stream = router.stream(only_system, task="summarize")
    assert "".join([d async for d in stream])
    assert stream.provider == "backup"
    assert router.candidates["primary"].breaker.failure_count == 0


async def test_an_unpriced_model_is_warned_about_once(
    up: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    doc = policy_doc(up.url)
    doc["providers"]["backup"]["model"] = "mystery-model-9000"
    router = build(doc)
    try:
        with caplog.at_level("WARNING", logger="gateway"):
            for _ in range(3):
                r = await router.generate(MESSAGES, task="default")
                assert r.cost_usd == 0
    finally:
        await router.aclose()
    warnings = [rec for rec in caplog.records if "no price for model" in rec.getMessage()]
    assert len(warnings) == 1
    assert "mystery-model-9000" in warnings[0].getMessage()


async def test_breaker_log_lines_are_for_changes_only(
    up: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="gateway"):
        router = build(with_provider(policy_doc(up.url), "primary", retry={"attempts": 1}))
        try:
            up.fail_always(PRIMARY, Fault.server_error())
            for _ in range(3):
                await router.generate(MESSAGES, task="summarize")
        finally:
            await router.aclose()
    lines = [rec.getMessage() for rec in caplog.records if "circuit breaker" in rec.getMessage()]
    assert lines == ["circuit breaker for primary opened"]
