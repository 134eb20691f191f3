"""The Anthropic and Ollama codecs translate the whole Chat Completions request: tools, tool
choice, structured output and every other field, as each codec's `REQUEST_FIELDS` says; and
they read tool calls back, whole and streamed.

Unit tests go through the providers' real `complete`/`stream` on an in-memory `MockTransport`
(the body is what would be sent; a refused field sends nothing), and through the codecs
directly; the end-to-end tests run over real HTTP against `FakeUpstream`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import LLMFactory
from gateway.errors import ErrorKind, InvalidRequestError, ProviderError
from gateway.providers import (
    AnthropicService,
    LLMService,
    MockResponse,
    MockTransport,
    OllamaService,
    WireEvent,
)
from gateway.providers._base import Call
from gateway.providers._codec_anthropic import (
    NATIVE_STRUCTURED_OUTPUT_MODELS,
    AnthropicCodec,
)
from gateway.providers._codec_anthropic import REQUEST_FIELDS as ANTHROPIC_FIELDS
from gateway.providers._codec_ollama import REQUEST_FIELDS as OLLAMA_FIELDS
from gateway.providers._codec_ollama import OllamaCodec
from gateway.providers._errors import Redactor
from gateway.providers._messages import JSON_INSTRUCTION
from gateway.request import OPENAI_FIELDS, check_request_fields
from gateway.testing import FakeUpstream
from gateway.types import (
    ChatStream,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    validate_messages,
)

KEY = "sk-translate-secret-0123456789"
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
CLAUDE_OLD = "claude-3-5-haiku-20241022"
CLAUDE_NATIVE = "claude-sonnet-4-5-20250929"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no description, no parameters
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}


def json_schema(strict: bool | None = True, schema: Any = ANSWER_SCHEMA) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "weather_report", "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


# Every OpenAI request field a codec must say something about (issue 14's list).


# --- helpers ------------------------------------------------------------------------------------


def anthropic_message(*blocks: dict[str, Any], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-m",
        "content": list(blocks),
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


def ollama_message(content: str = "", tool_calls: list[Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "model": "llama-m",
        "message": message,
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 8,
        "eval_count": 4,
    }


def anthropic(
    reply: dict[str, Any] | str | None = None, *, model: str = CLAUDE_OLD
) -> tuple[AnthropicService, MockTransport]:
    answer = reply if reply is not None else anthropic_message({"type": "text", "text": "Hi."})
    transport = MockTransport(
        lambda request: (
            MockResponse(content=answer) if isinstance(answer, str) else MockResponse(json=answer)
        )
    )
    return AnthropicService(api_key=KEY, model=model, transport=transport), transport


def ollama(reply: dict[str, Any] | str | None = None) -> tuple[OllamaService, MockTransport]:
    answer = reply if reply is not None else ollama_message("Hi.")
    transport = MockTransport(
        lambda request: (
            MockResponse(content=answer) if isinstance(answer, str) else MockResponse(json=answer)
        )
    )
    return OllamaService(model="llama-m", transport=transport), transport


async def sent_body(llm: LLMService, transport: MockTransport, **params: Any) -> dict[str, Any]:
    await llm.complete(params.pop("messages", MESSAGES), **params)
    return transport.requests[-1].body


async def refused(llm: LLMService, transport: MockTransport, **params: Any) -> str:
    """The refusal's message; nothing may have been sent, whole or streamed."""
    with pytest.raises(InvalidRequestError) as whole:
        await llm.complete(MESSAGES, **params)
    if "n" not in params:  # a streamed n > 1 is refused by the shared check, before the codec
        with pytest.raises(InvalidRequestError):
            llm.stream(MESSAGES, **params)
    assert transport.requests == []
    return str(whole.value)


def sse(*events: dict[str, Any]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def ndjson(*lines: dict[str, Any]) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


async def events_of(stream: ChatStream) -> list[Any]:
    async with stream:
        return [event async for event in stream.events()]


def make_call(
    params: dict[str, Any],
    *,
    model: str = CLAUDE_OLD,
    stream: bool = False,
    temperature: float | None = None,
    max_tokens: int | None = None,
    messages: list[dict[str, Any]] = MESSAGES,
) -> Call:
    """A `Call` as the providers' skeleton builds one (checked fields, json_mode inferred)."""
    check_request_fields(params, stream=stream)
    response_format = params.get("response_format")
    json_mode = isinstance(response_format, dict) and response_format.get("type") != "text"
    conversation = validate_messages(messages)
    return Call(
        provider="p",
        model=model,
        messages=conversation,
        temperature=temperature,
        max_tokens=max_tokens,
        json_mode=json_mode,
        params=params,
        timeout_s=30.0,
        stream=stream,
        redact=Redactor((), conversation),
    )


# --- the tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [ANTHROPIC_FIELDS, OLLAMA_FIELDS], ids=["anthropic", "ollama"])
def test_each_codec_says_what_it_does_with_every_openai_field(table: dict[str, str]) -> None:
    assert set(table) == set(OPENAI_FIELDS)
    assert all(isinstance(text, str) and text for text in table.values())


# --- Anthropic: tools -----------------------------------------------------------------------------


async def test_anthropic_tools_become_input_schema_tools() -> None:
    llm, transport = anthropic()
    body = await sent_body(llm, transport, tools=[WEATHER, TIME])
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER["function"]["parameters"],
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body  # auto is Anthropic's default
    assert "parallel_tool_calls" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", None),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"type": "tool", "name": "get_time"},
        ),
    ],
    ids=["auto", "required", "none", "named"],
)
async def test_anthropic_tool_choice_maps(choice: Any, expected: dict[str, Any] | None) -> None:
    llm, transport = anthropic()
    body = await sent_body(llm, transport, tools=[WEATHER, TIME], tool_choice=choice)
    assert body.get("tool_choice") == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ("none", {"type": "none"}),
    ],
    ids=["no-choice", "required", "named", "none"],
)
async def test_anthropic_parallel_tool_calls_false_disables_parallel_use(
    choice: Any, expected: dict[str, Any]
) -> None:
    llm, transport = anthropic()
    params: dict[str, Any] = {"tools": [WEATHER], "parallel_tool_calls": False}
    if choice is not None:
        params["tool_choice"] = choice
    body = await sent_body(llm, transport, **params)
    assert body["tool_choice"] == expected
    # true, or without tools, says nothing
    assert "tool_choice" not in await sent_body(
        llm, transport, tools=[WEATHER], parallel_tool_calls=True
    )
    assert "tool_choice" not in await sent_body(llm, transport, parallel_tool_calls=False)


async def test_anthropic_strict_tools_keep_strict_only_where_the_model_takes_it() -> None:
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    old, old_transport = anthropic(model=CLAUDE_OLD)
    new, new_transport = anthropic(model=CLAUDE_NATIVE)
    assert "strict" not in (await sent_body(old, old_transport, tools=[strict]))["tools"][0]
    assert (await sent_body(new, new_transport, tools=[strict]))["tools"][0]["strict"] is True


async def test_anthropic_tool_use_blocks_become_tool_calls() -> None:
    reply = anthropic_message(
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Zürich"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        stop_reason="tool_use",
    )
    llm, _ = anthropic(reply)
    completion = await llm.complete(MESSAGES, tools=[WEATHER, TIME])
    assert completion.text == "Let me look."
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall("toolu_1", "get_weather", '{"city": "Zürich"}'),
        ToolCall("toolu_2", "get_time", "{}"),
    )
    assert completion.usage == Usage(10, 5)


async def test_anthropic_streamed_tool_calls_are_numbered_among_tool_calls() -> None:
    stream_text = sse(
        {
            "type": "message_start",
            "message": {"id": "msg_s", "model": "claude-m", "usage": {"input_tokens": 9}},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Checking."},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_a",
                "name": "get_weather",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 12},
        },
        {"type": "message_stop"},
    )
    llm, _ = anthropic(stream_text)
    stream = llm.stream(MESSAGES, tools=[WEATHER, TIME])
    events = await events_of(stream)
    assert events == [
        TextDelta("Checking."),
        ToolCallDelta(0, "toolu_a", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"city": '),
        ToolCallDelta(0, None, None, '"Paris"}'),
        ToolCallDelta(1, "toolu_b", "get_time", ""),
        ToolCallDelta(1, None, None, "{}"),  # a call without arguments still has a JSON object
    ]
    assert stream.tool_calls == (
        ToolCall("toolu_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("toolu_b", "get_time", "{}"),
    )
    assert (stream.finish_reason, stream.usage) == ("tool_calls", Usage(9, 12))


async def test_anthropic_history_with_tool_calls_and_results() -> None:
    messages = [
        {"role": "developer", "content": "Use Celsius."},
        {"role": "user", "content": "Weather in Paris and Rome?", "name": "ann"},
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "24"}]},
    ]
    llm, transport = anthropic()
    body = await sent_body(llm, transport, messages=messages, tools=[WEATHER])
    assert body["system"] == "Use Celsius."
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},  # `name` is not sent
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "24"},
            ],
        },
    ]


def weather_call(call_id: str, city: str = "Paris") -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }


async def test_anthropic_tool_results_pair_with_the_turn_before() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [weather_call("c1")]},
        {"role": "user", "content": "Quickly, please."},  # text before the result
        {"role": "tool", "tool_call_id": "c1", "content": "18"},
        {"role": "tool", "tool_call_id": "c1", "content": "again"},  # answered already
        {"role": "assistant", "content": "It is 18."},
        {"role": "tool", "tool_call_id": "c1", "content": "late"},  # its call is two turns back
    ]
    llm, transport = anthropic()
    body = await sent_body(llm, transport, messages=messages)
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "18"},
            {"type": "text", "text": "Quickly, please."},
            {"type": "text", "text": "Tool result: again"},
        ],
    }
    assert body["messages"][4] == {"role": "user", "content": "Tool result: late"}


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        (
            [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [weather_call("c1"), weather_call("c2")],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "18"},
                {"role": "user", "content": "And?"},
            ],
            r"^messages\[1\]\.tool_calls\[1\] has no tool message answering it",
        ),
        (
            [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [weather_call("c1")]},
            ],
            r"^messages\[1\]\.tool_calls\[0\] has no tool message",
        ),
        (
            [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [weather_call("c1"), weather_call("c1", "Rome")],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "18"},
            ],
            r"^messages\[1\]\.tool_calls\[1\]\.id 'c1' is given to two tool calls",
        ),
    ],
    ids=["unanswered", "last-turn-unanswered", "duplicate-id"],
)
async def test_anthropic_refuses_tool_calls_it_cannot_pair(messages: list[Any], match: str) -> None:
    llm, transport = anthropic()
    with pytest.raises(InvalidRequestError, match=match):
        await llm.complete(messages)
    assert transport.requests == []


async def test_anthropic_history_keeps_an_earlier_refusal_as_text() -> None:
    messages = [
        {"role": "user", "content": "Do the bad thing."},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "user", "content": [{"type": "text", "text": "Fine."}]},
    ]
    llm, transport = anthropic()
    body = await sent_body(llm, transport, messages=messages)
    assert body["messages"][1] == {"role": "assistant", "content": "I can't help with that."}


# --- Anthropic: content parts ---------------------------------------------------------------------


async def test_anthropic_pdf_file_parts_become_document_blocks() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Summarise:"},
                {
                    "type": "file",
                    "file": {
                        "filename": "a.pdf",
                        "file_data": "data:application/pdf;base64,JVBERi0x",
                    },
                },
            ],
        }
    ]
    llm, transport = anthropic()
    body = await sent_body(llm, transport, messages=messages)
    assert body["messages"][0]["content"][1] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
    }


@pytest.mark.parametrize(
    ("part", "match"),
    [
        (
            {"type": "file", "file": {"file_id": "file-abc"}},
            r"content\[0\] is a file part with a file_id",
        ),
        (
            {"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}},
            r"text/csv data: URL; Anthropic takes PDF",
        ),
        ({"type": "file", "file": {"file_data": "JVBERi0x"}}, r"not a data: URL"),
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            r"input_audio part; Anthropic",
        ),
    ],
    ids=["file_id", "csv", "raw-base64", "audio"],
)
async def test_anthropic_refuses_parts_it_cannot_read(part: dict[str, Any], match: str) -> None:
    llm, transport = anthropic()
    with pytest.raises(InvalidRequestError, match=match):
        await llm.complete([{"role": "user", "content": [part]}])
    assert transport.requests == []


# --- Anthropic: structured output -----------------------------------------------------------------


async def test_anthropic_json_object_keeps_the_system_instruction() -> None:
    llm, transport = anthropic(anthropic_message({"type": "text", "text": "{}"}))
    body = await sent_body(llm, transport, response_format={"type": "json_object"})
    assert body["system"] == JSON_INSTRUCTION
    assert "tools" not in body and "output_config" not in body


async def test_anthropic_json_schema_is_native_on_models_that_take_it() -> None:
    assert CLAUDE_NATIVE.startswith(NATIVE_STRUCTURED_OUTPUT_MODELS)
    reply = anthropic_message({"type": "text", "text": '{"city": "Paris", "celsius": 18}'})
    llm, transport = anthropic(reply, model=CLAUDE_NATIVE)
    completion = await llm.complete(MESSAGES, response_format=json_schema())
    body = transport.requests[-1].body
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": ANSWER_SCHEMA}}
    assert "tools" not in body and "system" not in body
    assert (completion.text, completion.finish_reason) == (
        '{"city": "Paris", "celsius": 18}',
        "stop",
    )


@pytest.mark.parametrize(
    "schema",
    [
        {**ANSWER_SCHEMA, "properties": {"celsius": {"type": "number", "minimum": -90}}},
        {**ANSWER_SCHEMA, "properties": {"city": {"type": "string", "maxLength": 40}}},
        {key: value for key, value in ANSWER_SCHEMA.items() if key != "additionalProperties"},
        {**ANSWER_SCHEMA, "properties": {"tags": {"type": "array", "minItems": 2}}},
    ],
    ids=["minimum", "maxLength", "open-object", "minItems"],
)
async def test_anthropic_schemas_native_output_cannot_take_use_a_forced_tool(
    schema: dict[str, Any],
) -> None:
    llm, transport = anthropic(FORCED, model=CLAUDE_NATIVE)
    completion = await llm.complete(MESSAGES, response_format=json_schema(schema=schema))
    body = transport.requests[-1].body
    assert "output_config" not in body
    assert body["tool_choice"] == {"type": "tool", "name": "weather_report"}
    assert json.loads(completion.text) == {"city": "Paris", "celsius": 18}


async def test_anthropic_property_names_are_not_mistaken_for_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {"minimum": {"type": "number"}, "enum": {"type": "string", "enum": ["a"]}},
        "required": ["minimum", "enum"],
        "additionalProperties": False,
    }
    llm, transport = anthropic(model=CLAUDE_NATIVE)
    body = await sent_body(llm, transport, response_format=json_schema(schema=schema))
    assert body["output_config"]["format"]["schema"] == schema


async def test_anthropic_native_json_schema_combines_with_tools() -> None:
    llm, transport = anthropic(model=CLAUDE_NATIVE)
    body = await sent_body(llm, transport, tools=[WEATHER], response_format=json_schema())
    assert [tool["name"] for tool in body["tools"]] == ["get_weather"]
    assert body["output_config"]["format"]["schema"] == ANSWER_SCHEMA


FORCED = anthropic_message(
    {
        "type": "tool_use",
        "id": "toolu_f",
        "name": "weather_report",
        "input": {"city": "Paris", "celsius": 18},
    },
    stop_reason="tool_use",
)


@pytest.mark.parametrize(
    ("model", "strict"),
    [(CLAUDE_OLD, True), (CLAUDE_NATIVE, False), (CLAUDE_NATIVE, None)],
    ids=["old-model", "native-not-strict", "native-strict-unset"],
)
async def test_anthropic_json_schema_is_a_forced_tool_read_back_as_text(
    model: str, strict: bool | None
) -> None:
    llm, transport = anthropic(FORCED, model=model)
    completion = await llm.complete(MESSAGES, response_format=json_schema(strict))
    body = transport.requests[-1].body
    assert body["tools"] == [
        {
            "name": "weather_report",
            "description": "Give the answer: this tool's input is the whole answer.",
            "input_schema": ANSWER_SCHEMA,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "weather_report"}
    assert "output_config" not in body and "system" not in body
    assert json.loads(completion.text) == {"city": "Paris", "celsius": 18}
    assert (completion.finish_reason, completion.tool_calls) == ("stop", ())


async def test_anthropic_forced_tool_uses_the_schema_description_and_an_empty_schema() -> None:
    llm, transport = anthropic(FORCED)
    spec = {"name": "weather_report", "description": "A report."}
    body = await sent_body(
        llm, transport, response_format={"type": "json_schema", "json_schema": spec}
    )
    assert body["tools"] == [
        {
            "name": "weather_report",
            "description": "A report.",
            "input_schema": {"type": "object", "properties": {}},
        }
    ]


async def test_anthropic_forced_answer_streams_as_text() -> None:
    stream_text = sse(
        {
            "type": "message_start",
            "message": {"id": "msg_f", "model": "claude-m", "usage": {"input_tokens": 4}},
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_f",
                "name": "weather_report",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris", '},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '"celsius": 18}'},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 7},
        },
        {"type": "message_stop"},
    )
    llm, _ = anthropic(stream_text)
    stream = llm.stream(MESSAGES, response_format=json_schema())
    events = await events_of(stream)
    assert events == [TextDelta('{"city": "Paris", '), TextDelta('"celsius": 18}')]
    assert (stream.finish_reason, stream.tool_calls) == ("stop", ())


async def test_anthropic_json_schema_with_tools_is_refused_without_native_output() -> None:
    llm, transport = anthropic()
    message = await refused(llm, transport, tools=[WEATHER], response_format=json_schema())
    assert "response_format json_schema with tools" in message


async def test_anthropic_json_schema_must_be_an_object_schema() -> None:
    llm, transport = anthropic()
    message = await refused(
        llm, transport, response_format=json_schema(schema={"type": "array", "items": {}})
    )
    assert 'type "array"' in message


# --- Anthropic: every other field ---------------------------------------------------------------


async def test_anthropic_translates_and_ignores_fields() -> None:
    llm, transport = anthropic()
    body = await sent_body(
        llm,
        transport,
        stop="END",
        top_p=0.9,
        seed=7,
        max_completion_tokens=300,
        max_tokens=100,
        user="u-1",
        metadata={"team": "search"},
        store=True,
        service_tier="auto",
        prompt_cache_key="k",
        prediction={"type": "content", "content": "x"},
        modalities=["text"],
        n=1,
        frequency_penalty=0,
        presence_penalty=0.0,
        logprobs=False,
        logit_bias={},
        top_k=40,  # a provider extra: sent as given
    )
    assert body == {
        "model": CLAUDE_OLD,
        "messages": [{"role": "user", "content": MESSAGES[0]["content"]}],
        "max_tokens": 300,
        "stop_sequences": ["END"],
        "top_p": 0.9,
        "metadata": {"user_id": "u-1"},
        "top_k": 40,
    }


async def test_anthropic_safety_identifier_wins_over_user() -> None:
    llm, transport = anthropic()
    body = await sent_body(llm, transport, user="u-1", safety_identifier="sid-9")
    assert body["metadata"] == {"user_id": "sid-9"}


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n": 2}, r"^n=2: Anthropic answers one choice per call"),
        ({"temperature": 1.5}, r"^temperature=1.5: Anthropic takes a temperature from 0 to 1"),
        ({"frequency_penalty": 0.5}, r"^frequency_penalty=0.5: Anthropic has no"),
        ({"presence_penalty": -1}, r"^presence_penalty=-1: Anthropic has no"),
        ({"logprobs": True}, r"^logprobs=true: Anthropic returns no log probabilities"),
        ({"top_logprobs": 2}, r"^top_logprobs=2: "),
        ({"logit_bias": {"50256": -100}}, r"^logit_bias=\{\"50256\": -100\}: "),
        ({"reasoning_effort": "low"}, r"^reasoning_effort=\"low\": .*token budget"),
        ({"modalities": ["text", "audio"]}, r"^modalities=\[\"text\", \"audio\"\]: "),
        ({"audio": {"voice": "alloy", "format": "wav"}}, r"^audio=.*no audio output"),
        ({"web_search_options": {}}, r"^web_search_options=\{\}: "),
        ({"verbosity": "low"}, r"^verbosity=\"low\": "),
        ({"functions": [WEATHER["function"]]}, r"^functions=.*send tools"),
        ({"function_call": "auto"}, r"^function_call=\"auto\": .*tool_choice"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
async def test_anthropic_refuses_what_it_cannot_honour(params: dict[str, Any], match: str) -> None:
    llm, transport = anthropic()
    assert re.search(match, await refused(llm, transport, **params))


def test_the_anthropic_codec_refuses_before_building_anything() -> None:
    with pytest.raises(InvalidRequestError, match=r"^n=3"):
        AnthropicCodec().body(make_call({"n": 3}), CLAUDE_OLD)


def test_the_anthropic_codec_reads_a_forced_answer_without_its_text_blocks() -> None:
    codec = AnthropicCodec()
    call = make_call({"response_format": json_schema()})
    reply = anthropic_message(
        {"type": "text", "text": "Here:"}, *FORCED["content"], stop_reason="tool_use"
    )
    completion = codec.completion(reply, call)
    assert json.loads(completion.text) == {"city": "Paris", "celsius": 18}
    # the same reply to a call with tools of its own is a tool call
    tool_call = codec.completion(reply, make_call({"tools": [WEATHER]}))
    assert tool_call.text == "Here:" and tool_call.tool_calls[0].name == "weather_report"


def test_the_anthropic_reader_takes_a_tool_input_given_whole_at_its_start() -> None:
    reader = AnthropicCodec().reader(make_call({"tools": [WEATHER]}, stream=True))
    block = {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}}
    events = [
        {"type": "content_block_start", "index": 3, "content_block": block},
        {"type": "content_block_stop", "index": 3},
    ]
    out = [piece for data in events for piece in reader.read(WireEvent(data["type"], data))]
    assert out == [
        ToolCallDelta(0, "t1", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"city": "Oslo"}'),
    ]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "tool_use", "name": "x", "input": {}},
        {"type": "tool_use", "id": "t", "name": "x", "input": [1]},
    ],
    ids=["no-id", "input-not-object"],
)
def test_a_malformed_tool_use_block_is_an_invalid_response(block: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as caught:
        AnthropicCodec().completion(anthropic_message(block), make_call({}))
    assert caught.value.kind is ErrorKind.INVALID_RESPONSE


# --- Ollama: tools --------------------------------------------------------------------------------


async def test_ollama_tools_are_sent_as_given_and_calls_come_back_with_ids() -> None:
    reply = ollama_message(
        "",
        [
            {"function": {"name": "get_weather", "arguments": {"city": "Zürich"}}},
            {"function": {"name": "get_time", "arguments": {}}},
        ],
    )
    llm, transport = ollama(reply)
    completion = await llm.complete(MESSAGES, tools=[WEATHER, TIME], tool_choice="auto")
    body = transport.requests[-1].body
    assert body["tools"] == [WEATHER, TIME]
    assert "tool_choice" not in body and "format" not in body
    assert "tool_choice" not in body.get("options", {})
    assert completion.finish_reason == "tool_calls"
    first, second = completion.tool_calls
    assert (first.name, first.arguments) == ("get_weather", '{"city": "Zürich"}')
    assert (second.name, second.arguments) == ("get_time", "{}")
    assert first.id.startswith("call_") and second.id.startswith("call_") and first.id != second.id


async def test_ollama_tool_choice_none_sends_no_tools() -> None:
    llm, transport = ollama()
    body = await sent_body(
        llm, transport, tools=[WEATHER], tool_choice="none", parallel_tool_calls=False
    )
    assert "tools" not in body and "format" not in body


@pytest.mark.parametrize(
    ("tools", "choice"),
    [
        ([WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}}),
        ([WEATHER], "required"),
    ],
    ids=["named", "required-one"],
)
async def test_ollama_forces_a_tool_through_format(tools: list[Any], choice: Any) -> None:
    llm, transport = ollama(ollama_message('{"city": "Paris"}'))
    completion = await llm.complete(
        MESSAGES, tools=tools, tool_choice=choice, parallel_tool_calls=False
    )
    body = transport.requests[-1].body
    assert "tools" not in body
    assert body["format"] == WEATHER["function"]["parameters"]
    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"
    (tool_call,) = completion.tool_calls
    assert (tool_call.name, tool_call.arguments) == ("get_weather", '{"city": "Paris"}')
    assert tool_call.id.startswith("call_")


async def test_ollama_forced_tool_without_parameters_asks_for_an_empty_object() -> None:
    llm, transport = ollama(ollama_message("{}"))
    body = await sent_body(
        llm,
        transport,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert body["format"] == {"type": "object", "properties": {}}


async def test_ollama_forced_tool_streams_as_one_call() -> None:
    lines = ndjson(
        {"model": "llama-m", "message": {"content": '{"city": '}, "done": False},
        {"model": "llama-m", "message": {"content": '"Paris"}'}, "done": False},
        {
            "model": "llama-m",
            "message": {"content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 3,
            "eval_count": 2,
        },
    )
    llm, _ = ollama(lines)
    stream = llm.stream(MESSAGES, tools=[WEATHER], tool_choice="required")
    events = await events_of(stream)
    first, *rest = events
    assert isinstance(first, ToolCallDelta) and first.index == 0 and first.name == "get_weather"
    assert first.id is not None and first.id.startswith("call_")
    assert rest == [
        ToolCallDelta(0, None, None, '{"city": '),
        ToolCallDelta(0, None, None, '"Paris"}'),
    ]
    assert [(c.name, c.arguments) for c in stream.tool_calls] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    assert stream.finish_reason == "tool_calls"


async def test_ollama_streams_each_tool_call_whole() -> None:
    lines = ndjson(
        {"model": "llama-m", "message": {"content": "Let me check."}, "done": False},
        {
            "model": "llama-m",
            "message": {
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"id": "call_given", "function": {"name": "get_time", "arguments": {}}},
                ],
            },
            "done": False,
        },
        {
            "model": "llama-m",
            "message": {"content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 3,
            "eval_count": 9,
        },
    )
    llm, _ = ollama(lines)
    stream = llm.stream(MESSAGES, tools=[WEATHER, TIME])
    events = await events_of(stream)
    assert events[0] == TextDelta("Let me check.")
    weather, time = events[1:]
    assert (weather.index, weather.name, weather.arguments) == (
        0,
        "get_weather",
        '{"city": "Paris"}',
    )
    assert weather.id.startswith("call_")
    assert time == ToolCallDelta(1, "call_given", "get_time", "{}")
    assert [c.name for c in stream.tool_calls] == ["get_weather", "get_time"]
    assert (stream.finish_reason, stream.usage) == ("tool_calls", Usage(3, 9))


async def test_ollama_required_with_several_tools_takes_only_an_answer_that_calls_one() -> None:
    # Ollama cannot force one of several tools: the tools go as they are, and the answer is
    # checked instead, so a text answer is the candidate's failure, never the caller's surprise.
    llm, transport = ollama(ollama_message("Just text."))
    with pytest.raises(ProviderError) as whole:
        await llm.complete(MESSAGES, tools=[WEATHER, TIME], tool_choice="required")
    assert whole.value.kind is ErrorKind.INVALID_RESPONSE
    assert "tool_choice" not in transport.requests[-1].body
    assert [t["function"]["name"] for t in transport.requests[-1].body["tools"]] == [
        "get_weather",
        "get_time",
    ]
    text_only = ndjson(
        {"model": "llama-m", "message": {"content": "Just "}, "done": False},
        {"model": "llama-m", "message": {"content": "text."}, "done": True, "done_reason": "stop"},
    )
    llm, _ = ollama(text_only)
    with pytest.raises(ProviderError) as streamed:
        await events_of(llm.stream(MESSAGES, tools=[WEATHER, TIME], tool_choice="required"))
    assert streamed.value.kind is ErrorKind.INVALID_RESPONSE
    text_then_call = ndjson(
        {"model": "llama-m", "message": {"content": "Let me check."}, "done": False},
        {
            "model": "llama-m",
            "message": {
                "content": "",
                "tool_calls": [{"function": {"name": "get_time", "arguments": {}}}],
            },
            "done": True,
            "done_reason": "stop",
        },
    )
    llm, _ = ollama(text_then_call)
    events = await events_of(llm.stream(MESSAGES, tools=[WEATHER, TIME], tool_choice="required"))
    assert events[0] == TextDelta("Let me check.")
    assert isinstance(events[1], ToolCallDelta) and events[1].name == "get_time"


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (
            {"tools": [WEATHER], "parallel_tool_calls": False},
            r"^parallel_tool_calls=false: Ollama cannot promise",
        ),
        ({"n": 2}, r"^n=2: Ollama answers one choice per call"),
        ({"logprobs": True}, r"^logprobs=true: "),
        ({"top_logprobs": 0}, r"^top_logprobs=0: "),
        ({"logit_bias": {"1": 5}}, r"^logit_bias=\{\"1\": 5\}: Ollama takes no token biases"),
        ({"modalities": ["audio"]}, r"^modalities=\[\"audio\"\]: "),
        ({"audio": {"voice": "alloy"}}, r"^audio="),
        ({"web_search_options": {"search_context_size": "low"}}, r"^web_search_options="),
        ({"verbosity": "high"}, r"^verbosity=\"high\""),
        ({"functions": [WEATHER["function"]]}, r"^functions="),
        ({"function_call": {"name": "get_weather"}}, r"^function_call="),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, dict) else None,
)
async def test_ollama_refuses_what_it_cannot_honour(params: dict[str, Any], match: str) -> None:
    llm, transport = ollama()
    assert re.search(match, await refused(llm, transport, **params))


async def test_ollama_history_with_tool_calls_developer_and_tool_names() -> None:
    messages = [
        {"role": "developer", "content": "Use Celsius."},
        {"role": "user", "content": "Weather?", "name": "ann"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18"},
        {"role": "tool", "tool_call_id": "call_unknown", "content": "?"},
    ]
    llm, transport = ollama()
    body = await sent_body(llm, transport, messages=messages)
    assert body["messages"] == [
        {"role": "system", "content": "Use Celsius."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18", "tool_name": "get_weather"},
        {"role": "tool", "content": "?"},
    ]


@pytest.mark.parametrize(
    ("part", "match"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            "input_audio part; .*transcript",
        ),
        (
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
            "file part; .*document's text",
        ),
        ({"type": "video", "video": {}}, r"type is 'video'.*send text as"),
    ],
    ids=["audio", "file", "other"],
)
async def test_ollama_refuses_parts_it_cannot_read_saying_what_to_send(
    part: dict[str, Any], match: str
) -> None:
    llm, transport = ollama()
    with pytest.raises(InvalidRequestError, match=match):
        await llm.complete([{"role": "user", "content": [part]}])
    assert transport.requests == []


# --- Ollama: structured output and fields ---------------------------------------------------------


async def test_ollama_structured_output_is_format() -> None:
    llm, transport = ollama(ollama_message("{}"))
    assert (await sent_body(llm, transport, response_format=json_schema()))[
        "format"
    ] == ANSWER_SCHEMA
    assert (await sent_body(llm, transport, response_format={"type": "json_object"}))[
        "format"
    ] == "json"
    assert "format" not in await sent_body(llm, transport, response_format={"type": "text"})
    # tools offered with a schema: both are sent (the model may call a tool or answer)
    both = await sent_body(llm, transport, tools=[WEATHER], response_format=json_schema())
    assert (both["tools"], both["format"]) == ([WEATHER], ANSWER_SCHEMA)


async def test_ollama_translates_and_ignores_fields() -> None:
    llm, transport = ollama()
    body = await sent_body(
        llm,
        transport,
        temperature=0.2,
        max_tokens=50,
        max_completion_tokens=80,
        stop=["END"],
        seed=7,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.2,
        reasoning_effort="medium",
        metadata={"a": "b"},
        store=False,
        service_tier="auto",
        user="u",
        safety_identifier="s",
        prompt_cache_key="k",
        prediction={"type": "content", "content": "x"},
        modalities=["text"],
        n=1,
        logprobs=False,
        logit_bias={},
        num_ctx=8192,  # Ollama's own options: as given
        keep_alive="5m",
    )
    assert body == {
        "model": "llama-m",
        "messages": [{"role": "user", "content": MESSAGES[0]["content"]}],
        "stream": False,
        "think": "medium",
        "keep_alive": "5m",
        "options": {
            "temperature": 0.2,
            "num_predict": 80,
            "stop": ["END"],
            "seed": 7,
            "top_p": 0.9,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
            "num_ctx": 8192,
        },
    }


@pytest.mark.parametrize(
    ("effort", "think"),
    [("minimal", "low"), ("low", "low"), ("medium", "medium"), ("high", "high"), ("none", False)],
)
def test_ollama_reasoning_effort_is_think(effort: str, think: Any) -> None:
    body = OllamaCodec().body(make_call({"reasoning_effort": effort}), "llama-m")
    assert body["think"] == think


def test_the_ollama_codec_reads_a_reply_without_tool_calls_as_text() -> None:
    completion = OllamaCodec().completion(ollama_message("Sunny."), make_call({"tools": [WEATHER]}))
    assert (completion.text, completion.finish_reason, completion.tool_calls) == (
        "Sunny.",
        "stop",
        (),
    )


# --- end to end over real HTTP, against FakeUpstream ----------------------------------------------

E2E_MODELS = {"anthropic": CLAUDE_OLD, "ollama": "llama-test"}


def make(name: str, up: FakeUpstream, **options: Any) -> LLMService:
    base_url = {"anthropic": up.anthropic_base_url, "ollama": up.ollama_base_url}[name]
    return LLMFactory.create(
        name, model=E2E_MODELS[name], base_url=base_url, timeout_s=5, api_key=KEY, **options
    )


E2E = [
    pytest.param(("anthropic", {}), id="anthropic"),
    pytest.param(("anthropic", {"client": "sdk"}), id="anthropic-sdk"),
    pytest.param(("ollama", {}), id="ollama"),
]


@pytest.fixture(params=E2E)
async def provider(
    request: pytest.FixtureRequest, upstream: FakeUpstream, isolated_settings: object
) -> AsyncIterator[LLMService]:
    name, options = request.param
    service = make(name, upstream, **options)
    yield service
    await service.aclose()


def check_weather_call(tool_call: ToolCall) -> None:
    assert tool_call.name == "get_weather"
    assert tool_call.id
    arguments = json.loads(tool_call.arguments)
    assert isinstance(arguments, dict) and isinstance(arguments.get("city"), str)


async def test_e2e_a_tool_call_comes_back_whole(
    provider: LLMService, upstream: FakeUpstream
) -> None:
    completion = await provider.complete(MESSAGES, tools=[WEATHER])
    assert completion.finish_reason == "tool_calls"
    (tool_call,) = completion.tool_calls
    check_weather_call(tool_call)


async def test_e2e_a_tool_call_comes_back_streamed(
    provider: LLMService, upstream: FakeUpstream
) -> None:
    stream = provider.stream(MESSAGES, tools=[WEATHER])
    events = await events_of(stream)
    assert any(isinstance(event, ToolCallDelta) for event in events)
    assert stream.finish_reason == "tool_calls"
    (tool_call,) = stream.tool_calls
    check_weather_call(tool_call)


async def test_e2e_a_named_tool_choice_calls_that_tool(
    provider: LLMService, upstream: FakeUpstream
) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    completion = await provider.complete(MESSAGES, tools=[TIME, WEATHER], tool_choice=choice)
    (tool_call,) = completion.tool_calls
    check_weather_call(tool_call)
    stream = provider.stream(MESSAGES, tools=[TIME, WEATHER], tool_choice=choice)
    await events_of(stream)
    (streamed,) = stream.tool_calls
    check_weather_call(streamed)


async def test_e2e_a_round_trip_answers_from_the_tool_result(
    provider: LLMService, upstream: FakeUpstream
) -> None:
    first = await provider.complete(MESSAGES, tools=[WEATHER])
    (tool_call,) = first.tool_calls
    history = [
        *MESSAGES,
        {"role": "assistant", "content": first.text or None, "tool_calls": [tool_call.to_openai()]},
        {"role": "tool", "tool_call_id": tool_call.id, "content": "18 degrees and sunny"},
    ]
    second = await provider.complete(history, tools=[WEATHER])
    assert second.tool_calls == ()
    assert second.finish_reason == "stop"
    assert "18 degrees and sunny" in second.text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_e2e_json_schema_gets_a_schema_shaped_answer(
    provider: LLMService, upstream: FakeUpstream, stream: bool
) -> None:
    if stream:
        chat = provider.stream(MESSAGES, response_format=json_schema())
        async with chat:
            text = "".join([delta async for delta in chat])
        finish_reason = chat.finish_reason
    else:
        completion = await provider.complete(MESSAGES, response_format=json_schema())
        text, finish_reason = completion.text, completion.finish_reason
    answer = json.loads(text)
    assert set(answer) == {"city", "celsius"}
    assert isinstance(answer["city"], str) and isinstance(answer["celsius"], int | float)
    assert finish_reason == "stop"


async def test_e2e_anthropic_native_structured_output_reaches_the_upstream(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    async with LLMFactory.create(
        "anthropic", model=CLAUDE_NATIVE, base_url=upstream.anthropic_base_url, api_key=KEY
    ) as llm:
        completion = await llm.complete(MESSAGES, response_format=json_schema())
    assert upstream.requests[-1].body["output_config"]["format"]["schema"] == ANSWER_SCHEMA
    assert set(json.loads(completion.text)) == {"city", "celsius"}


async def test_e2e_a_refused_field_sends_nothing(
    provider: LLMService, upstream: FakeUpstream
) -> None:
    with pytest.raises(InvalidRequestError, match=r"^n=2"):
        await provider.complete(MESSAGES, n=2)
    assert upstream.count() == 0
