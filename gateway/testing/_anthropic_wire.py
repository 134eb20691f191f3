"""Anthropic's Messages API wire format."""

from __future__ import annotations

from gateway.testing._anthropic_tools import (
    anthropic_history,
    anthropic_json_schema,
    anthropic_tool_choice,
    anthropic_tools,
)
from gateway.testing._protocols import (
    Answer,
    Call,
    Chunk,
    JsonObject,
    RequestRejected,
    Wire,
    half,
    new_id,
    require_messages,
    require_model,
    sse,
)
from gateway.types import Usage

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    # status: (error type, message)
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

_ANTHROPIC_CONTEXT_LENGTH = "prompt is too long: 210000 tokens > 200000 maximum"

_ANTHROPIC_STREAM_ERRORS = {
    "overloaded": ("overloaded_error", "Overloaded"),
    "server_error": ("api_error", "Internal server error"),
    "rate_limit": ("rate_limit_error", "Number of requests has exceeded your rate limit."),
}


class AnthropicWire(Wire):
    name = "anthropic"
    has_529 = True

    def parse(
        self, body: JsonObject, deployment: str | None = None, *, strict: bool = False
    ) -> Call:
        model = require_model(body)
        messages = require_messages(body)
        called, tool_result = anthropic_history(messages, strict=strict)
        tools = anthropic_tools(body)
        json_schema = anthropic_json_schema(body)
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestRejected(
                "max_tokens: Field required (an integer >= 1)", param="max_tokens"
            )
        system = body.get("system")
        if system is not None:
            if not isinstance(system, str | list):
                raise RequestRejected(
                    "system: must be a string or a list of text blocks", param="system"
                )
            messages = [{"role": "system", "content": system}, *messages]
        return Call(
            self.name,
            model,
            body.get("stream") is True,
            False,
            True,
            messages,
            tools=tools,
            tool_choice=anthropic_tool_choice(body, tools),
            json_schema=json_schema,
            called=called,
            tool_result=tool_result,
        )

    def error_body(
        self,
        status: int,
        *,
        fault_kind: str = "status",
        message: str | None = None,
        model: str = "",
        param: str | None = None,
    ) -> JsonObject:
        if fault_kind == "context_length":
            type_, default = "invalid_request_error", _ANTHROPIC_CONTEXT_LENGTH
        else:
            fallback = (
                ("invalid_request_error", "Invalid request.")
                if status < 500
                else ("api_error", "Internal server error")
            )
            type_, default = _ANTHROPIC_ERRORS.get(status, fallback)
        text = message or default.replace("{model}", model)
        return {
            "type": "error",
            "error": {"type": type_, "message": text},
            "request_id": new_id("req_"),
        }

    def _stop_reason(self, answer: Answer) -> str:
        if answer.filtered or answer.refused:
            return "refusal"
        return "tool_use" if answer.tool_calls else "end_turn"

    def _has_text_block(self, answer: Answer) -> bool:
        # A tool-only answer has no empty text block before its tool_use blocks.
        return not answer.filtered and bool(answer.text or not answer.tool_calls)

    def _first_tool_index(self, answer: Answer) -> int:
        return 1 if self._has_text_block(answer) else 0

    def _usage(self, usage: Usage, *, output_tokens: int) -> JsonObject:
        # Anthropic counts cache reads apart from input_tokens, not inside it.
        return {
            "input_tokens": usage.input_tokens - usage.cached_input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached_input_tokens,
            "output_tokens": output_tokens,
        }

    def completion(self, call: Call, answer: Answer) -> JsonObject:
        content: list[JsonObject] = [{"type": "text", "text": answer.text}] if answer.text else []
        content += [
            {"type": "tool_use", "id": t.id, "name": t.name, "input": t.arguments}
            for t in answer.tool_calls
        ]
        return {
            "id": answer.id,
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": content,
            "stop_reason": self._stop_reason(answer),
            "stop_sequence": None,
            "usage": self._usage(answer.usage, output_tokens=answer.usage.output_tokens),
        }

    def stream_open(self, call: Call, answer: Answer) -> list[bytes]:
        start = {
            "type": "message_start",
            "message": {
                "id": answer.id,
                "type": "message",
                "role": "assistant",
                "model": answer.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": self._usage(answer.usage, output_tokens=1),
            },
        }
        events = [sse(start, "message_start")]
        if self._has_text_block(answer):
            events.append(
                sse(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
            )
        events.append(sse({"type": "ping"}, "ping"))
        return events

    def stream_delta(self, call: Call, answer: Answer, piece: str) -> bytes:
        return sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
            "content_block_delta",
        )

    def stream_chunk(self, call: Call, answer: Answer, chunk: Chunk) -> bytes:
        """A tool call opens its own content block (closing the one before it); its arguments
        arrive as input_json_delta pieces of that block."""
        if chunk.kind == "text":
            return self.stream_delta(call, answer, chunk.text)
        index = self._first_tool_index(answer) + chunk.tool
        if chunk.kind == "tool_args":
            delta = {"type": "input_json_delta", "partial_json": chunk.text}
            return sse(
                {"type": "content_block_delta", "index": index, "delta": delta},
                "content_block_delta",
            )
        events = []
        if index > 0:
            stop = {"type": "content_block_stop", "index": index - 1}
            events.append(sse(stop, "content_block_stop"))
        tool_call = answer.tool_calls[chunk.tool]
        block = {"type": "tool_use", "id": tool_call.id, "name": tool_call.name, "input": {}}
        events.append(
            sse(
                {"type": "content_block_start", "index": index, "content_block": block},
                "content_block_start",
            )
        )
        return b"".join(events)

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        events = []
        blocks = int(self._has_text_block(answer)) + len(answer.tool_calls)
        if blocks:
            stop = {"type": "content_block_stop", "index": blocks - 1}
            events.append(sse(stop, "content_block_stop"))
        events.append(
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop_reason(answer), "stop_sequence": None},
                    "usage": self._usage(answer.usage, output_tokens=answer.usage.output_tokens),
                },
                "message_delta",
            )
        )
        events.append(sse({"type": "message_stop"}, "message_stop"))
        return events

    def stream_error(self, call: Call, error_kind: str) -> bytes:
        type_, message = _ANTHROPIC_STREAM_ERRORS[error_kind]
        return sse(
            {
                "type": "error",
                "error": {"type": type_, "message": message},
                "request_id": new_id("req_"),
            },
            "error",
        )

    def malformed_event(self, call: Call, answer: Answer) -> bytes:
        whole = self.stream_delta(call, answer, answer.pieces[0] if answer.pieces else "")
        return half(whole.removesuffix(b"\n\n")) + b"\n\n"
