"""Anthropic's Messages API answers, as the gateway writes them: stop reasons, usage, whole
messages, stream events and error bodies.

Two parts of the project write these shapes: the server's `POST /v1/messages` (answers from
any provider, in Anthropic's words) and FakeUpstream's Anthropic side (an upstream's answers).
Both build them here, so the wire format is written once. Reading Anthropic's answers is the
codec's business (`_codec_anthropic`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from gateway.types import Usage

JsonObject = dict[str, Any]

STOP_REASONS: Mapping[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI's finish reasons (the router's words) as Anthropic's stop reasons."""

ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
"""The error `type` Anthropic gives with each HTTP status."""


def stop_reason(finish_reason: str | None) -> str:
    """Anthropic's stop reason for a finish reason; a normal end when there is none."""
    if finish_reason is None:
        return "end_turn"
    return STOP_REASONS.get(finish_reason, "end_turn")


def error_type(status: int) -> str:
    """The error `type` for an HTTP status: its own, else the generic one of its class."""
    found = ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(kind: str, message: str, **extra: Any) -> JsonObject:
    """`{"type": "error", "error": {"type", "message", ...}}`."""
    return {"type": "error", "error": {"type": kind, "message": message, **extra}}


def new_message_id() -> str:
    return "msg_" + os.urandom(12).hex()


def usage_fields(usage: Usage, *, output_tokens: int | None = None) -> JsonObject:
    """Anthropic's usage object. Its `input_tokens` leaves out prompt-cache reads, which it
    counts apart (the gateway's `Usage.input_tokens` includes them)."""
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens if output_tokens is None else output_tokens,
    }


def text_block(text: str) -> JsonObject:
    return {"type": "text", "text": text}


def tool_use_block(tool_id: str, name: str, arguments: Any) -> JsonObject:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": arguments}


def message_body(
    *,
    message_id: str,
    model: str,
    content: list[JsonObject],
    stop_reason: str | None,
    usage: JsonObject,
    stop_sequence: str | None = None,
) -> JsonObject:
    """A whole `message` object (also the head of a stream's message_start, with no content
    and no stop reason yet)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }


# --- stream events ------------------------------------------------------------------------------


def message_start(message_id: str, model: str, usage: JsonObject) -> JsonObject:
    head = message_body(
        message_id=message_id, model=model, content=[], stop_reason=None, usage=usage
    )
    return {"type": "message_start", "message": head}


def block_start(index: int, block: JsonObject) -> JsonObject:
    return {"type": "content_block_start", "index": index, "content_block": block}


def text_delta(index: int, text: str) -> JsonObject:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def input_json_delta(index: int, partial_json: str) -> JsonObject:
    delta = {"type": "input_json_delta", "partial_json": partial_json}
    return {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> JsonObject:
    return {"type": "content_block_stop", "index": index}


def message_delta(
    stop_reason: str, usage: JsonObject, stop_sequence: str | None = None
) -> JsonObject:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        "usage": usage,
    }


MESSAGE_STOP: JsonObject = {"type": "message_stop"}
PING: JsonObject = {"type": "ping"}


def event_bytes(payload: Mapping[str, Any]) -> bytes:
    """One server-sent event, named by the payload's `type` as Anthropic names its events
    (its SDK reads the name). Written as ASCII JSON, so any text, a lone surrogate included,
    goes out as it came."""
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()
