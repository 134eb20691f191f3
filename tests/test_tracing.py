"""Traces of routed requests (`gateway.tracing`), recorded by the OpenTelemetry SDK's in-memory
exporter: the span tree of a request and its attempts, their GenAI and gateway attributes, no
prompt or answer text, whole and streamed requests, and the attempt's trace context on the
upstream call (FakeUpstream records the headers it received)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway import AllProvidersFailed, Router, UnknownTaskError
from gateway.policy import parse_policy
from gateway.testing import FakeUpstream, Fault
from gateway.tracing import TracingHooks

PRIMARY = "gpt-4o-mini"  # openai protocol
BACKUP = "claude-sonnet-4-5"  # anthropic protocol
LOCAL = "llama3.2"  # ollama protocol
PROMPT = "Summarize the quarterly figures of Globex"
REPLY = "Globex did well this quarter"
MESSAGES = [{"role": "user", "content": PROMPT}]


def policy_doc(url: str) -> dict[str, Any]:
    return {
        "version": 1,
        "defaults": {
            "timeout_s": 5,
            "retry": {"attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.02},
            "breaker": {"fail_max": 3, "reset_timeout_s": 60, "failure_rate": None},
        },
        "providers": {
            "primary": {
                "type": "openai",
                "model": PRIMARY,
                "base_url": f"{url}/v1",
                "api_key": "k",
            },
            "backup": {"type": "anthropic", "model": BACKUP, "base_url": url, "api_key": "k"},
            "local": {"type": "ollama", "model": LOCAL, "base_url": url},
        },
        "prices": {LOCAL: {"input": 0, "output": 0}},
        "tasks": {"summarize": {"chain": ["primary", "backup", "local"]}},
    }


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        upstream.reply(PRIMARY, REPLY)
        upstream.reply(BACKUP, REPLY)
        upstream.reply(LOCAL, REPLY)
        yield upstream


def traced_router(doc: dict[str, Any], provider: TracerProvider) -> Router:
    policy = parse_policy(yaml.safe_dump(doc), source="test.yaml")
    router: Router | None = None
    router = Router(
        policy, hooks=[TracingHooks(lambda: router, tracer_provider=provider)], sleep=no_wait
    )
    return router


@pytest.fixture
async def router(up: FakeUpstream, provider: TracerProvider) -> AsyncIterator[Router]:
    r = traced_router(policy_doc(up.url), provider)
    yield r
    await r.aclose()


def tree(spans: Sequence[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one request span and its children, in the order they started."""
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1, [s.name for s in spans]
    root = roots[0]
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id
    ]
    assert len(children) == len(spans) - 1, "every other span is an attempt under the request"
    return root, sorted(children, key=lambda s: s.start_time or 0)


def every_value(spans: Sequence[ReadableSpan]) -> str:
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.extend(map(str, (span.attributes or {}).values()))
        for event in span.events:
            parts.append(event.name)
            parts.extend(map(str, (event.attributes or {}).values()))
        parts.append(span.status.description or "")
    return "\n".join(parts)


def traceparent_of(span: ReadableSpan) -> str:
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_a_fall_through_is_a_request_span_with_one_child_per_attempt(
    up: FakeUpstream, router: Router, exporter: InMemorySpanExporter
) -> None:
    up.fail_always(PRIMARY, Fault.server_error())

    answer = await router.generate(MESSAGES, task="summarize")

    assert answer.provider == "backup"
    request, (first, second) = tree(exporter.get_finished_spans())
    assert request.name == "chat summarize"
    assert request.kind is SpanKind.INTERNAL
    assert request.status.status_code is StatusCode.UNSET
    assert request.attributes is not None
    assert request.attributes["gateway.task"] == "summarize"
    assert request.attributes["gateway.outcome"] == "success"
    assert request.attributes["gateway.attempts"] == 2
    assert request.attributes["gateway.provider"] == "backup"
    assert request.attributes["gateway.cost_usd"] == pytest.approx(answer.cost_usd)
    assert request.attributes["gen_ai.usage.output_tokens"] == answer.usage.output_tokens

    assert first.name == f"chat {PRIMARY}"
    assert first.kind is SpanKind.CLIENT
    assert first.status.status_code is StatusCode.ERROR
    assert dict(first.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": PRIMARY,
        "server.address": "127.0.0.1",
        "server.port": urlsplit(up.url).port,
        "gateway.provider": "primary",
        "gateway.task": "summarize",
        "gateway.breaker_state": "closed",
        "gateway.attempt.outcome": "server_error",
        "gateway.retries": 2,
        "error.type": "server_error",
    }
    assert [(e.name, dict(e.attributes or {})) for e in first.events] == [
        ("gateway.retry", {"error.type": "server_error"})
    ] * 2

    assert second.name == f"chat {BACKUP}"
    assert second.status.status_code is StatusCode.UNSET
    attributes = dict(second.attributes or {})
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["gen_ai.request.model"] == BACKUP
    assert attributes["gen_ai.response.model"] == answer.model
    assert attributes["gen_ai.response.finish_reasons"] == (answer.finish_reason,)
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == answer.usage.output_tokens
    assert attributes["gateway.cost_usd"] == pytest.approx(answer.cost_usd)
    assert attributes["gateway.attempt.outcome"] == "success"
    assert attributes["gateway.retries"] == 0
    assert attributes["gateway.fallback_from"] == "primary"
    assert attributes["gateway.fallback_reason"] == "server_error"
    assert "error.type" not in attributes


async def test_each_upstream_call_carries_its_attempts_traceparent(
    up: FakeUpstream, router: Router, exporter: InMemorySpanExporter
) -> None:
    up.fail_always(PRIMARY, Fault.server_error())

    await router.generate(MESSAGES, task="summarize")

    _, (first, second) = tree(exporter.get_finished_spans())
    received = [(r.model, r.headers.get("traceparent")) for r in up.requests]
    assert received == [
        (PRIMARY, traceparent_of(first)),  # the call and its two retries
        (PRIMARY, traceparent_of(first)),
        (PRIMARY, traceparent_of(first)),
        (BACKUP, traceparent_of(second)),
    ]


async def test_no_prompt_or_answer_text_is_recorded(
    up: FakeUpstream, router: Router, exporter: InMemorySpanExporter
) -> None:
    up.script(PRIMARY, Fault.server_error())

    whole = await router.generate(MESSAGES, task="summarize")
    streamed = router.stream(MESSAGES, task="summarize")
    text = "".join([delta async for delta in streamed])

    assert whole.text == text == REPLY
    recorded = every_value(exporter.get_finished_spans())
    for word in ("Globex", "quarter"):
        assert word not in recorded
    assert "chat summarize" in recorded  # the check reads what the spans hold


async def test_a_streamed_request_has_the_same_tree(
    up: FakeUpstream, router: Router, exporter: InMemorySpanExporter
) -> None:
    up.fail_always(PRIMARY, Fault.server_error())

    stream = router.stream(MESSAGES, task="summarize")
    text = "".join([delta async for delta in stream])

    assert text == REPLY
    request, (first, second) = tree(exporter.get_finished_spans())
    assert request.name == "chat summarize"
    assert request.attributes is not None
    assert request.attributes["gateway.outcome"] == "success"
    assert request.attributes["gateway.attempts"] == 2
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gateway.attempt.outcome"] == "server_error"
    assert first.attributes["gateway.retries"] == 2
    assert second.attributes["gateway.attempt.outcome"] == "success"
    assert second.attributes["gen_ai.request.stream"] is True
    assert second.attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert second.attributes["gen_ai.usage.output_tokens"] == stream.usage.output_tokens
    assert second.attributes["gen_ai.response.finish_reasons"] == (stream.finish_reason,)
    assert second.attributes["gateway.fallback_reason"] == "server_error"
    assert [r.headers.get("traceparent") for r in up.requests] == [traceparent_of(first)] * 3 + [
        traceparent_of(second)
    ]
    # Nothing of the attempt stays current once the stream is read.
    assert not trace.get_current_span().get_span_context().is_valid


async def test_a_stream_left_early_ends_its_spans_and_leaves_no_context(
    up: FakeUpstream, router: Router, exporter: InMemorySpanExporter
) -> None:
    up.reply(PRIMARY, "one two three four five six seven eight")

    async with router.stream(MESSAGES, task="summarize") as stream:
        async for _ in stream:
            break

    request, (attempt,) = tree(exporter.get_finished_spans())
    assert request.attributes is not None and attempt.attributes is not None
    assert attempt.attributes["gateway.attempt.outcome"] == "cancelled"
    assert attempt.status.status_code is StatusCode.ERROR
    assert request.attributes["gateway.outcome"] == "cancelled"
    assert not trace.get_current_span().get_span_context().is_valid


async def test_an_open_breaker_is_a_short_child_span_that_says_so(
    up: FakeUpstream, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    doc = policy_doc(up.url)
    doc["providers"]["primary"]["breaker"] = {"fail_max": 1}
    doc["providers"]["primary"]["retry"] = {"attempts": 1}
    up.fail_always(PRIMARY, Fault.server_error())
    router = traced_router(doc, provider)
    try:
        await router.generate(MESSAGES, task="summarize")  # opens primary's breaker
        exporter.clear()
        await router.generate(MESSAGES, task="summarize")
    finally:
        await router.aclose()

    request, (skipped, answered) = tree(exporter.get_finished_spans())
    assert skipped.name == f"chat {PRIMARY}"
    assert skipped.attributes is not None
    assert skipped.attributes["gateway.attempt.outcome"] == "breaker_open"
    assert skipped.attributes["gateway.breaker_state"] == "open"
    assert skipped.attributes["gen_ai.provider.name"] == "openai"
    assert "error.type" not in skipped.attributes  # skipped, not failed
    assert skipped.status.status_code is StatusCode.UNSET
    assert answered.attributes is not None
    assert answered.attributes["gateway.fallback_reason"] == "breaker_open"
    assert request.attributes is not None and request.attributes["gateway.attempts"] == 2
    assert up.count(PRIMARY) == 1  # the skipped candidate made no call


async def test_a_request_every_provider_fails_ends_in_error(
    up: FakeUpstream, router: Router, exporter: InMemorySpanExporter
) -> None:
    for model in (PRIMARY, BACKUP, LOCAL):
        up.fail_always(model, Fault.server_error())

    with pytest.raises(AllProvidersFailed):
        await router.generate(MESSAGES, task="summarize")

    request, attempts = tree(exporter.get_finished_spans())
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes is not None
    assert request.attributes["error.type"] == "exhausted"
    assert [a.name for a in attempts] == [f"chat {m}" for m in (PRIMARY, BACKUP, LOCAL)]
    assert [dict(a.attributes or {})["gen_ai.provider.name"] for a in attempts] == [
        "openai",
        "anthropic",
        "ollama",
    ]
    assert all(a.status.status_code is StatusCode.ERROR for a in attempts)


async def test_a_request_refused_before_its_walk_is_one_error_span(
    router: Router, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(UnknownTaskError):
        await router.generate(MESSAGES, task="no-such-task")

    (span,) = exporter.get_finished_spans()
    assert span.name == "chat (unknown)"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "rejected"
    assert "no-such-task" not in every_value([span])


async def test_concurrent_requests_keep_their_own_trees(
    up: FakeUpstream, router: Router, exporter: InMemorySpanExporter
) -> None:
    up.fail_always(PRIMARY, Fault.server_error())

    await asyncio.gather(
        *(router.generate(MESSAGES, task="summarize") for _ in range(5)),
        *(_read(router.stream(MESSAGES, task="summarize")) for _ in range(5)),
    )

    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.parent is None]
    assert len(requests) == 10
    for request in requests:
        children = [s for s in spans if s.parent and s.parent.span_id == request.context.span_id]
        assert [dict(c.attributes or {})["gateway.provider"] for c in children] == [
            "primary",
            "backup",
        ]
        assert all(c.context.trace_id == request.context.trace_id for c in children)


async def _read(stream: AsyncIterator[str]) -> str:
    return "".join([delta async for delta in stream])


async def test_the_caller_s_current_span_is_the_request_s_parent(
    router: Router, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("handle order") as outer:
        await router.generate(MESSAGES, task="summarize")

    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = spans["chat summarize"]
    assert request.parent is not None
    assert request.parent.span_id == outer.get_span_context().span_id
    assert spans[f"chat {PRIMARY}"].parent.span_id == request.context.span_id  # type: ignore[union-attr]


async def test_a_stream_abandoned_to_the_garbage_collector_ends_its_spans_elsewhere_cleanly(
    up: FakeUpstream,
    router: Router,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up.reply(PRIMARY, "one two three four five six seven eight")

    async def read_one_delta() -> None:
        async for _ in router.stream(MESSAGES, task="summarize"):
            break  # neither read to the end nor closed: left to the garbage collector

    await asyncio.create_task(read_one_delta())
    gc.collect()
    for _ in range(20):  # the loop closes the abandoned generator in a task of its own
        await asyncio.sleep(0)

    request, (attempt,) = tree(exporter.get_finished_spans())
    assert attempt.attributes is not None
    assert attempt.attributes["gateway.attempt.outcome"] == "cancelled"
    assert request.attributes is not None
    assert request.attributes["gateway.outcome"] == "cancelled"
    # Its context was attached in the reading task and is never detached from another.
    assert "Failed to detach context" not in caplog.text
    assert not trace.get_current_span().get_span_context().is_valid


async def test_providers_on_their_official_sdks_send_the_traceparent_too(
    up: FakeUpstream, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    doc = policy_doc(up.url)
    doc["providers"]["primary"]["options"] = {"client": "sdk"}
    doc["providers"]["backup"]["options"] = {"client": "sdk"}
    up.fail_always(PRIMARY, Fault.server_error())
    router = traced_router(doc, provider)
    try:
        await router.generate(MESSAGES, task="summarize")
    finally:
        await router.aclose()

    _, (first, second) = tree(exporter.get_finished_spans())
    assert [(r.model, r.headers.get("traceparent")) for r in up.requests] == [
        (PRIMARY, traceparent_of(first))
    ] * 3 + [(BACKUP, traceparent_of(second))]


async def test_an_embedding_request_is_traced_as_embeddings(
    up: FakeUpstream, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    doc = policy_doc(up.url)
    doc["providers"]["embedder"] = {
        "type": "openai",
        "model": "text-embedding-3-small",
        "base_url": f"{up.url}/v1",
        "api_key": "k",
    }
    doc["tasks"]["search"] = {"kind": "embedding", "chain": ["embedder"]}
    router = traced_router(doc, provider)
    try:
        answer = await router.embed(["routers route", "breakers break"], task="search")
    finally:
        await router.aclose()

    request, (attempt,) = tree(exporter.get_finished_spans())
    assert request.name == "embeddings search"
    assert attempt.name == "embeddings text-embedding-3-small"
    assert attempt.attributes is not None
    assert attempt.attributes["gen_ai.operation.name"] == "embeddings"
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["gen_ai.usage.input_tokens"] == answer.usage.input_tokens > 0
    assert "routers" not in every_value(exporter.get_finished_spans())
    # The upstream embedding call carries its attempt's trace context, as a chat call does.
    assert [r.headers.get("traceparent") for r in up.requests] == [traceparent_of(attempt)]
