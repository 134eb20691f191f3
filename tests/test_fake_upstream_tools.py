"""FakeUpstream's tool calls, structured output and `n` choices, through the real SDKs.

The openai and anthropic SDKs parse the fake's bytes here (over real HTTP on 127.0.0.1), so a
shape they would not accept fails these tests; Ollama has no SDK installed and is read with
httpx. The strictness cases check that a request the real API refuses is refused here too, with
the real API's 400 shape and a message naming the mistake.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import anthropic
import httpx
import openai
import pydantic
import pytest

from gateway.testing import ControlAPIError, FakeUpstream, FakeUpstreamClient, Fault
from gateway.testing._schema_sample import sample

MODEL = "gpt-test"
CLAUDE = "claude-test"
LLAMA = "llama-test"
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
TIME_SCHEMA = {"type": "object", "properties": {"hours": {"type": "integer", "minimum": 3}}}
TIME_ARGS = {"hours": 3}


def openai_tool(name: str, schema: dict[str, Any]) -> Any:
    return {"type": "function", "function": {"name": name, "parameters": schema}}


OPENAI_TOOLS: Any = [
    openai_tool("get_weather", WEATHER_SCHEMA),
    openai_tool("get_time", TIME_SCHEMA),
]
ANTHROPIC_TOOLS: Any = [
    {"name": "get_weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "input_schema": TIME_SCHEMA},
]


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    """Strict, as the real APIs are: every SDK and library case here passes that too."""
    async with FakeUpstream(strict=True) as upstream:
        yield upstream


@pytest.fixture
async def oai(up: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=up.openai_base_url, api_key="test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def claude(up: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=up.anthropic_base_url, api_key="test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def http(up: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=up.url, timeout=5.0) as client:
        yield client


def ollama_lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def openai_history(result: str = "18C and sunny") -> Any:
    """A conversation in which the model called get_weather and the tool answered."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps(WEATHER_ARGS)},
    }
    return [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


def anthropic_history(result: str = "18C and sunny") -> Any:
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": WEATHER_ARGS}
    answer = {"type": "tool_result", "tool_use_id": "toolu_1", "content": result}
    return [
        *QUESTION,
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [answer]},
    ]


# --- the schema sampler -------------------------------------------------------------------


class Address(pydantic.BaseModel):
    street: str
    zip_code: str = pydantic.Field(min_length=7, max_length=9)


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=18, le=130)
    height_m: float = pydantic.Field(gt=2.0)
    role: Literal["admin", "user"]
    home: Address
    past: list[Address]
    nickname: str | None = None
    email: str | None
    tags: list[str] = ["a"]
    active: bool


class Tree(pydantic.BaseModel):
    label: str
    children: list[Tree]
    parent: Tree | None


def test_sample_fills_every_property_of_a_pydantic_model_and_validates() -> None:
    value = sample(Person.model_json_schema())
    assert Person.model_validate(value).model_dump() == {
        "name": "Paris",
        "age": 18,
        "height_m": 2.5,
        "role": "admin",
        "home": {"street": "Paris", "zip_code": "Parisss"},
        "past": [{"street": "Paris", "zip_code": "Parisss"}],
        "nickname": None,
        "email": "Paris",
        "tags": ["a"],
        "active": True,
    }


def test_sample_stops_a_recursive_model_where_it_recurses() -> None:
    value = sample(Tree.model_json_schema())
    assert value == {"label": "Paris", "children": [], "parent": None}
    Tree.model_validate(value)


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "integer", "minimum": 5}, 5),
        ({"type": "integer", "exclusiveMaximum": 0}, -1),
        ({"type": "number"}, 1.5),
        ({"type": "number", "maximum": 1}, 1),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"type": ["null", "string"]}, "Paris"),
        ({"const": "fixed"}, "fixed"),
        ({"type": "string", "default": "d"}, "d"),
        ({"type": "string", "format": "date"}, "2024-01-01"),
        ({"oneOf": [{"type": "null"}, {"type": "integer"}]}, 1),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [1, 1]),
        (
            {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {}}}]},
            {"a": 1, "b": "Paris"},
        ),
        ({"$ref": "#/definitions/X", "definitions": {"X": {"enum": [7, 8]}}}, 7),
        ({}, "Paris"),
    ],
)
def test_sample_follows_each_schema_keyword(schema: dict[str, Any], expected: Any) -> None:
    assert sample(schema) == expected


# --- OpenAI ---------------------------------------------------------------------------------


async def test_openai_tool_call_whole_parsed_by_the_sdk(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=OPENAI_TOOLS,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert (choice.message.content, choice.message.refusal) == (None, None)
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    # The exact body the upstream got, tools as sent.
    assert up.requests[-1].body["tools"] == OPENAI_TOOLS


async def test_openai_tool_call_streamed_in_pieces_reassembles_to_the_whole(
    oai: openai.AsyncOpenAI,
) -> None:
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=OPENAI_TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    tool_deltas = [d[0] for d in deltas if d]
    first, *pieces = tool_deltas
    assert first.index == 0 and first.id and first.id.startswith("call_")
    assert first.type == "function" and first.function is not None
    assert (first.function.name, first.function.arguments) == ("get_weather", "")
    assert len(pieces) >= 2
    assert all(p.id is None and p.function is not None and p.function.name is None for p in pieces)
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == WEATHER_ARGS
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_openai_sdk_stream_helper_accumulates_the_tool_call(
    oai: openai.AsyncOpenAI,
) -> None:
    # The helper parses the arguments of `strict` tools: the accumulated JSON must parse.
    strict = openai_tool("get_weather", WEATHER_SCHEMA)
    strict["function"]["strict"] = True
    async with oai.chat.completions.stream(
        model=MODEL,
        messages=QUESTION,
        tools=[strict],
    ) as stream:
        final = await stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert (call.function.name, call.function.parsed_arguments) == ("get_weather", WEATHER_ARGS)


@pytest.mark.parametrize(
    ("tool_choice", "called"),
    [
        ("none", None),
        ("auto", "get_weather"),
        ("required", "get_weather"),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ],
)
async def test_openai_tool_choice(
    oai: openai.AsyncOpenAI, tool_choice: Any, called: str | None
) -> None:
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=OPENAI_TOOLS,
        tool_choice=tool_choice,
    )
    message = completion.choices[0].message
    if called is None:
        assert message.tool_calls is None
        assert message.content == f"Hello from {MODEL}. This is a fake reply."
        assert completion.choices[0].finish_reason == "stop"
    else:
        assert [c.function.name for c in message.tool_calls or []] == [called]


async def test_openai_round_trip_answers_the_tool_result_or_calls_the_next_tool(
    oai: openai.AsyncOpenAI,
) -> None:
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=openai_history(),
        tools=OPENAI_TOOLS,
    )
    assert completion.choices[0].message.content == "The tool said: 18C and sunny"
    assert completion.choices[0].finish_reason == "stop"

    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=openai_history(),
        tools=OPENAI_TOOLS,
        tool_choice="required",
    )
    [call] = completion.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_time", TIME_ARGS)


async def test_openai_scripted_parallel_tool_calls_whole_and_streamed(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    scripted = [
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}},
        {"name": "get_time", "arguments": {"hours": 9}},
    ]
    up.reply(MODEL, tool_calls=scripted)
    completion = await oai.chat.completions.create(model=MODEL, messages=QUESTION)
    calls = completion.choices[0].message.tool_calls or []
    got = [{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in calls]
    assert got == scripted
    assert len({c.id for c in calls}) == 2

    stream = await oai.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
    by_index: dict[int, str] = {}
    names: dict[int, str] = {}
    async for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert delta.function is not None
            by_index[delta.index] = by_index.get(delta.index, "") + (delta.function.arguments or "")
            if delta.function.name:
                names[delta.index] = delta.function.name
    assert names == {0: "get_weather", 1: "get_time"}
    assert [json.loads(by_index[i]) for i in (0, 1)] == [s["arguments"] for s in scripted]


async def test_openai_empty_scripted_tool_calls_never_call_and_refusal_has_null_content(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.reply(MODEL, "plain", tool_calls=[])
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=OPENAI_TOOLS,
    )
    assert (completion.choices[0].message.content, completion.choices[0].message.tool_calls) == (
        "plain",
        None,
    )

    up.reply(MODEL, refusal="I can't help with that.")
    completion = await oai.chat.completions.create(model=MODEL, messages=QUESTION)
    message = completion.choices[0].message
    assert (message.content, message.refusal) == (None, "I can't help with that.")
    stream = await oai.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
    pieces = [c.choices[0].delta.refusal async for c in stream if c.choices]
    assert "".join(p or "" for p in pieces) == "I can't help with that."


async def test_openai_structured_output_parses_into_the_pydantic_model(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    completion = await oai.chat.completions.parse(
        model=MODEL, messages=QUESTION, response_format=Person
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person)
    assert person.home == Address(street="Paris", zip_code="Parisss")
    assert up.requests[-1].body["response_format"]["type"] == "json_schema"


async def test_openai_n_choices_whole_and_streamed(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.reply(MODEL, "one two")
    completion = await oai.chat.completions.create(model=MODEL, messages=QUESTION, n=3)
    texts = [(c.index, c.message.content) for c in completion.choices]
    assert texts == [(0, "one two"), (1, "one two (choice 2)"), (2, "one two (choice 3)")]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2 + 4 + 4  # every choice's words, once

    stream = await oai.chat.completions.create(model=MODEL, messages=QUESTION, n=2, stream=True)
    text: dict[int, str] = {0: "", 1: ""}
    finished: dict[int, str | None] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            text[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert text == {0: "one two", 1: "one two (choice 2)"}
    assert finished == {0: "stop", 1: "stop"}


async def test_openai_cut_in_the_middle_of_a_streamed_tool_call(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    # Chunks: the call's opening (id, name), then its argument pieces; cut after one piece.
    up.script(MODEL, Fault.cut_stream(after_chunks=2))
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=OPENAI_TOOLS,
        stream=True,
    )
    seen: list[Any] = []
    with pytest.raises(Exception, match="incomplete chunked read"):
        async for chunk in stream:
            seen.extend(chunk.choices[0].delta.tool_calls or [] if chunk.choices else [])
    assert [d.function.name for d in seen if d.function] == ["get_weather", None]
    partial = seen[1].function.arguments if seen[1].function else None
    assert partial and json.dumps(WEATHER_ARGS, separators=(",", ":")).startswith(partial)
    with pytest.raises(ValueError):
        json.loads(partial)


async def _openai_400(oai: openai.AsyncOpenAI, **request: Any) -> str:
    """The message of the 400 the request gets, after checking it is OpenAI's error shape."""
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(model=MODEL, **request)
    assert caught.value.status_code == 400
    body = caught.value.body  # the SDK keeps the `error` object of the body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    return f"{body['param']}: {body['message']}"


async def test_openai_refuses_a_tool_message_that_answers_no_call(
    oai: openai.AsyncOpenAI,
) -> None:
    history = openai_history()
    history[-1]["tool_call_id"] = "call_unknown"
    message = await _openai_400(oai, messages=history, tools=OPENAI_TOOLS)
    assert "'tool_call_id' of 'call_unknown' not found in 'tool_calls'" in message

    orphan = [*QUESTION, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]
    message = await _openai_400(oai, messages=orphan)
    assert "must be a response to a preceeding message with 'tool_calls'" in message

    unanswered = [*openai_history()[:-1], {"role": "user", "content": "and?"}]
    message = await _openai_400(oai, messages=unanswered)
    assert "did not have response messages: call_1" in message


async def test_openai_refuses_tool_arguments_that_are_not_a_string(
    oai: openai.AsyncOpenAI,
) -> None:
    history = openai_history()
    history[1]["tool_calls"][0]["function"]["arguments"] = WEATHER_ARGS
    message = await _openai_400(oai, messages=history)
    assert message.endswith(
        "Invalid type for 'messages[1].tool_calls[0].function.arguments': expected a string, "
        "but got an object instead."
    )


async def test_openai_refuses_malformed_tools_and_tool_choice(oai: openai.AsyncOpenAI) -> None:
    message = await _openai_400(
        oai, messages=QUESTION, tools=[{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]
    )
    assert "tools[0].type" in message or "tools[0].function" in message
    message = await _openai_400(
        oai,
        messages=QUESTION,
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "nope"}},
    )
    assert "'nope'" in message
    message = await _openai_400(oai, messages=QUESTION, tool_choice="required")
    assert "only allowed when 'tools' are specified" in message
    message = await _openai_400(oai, messages=QUESTION, n=0)
    assert "Invalid 'n'" in message


async def test_openai_records_the_exact_body_as_sent(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    await oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_completion_tokens=33,
        tools=OPENAI_TOOLS,
    )
    body = up.requests[-1].body
    assert body["max_completion_tokens"] == 33 and "max_tokens" not in body
    assert body["messages"] == QUESTION


# --- Anthropic -------------------------------------------------------------------------------


async def test_anthropic_tool_use_whole_parsed_by_the_sdk(
    up: FakeUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    message = await claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        messages=QUESTION,
        tools=ANTHROPIC_TOOLS,
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert (block.name, block.input) == ("get_weather", WEATHER_ARGS)
    assert up.requests[-1].body["tools"] == ANTHROPIC_TOOLS


async def test_anthropic_tool_use_streamed_as_input_json_deltas(
    claude: anthropic.AsyncAnthropic,
) -> None:
    async with claude.messages.stream(
        model=CLAUDE,
        max_tokens=100,
        messages=QUESTION,
        tools=ANTHROPIC_TOOLS,
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["tool_use"]
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(pieces) >= 2
    assert json.loads("".join(pieces)) == WEATHER_ARGS
    assert final.stop_reason == "tool_use"
    [block] = final.content
    assert block.type == "tool_use" and block.input == WEATHER_ARGS


async def test_anthropic_text_then_parallel_scripted_tool_uses_streamed(
    up: FakeUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    up.reply(
        CLAUDE,
        "Let me check.",
        tool_calls=[
            {"name": "get_weather", "arguments": {"city": "Rome"}},
            {"name": "get_time", "arguments": {}},
        ],
    )
    whole = await claude.messages.create(model=CLAUDE, max_tokens=100, messages=QUESTION)
    assert [b.type for b in whole.content] == ["text", "tool_use", "tool_use"]

    async with claude.messages.stream(model=CLAUDE, max_tokens=100, messages=QUESTION) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    blocks = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    assert blocks == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert stops == [0, 1, 2]
    assert final.content[0].type == "text" and final.content[0].text == "Let me check."
    inputs = [(b.name, b.input) for b in final.content if b.type == "tool_use"]
    assert inputs == [("get_weather", {"city": "Rome"}), ("get_time", {})]


@pytest.mark.parametrize(
    ("tool_choice", "called"),
    [
        ({"type": "none"}, None),
        ({"type": "auto"}, "get_weather"),
        ({"type": "any"}, "get_weather"),
        ({"type": "tool", "name": "get_time"}, "get_time"),
    ],
)
async def test_anthropic_tool_choice(
    claude: anthropic.AsyncAnthropic, tool_choice: Any, called: str | None
) -> None:
    message = await claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        messages=QUESTION,
        tools=ANTHROPIC_TOOLS,
        tool_choice=tool_choice,
    )
    names = [b.name for b in message.content if b.type == "tool_use"]
    assert names == ([] if called is None else [called])
    assert message.stop_reason == ("end_turn" if called is None else "tool_use")


async def test_anthropic_round_trip_answers_the_tool_result_or_calls_the_next_tool(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        messages=anthropic_history(),
        tools=ANTHROPIC_TOOLS,
    )
    assert message.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "The tool said: 18C and sunny")
    ]
    message = await claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        messages=anthropic_history(),
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
    )
    [block] = message.content
    assert block.type == "tool_use" and (block.name, block.input) == ("get_time", TIME_ARGS)


@pytest.mark.parametrize("field", ["output_config", "output_format"])
async def test_anthropic_structured_output_follows_the_schema(
    claude: anthropic.AsyncAnthropic, field: str
) -> None:
    fmt = {"type": "json_schema", "schema": Person.model_json_schema()}
    body = {"output_config": {"format": fmt}} if field == "output_config" else {field: fmt}
    message = await claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        messages=QUESTION,
        extra_body=body,
    )
    [block] = message.content
    assert block.type == "text"
    assert Person.model_validate_json(block.text).home.street == "Paris"


async def test_anthropic_cut_in_the_middle_of_a_streamed_tool_use(
    up: FakeUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    up.script(CLAUDE, Fault.cut_stream(after_chunks=2))
    seen: list[Any] = []
    with pytest.raises(Exception, match="incomplete chunked read"):
        async with claude.messages.stream(
            model=CLAUDE,
            max_tokens=100,
            messages=QUESTION,
            tools=ANTHROPIC_TOOLS,
        ) as stream:
            async for event in stream:
                seen.append(event)
    kinds = [e.type for e in seen if e.type.startswith("content_block")]
    # content_block_start (tool_use), then one input_json_delta; no block stop, no message_stop.
    assert kinds[:2] == ["content_block_start", "content_block_delta"]
    assert "content_block_stop" not in kinds and all(e.type != "message_stop" for e in seen)
    partial = next(e.delta.partial_json for e in seen if e.type == "content_block_delta")
    assert json.dumps(WEATHER_ARGS, separators=(",", ":")).startswith(partial)


async def _anthropic_400(claude: anthropic.AsyncAnthropic, **request: Any) -> str:
    request.setdefault("messages", QUESTION)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(model=CLAUDE, max_tokens=100, **request)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    return str(body["error"]["message"])


async def test_anthropic_refuses_an_openai_shaped_tool(claude: anthropic.AsyncAnthropic) -> None:
    message = await _anthropic_400(claude, tools=OPENAI_TOOLS)
    assert message == "tools.0.input_schema: Field required"


async def test_anthropic_refuses_tool_results_that_do_not_pair_with_tool_uses(
    claude: anthropic.AsyncAnthropic,
) -> None:
    history = anthropic_history()
    history[-1]["content"][0]["tool_use_id"] = "toolu_other"
    message = await _anthropic_400(claude, messages=history, tools=ANTHROPIC_TOOLS)
    assert message.startswith(
        "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_other"
    )

    unanswered = [*anthropic_history()[:-1], {"role": "user", "content": "and?"}]
    message = await _anthropic_400(claude, messages=unanswered, tools=ANTHROPIC_TOOLS)
    assert message.startswith(
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after"
    )

    system_in_messages = [{"role": "system", "content": "Be brief."}, *QUESTION]
    message = await _anthropic_400(claude, messages=system_in_messages)
    assert message == "messages.0.role: Input should be 'user' or 'assistant'"


async def test_anthropic_refuses_a_tool_choice_naming_no_tool(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await _anthropic_400(
        claude, tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "nope"}
    )
    assert "'nope'" in message
    message = await _anthropic_400(claude, tool_choice={"type": "any"})
    assert "tool_choice" in message


async def test_anthropic_refuses_unknown_fields_when_strict_like_the_real_api(
    claude: anthropic.AsyncAnthropic,
) -> None:
    message = await _anthropic_400(claude, extra_body={"response_format": {"type": "json"}})
    assert message == "response_format: Extra inputs are not permitted"
    # Every field the SDK itself sends is known.
    ok = await claude.messages.create(
        model=CLAUDE,
        max_tokens=10,
        messages=QUESTION,
        system="s",
        stop_sequences=["x"],
        metadata={"user_id": "u"},
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "auto"},
        output_config={"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}},
        extra_body={"temperature": 0.1, "top_p": 0.9, "top_k": 3},
    )
    assert ok.stop_reason == "tool_use"


async def test_without_strict_unknown_fields_and_unpaired_tool_results_pass() -> None:
    """The gateway forwards vendor fields and tool histories as given; by default the fake
    lets them through, so tests of that forwarding can see what arrived."""
    history = anthropic_history()
    history[-1]["content"][0]["tool_use_id"] = "toolu_other"
    orphan = [*QUESTION, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    async with FakeUpstream() as lenient, httpx.AsyncClient(base_url=lenient.url) as http:
        response = await http.post(
            "/v1/messages",
            json={"model": CLAUDE, "max_tokens": 10, "messages": history, "seed": 7},
        )
        assert response.status_code == 200
        assert response.json()["content"][0]["text"] == "The tool said: 18C and sunny"
        assert lenient.requests[-1].body["seed"] == 7
        response = await http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": orphan}
        )
        assert response.json()["choices"][0]["message"]["content"] == "The tool said: x"


# --- Ollama ---------------------------------------------------------------------------------


async def test_ollama_tool_call_whole_and_streamed(http: httpx.AsyncClient) -> None:
    body = {"model": LLAMA, "messages": QUESTION, "tools": OPENAI_TOOLS}
    response = await http.post("/api/chat", json={**body, "stream": False})
    answer = response.json()
    assert (answer["done"], answer["done_reason"]) == (True, "stop")
    assert answer["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": WEATHER_ARGS}}],
    }

    lines = ollama_lines(await http.post("/api/chat", json=body))
    assert [line["done"] for line in lines] == [False, True]
    assert lines[0]["message"]["tool_calls"] == answer["message"]["tool_calls"]
    assert "tool_calls" not in lines[1]["message"]


async def test_ollama_round_trip_and_structured_output(http: httpx.AsyncClient) -> None:
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": WEATHER_ARGS}}],
        },
        {"role": "tool", "content": "18C"},
    ]
    # Ollama has no tool_choice: after a result, the tools not called yet are called next...
    body = {"model": LLAMA, "messages": history, "tools": OPENAI_TOOLS, "stream": False}
    answer = (await http.post("/api/chat", json=body)).json()
    assert [c["function"]["name"] for c in answer["message"]["tool_calls"]] == [
        OPENAI_TOOLS[1]["function"]["name"]
    ]
    # ...and once every tool was called, the answer is text about the result.
    body = {"model": LLAMA, "messages": history, "tools": OPENAI_TOOLS[:1], "stream": False}
    answer = (await http.post("/api/chat", json=body)).json()
    assert answer["message"] == {"role": "assistant", "content": "The tool said: 18C"}

    body = {"model": LLAMA, "messages": QUESTION, "format": WEATHER_SCHEMA, "stream": False}
    answer = (await http.post("/api/chat", json=body)).json()
    assert json.loads(answer["message"]["content"]) == WEATHER_ARGS


async def test_ollama_refuses_tool_arguments_sent_as_a_string(http: httpx.AsyncClient) -> None:
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "18C"},
    ]
    response = await http.post("/api/chat", json={"model": LLAMA, "messages": history})
    assert response.status_code == 400
    assert "cannot unmarshal string" in response.json()["error"]


async def test_ollama_ignores_unknown_fields_like_the_real_server(
    http: httpx.AsyncClient,
) -> None:
    body = {"model": LLAMA, "messages": QUESTION, "stream": False, "no_such_field": 1}
    assert (await http.post("/api/chat", json=body)).status_code == 200


@pytest.mark.parametrize("after_chunks", [0, 1])
async def test_ollama_cut_before_or_after_the_tool_call_line(
    up: FakeUpstream, after_chunks: int
) -> None:
    up.script(LLAMA, Fault.cut_stream(after_chunks=after_chunks))
    body = {"model": LLAMA, "messages": QUESTION, "tools": OPENAI_TOOLS}
    lines: list[bytes] = []
    async with httpx.AsyncClient(base_url=up.url, timeout=5.0) as client:
        with pytest.raises(httpx.HTTPError):
            async with client.stream("POST", "/api/chat", json=body) as response:
                async for line in response.aiter_lines():
                    lines.append(line.encode())
    parsed = [json.loads(line) for line in lines if line.strip()]
    assert all(not line["done"] for line in parsed)
    assert [bool(line["message"].get("tool_calls")) for line in parsed] == [True] * after_chunks


async def test_openai_n_choices_of_json_all_parse(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.parse(
        model=MODEL, messages=QUESTION, response_format=Address, n=2
    )
    assert [c.message.parsed for c in completion.choices] == [
        Address(street="Paris", zip_code="Parisss")
    ] * 2


# --- reply(tool_calls=...) checks -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "x"},
        [{"name": ""}],
        [{"name": "x", "arguments": "{}"}],
        [{"name": "x", "args": {}}],
    ],
)
def test_reply_refuses_malformed_tool_calls(bad: Any) -> None:
    with pytest.raises(ValueError, match="tool_calls"):
        FakeUpstream().reply(MODEL, tool_calls=bad)


async def test_control_api_scripts_tool_calls_and_refusals(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    client = FakeUpstreamClient(up.url)
    await client.areply(MODEL, tool_calls=[{"name": "lookup", "arguments": {"q": "x"}}])
    completion = await oai.chat.completions.create(model=MODEL, messages=QUESTION)
    [call] = completion.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup", {"q": "x"})

    await client.areply(MODEL, refusal="No.")
    completion = await oai.chat.completions.create(model=MODEL, messages=QUESTION)
    assert completion.choices[0].message.refusal == "No."

    with pytest.raises(ControlAPIError, match=r"tool_calls\[0\]\.name"):
        await client.areply(MODEL, tool_calls=[{"name": 3}])


# --- client libraries on top of the SDKs ------------------------------------------------------


class City(pydantic.BaseModel):
    name: str
    population: int
    districts: list[str]


async def test_pydantic_ai_agent_runs_its_tool_loop_and_structured_output(
    up: FakeUpstream,
) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(
        MODEL, provider=OpenAIProvider(base_url=up.openai_base_url, api_key="test")
    )
    agent = Agent(model)
    ran: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        ran.append(city)
        return f"sunny in {city}"

    result = await agent.run("What is the weather in Paris?")
    # Call -> the tool runs with sampled arguments -> its result comes back -> text about it.
    assert ran == ["Paris"]
    assert result.output == "The tool said: sunny in Paris"
    assert [r.body["messages"][-1]["role"] for r in up.requests] == ["user", "tool"]

    city = (await Agent(model, output_type=City).run("A city?")).output
    assert city == City(name="Paris", population=1, districts=["Paris"])


async def test_instructor_extracts_through_tool_calls_on_both_wires(up: FakeUpstream) -> None:
    import instructor

    expected = City(name="Paris", population=1, districts=["Paris"])
    openai_client = instructor.from_openai(
        openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="test")
    )
    got = await openai_client.chat.completions.create(
        model=MODEL, response_model=City, messages=QUESTION
    )
    assert got.model_dump() == expected.model_dump()
    assert up.requests[-1].body["tool_choice"]["function"]["name"] == "City"

    anthropic_client = instructor.from_anthropic(
        anthropic.AsyncAnthropic(base_url=up.anthropic_base_url, api_key="test")
    )
    got = await anthropic_client.messages.create(
        model=CLAUDE, max_tokens=100, response_model=City, messages=QUESTION
    )
    assert got.model_dump() == expected.model_dump()


async def test_langchain_reassembles_a_streamed_tool_call(up: FakeUpstream) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=up.openai_base_url, api_key="test").bind_tools([City])
    chunks = [chunk async for chunk in llm.astream("A city?")]
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    calls = getattr(total, "tool_calls", [])
    assert [(c["name"], c["args"]) for c in calls] == [
        ("City", {"name": "Paris", "population": 1, "districts": ["Paris"]})
    ]


# --- faults inside tool calls, and what the fake refused ----------------------------------------


async def test_a_stall_inside_a_tool_call_resumes_with_the_rest_of_its_arguments(
    up: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    up.script(MODEL, Fault.stall(after_chunks=2, seconds=0.05))
    stream = await oai.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=OPENAI_TOOLS, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.content is None  # a tool-call-only answer opens so
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == WEATHER_ARGS
    assert up.injected["stall"] == 1


async def test_a_midstream_error_inside_a_tool_use_is_anthropics_error_event(
    up: FakeUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    up.script(CLAUDE, Fault.midstream_error(after_chunks=3, kind="overloaded"))
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with claude.messages.stream(
            model=CLAUDE, max_tokens=100, messages=QUESTION, tools=ANTHROPIC_TOOLS
        ) as stream:
            async for event in stream:
                seen.append(event.type)
    assert seen.count("content_block_delta") >= 2
    assert "content_block_stop" not in seen


async def test_rejected_requests_are_kept_with_the_reason_apart_from_requests(
    up: FakeUpstream, claude: anthropic.AsyncAnthropic
) -> None:
    await _anthropic_400(claude, tools=OPENAI_TOOLS)
    assert up.requests == [] and up.count() == 0
    [rejected] = up.rejected
    assert (rejected.protocol, rejected.model, rejected.stream) == ("anthropic", CLAUDE, False)
    assert rejected.body["tools"] == OPENAI_TOOLS
    assert rejected.rejection == "tools.0.input_schema: Field required"
    assert rejected.to_dict()["rejection"] == rejected.rejection
    up.reset_counts()
    assert up.rejected == []
