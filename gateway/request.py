"""The request fields beyond the messages: checked once, in OpenAI's names, for every provider.

The Router and every provider take the Chat Completions request fields as keyword arguments
named as OpenAI names them (`tools`, `tool_choice`, `response_format`, `seed`, `n`, ...). The
shapes the gateway itself relies on (tools, tool choice, response format, `n`) are checked
here, so a malformed one is an `InvalidRequestError` naming the field before anything is sent;
each provider's codec then forwards, translates or refuses each field (docs/server.md has the
table). `json_schema_format` turns a pydantic model into the `response_format` that asks a
model for exactly that shape.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.types import check_text

__all__ = [
    "MAX_CHOICES",
    "MAX_EMBEDDING_INPUTS",
    "OPENAI_FIELDS",
    "check_embedding_inputs",
    "check_request_fields",
    "json_schema_format",
    "json_schema_of",
    "named_tool_choice",
    "needed_capabilities",
]

OPENAI_FIELDS = (
    "max_completion_tokens",
    "stop",
    "top_p",
    "seed",
    "n",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "reasoning_effort",
    "verbosity",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "user",
    "safety_identifier",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "functions",
    "function_call",
)
"""The Chat Completions request fields besides model, messages, temperature, max_tokens and
streaming. Every provider's codec says, in its `REQUEST_FIELDS`, what it does with each one
(docs/server.md shows those tables side by side)."""

MAX_CHOICES = 128
"""The most choices (`n`) one request may ask for, as OpenAI allows."""

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_SHAPE = (
    "{'type': 'function', 'function': {'name': 'get_weather', 'description': '...', "
    "'parameters': {'type': 'object', 'properties': {...}}}}"
)
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
_TOOL_CHOICES = ("auto", "none", "required")


def check_request_fields(fields: Mapping[str, Any], *, stream: bool) -> None:
    """Refuse a malformed `tools`, `tool_choice`, `parallel_tool_calls`, `response_format` or
    `n`, and a lone UTF-16 surrogate in any field's text, naming the field, the value and the
    fix. Fields left out or None pass."""
    for name, value in fields.items():
        _check_unicode(value, name)
    tools = fields.get("tools")
    names = _check_tools(tools) if tools is not None else set()
    choice = fields.get("tool_choice")
    if choice is not None:
        _check_tool_choice(choice, names, has_tools=tools is not None)
    parallel = fields.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequestError(
            f"parallel_tool_calls must be true or false, got {type(parallel).__name__}"
        )
    response_format = fields.get("response_format")
    if response_format is not None:
        _check_response_format(response_format)
    n = fields.get("n")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
            raise InvalidRequestError(
                f"n must be a whole number from 1 to {MAX_CHOICES}, got {n!r}"
            )
        if stream and n > 1:
            raise InvalidRequestError(
                f"n={n} with stream: a streamed request answers one choice; send n=1, or "
                "leave stream off to get several choices in one answer"
            )


def _check_unicode(value: Any, where: str) -> None:
    """Every text of a field, a tool's description and schema included, as `check_text`
    checks a message's."""
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                check_text(key, f"{where} (a key)")
            _check_unicode(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}[{i}]")


def _check_tools(tools: Any) -> set[str]:
    if not isinstance(tools, list):
        raise InvalidRequestError(
            f"tools must be a list of {_TOOL_SHAPE}, got {type(tools).__name__}"
        )
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else type(tool).__name__
            raise InvalidRequestError(
                f"{where} must be a function tool {_TOOL_SHAPE}, got type {kind!r}"
            )
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise InvalidRequestError(f"{where}.function is missing: write {_TOOL_SHAPE}")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise InvalidRequestError(
                f"{where}.function.name is {name!r:.80}; use 1 to 64 letters, digits, _ or -"
            )
        if name in names:
            raise InvalidRequestError(f"{where}.function.name {name!r} is given twice")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise InvalidRequestError(
                f"{where}.function.parameters must be a JSON Schema object, "
                f"got {type(parameters).__name__}"
            )
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequestError(f"{where}.function.description must be a string")
    return names


def _check_tool_choice(choice: Any, names: set[str], *, has_tools: bool) -> None:
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise InvalidRequestError(
                f"tool_choice is {choice!r:.80}; use 'auto', 'none', 'required' or "
                "{'type': 'function', 'function': {'name': '...'}}"
            )
        if choice != "none" and not has_tools:
            raise InvalidRequestError(f"tool_choice is {choice!r} but no tools are given")
        return
    name = named_tool_choice(choice)
    if name is None:
        raise InvalidRequestError(
            f"tool_choice is {choice!r:.80}; use 'auto', 'none', 'required' or "
            "{'type': 'function', 'function': {'name': '...'}}"
        )
    if name not in names:
        raise InvalidRequestError(
            f"tool_choice names the function {name!r}, which is not in tools; "
            f"the tools are {sorted(names)}"
        )


def named_tool_choice(choice: Any) -> str | None:
    """The function a `tool_choice` object forces, or None when it is not that shape."""
    if not isinstance(choice, Mapping) or choice.get("type") != "function":
        return None
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) and name else None


def _check_response_format(value: Any) -> None:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind not in _RESPONSE_FORMATS:
        raise InvalidRequestError(
            f"response_format.type is {kind!r:.80}; use one of {list(_RESPONSE_FORMATS)}"
        )
    if kind != "json_schema":
        return
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise InvalidRequestError(
            "response_format.json_schema is missing: write {'type': 'json_schema', "
            "'json_schema': {'name': 'answer', 'schema': {...}, 'strict': true}}"
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise InvalidRequestError(
            f"response_format.json_schema.name is {name!r:.80}; use 1 to 64 letters, digits, _ or -"
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, Mapping):
        raise InvalidRequestError(
            "response_format.json_schema.schema must be a JSON Schema object, "
            f"got {type(schema).__name__}"
        )


def needed_capabilities(
    fields: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]
) -> frozenset[str]:
    """What the request needs of a model, in the words of a provider's `lacks:` in the
    policy: `tools` (tools it may call), `json_schema` (a schema-shaped answer), `images`."""
    needs = set()
    if fields.get("tools") and fields.get("tool_choice") != "none":
        needs.add("tools")
    if json_schema_of(fields) is not None:
        needs.add("json_schema")
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") == "image_url" for part in content
        ):
            needs.add("images")
            break
    return frozenset(needs)


def json_schema_of(fields: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The `json_schema` object of a `response_format: {type: json_schema}`, else None."""
    value = fields.get("response_format")
    if isinstance(value, Mapping) and value.get("type") == "json_schema":
        spec = value.get("json_schema")
        return spec if isinstance(spec, Mapping) else None
    return None


def json_schema_format(name: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A `response_format` asking for `schema`, strict when the schema allows it.

    OpenAI's strict mode guarantees the shape but takes only schemas whose objects list every
    property as required and allow no others. A schema that already requires every property
    gets `additionalProperties: false` and `strict: true`; one with optional properties is
    sent as it is, not strict, rather than changed in meaning.
    """
    strict_schema = copy.deepcopy(dict(schema))
    strict = _make_strict(strict_schema)
    safe_name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "answer"
    return {
        "type": "json_schema",
        "json_schema": {
            "name": safe_name,
            "schema": strict_schema if strict else dict(schema),
            "strict": strict,
        },
    }


def _make_strict(node: Any) -> bool:
    """Close every object schema under `node` in place; False when one has optional
    properties (strict mode cannot say 'optional')."""
    if isinstance(node, list):
        return all(_make_strict(item) for item in node)
    if not isinstance(node, dict):
        return True
    fits = True
    if node.get("type") == "object" or "properties" in node:
        properties = node.get("properties") or {}
        if set(node.get("required") or ()) != set(properties):
            fits = False
        extra = node.get("additionalProperties")
        if extra not in (None, False):
            fits = False
        node["additionalProperties"] = False
    if "default" in node:
        fits = False
    for key, child in node.items():
        if key in {"properties", "$defs", "definitions"} and isinstance(child, dict):
            fits = all(_make_strict(value) for value in child.values()) and fits
        elif isinstance(child, dict | list):
            fits = _make_strict(child) and fits
    return fits


MAX_EMBEDDING_INPUTS = 2048
"""The most texts one embedding request may carry (OpenAI's own limit per request)."""


def check_embedding_inputs(inputs: Any) -> tuple[str, ...]:
    """The texts to embed, from one string or a list of strings; `InvalidRequestError`
    naming the fix for anything else. Token-id arrays are refused: providers other than
    OpenAI take text only, and a chain must be able to fall through."""
    if isinstance(inputs, str):
        inputs = (inputs,)
    elif not isinstance(inputs, Sequence) or isinstance(inputs, bytes | bytearray):
        raise InvalidRequestError(
            f"input is {type(inputs).__name__}: send a string or a list of strings"
        )
    if not inputs:
        raise InvalidRequestError("input is an empty list: send at least one string")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequestError(
            f"input has {len(inputs)} items; at most {MAX_EMBEDDING_INPUTS} fit one request: "
            "split it"
        )
    for index, text in enumerate(inputs):
        if not isinstance(text, str):
            what = "token ids" if isinstance(text, int | list) else type(text).__name__
            raise InvalidRequestError(
                f"input[{index}] is {what}: this gateway embeds text only (token-id arrays "
                "cannot fall through to providers that take text); send strings"
            )
        if not text:
            raise InvalidRequestError(
                f"input[{index}] is an empty string: every input needs some text"
            )
        _check_unicode(text, f"input[{index}]")
    return tuple(inputs)
