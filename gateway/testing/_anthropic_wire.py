"""Anthropic's Messages API wire format."""

from __future__ import annotations

from gateway.providers.anthropic_shapes import (
    MESSAGE_STOP,
    PING,
    block_start,
    block_stop,
    error_body,
    error_type,
    event_bytes,
    input_json_delta,
    message_body,
    message_delta,
    message_start,
    stop_reason,
    text_block,
    text_delta,
    tool_use_block,
    usage_fields,
)
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
)

_ANTHROPIC_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    404: "model: {model}",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of requests has exceeded your per-minute rate limit.",
    500: "Internal server error",
    529: "Overloaded",
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
            fallback = "Invalid request." if status < 500 else "Internal server error"
            type_, default = error_type(status), _ANTHROPIC_MESSAGES.get(status, fallback)
        text = message or default.replace("{model}", model)
        return {**error_body(type_, text), "request_id": new_id("req_")}

    def _stop_reason(self, answer: Answer) -> str:
        if answer.filtered or answer.refused:
            return stop_reason("content_filter")
        return stop_reason("tool_calls" if answer.tool_calls else "stop")

    def _has_text_block(self, answer: Answer) -> bool:
        # A tool-only answer has no empty text block before its tool_use blocks.
        return not answer.filtered and bool(answer.text or not answer.tool_calls)

    def _first_tool_index(self, answer: Answer) -> int:
        return 1 if self._has_text_block(answer) else 0

    def completion(self, call: Call, answer: Answer) -> JsonObject:
        content = [text_block(answer.text)] if answer.text else []
        content += [tool_use_block(t.id, t.name, t.arguments) for t in answer.tool_calls]
        return message_body(
            message_id=answer.id,
            model=answer.model,
            content=content,
            stop_reason=self._stop_reason(answer),
            usage=usage_fields(answer.usage),
        )

    def stream_open(self, call: Call, answer: Answer) -> list[bytes]:
        usage = usage_fields(answer.usage, output_tokens=1)
        events = [event_bytes(message_start(answer.id, answer.model, usage))]
        if self._has_text_block(answer):
            events.append(event_bytes(block_start(0, text_block(""))))
        events.append(event_bytes(PING))
        return events

    def stream_delta(self, call: Call, answer: Answer, piece: str) -> bytes:
        return event_bytes(text_delta(0, piece))

    def stream_chunk(self, call: Call, answer: Answer, chunk: Chunk) -> bytes:
        """A tool call opens its own content block (closing the one before it); its arguments
        arrive as input_json_delta pieces of that block."""
        if chunk.kind == "text":
            return self.stream_delta(call, answer, chunk.text)
        index = self._first_tool_index(answer) + chunk.tool
        if chunk.kind == "tool_args":
            return event_bytes(input_json_delta(index, chunk.text))
        events = []
        if index > 0:
            events.append(event_bytes(block_stop(index - 1)))
        tool_call = answer.tool_calls[chunk.tool]
        block = tool_use_block(tool_call.id, tool_call.name, {})
        events.append(event_bytes(block_start(index, block)))
        return b"".join(events)

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        events = []
        blocks = int(self._has_text_block(answer)) + len(answer.tool_calls)
        if blocks:
            events.append(event_bytes(block_stop(blocks - 1)))
        end = message_delta(self._stop_reason(answer), usage_fields(answer.usage))
        events.append(event_bytes(end))
        events.append(event_bytes(MESSAGE_STOP))
        return events

    def stream_error(self, call: Call, error_kind: str) -> bytes:
        type_, message = _ANTHROPIC_STREAM_ERRORS[error_kind]
        return event_bytes({**error_body(type_, message), "request_id": new_id("req_")})

    def malformed_event(self, call: Call, answer: Answer) -> bytes:
        whole = self.stream_delta(call, answer, answer.pieces[0] if answer.pieces else "")
        return half(whole.removesuffix(b"\n\n")) + b"\n\n"
