"""OpenAI's chat-completions wire shapes: the request the gateway accepts and what it answers.

The request model is strict (`extra="forbid"`): a field the gateway does not pass on is an
error naming the field, rather than silently dropped, and nothing a client sends can choose a
provider's credentials or endpoint. Only the sampling parameters in `PASSED_PARAMS` reach the
provider.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway.types import MAX_TOKENS_LIMIT, Attempt, Usage

PASSED_PARAMS = ("temperature", "top_p", "stop")
"""Request fields handed to the provider as call parameters (max tokens is handled apart)."""

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})

_STRICT = ConfigDict(extra="forbid", strict=True)
"""Request models accept exactly what their schema says: no unknown fields, no coercion
(`"include_usage": 0` is not a boolean)."""


# --- request --------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    model_config = _STRICT
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    model_config = _STRICT
    type: Literal["image_url"]
    image_url: ImageUrl


def _whole_float_as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT), BeforeValidator(_whole_float_as_int)]
"""An integer from 1 to `MAX_TOKENS_LIMIT` as JSON Schema means it: `1.0` is one, `"1"`,
`true` and 1e30 (no model writes that much) are not."""

ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class SystemMessage(BaseModel):
    """`developer` is OpenAI's newer name for a system message; both reach providers as system."""

    model_config = _STRICT
    role: Literal["system", "developer"]
    content: str | list[TextPart]


class UserMessage(BaseModel):
    model_config = _STRICT
    role: Literal["user"]
    content: str | list[ContentPart]


class AssistantMessage(BaseModel):
    model_config = _STRICT
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object"] = "text"


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. `model` names a gateway task (see docs/server.md)."""

    model_config = _STRICT

    model: str = Field(
        min_length=1,
        max_length=256,
        description="The task to route (a task name from the policy; unknown names go to the "
        "`default` task when the policy has one). The `x-gateway-task` header overrides it.",
    )
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = Field(
        None, description="Preferred over max_tokens when both are given."
    )
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="A stop sequence, or a list of up to 4."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: Literal[1] = Field(1, description="Only one choice per request is supported.")
    user: str | None = Field(
        None, max_length=256, description="Accepted for compatibility; not sent upstream."
    )

    def wire_messages(self) -> list[dict[str, Any]]:
        """The messages as plain dicts for the router (`developer` becomes `system`)."""
        out: list[dict[str, Any]] = []
        for message in self.messages:
            role = "system" if message.role == "developer" else message.role
            if type(message.content) is str:  # most messages: no parts to dump
                out.append({"role": role, "content": message.content})
                continue
            data = message.model_dump(exclude_none=True)
            data["role"] = role
            out.append(data)
        return out

    def call_params(self) -> dict[str, Any]:
        """The sampling parameters the caller set, for the provider."""
        params: dict[str, Any] = {}
        for name in PASSED_PARAMS:
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        return params

    @property
    def json_mode(self) -> bool:
        return self.response_format is not None and self.response_format.type == "json_object"

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    TextPart,
    ImageUrl,
    ImagePart,
    SystemMessage,
    UserMessage,
    AssistantMessage,
    StreamOptions,
    ResponseFormat,
    ChatCompletionRequest,
)
DISCRIMINATORS = ("role", "type")


def request_field_names() -> frozenset[str]:
    return frozenset(name for model in REQUEST_MODELS for name in model.model_fields)


def union_tags() -> frozenset[str]:
    """The values that pick a branch of a discriminated union (message roles, part types):
    pydantic puts them in error locations right after the list index."""
    tags: set[str] = set()
    for model in REQUEST_MODELS:
        for name in DISCRIMINATORS:
            field = model.model_fields.get(name)
            if field is not None and get_origin(field.annotation) is Literal:
                tags.update(str(value) for value in get_args(field.annotation))
    return frozenset(tags)


# --- responses ------------------------------------------------------------------------------


class AssistantReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantReply
    finish_reason: str
    logprobs: None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The upstream model that answered.")
    choices: list[Choice]
    usage: CompletionUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gateway"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AttemptReport(BaseModel):
    """One candidate of a failed request: who, and what happened (never keys or prompts)."""

    provider: str
    model: str
    outcome: str
    retries: int = 0
    error: str | None = None

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptReport:
        return cls(
            provider=attempt.provider,
            model=attempt.model,
            outcome=attempt.outcome,
            retries=attempt.retries,
            error=attempt.error,
        )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    attempts: list[AttemptReport] | None = Field(
        None, description="For 502 and 504: every candidate the gateway considered."
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- building answers -----------------------------------------------------------------------


def new_completion_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def finish_reason(raw: str | None) -> str:
    return raw if raw in FINISH_REASONS else "stop"


def usage_body(usage: Usage) -> dict[str, Any]:
    """`CompletionUsage`, built as a plain dict (this runs for every answer)."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def completion_body(
    *, response_id: str, model: str, text: str, finish: str | None, usage: Usage
) -> dict[str, Any]:
    """A `ChatCompletion` as JSON-ready data, built as a plain dict: the same keys in the same
    order as the model's dump, at a tenth of the cost."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": finish_reason(finish),
                "logprobs": None,
            }
        ],
        "usage": usage_body(usage),
    }


class ChunkWriter:
    """`chat.completion.chunk` objects for one streamed answer, in OpenAI's order: a role
    chunk, content chunks, a chunk with the finish reason, then (when asked) a usage chunk."""

    def __init__(self, *, response_id: str, model: str, include_usage: bool) -> None:
        self._head = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self._include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> dict[str, Any]:
        chunk = {**self._head, "choices": choices}
        if self._include_usage:
            chunk["usage"] = None if usage is None else usage_body(usage)
        return chunk

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._chunk([choice])

    def role(self) -> dict[str, Any]:
        return self._delta({"role": "assistant", "content": ""})

    def content(self, text: str) -> dict[str, Any]:
        return self._delta({"content": text})

    def finish(self, reason: str | None) -> dict[str, Any]:
        return self._delta({}, finish_reason(reason))

    def usage(self, usage: Usage) -> dict[str, Any] | None:
        return self._chunk([], usage) if self._include_usage else None
