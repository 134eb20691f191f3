"""Issue 15: steerable fall-through. `stop_on` ends a request at once on the kinds it names;
`redirect` hands a request to another task's chain on a kind (e.g. a prompt too long for the
short-context chain goes to the long-context one). Through the public API on a FakeUpstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway import (
    AllProvidersFailed,
    AttemptOutcome,
    Router,
)
from gateway.errors import RequestRefused
from gateway.policy import parse_policy
from gateway.testing import FakeUpstream, Fault, set_waits_enabled

PROVIDERS = """
version: 1
defaults:
  retry: {attempts: 1}
providers:
  a: {type: openai, model: model-a, base_url: "${FAKE}/v1", api_key: unused}
  b: {type: openai, model: model-b, base_url: "${FAKE}/v1", api_key: unused}
  long: {type: openai, model: model-long, base_url: "${FAKE}/v1", api_key: unused}
  tiny: {type: openai, model: model-tiny, base_url: "${FAKE}/v1", api_key: unused,
         max_input_tokens: 5}
"""
QUESTION = [{"role": "user", "content": "hi"}]
LONG_PROMPT = [{"role": "user", "content": "a rather long prompt " * 10}]


@pytest.fixture(autouse=True)
def no_waits() -> Iterator[None]:
    set_waits_enabled(False)
    yield
    set_waits_enabled(True)


def router_for(upstream: FakeUpstream, tasks: str, defaults: str = "") -> Router:
    text = PROVIDERS.replace("  retry: {attempts: 1}\n", "  retry: {attempts: 1}\n" + defaults)
    return Router(parse_policy(text + "tasks:\n" + tasks, environ={"FAKE": upstream.url}))


async def answer(router: Router, *, stream: bool, task: str, messages: Any = QUESTION) -> Any:
    if not stream:
        return await router.generate(messages, task=task)
    async with router.stream(messages, task=task) as chunks:
        [delta async for delta in chunks]
    return chunks


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_every_kind_falls_through_by_default(upstream: FakeUpstream, stream: bool) -> None:
    upstream.fail_always("model-a", Fault.content_filter())
    async with router_for(upstream, "  chat: {chain: [a, b]}\n") as router:
        served = await answer(router, stream=stream, task="chat")
    assert served.provider == "b"
    assert served.attempts[0].outcome == AttemptOutcome.CONTENT_FILTER


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_stop_on_ends_the_request_at_that_kind(upstream: FakeUpstream, stream: bool) -> None:
    upstream.fail_always("model-a", Fault.content_filter())
    tasks = "  chat: {chain: [a, b], stop_on: [content_filter]}\n"
    async with router_for(upstream, tasks) as router:
        with pytest.raises(AllProvidersFailed, match="stops on content_filter") as stopped:
            await answer(router, stream=stream, task="chat")
    assert [(a.provider, a.outcome) for a in stopped.value.attempts] == [
        ("a", AttemptOutcome.CONTENT_FILTER)
    ]
    assert upstream.count("model-b") == 0


async def test_stop_on_a_request_fault_is_a_refusal_of_the_request(upstream: FakeUpstream) -> None:
    upstream.fail_always("model-a", Fault.status(400))
    async with router_for(upstream, "  chat: {chain: [a, b]}\n", "  stop_on: [bad_request]\n") as r:
        with pytest.raises(RequestRefused) as refused:
            await r.generate(QUESTION, task="chat")  # defaults.stop_on applies
    assert refused.value.status == 400
    assert upstream.count("model-b") == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_context_length_is_redirected_to_the_long_context_chain(
    upstream: FakeUpstream, stream: bool
) -> None:
    upstream.fail_always("model-a", Fault.context_length())
    tasks = (
        "  chat: {chain: [a, b], redirect: {context_length: {task: long_context}}}\n"
        "  long_context: {chain: [long]}\n"
    )
    async with router_for(upstream, tasks) as router:
        served = await answer(router, stream=stream, task="chat")
    assert served.provider == "long"
    assert [(a.provider, a.outcome) for a in served.attempts] == [
        ("a", AttemptOutcome.CONTEXT_LENGTH),
        ("long", AttemptOutcome.SUCCESS),
    ]
    assert upstream.count("model-b") == 0  # the rest of chat's chain is not tried


async def test_a_prompt_too_long_for_a_candidate_is_redirected_too(upstream: FakeUpstream) -> None:
    tasks = (
        "  chat: {chain: [tiny, b], redirect: {context_length: {task: long_context}}}\n"
        "  long_context: {chain: [long]}\n"
    )
    async with router_for(upstream, tasks) as router:
        served = await router.generate(LONG_PROMPT, task="chat")
        assert served.provider == "long"
        assert served.attempts[0].outcome == AttemptOutcome.SKIPPED_CONTEXT
        short = await router.generate(QUESTION, task="chat")  # fits: no redirect
        assert short.provider == "tiny"


async def test_the_task_redirected_to_applies_its_own_rules(upstream: FakeUpstream) -> None:
    upstream.fail_always("model-a", Fault.context_length())
    upstream.fail_always("model-long", Fault.content_filter())
    tasks = (
        "  chat: {chain: [a, b], redirect: {context_length: {task: long_context}}}\n"
        "  long_context: {chain: [long, b], stop_on: [content_filter]}\n"
    )
    async with router_for(upstream, tasks) as router:
        with pytest.raises(AllProvidersFailed, match="stops on content_filter"):
            await router.generate(QUESTION, task="chat")
    assert upstream.count("model-b") == 0
