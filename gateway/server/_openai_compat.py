"""OpenAI's chat-completions wire shapes: the request the gateway accepts and what it answers.

The request model is OpenAI's Chat Completions request, strict (`extra="forbid"`): a field
the gateway does not know is an error naming the field, rather than silently dropped, and
nothing a client sends can choose a provider's credentials or endpoint. Every field it knows
goes to the router by its OpenAI name; each provider's codec forwards, translates or refuses
it (docs/server.md has the table).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway.request import MAX_CHOICES
from gateway.types import MAX_TOKENS_LIMIT, Attempt, ToolCallDelta, Usage
from gateway.types import Choice as AnswerChoice

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})

_STRICT = ConfigDict(extra="forbid", strict=True)
"""Request models accept exactly what their schema says: no unknown fields, no coercion
(`"include_usage": 0` is not a boolean)."""

JsonObject = dict[str, Any]
"""A JSON object passed on as the client wrote it (a JSON Schema, a tool's extra settings)."""


# --- request --------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class RefusalPart(BaseModel):
    model_config = _STRICT
    type: Literal["refusal"]
    refusal: str


class ImageUrl(BaseModel):
    model_config = _STRICT
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    model_config = _STRICT
    type: Literal["image_url"]
    image_url: ImageUrl


class InputAudio(BaseModel):
    model_config = _STRICT
    data: str = Field(min_length=1, description="Base64-encoded audio.")
    format: Literal["wav", "mp3"]


class AudioPart(BaseModel):
    model_config = _STRICT
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileData(BaseModel):
    model_config = _STRICT
    file_data: str | None = Field(None, description="A base64 data: URL of the file.")
    file_id: str | None = None
    filename: str | None = None


class FilePart(BaseModel):
    model_config = _STRICT
    type: Literal["file"]
    file: FileData


def _whole_float_as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT), BeforeValidator(_whole_float_as_int)]
"""An integer from 1 to `MAX_TOKENS_LIMIT` as JSON Schema means it: `1.0` is one, `"1"`,
`true` and 1e30 (no model writes that much) are not."""

WholeNumber = Annotated[int, BeforeValidator(_whole_float_as_int)]

ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
MessageName = Annotated[str, Field(min_length=1, max_length=256)]


class SystemMessage(BaseModel):
    """`developer` is OpenAI's newer name for a system message: OpenAI gets it by that name,
    other providers as system."""

    model_config = _STRICT
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: MessageName | None = None


class UserMessage(BaseModel):
    model_config = _STRICT
    role: Literal["user"]
    content: str | list[ContentPart]
    name: MessageName | None = None


class FunctionCallParam(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)
    arguments: str


class ToolCallParam(BaseModel):
    model_config = _STRICT
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCallParam


class AudioRef(BaseModel):
    model_config = _STRICT
    id: str


class AssistantMessage(BaseModel):
    """An assistant turn of the history, as the SDKs send back the message they received
    (`refusal`, `annotations`, `audio` and `function_call` included, null or as sent)."""

    model_config = _STRICT
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    name: MessageName | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    function_call: FunctionCallParam | None = None
    audio: AudioRef | None = None
    annotations: list[JsonObject] | None = None


class ToolMessage(BaseModel):
    model_config = _STRICT
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str = Field(min_length=1)


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False
    include_obfuscation: bool | None = Field(
        None, description="Accepted; the gateway adds no obfuscation padding."
    )


class JsonSchemaFormat(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: JsonObject | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class AudioOutput(BaseModel):
    model_config = _STRICT
    voice: str
    format: str


class Prediction(BaseModel):
    model_config = _STRICT
    type: Literal["content"]
    content: str | list[TextPart]


Penalty = Annotated[float, Field(ge=-2, le=2)]


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions: OpenAI's Chat Completions request. `model` names a gateway
    task (see docs/server.md); docs/server.md also says, field by field, what each provider
    type does with the rest."""

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
        None, description="Sent by this name to OpenAI; as the output limit elsewhere."
    )
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="A stop sequence, or a list of up to 4."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: WholeNumber = Field(1, ge=1, le=MAX_CHOICES, description="How many choices to answer.")
    seed: WholeNumber | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: WholeNumber | None = Field(None, ge=0, le=20)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    tools: list[Tool] | None = Field(None, max_length=512)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    prompt_cache_key: str | None = Field(None, max_length=256)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    prediction: Prediction | None = None
    web_search_options: JsonObject | None = None
    functions: list[FunctionDefinition] | None = Field(
        None, max_length=128, description="The deprecated form of tools."
    )
    function_call: Literal["none", "auto"] | NamedFunction | None = Field(
        None, description="The deprecated form of tool_choice."
    )

    def wire_messages(self) -> list[dict[str, Any]]:
        """The messages as plain dicts for the router, as the client sent them."""
        out: list[dict[str, Any]] = []
        for message in self.messages:
            if type(message) is UserMessage and type(message.content) is str and not message.name:
                out.append({"role": "user", "content": message.content})  # most messages
                continue
            out.append(message.model_dump(exclude_none=True, by_alias=True))
        return out

    def call_params(self) -> dict[str, Any]:
        """Every other field the client set, by OpenAI's names, for the router."""
        params = self.model_dump(
            exclude_none=True, by_alias=True, exclude=_NOT_PASSED, exclude_defaults=False
        )
        if self.n == 1:
            params.pop("n", None)  # the default: nothing to ask for
        return params

    @property
    def json_mode(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


_NOT_PASSED = {"model", "messages", "stream", "stream_options"}
"""Fields the server itself acts on; the rest go to the router by name."""


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    TextPart,
    RefusalPart,
    ImageUrl,
    ImagePart,
    InputAudio,
    AudioPart,
    FileData,
    FilePart,
    SystemMessage,
    UserMessage,
    FunctionCallParam,
    ToolCallParam,
    AudioRef,
    AssistantMessage,
    ToolMessage,
    StreamOptions,
    JsonSchemaFormat,
    ResponseFormat,
    FunctionDefinition,
    Tool,
    NamedFunction,
    NamedToolChoice,
    AudioOutput,
    Prediction,
    ChatCompletionRequest,
)
DISCRIMINATORS = ("role", "type")


def request_field_names() -> frozenset[str]:
    names = {name for model in REQUEST_MODELS for name in model.model_fields}
    names |= {
        field.alias
        for model in REQUEST_MODELS
        for field in model.model_fields.values()
        if field.alias
    }
    return frozenset(names)


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


class FunctionCallReply(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as JSON text.")


class ToolCallReply(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallReply


class AssistantReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="Null when the answer is tool calls alone.")
    refusal: str | None = None
    tool_calls: list[ToolCallReply] | None = Field(
        None, description="Present when the model calls tools."
    )
    annotations: list[JsonObject] | None = Field(None, description="As the provider sent them.")
    audio: JsonObject | None = Field(None, description="As the provider sent it.")
    function_call: JsonObject | None = Field(None, description="As the provider sent it.")


class Choice(BaseModel):
    index: int = 0
    message: AssistantReply
    finish_reason: str
    logprobs: JsonObject | None = None


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
    *, response_id: str, model: str, choices: Sequence[AnswerChoice], usage: Usage
) -> dict[str, Any]:
    """A `ChatCompletion` as JSON-ready data, built as plain dicts: the same keys in the same
    order as the model's dump, at a tenth of the cost."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice_body(choice) for choice in choices],
        "usage": usage_body(usage),
    }


def _choice_body(choice: AnswerChoice) -> dict[str, Any]:
    extra = choice.extra or {}
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI's null content: an answer that is tool calls or a refusal alone.
        "content": choice.text
        if choice.text or not (choice.tool_calls or choice.refusal)
        else None,
        "refusal": choice.refusal,
    }
    if choice.tool_calls:
        message["tool_calls"] = [call.to_openai() for call in choice.tool_calls]
    for key in MESSAGE_EXTRAS:
        if key in extra:
            message[key] = extra[key]
    return {
        "index": choice.index,
        "message": message,
        "finish_reason": finish_reason(choice.finish_reason),
        "logprobs": extra.get("logprobs"),
    }


MESSAGE_EXTRAS = ("annotations", "audio", "function_call")
"""Fields of a provider's message the answer carries as they came."""


def response_id_for(upstream_id: str | None) -> str:
    """The answer's id: the upstream's when it is a chat completion id, else a new one, so
    every answer has a `chatcmpl-` id whatever protocol the provider spoke."""
    if upstream_id and upstream_id.startswith("chatcmpl-"):
        return upstream_id
    return new_completion_id()


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

    def tool_call(self, piece: ToolCallDelta) -> dict[str, Any]:
        """A tool call's piece as OpenAI streams it: the first names it, the rest add
        argument text."""
        function: dict[str, Any] = {"arguments": piece.arguments}
        call: dict[str, Any] = {"index": piece.index}
        if piece.id is not None:
            call["id"] = piece.id
            call["type"] = "function"
        if piece.name is not None:
            function = {"name": piece.name, **function}
        call["function"] = function
        return self._delta({"tool_calls": [call]})

    def refusal(self, text: str) -> dict[str, Any]:
        return self._delta({"refusal": text})

    def finish(self, reason: str | None) -> dict[str, Any]:
        return self._delta({}, finish_reason(reason))

    def usage(self, usage: Usage) -> dict[str, Any] | None:
        return self._chunk([], usage) if self._include_usage else None
