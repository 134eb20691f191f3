"""The router's answers in Anthropic's Messages shape: a whole `message`, or a stream's events.

Whatever protocol the answering provider spoke, the client gets Anthropic's content blocks
(text, then `tool_use` with its input parsed), a stop reason mapped from the finish reason, and
Anthropic's usage. The shapes are written by `gateway.providers.anthropic_shapes`; the models
here describe them in the OpenAPI document.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from gateway._router import RoutedCompletion
from gateway.errors import ErrorKind, ProviderError
from gateway.providers.anthropic_shapes import (
    JsonObject,
    block_start,
    block_stop,
    event_bytes,
    input_json_delta,
    message_body,
    new_message_id,
    stop_reason,
    text_block,
    text_delta,
    tool_use_block,
    usage_fields,
)
from gateway.types import StreamPiece, ToolCall, ToolCallDelta

# --- what the OpenAPI document shows ----------------------------------------------------------


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseContent(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(description="The tool's arguments, parsed.")


class MessageUsage(BaseModel):
    input_tokens: int = Field(description="Input tokens not read from the prompt cache.")
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class AnthropicMessage(BaseModel):
    id: str = Field(description="msg_...")
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str = Field(description="The upstream model that answered.")
    content: list[Annotated[TextContent | ToolUseContent, Field(discriminator="type")]]
    stop_reason: Literal["end_turn", "max_tokens", "tool_use", "refusal"]
    stop_sequence: str | None = None
    usage: MessageUsage


class AnthropicErrorDetail(BaseModel):
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    message: str
    attempts: list[dict[str, Any]] | None = Field(
        None, description="For 502 and 504: every candidate the gateway considered."
    )


class AnthropicError(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


class InputTokens(BaseModel):
    input_tokens: int = Field(
        description="The gateway's estimate (about four characters a token), not the "
        "provider's tokenizer."
    )


# --- whole answers ----------------------------------------------------------------------------


def message_id_for(upstream_id: str | None) -> str:
    """The upstream's id when it is a message id, else a new one: every answer has `msg_...`."""
    if upstream_id and upstream_id.startswith("msg_"):
        return upstream_id
    return new_message_id()


def message_from(routed: RoutedCompletion) -> JsonObject:
    """The `message` for a whole answer."""
    text = routed.text or routed.refusal or ""
    content = [text_block(text)] if text else []
    content += [_tool_use(call, routed.provider) for call in routed.tool_calls]
    reason = "refusal" if routed.refusal else stop_reason(routed.finish_reason)
    return message_body(
        message_id=message_id_for(routed.response_id),
        model=routed.model or routed.provider,
        content=content,
        stop_reason=reason,
        usage=usage_fields(routed.usage),
    )


def _tool_use(call: ToolCall, provider: str) -> JsonObject:
    try:
        arguments = call.parsed_arguments()
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        # Anthropic's tool_use input is an object; an answer that is not one cannot be shown.
        raise ProviderError(
            f"the model called {call.name!r} with arguments that are not a JSON object",
            kind=ErrorKind.INVALID_RESPONSE,
            provider=provider,
        )
    return tool_use_block(call.id or new_tool_use_id(), call.name, arguments)


def new_tool_use_id() -> str:
    return "toolu_" + os.urandom(12).hex()


# --- streams ----------------------------------------------------------------------------------


class BlockWriter:
    """Content block events for one streamed answer: a text block for a run of text, a
    tool_use block for each tool call (its argument pieces as input_json_delta). A block is
    closed when the next one opens, and the last one at the end."""

    def __init__(self) -> None:
        self._open: int | None = None
        self._open_is_text = False
        self._blocks = 0
        self._tool_blocks: dict[int, int] = {}
        """The block of each tool call, by the router's tool-call index."""

    def piece(self, event: StreamPiece) -> bytes:
        """One piece of the answer: text (a `str`) or a piece of a tool call."""
        events: list[JsonObject] = []
        if type(event) is str:
            if self._open is None or not self._open_is_text:
                events += self._start(text_block(""), is_text=True)
            assert self._open is not None
            events.append(text_delta(self._open, event))
        else:
            assert isinstance(event, ToolCallDelta)
            block = self._tool_blocks.get(event.index)
            if block is None:
                tool_id = event.id or new_tool_use_id()
                events += self._start(tool_use_block(tool_id, event.name or "", {}), is_text=False)
                assert self._open is not None
                block = self._tool_blocks[event.index] = self._open
            if event.arguments:
                events.append(input_json_delta(block, event.arguments))
        return _encoded(events)

    def text(self, text: str) -> bytes:
        """Text outside the stream's events (a refusal), as its own text block."""
        return self.piece(text) if text else b""

    def close(self) -> bytes:
        return _encoded(self._stop())

    def _start(self, block: JsonObject, *, is_text: bool) -> list[JsonObject]:
        events = self._stop()
        self._open, self._open_is_text = self._blocks, is_text
        self._blocks += 1
        events.append(block_start(self._open, block))
        return events

    def _stop(self) -> list[JsonObject]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [block_stop(index)]


def _encoded(events: Sequence[JsonObject]) -> bytes:
    return b"".join(event_bytes(event) for event in events)
