"""Anthropic's Messages API (`POST /v1/messages`): `AnthropicCodec`.

Message conversion (system prompt, merged turns, tool calls and results, documents) is
described in `gateway.providers._messages`. Every OpenAI request field is translated, ignored
or refused as `REQUEST_FIELDS` says, in one place (`_translate`): OpenAI's function tools
become `input_schema` tools, `tool_choice` maps to Anthropic's, `stop` becomes
`stop_sequences`, `user` becomes `metadata.user_id`; a field whose meaning Anthropic cannot
honour (`n` > 1, `logprobs`, penalties...) raises `InvalidRequestError`, so the router skips
this candidate rather than answer something else.

Structured output: `json_object` adds an instruction to the system prompt to answer with one
JSON object only (Anthropic has no JSON mode). A strict `json_schema` uses Anthropic's native
structured output (`output_config.format`) on the models in `NATIVE_STRUCTURED_OUTPUT_MODELS`;
any other `json_schema` is asked for as a forced tool whose input is the schema, and that
tool's input is read back as the answer's text, whole and streamed.

Replies: `tool_use` blocks become `Completion.tool_calls`; streamed, a tool_use block's start
and its `input_json_delta` pieces become `ToolCallDelta`s numbered among the answer's tool
calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from gateway.errors import ErrorKind, InvalidRequestError, ProviderError
from gateway.providers import _errors
from gateway.providers._base import Call
from gateway.providers._codec import (
    StreamReader,
    WireCodec,
    WireEvent,
    refuse_unhonoured,
    shown_value,
)
from gateway.providers._messages import to_anthropic
from gateway.request import named_tool_choice
from gateway.types import Completion, StreamEnd, ToolCall, ToolCallDelta, Usage

API_VERSION = "2023-06-01"
"""The `anthropic-version` header: the API version whose shapes this codec reads."""

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens` on every call; this is what a call without one asks for."""

NATIVE_STRUCTURED_OUTPUT_MODELS: tuple[str, ...] = (
    "claude-opus-4-5",
    "claude-opus-4-6",
    "claude-opus-4-7",
    "claude-opus-5",
    "claude-sonnet-4-5",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)
"""Prefixes of the model names that take native structured output (`output_config.format`,
generally available, no beta header) and `strict` tools. Other models get a forced tool."""

REQUEST_FIELDS: dict[str, str] = {
    "tools": "sent as Anthropic tools (name, description, input_schema = parameters); "
    "`strict` kept on models with native structured output",
    "tool_choice": "auto -> {type: auto}, required -> {type: any}, none -> {type: none}, "
    "a named function -> {type: tool, name}",
    "parallel_tool_calls": "false -> tool_choice.disable_parallel_tool_use: true",
    "response_format": "json_schema: native output_config.format when strict and the model "
    "and schema allow it, else a forced tool whose input is the answer (refused with tools); "
    "json_object: an instruction in the system prompt",
    "seed": "ignored: Anthropic has no seed (best effort at OpenAI too)",
    "n": "refused (candidate skipped) when > 1: one choice per call",
    "top_p": "sent as top_p",
    "stop": "sent as stop_sequences",
    "frequency_penalty": "refused (candidate skipped) when non-zero: no penalties",
    "presence_penalty": "refused (candidate skipped) when non-zero: no penalties",
    "logprobs": "refused (candidate skipped) when true: no log probabilities",
    "top_logprobs": "refused (candidate skipped) when set: no log probabilities",
    "logit_bias": "refused (candidate skipped) when non-empty: no token biases",
    "reasoning_effort": "refused (candidate skipped): extended thinking takes a token budget; "
    "pass `thinking` as a provider extra",
    "metadata": "ignored: OpenAI's stored-completion tags; Anthropic's metadata holds only a "
    "user id",
    "store": "ignored: OpenAI's stored completions",
    "service_tier": "ignored: OpenAI's processing tiers",
    "user": "sent as metadata.user_id",
    "safety_identifier": "sent as metadata.user_id (wins over user)",
    "prompt_cache_key": "ignored: Anthropic caches by cache_control breakpoints",
    "modalities": 'refused (candidate skipped) unless ["text"]: text output only',
    "audio": "refused (candidate skipped) when set: no audio output",
    "prediction": "ignored: a latency optimisation, the answer is the same",
    "web_search_options": "refused (candidate skipped) when set: OpenAI's built-in search",
    "verbosity": "refused (candidate skipped) when set: no verbosity control",
    "max_completion_tokens": "sent as max_tokens (wins over max_tokens)",
    "functions": "refused (candidate skipped) when set: the deprecated form; use tools",
    "function_call": "refused (candidate skipped) when set: the deprecated form; use tool_choice",
}
"""What this codec does with each OpenAI request field (docs/server.md's table is checked
against it). Fields not listed (provider extras such as `top_k` or `thinking`) are sent as
given."""

_ANSWER_TOOL_DESCRIPTION = "Give the answer: this tool's input is the whole answer."


class AnthropicCodec(WireCodec):
    framing = "sse"

    def __init__(self, *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.default_max_tokens = default_max_tokens

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": API_VERSION,
        }
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def path(self, call: Call) -> str:
        return "/v1/messages"

    def body(self, call: Call, model: str) -> dict[str, Any]:
        fields = _translate(call, model)
        schema = call.json_schema
        system, turns = to_anthropic(call.messages, json_mode=call.json_mode and schema is None)
        max_tokens = call.params.get("max_completion_tokens") or call.max_tokens
        body: dict[str, Any] = {
            "model": model,
            "messages": turns,
            "max_tokens": max_tokens or self.default_max_tokens,
        }
        if system:
            body["system"] = system
        if call.temperature is not None:
            body["temperature"] = call.temperature
        body.update(fields)
        if call.stream:
            body["stream"] = True
        return body

    def completion(self, data: Any, call: Call) -> Completion:
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise _malformed(call.provider, "no content list")
        stop_reason = _text_or_none(data.get("stop_reason"))
        if stop_reason == "refusal":
            raise _errors.content_filter_error(provider=call.provider, reason=stop_reason)
        answer_tool = _answer_tool(call)
        parts: list[str] = []
        tool_calls: list[ToolCall] = []
        for block in data["content"]:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and answer_tool is None:
                text = block.get("text")
                if not isinstance(text, str):
                    raise _malformed(call.provider, "a text block without text")
                parts.append(text)
            elif kind == "tool_use":
                tool_call = _tool_call(block, call.provider)
                if answer_tool is not None and tool_call.name == answer_tool:
                    parts.append(tool_call.arguments)
                elif answer_tool is None:
                    tool_calls.append(tool_call)
        finish_reason = _errors.finish_reason(stop_reason)
        if answer_tool is not None and stop_reason == "tool_use":
            finish_reason = "stop"
        return Completion(
            text="".join(parts),
            model=_text_or_none(data.get("model")) or call.model,
            finish_reason=finish_reason,
            usage=_errors.checked_usage(_usage(data.get("usage")), provider=call.provider),
            response_id=_text_or_none(data.get("id")),
            tool_calls=tuple(tool_calls),
        )

    def reader(self, call: Call) -> AnthropicReader:
        return AnthropicReader(call)

    def status_error(
        self, status: int, body: bytes, headers: Mapping[str, str], call: Call
    ) -> ProviderError:
        try:
            error = _errors.parse_untrusted_json(body).get("error")
        except (ValueError, AttributeError):
            error = None
        fields: Mapping[str, Any] = error if isinstance(error, dict) else {}
        return api_error(
            status,
            fields.get("type"),
            fields.get("message") or f"HTTP {status}",
            provider=call.provider,
            redact=call.redact,
            headers=headers,
        )


class AnthropicReader(StreamReader):
    """Reads message_start (input usage, model, id), content_block_start (a tool call's id and
    name), content_block_delta (text, a tool call's argument pieces), content_block_stop,
    message_delta (stop reason, cumulative usage) and message_stop; an `error` event raises.

    Tool calls are numbered 0, 1, ... among the answer's tool calls (OpenAI's `index`), not by
    their content block's index. A forced answer tool's argument pieces are the answer's text.
    """

    def __init__(self, call: Call) -> None:
        self._call = call
        self._answer_tool = _answer_tool(call)
        self._start_usage: Any = None
        self._delta_usage: Any = None
        self._stop_reason: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None
        self._tool_blocks: dict[Any, _ToolBlock] = {}
        """Open tool_use blocks by content block index."""
        self._tool_count = 0

    def read(self, event: WireEvent) -> Iterator[str | ToolCallDelta]:
        data = event.data
        if not isinstance(data, dict):
            raise _malformed(self._call.provider, "a stream event that is not an object")
        kind = data.get("type")
        if event.event == "error" or kind == "error":
            error = data.get("error")
            fields: Mapping[str, Any] = error if isinstance(error, dict) else {}
            raise api_error(
                None,
                fields.get("type"),
                fields.get("message") or "error",
                provider=self._call.provider,
                redact=self._call.redact,
            )
        if kind == "message_start":
            message = data.get("message") or {}
            self._start_usage = message.get("usage")
            self._model = _text_or_none(message.get("model"))
            self._response_id = _text_or_none(message.get("id"))
        elif kind == "content_block_start":
            yield from self._block_start(data)
        elif kind == "content_block_delta":
            yield from self._block_delta(data)
        elif kind == "content_block_stop":
            yield from self._block_stop(data.get("index"))
        elif kind == "message_delta":
            self._stop_reason = (
                _text_or_none((data.get("delta") or {}).get("stop_reason")) or self._stop_reason
            )
            self._delta_usage = data.get("usage")
        elif kind == "message_stop":
            self.done = True

    def _block_start(self, data: dict[str, Any]) -> Iterator[str | ToolCallDelta]:
        block = data.get("content_block")
        if not isinstance(block, dict) or block.get("type") != "tool_use":
            return
        provider = self._call.provider
        tool_id, name = block.get("id"), block.get("name")
        if not isinstance(tool_id, str) or not isinstance(name, str) or not name:
            raise _malformed(provider, "a tool_use block without a string id and name")
        start = block.get("input")
        # The input comes in input_json_delta pieces; one given whole here is kept for stop.
        whole = _dumps(start, provider) if isinstance(start, dict) and start else ""
        if self._answer_tool is not None:
            answer = name == self._answer_tool
            self._tool_blocks[data.get("index")] = _ToolBlock(None, whole, answer=answer)
            return
        index = self._tool_count
        self._tool_count += 1
        self._tool_blocks[data.get("index")] = _ToolBlock(index, whole)
        yield ToolCallDelta(index=index, id=tool_id, name=name, arguments="")

    def _block_delta(self, data: dict[str, Any]) -> Iterator[str | ToolCallDelta]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            text = delta["text"]
            if not isinstance(text, str):
                raise _malformed(self._call.provider, "a text delta without text")
            if self._answer_tool is None:
                yield text
        elif kind == "input_json_delta":
            tool = self._tool_blocks.get(data.get("index"))
            piece = delta.get("partial_json")
            if tool is None:
                raise _malformed(self._call.provider, "an input_json_delta outside a tool_use")
            if not isinstance(piece, str):
                raise _malformed(self._call.provider, "an input_json_delta without partial_json")
            if piece:
                tool.streamed = True
                yield from tool.piece(piece)

    def _block_stop(self, index: Any) -> Iterator[str | ToolCallDelta]:
        tool = self._tool_blocks.pop(index, None)
        if tool is not None and not tool.streamed:
            # No pieces came: the input given at the start, or none (a tool without arguments).
            yield from tool.piece(tool.whole or "{}")

    def end(self) -> StreamEnd:
        provider = self._call.provider
        if not self.done:
            raise _errors.truncated_stream_error(provider=provider)
        if self._stop_reason == "refusal":
            raise _errors.content_filter_error(provider=provider, reason=self._stop_reason)
        usage = _stream_usage(self._start_usage, self._delta_usage)
        if usage is not None:
            usage = _errors.checked_usage(usage, provider=provider)
        finish_reason = _errors.finish_reason(self._stop_reason)
        if self._answer_tool is not None and self._stop_reason == "tool_use":
            finish_reason = "stop"
        return StreamEnd(usage, finish_reason, self._model, self._response_id)


class _ToolBlock:
    """One streamed tool_use block: a tool call (`index`), or the forced answer tool's input
    (`index` None, `answer` True: its pieces are text), or another tool's (dropped)."""

    __slots__ = ("answer", "index", "streamed", "whole")

    def __init__(self, index: int | None, whole: str, *, answer: bool = False) -> None:
        self.index = index
        self.whole = whole
        self.answer = answer
        self.streamed = False

    def piece(self, text: str) -> Iterator[str | ToolCallDelta]:
        if self.index is not None:
            yield ToolCallDelta(index=self.index, arguments=text)
        elif self.answer:
            yield text


# --- request fields ---------------------------------------------------------------------------


def _translate(call: Call, model: str) -> dict[str, Any]:
    """The body's fields for `call.params` (all but model, messages, system and max_tokens),
    as `REQUEST_FIELDS` says; `InvalidRequestError` for one Anthropic cannot honour."""
    params = call.params
    _refuse_unsupported(call)
    body: dict[str, Any] = {}
    native = _supports_native(model)
    tools = params.get("tools") or []
    if tools:
        body["tools"] = [_tool(tool, strict_ok=native) for tool in tools]
        choice = _tool_choice(params.get("tool_choice"))
        if params.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        if choice != {"type": "auto"}:
            body["tool_choice"] = choice
    schema_spec = call.json_schema
    if schema_spec is not None:
        schema = _object_schema(schema_spec)
        if native and schema_spec.get("strict") is True and _native_fits(schema):
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif tools:
            raise InvalidRequestError(
                "response_format json_schema with tools: Anthropic gives a schema-shaped "
                f"answer to {model} only as a forced tool, which cannot be combined with the "
                "request's own tools; send a strict schema to a model with native structured "
                "output, or drop one of the two"
            )
        else:
            name = str(schema_spec["name"])
            description = schema_spec.get("description")
            body["tools"] = [
                {
                    "name": name,
                    "description": description
                    if isinstance(description, str) and description
                    else _ANSWER_TOOL_DESCRIPTION,
                    "input_schema": schema,
                }
            ]
            body["tool_choice"] = {"type": "tool", "name": name}
    stop = params.get("stop")
    if stop is not None:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("top_p") is not None:
        body["top_p"] = params["top_p"]
    user = params.get("safety_identifier") or params.get("user")
    if user:
        body["metadata"] = {"user_id": str(user)}
    for key, value in params.items():
        if key not in REQUEST_FIELDS:
            body[key] = value  # a provider extra (top_k, thinking, extra_headers...): as given
    return body


_CANNOT: dict[str, str] = {
    "n": "Anthropic answers one choice per call",
    "frequency_penalty": "Anthropic has no frequency or presence penalties",
    "presence_penalty": "Anthropic has no frequency or presence penalties",
    "logprobs": "Anthropic returns no log probabilities",
    "top_logprobs": "Anthropic returns no log probabilities",
    "logit_bias": "Anthropic takes no token biases",
    "reasoning_effort": "Anthropic's extended thinking takes a token budget, not an effort level; "
    "pass thinking={'type': 'enabled', 'budget_tokens': N} as a provider extra instead",
    "modalities": "Anthropic answers in text only",
    "audio": "Anthropic gives no audio output",
    "web_search_options": "OpenAI's built-in web search has no Anthropic equivalent on this "
    "path; pass Anthropic's web_search tool as a provider extra instead",
    "verbosity": "Anthropic has no verbosity control",
    "functions": "the deprecated form is not translated; send tools",
    "function_call": "the deprecated form is not translated; send tool_choice",
}
"""The fields Anthropic cannot honour, and why: a request that asks for one skips it."""


def _refuse_unsupported(call: Call) -> None:
    if call.temperature is not None and call.temperature > 1:
        raise InvalidRequestError(
            f"temperature={call.temperature}: Anthropic takes a temperature from 0 to 1"
        )
    refuse_unhonoured(call.params, _CANNOT)


def _supports_native(model: str) -> bool:
    return model.startswith(NATIVE_STRUCTURED_OUTPUT_MODELS)


_NATIVE_UNSUPPORTED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "maxItems",
        "minProperties",
        "maxProperties",
    }
)
"""JSON Schema keywords Anthropic's native structured output does not take (a schema using
one is asked for as a forced tool, which takes any schema)."""


def _native_fits(schema: Mapping[str, Any]) -> bool:
    """Whether native structured output takes `schema`: no keyword it lacks, every object
    closed (`additionalProperties: false`, as OpenAI's strict mode has it too), `minItems` of
    0 or 1 only."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, Mapping):
            continue
        if _NATIVE_UNSUPPORTED.intersection(node):
            return False
        min_items = node.get("minItems")
        if isinstance(min_items, int) and min_items > 1:
            return False
        if node.get("type") == "object" and node.get("additionalProperties") is not False:
            return False
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, Mapping):
                stack.extend(value.values())  # name -> schema: the names are not keywords
            elif key not in _SCHEMA_VALUES:
                stack.append(value)
    return True


_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_SCHEMA_VALUES = frozenset({"enum", "const", "default", "examples", "required"})


def _tool(tool: Mapping[str, Any], *, strict_ok: bool) -> dict[str, Any]:
    function = tool["function"]
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = dict(function.get("parameters") or {"type": "object", "properties": {}})
    if strict_ok and function.get("strict") is True:
        out["strict"] = True
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": named_tool_choice(choice)}


def _object_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    schema = spec.get("schema")
    if not isinstance(schema, Mapping) or not schema:
        return {"type": "object", "properties": {}}
    kind = schema.get("type")
    if kind is not None and kind != "object":
        raise InvalidRequestError(
            f"response_format.json_schema.schema has type {shown_value(kind)}: Anthropic gives a "
            "schema-shaped answer as an object only; wrap it in an object schema"
        )
    return dict(schema)


def _answer_tool(call: Call) -> str | None:
    """The forced tool whose input is the answer (a json_schema without native structured
    output, in a request without tools of its own), else None."""
    spec = call.json_schema
    if spec is None or call.params.get("tools"):
        return None
    schema = spec.get("schema")
    if (
        _supports_native(call.model)
        and spec.get("strict") is True
        and _native_fits(schema if isinstance(schema, Mapping) else {})
    ):
        return None
    return str(spec.get("name"))


# --- replies ----------------------------------------------------------------------------------


def _tool_call(block: Mapping[str, Any], provider: str) -> ToolCall:
    tool_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(tool_id, str) or not isinstance(name, str) or not name:
        raise _malformed(provider, "a tool_use block without a string id and name")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _malformed(provider, "a tool_use block whose input is not an object")
    return ToolCall(id=tool_id, name=name, arguments=_dumps(arguments, provider))


def _dumps(value: Any, provider: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError) as exc:  # nested past what can be written back
        raise _malformed(provider, f"tool input that cannot be written as JSON ({exc})") from exc


def api_error(
    status: int | None,
    error_type: object,
    message: object,
    *,
    provider: str,
    redact: _errors.Redactor,
    headers: Mapping[str, str] | None = None,
) -> ProviderError:
    """An Anthropic error: an error response (`status`), or an `error` event inside a stream
    (`status` None: HTTP said 200, so only the error's type says what failed)."""
    text = str(message)
    if error_type == "overloaded_error":
        kind = ErrorKind.OVERLOADED
    elif error_type == "invalid_request_error" and _is_prompt_too_long(text):
        kind = ErrorKind.CONTEXT_LENGTH
    elif status is None:
        kind = _errors.kind_for_error_type(error_type) or ErrorKind.SERVER_ERROR
    else:
        kind = _errors.kind_for_status(status)
    described = redact(f"{text} (type {error_type})")
    return _errors.provider_error(
        described if status is not None else f"error inside the stream: {described}",
        kind,
        provider=provider,
        status=status,
        headers=headers,
    )


def _is_prompt_too_long(message: str) -> bool:
    """Whether an invalid_request_error is a context-window overflow.

    Anthropic gives this case no error code of its own (type is the generic
    invalid_request_error), so its message is the only signal: "prompt is too long: N tokens
    > M maximum", or "input length and `max_tokens` exceed context limit: ...".
    """
    lowered = message.lower()
    return "prompt is too long" in lowered or "exceed context limit" in lowered


def _malformed(provider: str, what: str) -> ProviderError:
    return ProviderError(
        f"upstream reply is not an Anthropic message ({what})",
        kind=ErrorKind.INVALID_RESPONSE,
        provider=provider,
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(usage: Any, field: str) -> int | None:
    value = usage.get(field) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _usage(usage: Any) -> Usage:
    """Anthropic's `input_tokens` leaves out cache reads and writes: add them back."""
    cache_read = _count(usage, "cache_read_input_tokens") or 0
    cache_write = _count(usage, "cache_creation_input_tokens") or 0
    return Usage(
        input_tokens=(_count(usage, "input_tokens") or 0) + cache_read + cache_write,
        output_tokens=_count(usage, "output_tokens") or 0,
        cached_input_tokens=cache_read,
    )


def _stream_usage(start: Any, delta: Any) -> Usage | None:
    """Input counts come in message_start; message_delta's counts are cumulative and win."""
    if start is None and delta is None:
        return None

    def pick(field: str) -> int:
        for source in (delta, start):
            value = _count(source, field)
            if value is not None:
                return value
        return 0

    cache_read = pick("cache_read_input_tokens")
    return Usage(
        input_tokens=pick("input_tokens") + cache_read + pick("cache_creation_input_tokens"),
        output_tokens=pick("output_tokens"),
        cached_input_tokens=cache_read,
    )
