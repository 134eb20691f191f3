"""What every wire protocol FakeUpstream speaks has in common: the `Wire` interface.

Each `Wire` (in _openai_wire, _anthropic_wire, _ollama_wire) turns the same abstract answer
(`Answer`) into one API's real bytes, so a fault scripted once looks right to whichever SDK made
the request. The shapes follow what the official SDKs parse (their SSE decoders and response
models), including the quirks: Azure's leading `prompt_filter_results` chunk, Anthropic's input
tokens that exclude cache reads, Ollama's NDJSON with streaming on by default.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from gateway.testing._faults import Fault
from gateway.types import Usage

JsonObject = dict[str, Any]

ToolChoice = str | tuple[str, str]
"""Normalised across wires: "auto", "none", "required" (Anthropic's "any"), or ("named", name)."""


class RequestRejected(Exception):
    """The request body is not what the real API accepts: answer 400 in the API's own shape."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class Call:
    """What FakeUpstream needs to know about one parsed API request."""

    protocol: str
    model: str
    stream: bool
    json_mode: bool
    include_usage: bool
    messages: list[JsonObject]
    """The conversation as chat messages; Anthropic's `system` field is the first one."""
    tools: list[tuple[str, JsonObject]] = field(default_factory=list)
    """The request's function tools in order: (name, JSON schema of its arguments)."""
    tool_choice: ToolChoice = "auto"
    json_schema: JsonObject | None = None
    """The schema structured output must follow (OpenAI json_schema, Anthropic output_format,
    Ollama `format` as an object), or None."""
    n: int = 1
    """How many choices to answer with (OpenAI's `n`; 1 elsewhere)."""
    called: list[str] = field(default_factory=list)
    """Names of the tools the assistant already called in the history, in order."""
    tool_result: str | None = None
    """The text of the tool result the conversation ends with, or None if it ends otherwise."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call in an answer; `id` is in the wire's own style (empty for Ollama)."""

    id: str
    name: str
    arguments: JsonObject

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Choice:
    """One more choice of an OpenAI answer with `n` > 1 (choice 0 is the Answer itself)."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Chunk:
    """One content chunk of a stream; faults' `after_chunks` counts these.

    "text": a piece of a choice's text; "tool_start": a tool call's opening (id, name);
    "tool_args": a piece of its arguments' JSON text; "tool_calls": every call of the answer at
    once (Ollama sends them whole).
    """

    kind: Literal["text", "tool_start", "tool_args", "tool_calls"]
    text: str = ""
    choice: int = 0
    tool: int = 0


@dataclass(slots=True)
class Answer:
    """One reply, before a protocol gives it a shape."""

    id: str
    created: int
    model: str
    text: str
    pieces: list[str]
    usage: Usage
    filtered: bool = False
    """The content filter stopped the reply (Fault.content_filter)."""
    tool_calls: tuple[ToolCall, ...] = ()
    refused: bool = False
    """`text` is a refusal (OpenAI's message.refusal, Anthropic's stop_reason "refusal")."""
    more_choices: tuple[Choice, ...] = ()
    """Choices 1..n-1 of an OpenAI request with `n` > 1."""


def split_arguments(text: str, pieces: int = 3) -> list[str]:
    """A tool call's arguments JSON cut into about `pieces` stream deltas, as real APIs stream
    them; joined, they give back `text`."""
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sse(data: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + dumps(data) + b"\n\n"


def require_messages(body: JsonObject) -> list[JsonObject]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RequestRejected("messages: must be a list of message objects", param="messages")
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise RequestRejected(
                f"messages[{i}].content: each content part must be an object",
                param=f"messages[{i}].content",
            )
        if content is not None and not isinstance(content, str | list):
            raise RequestRejected(
                f"messages[{i}].content: must be a string or a list of content parts",
                param=f"messages[{i}].content",
            )
    return messages


def require_model(body: JsonObject) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestRejected("model: a non-empty string is required", param="model")
    return model


def half(body: bytes) -> bytes:
    """A prefix of a JSON document, which is never valid JSON itself."""
    return body[: max(1, len(body) // 2)]


class Wire:
    """One API's formats. Subclasses fill in every method."""

    name: ClassVar[str]
    stream_content_type: ClassVar[str] = "text/event-stream"
    has_529: ClassVar[bool] = False

    def parse(
        self, body: JsonObject, deployment: str | None = None, *, strict: bool = False
    ) -> Call:
        """The request as a `Call`, or RequestRejected for what the real API refuses.

        `strict` adds the real API's checks that the gateway does not make itself (tool
        results paired with the calls they answer, Anthropic's unknown fields)."""
        raise NotImplementedError

    def error_status(self, fault: Fault) -> int:
        assert fault.code is not None
        if fault.kind == "overloaded" and not self.has_529:
            return 503
        return fault.code

    def error_body(
        self,
        status: int,
        *,
        fault_kind: str = "status",
        message: str | None = None,
        model: str = "",
        param: str | None = None,
    ) -> JsonObject:
        raise NotImplementedError

    def completion(self, call: Call, answer: Answer) -> JsonObject:
        raise NotImplementedError

    def stream_open(self, call: Call, answer: Answer) -> list[bytes]:
        raise NotImplementedError

    def stream_delta(self, call: Call, answer: Answer, piece: str) -> bytes:
        raise NotImplementedError

    def chunks(self, call: Call, answer: Answer) -> list[Chunk]:
        """The stream's content chunks in order: text pieces, then each tool call's opening
        and its argument pieces."""
        out = [Chunk("text", piece) for piece in answer.pieces]
        for i, tool_call in enumerate(answer.tool_calls):
            out.append(Chunk("tool_start", tool=i))
            pieces = split_arguments(tool_call.arguments_json)
            out.extend(Chunk("tool_args", piece, tool=i) for piece in pieces)
        return out

    def stream_chunk(self, call: Call, answer: Answer, chunk: Chunk) -> bytes:
        """The bytes of one content chunk; wires that stream tool calls override this."""
        if chunk.kind != "text":
            raise NotImplementedError(f"{self.name} cannot stream a {chunk.kind} chunk")
        return self.stream_delta(call, answer, chunk.text)

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        raise NotImplementedError

    def stream_error(self, call: Call, error_kind: str) -> bytes:
        raise NotImplementedError

    def malformed_event(self, call: Call, answer: Answer) -> bytes:
        """A stream event whose JSON is cut short."""
        raise NotImplementedError

    def encode(self, body: JsonObject) -> bytes:
        return dumps(body)

    def malformed_body(self, call: Call, answer: Answer) -> bytes:
        return half(dumps(self.completion(call, answer)))


def now() -> int:
    return int(time.time())
