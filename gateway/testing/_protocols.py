"""The three wire protocols FakeUpstream speaks: request parsing, answers, streams and errors.

Each `Wire` turns the same abstract answer (`Answer`) into one API's real bytes, so a fault
scripted once looks right to whichever SDK made the request. The shapes follow what the
official SDKs parse (their SSE decoders and response models), including the quirks: Azure's
leading `prompt_filter_results` chunk, Anthropic's input tokens that exclude cache reads,
Ollama's NDJSON with streaming on by default.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from gateway.testing._faults import Fault
from gateway.types import Usage

JsonObject = dict[str, Any]


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


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sse(data: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + _dumps(data) + b"\n\n"


def _require_messages(body: JsonObject) -> list[JsonObject]:
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


def _require_model(body: JsonObject) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestRejected("model: a non-empty string is required", param="model")
    return model


def _half(body: bytes) -> bytes:
    """A prefix of a JSON document, which is never valid JSON itself."""
    return body[: max(1, len(body) // 2)]


class Wire:
    """One API's formats. Subclasses fill in every method."""

    name: ClassVar[str]
    stream_content_type: ClassVar[str] = "text/event-stream"
    has_529: ClassVar[bool] = False

    def parse(self, body: JsonObject, deployment: str | None = None) -> Call:
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

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        raise NotImplementedError

    def stream_error(self, call: Call, error_kind: str) -> bytes:
        raise NotImplementedError

    def malformed_event(self, call: Call, answer: Answer) -> bytes:
        """A stream event whose JSON is cut short."""
        raise NotImplementedError

    def encode(self, body: JsonObject) -> bytes:
        return _dumps(body)

    def malformed_body(self, call: Call, answer: Answer) -> bytes:
        return _half(_dumps(self.completion(call, answer)))


# --- OpenAI and Azure OpenAI -------------------------------------------------------------

_OPENAI_ERRORS: dict[int, tuple[str, str, str | None]] = {
    # status: (message, type, code)
    400: ("Invalid request.", "invalid_request_error", None),
    401: (
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("You are not allowed to access this resource.", "permission_error", None),
    404: (
        "The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}

_OPENAI_CONTEXT_LENGTH = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted "
    "in 210000 tokens. Please reduce the length of the messages."
)

_OPENAI_STREAM_ERRORS: dict[str, tuple[str, str, str | None]] = {
    "overloaded": ("The server is overloaded or not ready yet.", "server_error", None),
    "server_error": (
        "The server had an error while processing your request.",
        "server_error",
        None,
    ),
    "rate_limit": ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
}


class OpenAIWire(Wire):
    name = "openai"

    def parse(self, body: JsonObject, deployment: str | None = None) -> Call:
        model = deployment if deployment is not None else _require_model(body)
        messages = _require_messages(body)
        response_format = body.get("response_format")
        json_mode = isinstance(response_format, dict) and response_format.get("type") in {
            "json_object",
            "json_schema",
        }
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        return Call(
            self.name, model, body.get("stream") is True, json_mode, include_usage, messages
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
        code: str | None
        if fault_kind == "context_length":
            default, type_, code = (
                _OPENAI_CONTEXT_LENGTH,
                "invalid_request_error",
                ("context_length_exceeded"),
            )
            param = "messages"
        else:
            default, type_, code = (
                _OPENAI_ERRORS.get(status) or _OPENAI_ERRORS[400 if status < 500 else 500]
            )
        text = message or default.replace("{model}", model)
        return {"error": {"message": text, "type": type_, "param": param, "code": code}}

    def _finish_reason(self, answer: Answer) -> str:
        return "content_filter" if answer.filtered else "stop"

    def _usage(self, usage: Usage) -> JsonObject:
        return {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {
                "cached_tokens": usage.cached_input_tokens,
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def completion(self, call: Call, answer: Answer) -> JsonObject:
        return {
            "id": answer.id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "finish_reason": self._finish_reason(answer),
                    "logprobs": None,
                }
            ],
            "usage": self._usage(answer.usage),
            "system_fingerprint": "fp_fake",
        }

    def _chunk(
        self, call: Call, answer: Answer, delta: JsonObject, finish_reason: str | None = None
    ) -> bytes:
        chunk: JsonObject = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if call.include_usage:
            chunk["usage"] = None  # the real API marks every chunk but the last this way
        return sse(chunk)

    def stream_open(self, call: Call, answer: Answer) -> list[bytes]:
        return [self._chunk(call, answer, {"role": "assistant", "content": "", "refusal": None})]

    def stream_delta(self, call: Call, answer: Answer, piece: str) -> bytes:
        return self._chunk(call, answer, {"content": piece})

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        events = [self._chunk(call, answer, {}, self._finish_reason(answer))]
        if call.include_usage:
            events.append(
                sse(
                    {
                        "id": answer.id,
                        "object": "chat.completion.chunk",
                        "created": answer.created,
                        "model": answer.model,
                        "system_fingerprint": "fp_fake",
                        "choices": [],
                        "usage": self._usage(answer.usage),
                    }
                )
            )
        events.append(b"data: [DONE]\n\n")
        return events

    def stream_error(self, call: Call, error_kind: str) -> bytes:
        message, type_, code = _OPENAI_STREAM_ERRORS[error_kind]
        return sse({"error": {"message": message, "type": type_, "param": None, "code": code}})

    def malformed_event(self, call: Call, answer: Answer) -> bytes:
        whole = self._chunk(call, answer, {"content": answer.pieces[0] if answer.pieces else ""})
        return _half(whole.removesuffix(b"\n\n")) + b"\n\n"


class AzureOpenAIWire(OpenAIWire):
    """OpenAI's formats at Azure's paths; streams open with a content-filter results chunk."""

    name = "azure"

    def stream_open(self, call: Call, answer: Answer) -> list[bytes]:
        prompt_filter = sse(
            {
                "id": "",
                "object": "",
                "created": 0,
                "model": "",
                "choices": [],
                "prompt_filter_results": [
                    {
                        "prompt_index": 0,
                        "content_filter_results": {
                            "hate": {"filtered": False, "severity": "safe"},
                            "self_harm": {"filtered": False, "severity": "safe"},
                            "sexual": {"filtered": False, "severity": "safe"},
                            "violence": {"filtered": False, "severity": "safe"},
                        },
                    }
                ],
            }
        )
        return [prompt_filter, *super().stream_open(call, answer)]


# --- Anthropic ----------------------------------------------------------------------------

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

    def parse(self, body: JsonObject, deployment: str | None = None) -> Call:
        model = _require_model(body)
        messages = _require_messages(body)
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
        return Call(self.name, model, body.get("stream") is True, False, True, messages)

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
        return "refusal" if answer.filtered else "end_turn"

    def _usage(self, usage: Usage, *, output_tokens: int) -> JsonObject:
        # Anthropic counts cache reads apart from input_tokens, not inside it.
        return {
            "input_tokens": usage.input_tokens - usage.cached_input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": usage.cached_input_tokens,
            "output_tokens": output_tokens,
        }

    def completion(self, call: Call, answer: Answer) -> JsonObject:
        content = [{"type": "text", "text": answer.text}] if answer.text else []
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
        if not answer.filtered:
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

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        events = []
        if not answer.filtered:
            events.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
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
        return _half(whole.removesuffix(b"\n\n")) + b"\n\n"


# --- Ollama -------------------------------------------------------------------------------

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

    def parse(self, body: JsonObject, deployment: str | None = None) -> Call:
        model = _require_model(body)
        messages = _require_messages(body)
        fmt = body.get("format")
        json_mode = fmt == "json" or isinstance(fmt, dict)
        # Ollama streams unless told not to: a missing `stream` means true.
        stream = body.get("stream", True) is not False
        return Call(self.name, model, stream, json_mode, True, messages)

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

    def _final(self, answer: Answer, *, content: str) -> JsonObject:
        # Durations are nanoseconds in Ollama's API; plausible constants are enough here.
        return {
            "model": answer.model,
            "created_at": _ollama_time(),
            "message": {"role": "assistant", "content": content},
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
        return self._final(answer, content=answer.text)

    def stream_open(self, call: Call, answer: Answer) -> list[bytes]:
        return []

    def stream_delta(self, call: Call, answer: Answer, piece: str) -> bytes:
        line = {
            "model": answer.model,
            "created_at": _ollama_time(),
            "message": {"role": "assistant", "content": piece},
            "done": False,
        }
        return _dumps(line) + b"\n"

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        return [_dumps(self._final(answer, content="")) + b"\n"]

    def stream_error(self, call: Call, error_kind: str) -> bytes:
        return _dumps({"error": _OLLAMA_STREAM_ERRORS[error_kind]}) + b"\n"

    def malformed_event(self, call: Call, answer: Answer) -> bytes:
        whole = self.stream_delta(call, answer, answer.pieces[0] if answer.pieces else "")
        return _half(whole.removesuffix(b"\n")) + b"\n"


WIRES: dict[str, Wire] = {
    wire.name: wire for wire in (OpenAIWire(), AzureOpenAIWire(), AnthropicWire(), OllamaWire())
}


def now() -> int:
    return int(time.time())
