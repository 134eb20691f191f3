"""Ollama's native /api/chat wire format (NDJSON streams)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.testing._openai_tools import ollama_format, ollama_history, ollama_tools
from gateway.testing._protocols import (
    Answer,
    Call,
    Chunk,
    JsonObject,
    Wire,
    dumps,
    half,
    require_messages,
    require_model,
)

_OLLAMA_ERRORS: dict[int, str] = {
    400: "invalid request",
    401: "unauthorized",
    403: "forbidden",
    404: 'model "{model}" not found, try pulling it first',
    429: "rate limit exceeded, please try again later",
    500: "an error was encountered while running the model",
    503: "server busy, please try again.  maximum pending requests exceeded",
}

_OLLAMA_CONTEXT_LENGTH = "the input length exceeds the context length"

_OLLAMA_STREAM_ERRORS = {
    "overloaded": "server busy, please try again.  maximum pending requests exceeded",
    "server_error": "an error was encountered while running the model: unexpected EOF",
    "rate_limit": "rate limit exceeded, please try again later",
}


def _ollama_time() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class OllamaWire(Wire):
    name = "ollama"
    stream_content_type = "application/x-ndjson"

    def parse(
        self, body: JsonObject, deployment: str | None = None, *, strict: bool = False
    ) -> Call:
        model = require_model(body)
        messages = require_messages(body)
        json_mode, json_schema = ollama_format(body)
        called, tool_result = ollama_history(messages)
        # Ollama streams unless told not to: a missing `stream` means true.
        stream = body.get("stream", True) is not False
        return Call(
            self.name,
            model,
            stream,
            json_mode,
            True,
            messages,
            tools=ollama_tools(body),
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
            default = _OLLAMA_CONTEXT_LENGTH
        else:
            default = _OLLAMA_ERRORS.get(
                status, "invalid request" if status < 500 else "internal server error"
            )
        return {"error": message or default.replace("{model}", model)}

    def _message(self, content: str, answer: Answer | None = None) -> JsonObject:
        message: JsonObject = {"role": "assistant", "content": content}
        if answer is not None and answer.tool_calls:
            message["tool_calls"] = [
                {"function": {"name": t.name, "arguments": t.arguments}} for t in answer.tool_calls
            ]
        return message

    def _final(self, answer: Answer, *, content: str, with_calls: bool = False) -> JsonObject:
        # Durations are nanoseconds in Ollama's API; plausible constants are enough here.
        return {
            "model": answer.model,
            "created_at": _ollama_time(),
            "message": self._message(content, answer if with_calls else None),
            "done_reason": "stop",
            "done": True,
            "total_duration": 1_000_000 * (1 + answer.usage.output_tokens),
            "load_duration": 100_000,
            "prompt_eval_count": answer.usage.input_tokens,
            "prompt_eval_duration": 500_000,
            "eval_count": answer.usage.output_tokens,
            "eval_duration": 1_000_000 * answer.usage.output_tokens,
        }

    def completion(self, call: Call, answer: Answer) -> JsonObject:
        return self._final(answer, content=answer.text, with_calls=True)

    def stream_open(self, call: Call, answer: Answer) -> list[bytes]:
        return []

    def stream_delta(self, call: Call, answer: Answer, piece: str) -> bytes:
        line = {
            "model": answer.model,
            "created_at": _ollama_time(),
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }
        return dumps(line) + b"\n"

    def chunks(self, call: Call, answer: Answer) -> list[Chunk]:
        """Ollama streams a reply's tool calls whole, in one line of their own."""
        text = [Chunk("text", piece) for piece in answer.pieces]
        return text + ([Chunk("tool_calls")] if answer.tool_calls else [])

    def stream_chunk(self, call: Call, answer: Answer, chunk: Chunk) -> bytes:
        if chunk.kind == "text":
            return self.stream_delta(call, answer, chunk.text)
        line = {
            "model": answer.model,
            "created_at": _ollama_time(),
            "message": self._message("", answer),
            "done": False,
        }
        return dumps(line) + b"\n"

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        return [dumps(self._final(answer, content="")) + b"\n"]

    def stream_error(self, call: Call, error_kind: str) -> bytes:
        return dumps({"error": _OLLAMA_STREAM_ERRORS[error_kind]}) + b"\n"

    def malformed_event(self, call: Call, answer: Answer) -> bytes:
        whole = self.stream_delta(call, answer, answer.pieces[0] if answer.pieces else "")
        return half(whole.removesuffix(b"\n")) + b"\n"


def ollama_embeddings(
    model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int
) -> dict[str, Any]:
    """`POST /api/embed`'s answer."""
    return {
        "model": model,
        "embeddings": [list(vector) for vector in vectors],
        "total_duration": 1_000_000,
        "load_duration": 100_000,
        "prompt_eval_count": prompt_tokens,
    }
