"""Anthropic's Messages request as `POST /v1/messages` accepts it, and its translation into the
router's OpenAI-shaped messages and fields.

The models are strict (`extra="forbid"`): a field outside them is an error naming it. Fields of
Anthropic's API that have no faithful translation for every provider type are refused by name,
with the reason (`UNSUPPORTED_FIELDS`, `UNSUPPORTED_BLOCKS`, `unsupported_feature`), rather than
dropped; docs/server.md lists them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidRequestError
from gateway.server._openai_compat import JsonObject, TokenCount

_STRICT = ConfigDict(extra="forbid", strict=True)

ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


# --- content blocks -------------------------------------------------------------------------


class TextBlock(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str
    citations: None = Field(None, description="Only null (as the SDK's blocks dump it).")


class Base64ImageSource(BaseModel):
    model_config = _STRICT
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class UrlImageSource(BaseModel):
    model_config = _STRICT
    type: Literal["url"]
    url: str = Field(min_length=1, pattern=r"^https?://")


class ImageBlock(BaseModel):
    model_config = _STRICT
    type: Literal["image"]
    source: Annotated[Base64ImageSource | UrlImageSource, Field(discriminator="type")]


class ToolUseBlock(BaseModel):
    model_config = _STRICT
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: JsonObject
    caller: None = Field(None, description="Only null (as the SDK's blocks dump it).")
    toolset_name: None = Field(None, description="Only null (as the SDK's blocks dump it).")


class ToolResultBlock(BaseModel):
    model_config = _STRICT
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock] | None = None
    is_error: bool | None = Field(
        None,
        description="Only false: OpenAI- and Ollama-protocol tool messages have no error flag "
        "(true is refused).",
    )


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]


class MessageParam(BaseModel):
    model_config = _STRICT
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


# --- tools and the rest ---------------------------------------------------------------------


class ToolParam(BaseModel):
    model_config = _STRICT
    name: ToolName
    description: str | None = None
    input_schema: JsonObject
    type: Literal["custom"] | None = None


class ToolChoiceAuto(BaseModel):
    model_config = _STRICT
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(BaseModel):
    model_config = _STRICT
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(BaseModel):
    model_config = _STRICT
    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(BaseModel):
    model_config = _STRICT
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class Metadata(BaseModel):
    model_config = _STRICT
    user_id: str | None = Field(None, max_length=256)


class CountTokensRequest(BaseModel):
    """POST /v1/messages/count_tokens: what the prompt of a Messages request costs."""

    model_config = _STRICT

    model: str = Field(
        min_length=1,
        max_length=256,
        description="Names the gateway task that answers, as on the chat route (`default` "
        "takes unknown names when the policy has it; `x-gateway-task` wins over it).",
    )
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = Field(None, max_length=512)
    tool_choice: ToolChoice | None = None

    def router_messages(self) -> list[dict[str, Any]]:
        """The conversation as the router takes it: OpenAI-shaped chat messages."""
        system = _system_text(self.system)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for i, message in enumerate(self.messages):
            messages.extend(_router_turn(message, i))
        return messages


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages: Anthropic's Messages request. `model` names a gateway task; any
    provider type of its chain may answer (docs/server.md says what each field becomes)."""

    max_tokens: TokenCount = Field(description="Required, as Anthropic requires it.")
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(
        None,
        ge=0,
        description="Only for a task whose chain holds only anthropic and ollama providers "
        "(others have no top_k: 400).",
    )
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: Metadata | None = None

    def router_params(self) -> dict[str, Any]:
        """The other fields by OpenAI's names, as `Router.generate` and `stream` take them."""
        params: dict[str, Any] = {"max_tokens": self.max_tokens}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.top_p is not None:
            params["top_p"] = self.top_p
        if self.top_k is not None:
            # Not an OpenAI field: a provider extra, which Anthropic's codec sends as top_k
            # and Ollama's as options.top_k (the route lets no other type get it).
            params["top_k"] = self.top_k
        if self.stop_sequences:
            params["stop"] = list(self.stop_sequences)
        if self.metadata is not None and self.metadata.user_id:
            params["user"] = self.metadata.user_id
        if self.tools:
            params["tools"] = [_function_tool(tool) for tool in self.tools]
        if self.tool_choice is not None:
            params.update(_tool_choice(self.tool_choice, self.tools or []))
        return params


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    TextBlock,
    Base64ImageSource,
    UrlImageSource,
    ImageBlock,
    ToolUseBlock,
    ToolResultBlock,
    MessageParam,
    ToolParam,
    ToolChoiceAuto,
    ToolChoiceAny,
    ToolChoiceTool,
    ToolChoiceNone,
    Metadata,
    CountTokensRequest,
    MessagesRequest,
)


def request_field_names() -> frozenset[str]:
    return frozenset(name for model in REQUEST_MODELS for name in model.model_fields)


def union_tags() -> frozenset[str]:
    """The values of `type` and `role` that pick a branch of a union (block types, roles)."""
    tags: set[str] = set()
    for model in REQUEST_MODELS:
        for name in ("type", "role"):
            field = model.model_fields.get(name)
            if field is not None and get_origin(field.annotation) is Literal:
                tags.update(str(value) for value in get_args(field.annotation))
    return frozenset(tags)


# --- what has no faithful translation --------------------------------------------------------

_ANY_PROVIDER = "a task's chain may hold OpenAI- and Ollama-protocol providers, "

UNSUPPORTED_FIELDS: Mapping[str, str] = {
    "thinking": "the gateway's answers carry no thinking blocks, and "
    + _ANY_PROVIDER
    + "which take no thinking budget; leave it out",
    "service_tier": "Anthropic's processing tiers have no meaning for the other providers of a "
    "chain; leave it out",
    "container": "code-execution containers are Anthropic's own; leave it out",
    "mcp_servers": "MCP connectors are Anthropic's own; leave it out",
    "context_management": "Anthropic's context editing is its own; leave it out",
    "output_format": "structured output is not translated on this route; use "
    "POST /v1/chat/completions with response_format",
    "output_config": "structured output is not translated on this route; use "
    "POST /v1/chat/completions with response_format",
    "cache_control": "prompt caching breakpoints are Anthropic's own and the gateway does not "
    "pass them on; leave cache_control out",
    "inference_geo": "where inference runs is chosen per Anthropic workspace; the gateway's "
    "providers cannot promise a region; leave it out (choose the region in the policy's "
    "providers instead)",
    "speed": "Anthropic's fast mode is its own; leave it out",
    "diagnostics": "prompt-cache diagnostics are Anthropic's own; leave it out",
}
"""Top-level fields of Anthropic's API the route refuses, and why."""

UNSUPPORTED_BLOCKS: Mapping[str, str] = {
    "document": "documents (and their citations) are not translated on this route; send the "
    "text as a text block, or use POST /v1/chat/completions with a file part",
    "search_result": "search results with citations are Anthropic's own; send them as text",
    "thinking": "the gateway's answers carry no thinking blocks, so none can be sent back; "
    "leave them out of the history",
    "redacted_thinking": "the gateway's answers carry no thinking blocks, so none can be sent "
    "back; leave them out of the history",
    "server_tool_use": "server tools are Anthropic's own; leave them out of the history",
    "web_search_tool_result": "server tools are Anthropic's own; leave them out of the history",
    "container_upload": "code-execution containers are Anthropic's own",
}
"""Content block types the route refuses, and why."""

_SERVER_TOOL = "server tools (web search, code execution, bash...) run at Anthropic; " + (
    _ANY_PROVIDER + "which cannot run them: send client tools (name, input_schema)"
)


def unsupported_feature(body: object) -> tuple[str, str] | None:
    """(where, message) for the first thing in a request body the route refuses by name, or
    None. Read from the body as sent, before (and whatever) validation says of the rest."""
    if not isinstance(body, Mapping):
        return None
    for name, why in UNSUPPORTED_FIELDS.items():
        if body.get(name) is not None:
            return name, f"{name}: not supported by this gateway: {why}"
    system = body.get("system")
    if isinstance(system, list):
        found = _cache_control(system, "system")
        if found:
            return found
    for i, tool in enumerate(_list(body.get("tools"))):
        where = f"tools[{i}]"
        if isinstance(tool, Mapping):
            kind = tool.get("type")
            if isinstance(kind, str) and kind != "custom":
                return where, f"{where}: a {kind!r} tool: {_SERVER_TOOL}"
            if tool.get("cache_control") is not None:
                return where, _cache_message(f"{where}.cache_control")
    for i, message in enumerate(_list(body.get("messages"))):
        content = message.get("content") if isinstance(message, Mapping) else None
        found = _blocks(_list(content), f"messages[{i}].content")
        if found:
            return found
    return None


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _blocks(blocks: list[Any], where: str) -> tuple[str, str] | None:
    for j, block in enumerate(blocks):
        if not isinstance(block, Mapping):
            continue
        here = f"{where}[{j}]"
        kind = block.get("type")
        if isinstance(kind, str) and kind in UNSUPPORTED_BLOCKS:
            return here, f"{here}: a {kind!r} block: {UNSUPPORTED_BLOCKS[kind]}"
        if block.get("cache_control") is not None:
            return here, _cache_message(f"{here}.cache_control")
        if block.get("citations") is not None:
            return here, f"{here}.citations: citations are Anthropic's own; leave them out"
        if kind == "tool_result":
            if block.get("is_error") is True:
                return here, _is_error_refusal(here)
            inner = block.get("content")
            for k, part in enumerate(_list(inner)):
                if isinstance(part, Mapping) and part.get("type") != "text":
                    return f"{here}.content[{k}]", (
                        f"{here}.content[{k}]: a {part.get('type')!r} block inside a tool_result: "
                        "tool messages carry text only on OpenAI- and Ollama-protocol "
                        "providers; send the image in a user message's content instead"
                    )
            found = _blocks(_list(inner), f"{here}.content")
            if found:
                return found
    return None


def _is_error_refusal(where: str) -> str:
    return (
        f"{where}.is_error: true has no translation: OpenAI- and Ollama-protocol tool "
        "messages carry no error flag; say the tool failed in the result's text and leave "
        "is_error out"
    )


def _cache_control(blocks: list[Any], where: str) -> tuple[str, str] | None:
    for j, block in enumerate(blocks):
        if isinstance(block, Mapping) and block.get("cache_control") is not None:
            return f"{where}[{j}]", _cache_message(f"{where}[{j}].cache_control")
    return None


def _cache_message(where: str) -> str:
    return f"{where}: not supported by this gateway: {UNSUPPORTED_FIELDS['cache_control']}"


# --- translation ----------------------------------------------------------------------------


def _system_text(system: str | list[TextBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n\n".join(block.text for block in system)


def _router_turn(message: MessageParam, index: int) -> list[dict[str, Any]]:
    """One Anthropic turn as OpenAI messages: a user turn's tool results become `tool`
    messages (first, as Anthropic puts them), the rest one user message; an assistant turn
    becomes one assistant message with its text and `tool_calls`."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    where = f"messages[{index}].content"
    if message.role == "assistant":
        return [_assistant_message(message.content, where)]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        if isinstance(block, ToolResultBlock):
            if block.is_error:
                raise InvalidRequestError(_is_error_refusal(f"{where}[{j}]"))
            out.append(
                {"role": "tool", "tool_call_id": block.tool_use_id, "content": _result(block)}
            )
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        else:
            raise InvalidRequestError(
                f"{where}[{j}]: a tool_use block in a user message; tool_use blocks belong to "
                "assistant messages"
            )
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant_message(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": arguments},
                }
            )
        else:
            raise InvalidRequestError(
                f"{where}[{j}]: a {block.type!r} block in an assistant message; an assistant "
                "turn holds text and tool_use blocks"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _result(block: ToolResultBlock) -> str:
    if block.content is None:
        return ""
    if isinstance(block.content, str):
        return block.content
    return "".join(part.text for part in block.content)


def _image_url(block: ImageBlock) -> str:
    source = block.source
    if isinstance(source, Base64ImageSource):
        return f"data:{source.media_type};base64,{source.data}"
    return source.url


def _function_tool(tool: ToolParam) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, tools: list[ToolParam]) -> dict[str, Any]:
    """Anthropic's tool_choice as OpenAI's `tool_choice` and `parallel_tool_calls`."""
    if isinstance(choice, ToolChoiceNone):
        return {"tool_choice": "none"}
    if not tools:
        raise InvalidRequestError(
            f"tool_choice: {choice.type!r} needs tools; send tools, or leave tool_choice out"
        )
    fields: dict[str, Any]
    if isinstance(choice, ToolChoiceTool):
        names = [tool.name for tool in tools]
        if choice.name not in names:
            raise InvalidRequestError(
                f"tool_choice.name: {choice.name!r} is not one of the tools ({names})"
            )
        fields = {"tool_choice": {"type": "function", "function": {"name": choice.name}}}
    else:
        fields = {"tool_choice": "required" if isinstance(choice, ToolChoiceAny) else "auto"}
    if choice.disable_parallel_tool_use:
        fields["parallel_tool_calls"] = False
    return fields
