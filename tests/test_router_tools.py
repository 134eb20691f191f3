"""Issue 14 for the Python API: tools, structured output and request fields through `Router`.

Every test drives a `Router` built from a YAML policy over real HTTP, against an in-process
FakeUpstream (or, for upstream bodies the fake will not produce, a canned HTTP server), for the
openai, anthropic and ollama provider types, and checks what reached the upstream in its own
protocol (`FakeUpstream.requests`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from gateway import (
    AllProvidersFailed,
    InvalidRequestError,
    RequestRefused,
    Router,
    StreamInterrupted,
    SyncRouter,
    TextDelta,
    ToolCallDelta,
)
from gateway.policy import parse_policy
from gateway.testing import FakeUpstream, Fault, ReceivedRequest
from gateway.types import ToolCall

TYPES = ("openai", "anthropic", "ollama")
MODELS = {
    # provider type: (the task's first candidate, its backup of the same type)
    "openai": ("gpt-4o-mini", "gpt-4o"),
    "anthropic": ("claude-sonnet-4-5", "claude-haiku-4-5"),
    "ollama": ("llama3.2", "qwen2.5"),
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "hour24": {"type": "boolean"}},
            "required": ["city", "hour24"],
        },
    },
}


class City(BaseModel):
    name: str
    country: str
    population: int


class CityMaybe(BaseModel):
    """Not every property required: no strict mode on OpenAI, a forced tool on Anthropic."""

    name: str
    country: str | None = None


def base_url(kind: str, url: str) -> str:
    return f"{url}/v1" if kind == "openai" else url


def provider_yaml(name: str, kind: str, model: str, url: str) -> str:
    return (
        f'  {name}: {{type: {kind}, model: {model}, base_url: "{base_url(kind, url)}", '
        "api_key: test}\n"
    )


def policy_yaml(url: str, bad_url: str | None = None) -> str:
    """For each type T: providers T and T-backup; tasks T (alone), T-chain ([T, T-backup]),
    T-resume (the chain, resuming streams midway) and, with `bad_url`, T-bad ([T-bad on the
    canned server, T-backup]); and anthropic-then-openai."""
    providers, tasks = "", ""
    for kind, (model, backup) in MODELS.items():
        providers += provider_yaml(kind, kind, model, url)
        providers += provider_yaml(f"{kind}-backup", kind, backup, url)
        tasks += f"  {kind}: {{chain: [{kind}]}}\n"
        tasks += f"  {kind}-chain: {{chain: [{kind}, {kind}-backup]}}\n"
        tasks += (
            f"  {kind}-resume: {{chain: [{kind}, {kind}-backup], on_midstream_failure: resume}}\n"
        )
        if bad_url is not None:
            providers += provider_yaml(f"{kind}-bad", kind, "bad-model", bad_url)
            tasks += f"  {kind}-bad: {{chain: [{kind}-bad, {kind}-backup]}}\n"
    tasks += "  anthropic-then-openai: {chain: [anthropic, openai]}\n"
    return (
        "version: 1\n"
        "defaults:\n"
        "  timeout_s: 10\n"
        "  retry: {attempts: 1}\n"
        "providers:\n"
        f"{providers}"
        "prices:\n"
        "  llama3.2: {input: 0, output: 0}\n"
        "  qwen2.5: {input: 0, output: 0}\n"
        "  bad-model: {input: 0, output: 0}\n"
        "tasks:\n"
        f"{tasks}"
    )


@pytest.fixture
async def router(upstream: FakeUpstream) -> AsyncIterator[Router]:
    r = Router(parse_policy(policy_yaml(upstream.url), source="tools.yaml"), hooks=[])
    yield r
    await r.aclose()


def last_request(up: FakeUpstream, model: str) -> ReceivedRequest:
    received = [r for r in up.requests if r.model == model]
    assert received, f"{model} received no request"
    return received[-1]


def tool_message(call: ToolCall, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": content}


def anthropic_schema(body: dict[str, Any]) -> dict[str, Any]:
    """The schema an Anthropic request asks the answer to follow: its native output format, or
    the input schema of the tool it forces."""
    for key in ("output_config", "output_format"):
        fmt = body.get(key)
        if isinstance(fmt, dict):
            fmt = fmt.get("format", fmt)
            if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
                return fmt["schema"]
    choice = body.get("tool_choice") or {}
    assert choice.get("type") == "tool", f"neither a native format nor a forced tool: {body}"
    (forced,) = [t for t in body["tools"] if t["name"] == choice["name"]]
    return forced["input_schema"]


def properties(schema: dict[str, Any]) -> set[str]:
    return set(schema.get("properties") or {})


# --- tool calling, whole ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
async def test_a_tool_call_comes_back_whole(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    result = await router.generate(QUESTION, task=kind, tools=[WEATHER])
    assert result.provider == kind
    assert result.finish_reason == "tool_calls"
    assert result.text == ""
    (call,) = result.tool_calls
    assert call.name == "get_weather" and call.id
    arguments = call.parsed_arguments()
    assert isinstance(arguments, dict) and isinstance(arguments.get("city"), str)
    assert result.message["tool_calls"] == [call.to_openai()]
    body = last_request(upstream, MODELS[kind][0]).body
    if kind == "anthropic":
        assert body["tools"] == [
            {
                "name": "get_weather",
                "description": "The weather in a city now",
                "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
            }
        ]
    else:
        assert body["tools"] == [WEATHER]


@pytest.mark.parametrize("kind", TYPES)
async def test_a_tool_round_trip_ends_in_text(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    first = await router.generate(QUESTION, task=kind, tools=[WEATHER])
    (call,) = first.tool_calls
    history = [*QUESTION, first.message, tool_message(call, "18C and sunny")]
    second = await router.generate(history, task=kind, tools=[WEATHER])
    assert second.tool_calls == ()
    assert second.finish_reason == "stop"
    assert "18C and sunny" in second.text, "the fake quotes the tool result it was sent"
    body = last_request(upstream, MODELS[kind][0]).body
    if kind == "anthropic":
        assistant, result = body["messages"][1:]
        assert assistant["role"] == "assistant"
        assert [b["type"] for b in assistant["content"]] == ["tool_use"]
        assert assistant["content"][0]["id"] == call.id
        assert result["role"] == "user"
        assert result["content"][0]["type"] == "tool_result"
        assert result["content"][0]["tool_use_id"] == call.id
    else:
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool"]
        assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("kind", TYPES)
async def test_tool_choice_none_answers_text(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    result = await router.generate(QUESTION, task=kind, tools=[WEATHER], tool_choice="none")
    assert result.tool_calls == ()
    assert result.text and result.finish_reason == "stop"
    body = last_request(upstream, MODELS[kind][0]).body
    if kind == "openai":
        assert body["tool_choice"] == "none"
    elif kind == "anthropic":
        assert body["tool_choice"] == {"type": "none"}
    else:
        assert "tools" not in body, "Ollama has no tool_choice: no tools are sent"


@pytest.mark.parametrize("kind", TYPES)
async def test_tool_choice_required_calls_a_tool_even_after_a_result(
    router: Router, kind: str
) -> None:
    first = await router.generate(QUESTION, task=kind, tools=[WEATHER], tool_choice="required")
    (call,) = first.tool_calls
    assert call.name == "get_weather" and first.finish_reason == "tool_calls"
    history = [*QUESTION, first.message, tool_message(call, "18C and sunny")]
    again = await router.generate(history, task=kind, tools=[WEATHER], tool_choice="required")
    assert [c.name for c in again.tool_calls] == ["get_weather"]
    assert isinstance(again.tool_calls[0].parsed_arguments(), dict)


@pytest.mark.parametrize("kind", TYPES)
async def test_a_named_tool_choice_calls_that_tool(router: Router, kind: str) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    result = await router.generate(QUESTION, task=kind, tools=[WEATHER, TIME], tool_choice=named)
    (call,) = result.tool_calls
    assert call.name == "get_time", "not the first tool: the one named"
    arguments = call.parsed_arguments()
    assert isinstance(arguments["city"], str) and isinstance(arguments["hour24"], bool)
    assert result.finish_reason == "tool_calls"


@pytest.mark.parametrize("kind", TYPES)
async def test_parallel_tool_calls_come_back_both(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    upstream.reply(
        MODELS[kind][0],
        tool_calls=[
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": {"city": "Rome", "hour24": True}},
        ],
    )
    result = await router.generate(QUESTION, task=kind, tools=[WEATHER, TIME])
    assert [(c.name, c.parsed_arguments()) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"city": "Rome", "hour24": True}),
    ]
    assert len({c.id for c in result.tool_calls}) == 2, "each call has its own id"
    assert result.finish_reason == "tool_calls"

    stream = router.stream(QUESTION, task=kind, tools=[WEATHER, TIME])
    events = [event async for event in stream.events()]
    assert {e.index for e in events if isinstance(e, ToolCallDelta)} == {0, 1}
    assert [(c.name, c.parsed_arguments()) for c in stream.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"city": "Rome", "hour24": True}),
    ]


# --- tool calling, streamed -------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
async def test_a_streamed_tool_call_gives_no_text_and_is_gathered(
    router: Router, kind: str
) -> None:
    async with router.stream(QUESTION, task=kind, tools=[WEATHER]) as stream:
        text = [delta async for delta in stream]
    assert text == []
    assert stream.provider == kind
    assert stream.finish_reason == "tool_calls"
    (call,) = stream.tool_calls
    assert call.name == "get_weather" and call.id
    assert isinstance(call.parsed_arguments()["city"], str)


@pytest.mark.parametrize("kind", TYPES)
async def test_streamed_tool_call_events_join_to_the_arguments(router: Router, kind: str) -> None:
    stream = router.stream(QUESTION, task=kind, tools=[WEATHER])
    events = [event async for event in stream.events()]
    assert events and all(isinstance(e, ToolCallDelta) for e in events)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0].index == 0 and deltas[0].name == "get_weather" and deltas[0].id
    assert all(d.index == 0 for d in deltas)
    joined = "".join(d.arguments for d in deltas)
    (call,) = stream.tool_calls
    assert joined == call.arguments
    assert call.id == deltas[0].id
    assert json.loads(joined) == call.parsed_arguments()
    assert stream.finish_reason == "tool_calls"


@pytest.mark.parametrize("kind", TYPES)
async def test_piece_groups_give_every_piece_in_the_groups_they_came_in(
    router: Router, kind: str
) -> None:
    """`piece_groups()` (what a server writes on, one group a write) holds every piece of
    the answer, in order, text as `str`, and the stream gathers them as with `events()`."""
    stream = router.stream(QUESTION, task=kind, tools=[WEATHER])
    groups = [group async for group in stream.piece_groups()]
    assert groups and all(groups), "no group is empty"
    pieces = [piece for group in groups for piece in group]
    assert pieces and all(isinstance(p, ToolCallDelta) for p in pieces)
    (call,) = stream.tool_calls
    assert "".join(p.arguments for p in pieces if isinstance(p, ToolCallDelta)) == call.arguments
    assert stream.finish_reason == "tool_calls"

    first = await router.generate(QUESTION, task=kind, tools=[WEATHER])
    history = [*QUESTION, first.message, tool_message(first.tool_calls[0], "18C and sunny")]
    stream = router.stream(history, task=kind, tools=[WEATHER])
    texts = [piece async for group in stream.piece_groups() for piece in group]
    assert texts and all(isinstance(t, str) for t in texts)
    assert "".join(texts) == stream.text and "18C and sunny" in stream.text


@pytest.mark.parametrize("kind", TYPES)
async def test_a_streamed_text_answer_after_a_tool_result_is_text_deltas(
    router: Router, kind: str
) -> None:
    first = await router.generate(QUESTION, task=kind, tools=[WEATHER])
    history = [*QUESTION, first.message, tool_message(first.tool_calls[0], "18C and sunny")]
    stream = router.stream(history, task=kind, tools=[WEATHER])
    events = [event async for event in stream.events()]
    assert events and all(isinstance(e, TextDelta) for e in events)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "18C and sunny" in text
    assert stream.text == text
    assert stream.tool_calls == ()
    assert stream.finish_reason == "stop"


async def test_n_with_stream_is_refused_before_anything_is_sent(
    upstream: FakeUpstream, router: Router
) -> None:
    with pytest.raises(InvalidRequestError, match="n=2"):
        async with router.stream(QUESTION, task="openai", n=2) as stream:
            [delta async for delta in stream]
    assert upstream.count() == 0


# --- fall-through in the middle of a request that uses tools ----------------------------------


WHOLE_FAULTS = {
    "503": (Fault.unavailable(), {"server_error", "overloaded"}),
    "reset": (Fault.reset(), {"connection"}),
    "cut-body": (Fault.cut_stream(after_chunks=0), {"connection", "invalid_response"}),
}
BUSY = {"overloaded", "server_error"}  # OpenAI words an in-stream overload as a server error
STREAM_FAULTS = {
    **WHOLE_FAULTS,
    "cut-before-any-chunk": (Fault.cut_stream(after_chunks=0), {"connection", "invalid_response"}),
    "error-before-any-chunk": (
        Fault.midstream_error(after_chunks=0),
        {"overloaded", "server_error"},
    ),
}


@pytest.mark.parametrize("fault", WHOLE_FAULTS, ids=str)
@pytest.mark.parametrize("kind", TYPES)
async def test_whole_tool_request_falls_through_to_the_backup(
    upstream: FakeUpstream, router: Router, kind: str, fault: str
) -> None:
    primary, backup = MODELS[kind]
    injected, outcomes = WHOLE_FAULTS[fault]
    upstream.script(primary, injected)
    result = await router.generate(QUESTION, task=f"{kind}-chain", tools=[WEATHER])
    assert result.provider == f"{kind}-backup"
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert result.finish_reason == "tool_calls"
    assert [a.provider for a in result.attempts] == [kind, f"{kind}-backup"]
    assert result.attempts[0].outcome in outcomes
    assert result.attempts[1].outcome == "success"
    assert last_request(upstream, backup).body.get("tools"), "the backup was sent the tools"


@pytest.mark.parametrize("fault", STREAM_FAULTS, ids=str)
@pytest.mark.parametrize("kind", TYPES)
async def test_streamed_tool_request_falls_through_before_the_first_delta(
    upstream: FakeUpstream, router: Router, kind: str, fault: str
) -> None:
    primary, backup = MODELS[kind]
    injected, outcomes = STREAM_FAULTS[fault]
    upstream.script(primary, injected)
    async with router.stream(QUESTION, task=f"{kind}-chain", tools=[WEATHER]) as stream:
        events = [event async for event in stream.events()]
    assert events and all(isinstance(e, ToolCallDelta) for e in events)
    assert stream.provider == f"{kind}-backup"
    assert [c.name for c in stream.tool_calls] == ["get_weather"]
    assert isinstance(stream.tool_calls[0].parsed_arguments()["city"], str)
    assert [a.provider for a in stream.attempts] == [kind, f"{kind}-backup"]
    assert stream.attempts[0].outcome in outcomes
    assert stream.attempts[1].outcome == "success"
    assert last_request(upstream, backup).stream


# Chunks that put a tool call's opening (and, where it streams them, a first argument piece)
# in the caller's hands before the cut: Ollama sends each call whole, as one chunk.
MIDWAY = {"openai": 2, "anthropic": 2, "ollama": 1}


@pytest.mark.parametrize("midstream", ["raise", "resume"])
@pytest.mark.parametrize("how", ["cut", "error"])
@pytest.mark.parametrize("kind", TYPES)
async def test_a_streamed_tool_call_broken_midway_raises_stream_interrupted(
    upstream: FakeUpstream, router: Router, kind: str, how: str, midstream: str
) -> None:
    primary, backup = MODELS[kind]
    after = MIDWAY[kind]
    upstream.script(
        primary,
        Fault.cut_stream(after_chunks=after)
        if how == "cut"
        else Fault.midstream_error(after_chunks=after),
    )
    task = f"{kind}-resume" if midstream == "resume" else f"{kind}-chain"
    seen: list[Any] = []
    with pytest.raises(StreamInterrupted) as caught:
        async with router.stream(QUESTION, task=task, tools=[WEATHER]) as stream:
            async for event in stream.events():
                seen.append(event)
    assert seen and isinstance(seen[0], ToolCallDelta) and seen[0].name == "get_weather"
    assert caught.value.partial_text == ""
    assert [a.provider for a in caught.value.attempts] == [kind]
    assert caught.value.attempts[0].outcome != "success"
    assert upstream.count(model=backup) == 0, "a half-sent tool call is never resumed"


# --- structured output ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
async def test_generate_json_sends_the_schema_and_returns_the_model(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    city = await router.generate_json(QUESTION, task=kind, schema=City)
    assert isinstance(city, City)
    body = last_request(upstream, MODELS[kind][0]).body
    expected = {"name", "country", "population"}
    if kind == "openai":
        response_format = body["response_format"]
        assert response_format["type"] == "json_schema"
        assert response_format["json_schema"]["strict"] is True
        schema = response_format["json_schema"]["schema"]
        assert properties(schema) == expected
        assert set(schema["required"]) == expected
        assert schema["additionalProperties"] is False
    elif kind == "anthropic":
        assert properties(anthropic_schema(body)) == expected
    else:
        assert isinstance(body["format"], dict)
        assert properties(body["format"]) == expected


@pytest.mark.parametrize("kind", TYPES)
async def test_a_schema_with_optional_fields_is_sent_not_strict(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    city = await router.generate_json(QUESTION, task=kind, schema=CityMaybe)
    assert isinstance(city, CityMaybe)
    body = last_request(upstream, MODELS[kind][0]).body
    if kind == "openai":
        assert body["response_format"]["json_schema"]["strict"] is False
        assert properties(body["response_format"]["json_schema"]["schema"]) == {"name", "country"}
    elif kind == "anthropic":
        # Not strict: Anthropic's native format is for strict schemas, so a forced tool.
        assert body["tool_choice"]["type"] == "tool"
        assert properties(anthropic_schema(body)) == {"name", "country"}
    else:
        assert properties(body["format"]) == {"name", "country"}


@pytest.mark.parametrize("kind", TYPES)
async def test_a_reply_that_does_not_match_the_schema_falls_through(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    primary, backup = MODELS[kind]
    upstream.reply(primary, '{"name": "Paris"}')  # no country, no population
    routed = await router.complete_json(QUESTION, task=f"{kind}-chain", schema=City)
    assert isinstance(routed.parsed, City)
    assert routed.provider == f"{kind}-backup"
    assert [(a.provider, a.outcome) for a in routed.attempts] == [
        (kind, "invalid_response"),
        (f"{kind}-backup", "success"),
    ]
    assert upstream.count(model=primary) == 1 and upstream.count(model=backup) == 1


# --- request fields ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
async def test_max_completion_tokens_reaches_each_upstream_in_its_own_name(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    result = await router.generate(QUESTION, task=kind, max_completion_tokens=77)
    assert result.text
    body = last_request(upstream, MODELS[kind][0]).body
    if kind == "openai":
        assert body["max_completion_tokens"] == 77
        assert "max_tokens" not in body
    elif kind == "anthropic":
        assert body["max_tokens"] == 77
        assert "max_completion_tokens" not in body
    else:
        assert body["options"]["num_predict"] == 77
        assert "max_completion_tokens" not in body


@pytest.mark.parametrize("kind", TYPES)
async def test_seed_reaches_openai_and_ollama(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    result = await router.generate(QUESTION, task=kind, seed=7)
    assert result.provider == kind and result.text
    body = last_request(upstream, MODELS[kind][0]).body
    if kind == "openai":
        assert body["seed"] == 7
    elif kind == "ollama":
        assert body["options"]["seed"] == 7
    else:
        assert "seed" not in body, "Anthropic has no seed: best effort, as at OpenAI"


async def test_n_2_returns_two_choices_on_openai(upstream: FakeUpstream, router: Router) -> None:
    result = await router.generate(QUESTION, task="openai", n=2)
    assert len(result.choices) == 2
    assert [c.index for c in result.choices] == [0, 1]
    assert result.choices[0].text == result.text
    assert all(c.text for c in result.choices)
    assert result.choices[0].text != result.choices[1].text
    assert last_request(upstream, "gpt-4o-mini").body["n"] == 2
    assert upstream.count() == 1, "one call for both choices"


async def test_n_2_with_tools_returns_a_call_in_each_choice(router: Router) -> None:
    result = await router.generate(QUESTION, task="openai", n=2, tools=[WEATHER])
    assert len(result.choices) == 2
    assert [[c.name for c in choice.tool_calls] for choice in result.choices] == [
        ["get_weather"],
        ["get_weather"],
    ]


async def test_n_2_skips_anthropic_as_unsupported_and_openai_answers(
    upstream: FakeUpstream, router: Router
) -> None:
    result = await router.generate(QUESTION, task="anthropic-then-openai", n=2)
    assert result.provider == "openai"
    assert len(result.choices) == 2
    first, second = result.attempts
    assert (first.provider, first.outcome) == ("anthropic", "unsupported")
    assert first.error is not None and "n" in first.error
    assert (second.provider, second.outcome) == ("openai", "success")
    assert upstream.count(model="claude-sonnet-4-5") == 0


async def test_n_2_on_an_anthropic_only_task_is_refused_as_a_400(
    upstream: FakeUpstream, router: Router
) -> None:
    with pytest.raises(RequestRefused) as caught:
        await router.generate(QUESTION, task="anthropic", n=2)
    assert caught.value.status == 400
    assert "n=2" in str(caught.value)
    assert [a.outcome for a in caught.value.attempts] == ["unsupported"]
    assert upstream.count() == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_malformed_tool_is_refused_naming_its_field(
    upstream: FakeUpstream, router: Router, stream: bool
) -> None:
    nameless = {"type": "function", "function": {"parameters": {"type": "object"}}}
    with pytest.raises(InvalidRequestError, match=r"tools\[0\]\.function\.name"):
        if stream:
            async with router.stream(QUESTION, task="openai", tools=[nameless]) as chunks:
                [delta async for delta in chunks]
        else:
            await router.generate(QUESTION, task="openai", tools=[nameless])
    assert upstream.count() == 0


# --- upstream 4xx -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status"), [(Fault.status(400), 400), (Fault.not_found(), 404)], ids=["400", "404"]
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", TYPES)
async def test_an_upstream_refusal_is_request_refused_with_its_status(
    upstream: FakeUpstream, router: Router, kind: str, stream: bool, fault: Fault, status: int
) -> None:
    upstream.script(MODELS[kind][0], fault)
    with pytest.raises(RequestRefused) as caught:
        if stream:
            async with router.stream(QUESTION, task=kind, tools=[WEATHER]) as chunks:
                [delta async for delta in chunks]
        else:
            await router.generate(QUESTION, task=kind, tools=[WEATHER])
    assert caught.value.status == status
    (attempt,) = caught.value.attempts
    assert attempt.status == status
    assert attempt.outcome == ("bad_request" if status == 400 else "not_found")
    assert upstream.count() == 1, "a refusal is not retried"


@pytest.mark.parametrize("kind", TYPES)
async def test_a_refusal_then_an_outage_is_a_plain_failure(
    upstream: FakeUpstream, router: Router, kind: str
) -> None:
    primary, backup = MODELS[kind]
    upstream.script(primary, Fault.status(400))
    upstream.script(backup, Fault.unavailable())
    with pytest.raises(AllProvidersFailed) as caught:
        await router.generate(QUESTION, task=f"{kind}-chain", tools=[WEATHER])
    assert not isinstance(caught.value, RequestRefused), "one candidate was down, not refusing"
    assert [a.status for a in caught.value.attempts] == [400, 503]


# --- hostile input ----------------------------------------------------------------------------


def _history_with_arguments(arguments: str) -> list[dict[str, Any]]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }
    return [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        (
            [{"role": "user", "content": "hi", "name": "ali\ud800ce"}],
            "messages[0].name",
        ),
        (
            _history_with_arguments('{"city": "Par\udc00is"}'),
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
    ids=["name", "tool-call-arguments"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", TYPES)
async def test_a_lone_surrogate_in_a_tool_history_is_refused_naming_its_field(
    upstream: FakeUpstream,
    router: Router,
    kind: str,
    stream: bool,
    messages: list[dict[str, Any]],
    field: str,
) -> None:
    pattern = field.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
    with pytest.raises(InvalidRequestError, match=pattern):
        if stream:
            async with router.stream(messages, task=kind, tools=[WEATHER]) as chunks:
                [delta async for delta in chunks]
        else:
            await router.generate(messages, task=kind, tools=[WEATHER])
    assert upstream.count() == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", TYPES)
async def test_a_tool_request_answered_too_deep_to_parse_falls_through(
    upstream: FakeUpstream, router: Router, kind: str, stream: bool
) -> None:
    upstream.script(MODELS[kind][0], Fault.deep_json())
    if stream:
        async with router.stream(QUESTION, task=f"{kind}-chain", tools=[WEATHER]) as chunks:
            [event async for event in chunks.events()]
        result: Any = chunks
    else:
        result = await router.generate(QUESTION, task=f"{kind}-chain", tools=[WEATHER])
    assert result.provider == f"{kind}-backup"
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert (result.attempts[0].provider, result.attempts[0].outcome) == (kind, "invalid_response")


# Upstream bodies FakeUpstream will not write (it refuses a nameless call, and cannot serialise
# arguments nested past the recursion limit), served as given by a canned HTTP server.

DEEP = '{"a":' * 20_000 + "1" + "}" * 20_000
USAGE_OPENAI = '{"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}'


def _sse(*events: str, named: Sequence[str] = ()) -> str:
    out = ""
    for i, data in enumerate(events):
        if named:
            out += f"event: {named[i]}\n"
        out += f"data: {data}\n\n"
    return out


def canned_reply(kind: str, stream: bool, function: str) -> tuple[str, str]:
    """(content type, body) of an answer with one tool call; `function` is the call's
    `{...}` in the wire's own form (OpenAI's function, Anthropic's tool_use fields after its
    type and id, Ollama's function)."""
    if kind == "openai":
        call = f'{{"index": 0, "id": "call_1", "type": "function", "function": {function}}}'
        if not stream:
            body = (
                '{"id": "chatcmpl-1", "object": "chat.completion", "model": "bad-model", '
                '"choices": [{"index": 0, "finish_reason": "tool_calls", "message": '
                f'{{"role": "assistant", "content": null, "tool_calls": [{call}]}}}}], '
                f'"usage": {USAGE_OPENAI}}}'
            )
            return "application/json", body
        head = '{"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "bad-model", '
        return "text/event-stream", _sse(
            head + '"choices": [{"index": 0, "delta": {"role": "assistant", "content": null}}]}',
            head + f'"choices": [{{"index": 0, "delta": {{"tool_calls": [{call}]}}}}]}}',
            head + '"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}',
            head + f'"choices": [], "usage": {USAGE_OPENAI}}}',
            "[DONE]",
        )
    if kind == "anthropic":
        block = f'{{"type": "tool_use", "id": "toolu_1", {function}}}'
        usage = '{"input_tokens": 3, "output_tokens": 3}'
        if not stream:
            body = (
                '{"id": "msg_1", "type": "message", "role": "assistant", "model": "bad-model", '
                f'"content": [{block}], "stop_reason": "tool_use", "stop_sequence": null, '
                f'"usage": {usage}}}'
            )
            return "application/json", body
        names = [
            "message_start",
            "content_block_start",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        return "text/event-stream", _sse(
            '{"type": "message_start", "message": {"id": "msg_1", "type": "message", '
            '"role": "assistant", "model": "bad-model", "content": [], "stop_reason": null, '
            f'"usage": {usage}}}}}',
            f'{{"type": "content_block_start", "index": 0, "content_block": {block}}}',
            '{"type": "content_block_stop", "index": 0}',
            '{"type": "message_delta", "delta": {"stop_reason": "tool_use"}, '
            '"usage": {"output_tokens": 3}}',
            '{"type": "message_stop"}',
            named=names,
        )
    line = (
        '{"model": "bad-model", "message": {"role": "assistant", "content": "", '
        f'"tool_calls": [{{"function": {function}}}]}}, "done": {{done}}'
    )
    counts = '"prompt_eval_count": 3, "eval_count": 3'
    if not stream:
        return "application/json", (
            line.replace("{done}", "true") + f', "done_reason": "stop", {counts}}}'
        )
    done = '{"model": "bad-model", "message": {"role": "assistant", "content": ""}, '
    done += f'"done": true, "done_reason": "stop", {counts}}}'
    return "application/x-ndjson", line.replace("{done}", "false") + "}\n" + done + "\n"


NAMELESS = {
    "openai": '{"arguments": "{\\"city\\": \\"Paris\\"}"}',
    "anthropic": '"input": {"city": "Paris"}',
    "ollama": '{"arguments": {"city": "Paris"}}',
}
DEEPLY_NESTED = {
    # Arguments that nest 20,000 deep inside the wire event itself (OpenAI-compatible servers
    # may send arguments as an object, as Ollama always does).
    "openai": f'{{"name": "get_weather", "arguments": {DEEP}}}',
    "anthropic": f'"name": "get_weather", "input": {DEEP}',
    "ollama": f'{{"name": "get_weather", "arguments": {DEEP}}}',
}


class CannedUpstream:
    """An HTTP server on 127.0.0.1 that answers every request with one given body."""

    def __init__(self) -> None:
        self.content_type = "application/json"
        self.body = b"{}"
        self.count = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> CannedUpstream:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            await reader.readexactly(length)
            self.count += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\n"
                + f"Content-Type: {self.content_type}\r\n".encode()
                + f"Content-Length: {len(self.body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + self.body
            )
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def canned() -> AsyncIterator[CannedUpstream]:
    async with CannedUpstream() as server:
        yield server


@pytest.mark.parametrize("reply", ["nameless-call", "arguments-nested-20000"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", TYPES)
async def test_a_hostile_upstream_tool_call_is_invalid_response_and_falls_through(
    upstream: FakeUpstream, canned: CannedUpstream, kind: str, stream: bool, reply: str
) -> None:
    function = (NAMELESS if reply == "nameless-call" else DEEPLY_NESTED)[kind]
    content_type, body = canned_reply(kind, stream, function)
    canned.content_type, canned.body = content_type, body.encode()
    router = Router(parse_policy(policy_yaml(upstream.url, canned.url)), hooks=[])
    try:
        if stream:
            async with router.stream(QUESTION, task=f"{kind}-bad", tools=[WEATHER]) as chunks:
                events = [event async for event in chunks.events()]
            result: Any = chunks
            assert all(isinstance(e, ToolCallDelta) and e.index == 0 for e in events)
            first = events[0]
            assert isinstance(first, ToolCallDelta)
            assert first.name == "get_weather", "nothing of the bad answer reached the caller"
        else:
            result = await router.generate(QUESTION, task=f"{kind}-bad", tools=[WEATHER])
    finally:
        await router.aclose()
    assert canned.count == 1
    assert result.provider == f"{kind}-backup"
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert (result.attempts[0].provider, result.attempts[0].outcome) == (
        f"{kind}-bad",
        "invalid_response",
    )


async def test_deeply_nested_tool_arguments_parse_as_a_value_error(
    canned: CannedUpstream, upstream: FakeUpstream
) -> None:
    """Arguments sent as JSON text nesting 20,000 deep reach the caller as the model wrote
    them; reading them is the `ValueError` `parsed_arguments` documents, not a RecursionError
    that slips past every `except ValueError`."""
    function = json.dumps({"name": "get_weather", "arguments": DEEP})
    content_type, body = canned_reply("openai", False, function)
    canned.content_type, canned.body = content_type, body.encode()
    router = Router(parse_policy(policy_yaml(upstream.url, canned.url)), hooks=[])
    try:
        routed = await router.generate(QUESTION, task="openai-bad", tools=[WEATHER])
    finally:
        await router.aclose()
    if routed.provider == "openai-bad":
        (call,) = routed.tool_calls
        assert call.arguments == DEEP
        with pytest.raises(ValueError):
            call.parsed_arguments()
    else:  # or the candidate's answer was refused as unreadable, and the backup answered
        assert routed.attempts[0].outcome == "invalid_response"
        assert [c.name for c in routed.tool_calls] == ["get_weather"]


# --- litellm: OpenAI's fields passed through, its answers read as OpenAI's -------------------


async def test_litellm_passes_tools_through_and_reads_calls_whole_and_streamed(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch its price map
    policy = parse_policy(
        "version: 1\n"
        "providers:\n"
        '  lite: {type: litellm, model: openai/gpt-4o-mini, base_url: "${FAKE}/v1", '
        "api_key: unused}\n"
        "tasks: {default: {chain: [lite]}}\n",
        environ={"FAKE": upstream.url},
    )
    async with Router(policy) as router:
        whole = await router.generate(QUESTION, tools=[WEATHER], tool_choice="required", n=2)
        sent = upstream.requests[-1].body
        assert (sent["tools"], sent["tool_choice"], sent["n"]) == ([WEATHER], "required", 2)
        assert [c.tool_calls[0].name for c in whole.choices] == ["get_weather", "get_weather"]
        assert whole.tool_calls[0].parsed_arguments() == {"city": "Paris"}
        assert whole.finish_reason == "tool_calls"

        stream = router.stream(QUESTION, tools=[WEATHER])
        pieces = [event async for event in stream.events()]
        assert all(isinstance(piece, ToolCallDelta) for piece in pieces)
        assert "".join(p.arguments for p in pieces if isinstance(p, ToolCallDelta)) == (
            stream.tool_calls[0].arguments
        )
        assert stream.tool_calls[0].name == "get_weather"
        assert stream.finish_reason == "tool_calls"


# --- a model the policy says cannot do what the request needs ---------------------------------


async def test_a_provider_lacking_tools_is_skipped_for_tool_requests_only(
    upstream: FakeUpstream,
) -> None:
    policy = parse_policy(
        "version: 1\n"
        "providers:\n"
        '  small: {type: ollama, model: tiny, base_url: "${FAKE}", lacks: [tools, images]}\n'
        '  mini: {type: openai, model: gpt-4o-mini, base_url: "${FAKE}/v1", api_key: unused}\n'
        "tasks:\n"
        "  default: {chain: [small, mini]}\n"
        "  local: {chain: [small]}\n",
        environ={"FAKE": upstream.url},
    )
    async with Router(policy) as router:
        with_tools = await router.generate(QUESTION, tools=[WEATHER])
        assert with_tools.provider == "mini"
        skipped = with_tools.attempts[0]
        assert (skipped.provider, skipped.outcome) == ("small", "unsupported")
        assert skipped.error is not None and "tools" in skipped.error
        assert upstream.count("tiny") == 0  # skipped without a call

        # tool_choice "none" needs no tool support; plain text neither.
        assert (await router.generate(QUESTION, tools=[WEATHER], tool_choice="none")).provider == (
            "small"
        )
        assert (await router.generate(QUESTION)).provider == "small"

        with pytest.raises(RequestRefused) as refused:
            await router.generate(QUESTION, task="local", tools=[WEATHER])
        assert refused.value.status == 400
        assert "tools" in str(refused.value)


def test_sync_router_streams_tool_calls_as_typed_events() -> None:
    async def start() -> FakeUpstream:
        return await FakeUpstream().start()

    # The fake must run on a loop of its own: the SyncRouter blocks this thread.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    up = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        policy = parse_policy(policy_yaml(up.url))
        with SyncRouter(policy) as router:
            events = list(router.stream_events(QUESTION, task="openai", tools=[WEATHER]))
            first = events[0]
            assert isinstance(first, ToolCallDelta) and first.name == "get_weather"
            arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
            assert json.loads(arguments) == {"city": "Paris"}
            texts = list(router.stream_events(QUESTION, task="openai"))
            assert texts and all(isinstance(e, TextDelta) for e in texts)
    finally:
        asyncio.run_coroutine_threadsafe(up.close(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
