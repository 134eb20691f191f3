"""Top-level fields, tools, tool choice, structured output and tool history in Anthropic's
Messages requests, checked as the real API checks them.

The real API validates its body with strict models: an unknown field, an OpenAI-shaped tool or
a `tool_result` that answers no `tool_use` of the turn before is a 400 there, worded the way it
is worded here. A gateway that translates OpenAI's shapes into Anthropic's must get these right.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.testing._protocols import JsonObject, RequestRejected, ToolChoice

KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "output_format",
        "output_config",
        "container",
        "mcp_servers",
        "cache_control",
        "context_management",
        "inference_geo",
        "speed",
        "diagnostics",
    }
)

# Server tools (web_search_20250305, bash_20250124...) carry a dated type and no input_schema.
_SERVER_TOOL = re.compile(r"^[a-z_]+_\d{8}$")


def _required(field: str) -> RequestRejected:
    return RequestRejected(f"{field}: Field required", param=field)


def check_fields(body: JsonObject) -> None:
    for name in body:
        if name not in KNOWN_FIELDS:
            raise RequestRejected(f"{name}: Extra inputs are not permitted", param=name)


def anthropic_tools(body: JsonObject) -> list[tuple[str, JsonObject]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise RequestRejected("tools: Input should be a valid list", param="tools")
    parsed = []
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise RequestRejected(f"{where}: Input should be a valid dictionary", param=where)
        kind = tool.get("type")
        if isinstance(kind, str) and _SERVER_TOOL.match(kind):
            continue
        if "input_schema" not in tool:
            raise _required(f"{where}.input_schema")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _required(f"{where}.name")
        if not isinstance(tool["input_schema"], dict):
            raise RequestRejected(
                f"{where}.input_schema: Input should be a valid dictionary",
                param=f"{where}.input_schema",
            )
        extra = sorted(
            set(tool) - {"type", "name", "description", "input_schema", "cache_control", "strict"}
        )
        if extra:
            raise RequestRejected(
                f"{where}.{extra[0]}: Extra inputs are not permitted", param=f"{where}.{extra[0]}"
            )
        if kind not in {None, "custom"}:
            raise RequestRejected(f"{where}.type: Input should be 'custom'", param=f"{where}.type")
        parsed.append((tool["name"], tool["input_schema"]))
    return parsed


def anthropic_tool_choice(body: JsonObject, tools: list[tuple[str, JsonObject]]) -> ToolChoice:
    choice = body.get("tool_choice")
    if choice is None:
        return "auto"
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in {"auto", "any", "tool", "none"}:
        raise RequestRejected(
            "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', "
            "'tool', 'none'",
            param="tool_choice",
        )
    assert isinstance(choice, dict)
    if kind in {"any", "tool"} and not tools:
        raise RequestRejected(
            "tool_choice: tool_choice may only be specified while providing tools",
            param="tool_choice",
        )
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise _required("tool_choice.tool.name")
        if name not in {tool_name for tool_name, _ in tools}:
            raise RequestRejected(
                f"tool_choice.name: tool {name!r} is not one of the provided tools",
                param="tool_choice",
            )
        return ("named", name)
    return "required" if kind == "any" else str(kind)


def anthropic_json_schema(body: JsonObject) -> JsonObject | None:
    """The schema of `output_format` (structured outputs) or `output_config.format`."""
    fmt, where = body.get("output_format"), "output_format"
    config = body.get("output_config")
    if fmt is None and config is not None:
        if not isinstance(config, dict):
            raise RequestRejected(
                "output_config: Input should be a valid dictionary", param="output_config"
            )
        fmt, where = config.get("format"), "output_config.format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise RequestRejected(f"{where}.type: Input should be 'json_schema'", param=where)
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _required(f"{where}.schema")
    return schema


def anthropic_history(
    messages: list[JsonObject], *, strict: bool = False
) -> tuple[list[str], str | None]:
    """(tools called in the history, the closing tool result's text), checking that roles are
    user/assistant and tool_use blocks are well formed; `strict` also checks, as the real API
    does, that tool_use and tool_result blocks pair up across adjacent turns."""
    called: list[str] = []
    previous_uses: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in {"user", "assistant"}:
            raise RequestRejected(
                f"messages.{i}.role: Input should be 'user' or 'assistant'",
                param=f"messages.{i}.role",
            )
        blocks = message.get("content")
        blocks = blocks if isinstance(blocks, list) else []
        uses = [b for b in blocks if b.get("type") == "tool_use"]
        results = [(j, b) for j, b in enumerate(blocks) if b.get("type") == "tool_result"]
        if role == "assistant":
            if strict:
                _check_unanswered(previous_uses, set(), i - 1)
            previous_uses = set()
            for j, block in enumerate(uses):
                _check_use(block, i, j)
                called.append(block["name"])
                previous_uses.add(block["id"])
            continue
        answered = set()
        for j, block in results:
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str):
                raise _required(f"messages.{i}.content.{j}.tool_result.tool_use_id")
            if strict and tool_use_id not in previous_uses:
                raise RequestRejected(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {tool_use_id}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message.",
                    param=f"messages.{i}.content.{j}",
                )
            answered.add(tool_use_id)
        if uses:
            raise RequestRejected(
                f"messages.{i}.content: `tool_use` blocks can only be in `assistant` messages",
                param=f"messages.{i}.content",
            )
        if strict:
            _check_unanswered(previous_uses, answered, i - 1)
        previous_uses = set()
    last = messages[-1] if messages else {}
    content = last.get("content")
    result = None
    if (
        last.get("role") == "user"
        and isinstance(content, list)
        and content
        and content[-1].get("type") == "tool_result"
    ):
        result = _result_text(content[-1].get("content"))
    return called, result


def _check_use(block: JsonObject, i: int, j: int) -> None:
    where = f"messages.{i}.content.{j}.tool_use"
    for field in ("id", "name"):
        if not isinstance(block.get(field), str):
            raise _required(f"{where}.{field}")
    if not isinstance(block.get("input"), dict):
        raise RequestRejected(
            f"{where}.input: Input should be a valid dictionary", param=f"{where}.input"
        )


def _check_unanswered(uses: set[str], answered: set[str], index: int) -> None:
    missing = sorted(uses - answered)
    if missing:
        raise RequestRejected(
            f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message.",
            param=f"messages.{index}",
        )


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return "".join(str(t) for t in texts)
    return ""
