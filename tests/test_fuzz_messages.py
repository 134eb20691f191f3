"""Fuzzing message conversion: whatever list of messages a caller passes, each provider
either builds a request its API accepts or raises InvalidRequestError naming the field.

Never another exception: an AttributeError from a malformed `tool_calls` would reach the
caller as a crash instead of a 400 that says what to fix. The payload rules checked below
are the APIs' documented request rules, limited to the parts the gateway builds or converts.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from gateway.errors import GatewayError, InvalidRequestError, ProviderError
from gateway.providers import (
    AnthropicService,
    Call,
    LLMService,
    OllamaService,
    OpenAIService,
    Redactor,
)
from gateway.providers._litellm import LiteLLMService
from gateway.testing import FakeUpstream
from gateway.types import validate_messages

FUZZ = settings(
    # GATEWAY_FUZZ_EXAMPLES=5000 for a longer hunt than `make test` affords.
    max_examples=int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "150")),
    deadline=None,  # shared machines are noisy; these tests are about outcomes, not speed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UNUSED_URL = "http://127.0.0.1:9"  # never contacted: building a payload sends nothing

# --- random messages ------------------------------------------------------------------------

junk = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
texts = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "\n\t ", "json", "hi"]))
urls = st.one_of(
    st.sampled_from(
        [
            "data:image/png;base64,iVBORw0KGgo=",
            "data:image/jpeg;base64,/9j/4AAQ",
            "data:,",
            "data:image/png;base64,",
            "data:text/plain;base64,aGk=",
            "https://example.com/cat.png",
            "",
        ]
    ),
    st.text(max_size=20),
    junk,
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text"]), "text": texts}),
    st.fixed_dictionaries({"type": st.just("text")}, optional={"text": junk}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.one_of(urls, st.fixed_dictionaries({"url": urls})),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["document", "tool_result", "input_audio", "mystery", ""])},
        optional={"text": texts, "source": junk},
    ),
    st.dictionaries(st.text(max_size=5), junk, max_size=3),  # no type at all
    junk,
)
contents = st.one_of(texts, st.lists(parts, max_size=4), junk)
arguments = st.one_of(
    st.sampled_from(['{"city": "Paris"}', "{}", "", "[1, 2]", "not json", "null"]),
    st.dictionaries(st.text(max_size=5), junk, max_size=2),
    junk,
)
functions = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(st.text(max_size=10), junk), "arguments": arguments}),
    st.fixed_dictionaries({}, optional={"name": junk, "arguments": arguments}),
    junk,
)
tool_calls = st.one_of(
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "id": st.one_of(st.text(min_size=1, max_size=8), junk),
                    "type": st.just("function"),
                },
                optional={"function": functions},
            ),
            junk,
        ),
        max_size=3,
    ),
    junk,
)
roles = st.one_of(
    st.sampled_from(["system", "user", "assistant", "tool", "developer", "wizard"]),
    junk,
    st.lists(st.just("user"), max_size=1),  # unhashable
)
messages_strategy = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"role": roles, "content": contents},
            optional={
                "tool_calls": tool_calls,
                "tool_call_id": st.one_of(st.text(max_size=8), junk),
                "name": st.text(max_size=8),
            },
        ),
        junk,
    ),
    max_size=6,
)


# Mostly well-formed conversations, with the edge values real callers send: blank texts, empty
# part lists, null contents, images of odd types, tool calls and their results.
good_texts = st.one_of(
    st.sampled_from(["hi", "What is the weather?", "json please", "", " ", "\n", "ok "]),
    st.text(min_size=1, max_size=20),
)
good_parts = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text"]), "text": good_texts}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": urls})}
    ),
)
good_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["call_1", "call_2"]),
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["weather", "search"]),
                    "arguments": st.sampled_from(['{"city": "Paris"}', "{}", ""]),
                }
            ),
        }
    ),
    min_size=1,
    max_size=2,
)
good_content = st.one_of(good_texts, st.lists(good_parts, max_size=3))
conversations = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user"]), "content": good_content}
        ),
        st.fixed_dictionaries(
            {"role": st.just("assistant"), "content": st.one_of(st.none(), good_content)},
            optional={"tool_calls": good_calls},
        ),
        st.fixed_dictionaries(
            {"role": st.just("tool"), "content": st.one_of(st.none(), good_texts)},
            optional={"tool_call_id": st.sampled_from(["call_1", "call_2"])},
        ),
    ),
    min_size=1,
    max_size=6,
)


# --- what each API accepts --------------------------------------------------------------------

ANTHROPIC_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def _nonblank(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def anthropic_problems(request: dict[str, Any]) -> list[str]:
    """The Messages API's request rules for what the converter produces."""
    problems = []
    if not isinstance(request.get("system", ""), str):
        problems.append("system is not a string")
    turns = request.get("messages")
    if not isinstance(turns, list) or not turns:
        return ["messages is empty"]
    for i, turn in enumerate(turns):
        if turn.get("role") not in {"user", "assistant"}:
            problems.append(f"messages[{i}].role {turn.get('role')!r}")
        if i and turn.get("role") == turns[i - 1].get("role"):
            problems.append(f"messages[{i}] repeats role {turn.get('role')!r}")
        content = turn.get("content")
        if isinstance(content, str):
            # "text content blocks must contain non-whitespace text"
            if not _nonblank(content):
                problems.append(f"messages[{i}].content is blank")
            continue
        if not isinstance(content, list) or not content:
            problems.append(f"messages[{i}].content is empty or not a list")
            continue
        for j, block in enumerate(content):
            problems += [f"messages[{i}].content[{j}]: {p}" for p in _anthropic_block(block)]
    last = turns[-1]
    content = last.get("content")
    tail = content[-1].get("text") if isinstance(content, list) and content else content
    # "final assistant content cannot end with trailing whitespace"
    if last.get("role") == "assistant" and isinstance(tail, str) and tail != tail.rstrip():
        problems.append("the final assistant turn ends with whitespace")
    return problems


def _anthropic_block(block: Any) -> list[str]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return ["not a block with a type"]
    kind = block["type"]
    if kind == "text" and not _nonblank(block.get("text")):
        return ["blank text block"]
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in ANTHROPIC_IMAGE_TYPES or not source.get("data"):
                return [f"unusable base64 image {source.get('media_type')!r}"]
        elif not (source.get("type") == "url" and str(source.get("url", "")).startswith("http")):
            return [f"image source {source!r:.60}"]
    if kind == "tool_use":
        if not (_nonblank(block.get("id")) and _nonblank(block.get("name"))):
            return ["tool_use without an id and a name"]
        if not isinstance(block.get("input"), dict):
            return ["tool_use input is not an object"]
    if kind == "tool_result" and not _nonblank(block.get("tool_use_id")):
        return ["tool_result without a tool_use_id"]
    return []  # other types are the caller's native Anthropic blocks, passed through


OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def openai_problems(request: dict[str, Any]) -> list[str]:
    """Chat Completions' rules for the shapes of a `messages` list.

    OpenAI is the gateway's own message format, passed through unconverted; its cross-field
    rules (a tool message's tool_call_id, a null content only beside tool_calls) are the
    caller's to keep and OpenAI's to enforce: its 400 names the field.
    """
    problems = []
    for i, message in enumerate(request.get("messages") or ["empty"]):
        if not isinstance(message, dict) or message.get("role") not in OPENAI_ROLES:
            problems.append(f"messages[{i}] has no valid role")
            continue
        content = message.get("content")
        if not (content is None or isinstance(content, str | list)):
            problems.append(f"messages[{i}].content is {type(content).__name__}")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    problems.append(f"messages[{i}].content[{j}] has no type")
        calls = message.get("tool_calls")
        if calls is not None:
            problems += [f"messages[{i}].{p}" for p in _openai_tool_calls(calls)]
    return problems


def _openai_tool_calls(calls: Any) -> list[str]:
    if not isinstance(calls, list):
        return ["tool_calls is not a list"]
    problems = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (
            isinstance(call, dict)
            and _nonblank(call.get("id"))
            and isinstance(function, dict)
            and _nonblank(function.get("name"))
            and isinstance(function.get("arguments", ""), str | dict)
        ):
            problems.append(f"tool_calls[{j}] is not {{id, function: {{name, arguments}}}}")
    return problems


def ollama_problems(body: dict[str, Any]) -> list[str]:
    """/api/chat's rules: string contents, base64 images, tool calls with object arguments."""
    problems = []
    for i, message in enumerate(body.get("messages") or ["empty"]):
        if not isinstance(message, dict) or message.get("role") not in OPENAI_ROLES - {"developer"}:
            problems.append(f"messages[{i}] has no valid role")
            continue
        if not isinstance(message.get("content"), str):
            problems.append(f"messages[{i}].content is not a string")
        images = message.get("images", [])
        if not (isinstance(images, list) and all(isinstance(x, str) and x for x in images)):
            problems.append(f"messages[{i}].images are not base64 strings")
        for j, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if not (
                isinstance(function, dict)
                and _nonblank(function.get("name"))
                and isinstance(function.get("arguments"), dict)
            ):
                problems.append(f"messages[{i}].tool_calls[{j}] is not {{name, arguments{{}}}}")
    return problems


# --- the payload builders ---------------------------------------------------------------------

Builder = Callable[[list[dict[str, Any]], bool], dict[str, Any]]


@pytest.fixture(scope="module")
def builders() -> Iterator[dict[str, tuple[Builder, Callable[[dict[str, Any]], list[str]]]]]:
    openai = OpenAIService(api_key="test-key", base_url=UNUSED_URL)
    anthropic = AnthropicService(api_key="test-key", base_url=UNUSED_URL)
    ollama = OllamaService(base_url=UNUSED_URL)
    litellm = LiteLLMService(model="openai/gpt-4o-mini", api_key="test-key", base_url=UNUSED_URL)
    yield {
        # The same calls complete() and stream() make before anything is sent.
        "openai": (lambda m, j: openai.request(_call(m, j)).body, openai_problems),
        "anthropic": (lambda m, j: anthropic.request(_call(m, j)).body, anthropic_problems),
        "ollama": (lambda m, j: ollama.request(_call(m, j)).body, ollama_problems),
        "litellm": (lambda m, j: litellm._request(_call(m, j)), openai_problems),
    }
    asyncio.run(_close(openai, anthropic, ollama, litellm))


def _call(messages: list[dict[str, Any]], json_mode: bool) -> Call:
    return Call(
        provider="fuzz",
        model="fuzz-model",
        messages=validate_messages(messages),
        temperature=None,
        max_tokens=None,
        json_mode=json_mode,
        params={},
        timeout_s=30.0,
        stream=False,
        redact=Redactor(),
    )


async def _close(*services: LLMService) -> None:
    for service in services:
        await service.aclose()


def _tally(outcome: str) -> None:
    """Count outcomes in --hypothesis-show-statistics, to see how deep the fuzzing reaches."""
    if currently_in_test_context():
        event(outcome)


def build_or_refuse(build: Builder, messages: Any, json_mode: bool) -> dict[str, Any] | None:
    """The payload, or None when the messages were refused with an InvalidRequestError."""
    try:
        checked = validate_messages(messages)
        payload = build(checked, json_mode)
    except InvalidRequestError as exc:
        assert "messages" in str(exc), f"the error does not name the field: {exc}"
        _tally("InvalidRequestError")
        return None
    json.dumps(payload)  # everything an SDK sends must be JSON
    _tally("payload")
    return payload


PROVIDERS = ["openai", "anthropic", "ollama", "litellm"]


def _image_message(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize("provider", PROVIDERS)
@FUZZ
@given(messages=messages_strategy, json_mode=st.booleans())
# What the fuzzing found once, kept as fixed cases: each raised TypeError or AttributeError.
@example(messages=[{"role": ["user"], "content": "x"}], json_mode=False)
@example(messages=[{"role": "assistant", "content": None, "tool_calls": "abc"}], json_mode=False)
@example(messages=[{"role": "assistant", "content": "", "tool_calls": [None]}], json_mode=False)
@example(
    messages=[{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": "f"}]}],
    json_mode=False,
)
def test_hostile_messages_give_a_valid_payload_or_invalid_request_error(
    builders: dict[str, tuple[Builder, Callable[[dict[str, Any]], list[str]]]],
    provider: str,
    messages: Any,
    json_mode: bool,
) -> None:
    build, problems_of = builders[provider]
    payload = build_or_refuse(build, messages, json_mode)
    if payload is not None:
        assert problems_of(payload) == []


@pytest.mark.parametrize("provider", PROVIDERS)
@FUZZ
@given(messages=conversations, json_mode=st.booleans())
# What the fuzzing found once, kept as fixed cases: each built a payload the API refuses.
@example(
    messages=[{"role": "user", "content": " "}, {"role": "user", "content": "hi"}], json_mode=False
)
@example(
    messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, "}],
    json_mode=False,
)
@example(messages=_image_message("data:text/plain;base64,aGk="), json_mode=False)
@example(messages=_image_message("data:image/png;base64,"), json_mode=False)
@example(messages=_image_message("cat.png"), json_mode=False)
def test_conversations_give_a_valid_payload_or_invalid_request_error(
    builders: dict[str, tuple[Builder, Callable[[dict[str, Any]], list[str]]]],
    provider: str,
    messages: Any,
    json_mode: bool,
) -> None:
    build, problems_of = builders[provider]
    payload = build_or_refuse(build, messages, json_mode)
    if payload is not None:
        assert problems_of(payload) == []


# --- the same, through the real SDKs onto the wire ------------------------------------------


class Wire:
    """FakeUpstream and one client per provider on a private event loop, for sync examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.upstream = FakeUpstream()
        self.loop.run_until_complete(self.upstream.start())
        url = self.upstream.url
        self.services: dict[str, LLMService] = {
            "openai": OpenAIService(api_key="test-key", base_url=url + "/v1"),
            "anthropic": AnthropicService(api_key="test-key", base_url=url),
            "ollama": OllamaService(base_url=url),
        }

    def send(self, provider: str, messages: Any) -> dict[str, Any] | None:
        """What went on the wire, or None when the call was refused before sending."""
        sent_before = len(self.upstream.requests)
        try:
            self.loop.run_until_complete(self.services[provider].complete(messages))
        except InvalidRequestError:
            assert len(self.upstream.requests) == sent_before, "refused, yet sent"
            _tally("InvalidRequestError")
            return None
        except ProviderError as exc:
            pytest.fail(f"FakeUpstream refused the payload as malformed: {exc}")
        _tally("sent")
        return self.upstream.requests[-1].body

    def close(self) -> None:
        async def close() -> None:
            await _close(*self.services.values())
            await self.upstream.close()

        self.loop.run_until_complete(close())
        self.loop.close()


@pytest.fixture(scope="module")
def wire() -> Iterator[Wire]:
    harness = Wire()
    yield harness
    harness.close()


WIRE_CHECKS = {
    "openai": openai_problems,
    "anthropic": anthropic_problems,
    "ollama": ollama_problems,
}


@pytest.mark.parametrize("provider", sorted(WIRE_CHECKS))
@settings(FUZZ, max_examples=max(20, FUZZ.max_examples // 3))
@given(messages=st.one_of(conversations, messages_strategy))
def test_what_the_sdks_send_is_valid(wire: Wire, provider: str, messages: Any) -> None:
    try:
        body = wire.send(provider, messages)
    except GatewayError as exc:
        pytest.fail(f"{type(exc).__name__} instead of InvalidRequestError or an answer: {exc}")
    if body is not None:
        assert WIRE_CHECKS[provider](body) == []
