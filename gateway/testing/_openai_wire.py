"""OpenAI's chat completions wire format, and Azure OpenAI's variant of it; and the
embeddings answer both share."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gateway.testing._openai_tools import (
    openai_history,
    openai_n,
    openai_response_format,
    openai_tool_choice,
    openai_tools,
)
from gateway.testing._protocols import (
    Answer,
    Call,
    Choice,
    Chunk,
    JsonObject,
    Wire,
    half,
    require_messages,
    require_model,
    sse,
)
from gateway.testing._replies import split_words
from gateway.types import Usage

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

    def parse(
        self, body: JsonObject, deployment: str | None = None, *, strict: bool = False
    ) -> Call:
        model = deployment if deployment is not None else require_model(body)
        messages = require_messages(body)
        json_mode, json_schema = openai_response_format(body)
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        tools = openai_tools(body)
        called, tool_result = openai_history(messages, strict=strict)
        return Call(
            self.name,
            model,
            body.get("stream") is True,
            json_mode,
            include_usage,
            messages,
            tools=tools,
            tool_choice=openai_tool_choice(body, tools),
            json_schema=json_schema,
            n=openai_n(body),
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

    def _finish_reason(self, answer: Answer, choice: Choice | None = None) -> str:
        if answer.filtered:
            return "content_filter"
        tool_calls = answer.tool_calls if choice is None else choice.tool_calls
        return "tool_calls" if tool_calls else "stop"

    def _choices(self, answer: Answer) -> list[Choice]:
        return [Choice(answer.text, answer.tool_calls), *answer.more_choices]

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

    def _message(self, answer: Answer, choice: Choice) -> JsonObject:
        message: JsonObject = {"role": "assistant", "content": choice.text, "refusal": None}
        if answer.refused:
            message["content"], message["refusal"] = None, choice.text
        elif choice.tool_calls:
            message["content"] = choice.text or None
            message["tool_calls"] = [
                {
                    "id": t.id,
                    "type": "function",
                    "function": {"name": t.name, "arguments": t.arguments_json},
                }
                for t in choice.tool_calls
            ]
        return message

    def completion(self, call: Call, answer: Answer) -> JsonObject:
        return {
            "id": answer.id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [
                {
                    "index": i,
                    "message": self._message(answer, choice),
                    "finish_reason": self._finish_reason(answer, choice),
                    "logprobs": None,
                }
                for i, choice in enumerate(self._choices(answer))
            ],
            "usage": self._usage(answer.usage),
            "system_fingerprint": "fp_fake",
        }

    def _chunk(
        self,
        call: Call,
        answer: Answer,
        delta: JsonObject,
        finish_reason: str | None = None,
        index: int = 0,
    ) -> bytes:
        chunk: JsonObject = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if call.include_usage:
            chunk["usage"] = None  # the real API marks every chunk but the last this way
        return sse(chunk)

    def stream_open(self, call: Call, answer: Answer) -> list[bytes]:
        opening: JsonObject = {"role": "assistant", "content": "", "refusal": None}
        if answer.tool_calls and not answer.text:
            opening["content"] = None  # as the real API opens a tool-call-only answer
        if answer.refused:
            opening = {"role": "assistant", "content": None, "refusal": ""}
        return [
            self._chunk(call, answer, opening, index=i) for i in range(len(self._choices(answer)))
        ]

    def stream_delta(self, call: Call, answer: Answer, piece: str) -> bytes:
        return self._chunk(call, answer, {"refusal" if answer.refused else "content": piece})

    def chunks(self, call: Call, answer: Answer) -> list[Chunk]:
        """Choice 0's chunks, then each further choice's (text pieces, then tool calls)."""
        out = super().chunks(call, answer)
        for index, choice in enumerate(answer.more_choices, start=1):
            more = super().chunks(call, _as_answer(answer, choice))
            out.extend(Chunk(c.kind, c.text, index, c.tool) for c in more)
        return out

    def stream_chunk(self, call: Call, answer: Answer, chunk: Chunk) -> bytes:
        choice = self._choices(answer)[chunk.choice]
        if chunk.kind == "text":
            key = "refusal" if answer.refused else "content"
            return self._chunk(call, answer, {key: chunk.text}, index=chunk.choice)
        tool_call = choice.tool_calls[chunk.tool]
        function: JsonObject = {"arguments": chunk.text}
        entry: JsonObject = {"index": chunk.tool, "function": function}
        if chunk.kind == "tool_start":
            entry = {
                "index": chunk.tool,
                "id": tool_call.id,
                "type": "function",
                "function": {"name": tool_call.name, "arguments": ""},
            }
        return self._chunk(call, answer, {"tool_calls": [entry]}, index=chunk.choice)

    def stream_close(self, call: Call, answer: Answer) -> list[bytes]:
        events = [
            self._chunk(call, answer, {}, self._finish_reason(answer, choice), index=i)
            for i, choice in enumerate(self._choices(answer))
        ]
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
        return half(whole.removesuffix(b"\n\n")) + b"\n\n"


def _as_answer(answer: Answer, choice: Choice) -> Answer:
    """A further choice dressed as an answer, to reuse the base chunking of choice 0."""
    return replace(
        answer, text=choice.text, pieces=split_words(choice.text), tool_calls=choice.tool_calls
    )


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


def openai_embeddings(
    model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int, *, encoding: str
) -> dict[str, Any]:
    """`POST /v1/embeddings`'s answer: each vector as floats, or with `encoding="base64"`
    as its little-endian float32 bytes in base64 (as OpenAI sends them)."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
                if encoding == "base64"
                else list(vector)
            ),
        }
        for index, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
