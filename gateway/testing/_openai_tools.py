"""Tools, tool choice, structured output and tool history in OpenAI's and Ollama's requests.

Checked as strictly as the real APIs check them, so a gateway that translates a conversation
wrongly (a tool message answering no call, arguments sent as an object) gets the real 400
instead of a fake that shrugs. Ollama shares OpenAI's tool shapes but validates far less (its
server only unmarshals them), and so does this.
"""

from __future__ import annotations

from typing import Any

from gateway.testing._protocols import JsonObject, RequestRejected, ToolChoice
from gateway.types import content_text

MAX_N = 128


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def _missing(param: str) -> RequestRejected:
    return RequestRejected(f"Missing required parameter: '{param}'.", param=param)


def _wrong_type(param: str, expected: str, value: Any) -> RequestRejected:
    return RequestRejected(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
    )


def openai_tools(body: JsonObject) -> list[tuple[str, JsonObject]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _wrong_type("tools", "an array", tools)
    parsed = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _wrong_type(where, "an object", tool)
        if tool.get("type") != "function":
            raise RequestRejected(
                f"Invalid value: {tool.get('type')!r}. Supported values are: 'function' and "
                "'custom'.",
                param=f"{where}.type",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _missing(f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _missing(f"{where}.function.name")
        parameters = function.get("parameters", {})
        if not isinstance(parameters, dict):
            raise _wrong_type(f"{where}.function.parameters", "an object", parameters)
        parsed.append((name, parameters))
    return parsed


def openai_tool_choice(body: JsonObject, tools: list[tuple[str, JsonObject]]) -> ToolChoice:
    choice = body.get("tool_choice")
    if choice is None:
        return "auto"
    if not tools:
        raise RequestRejected(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
        )
    if isinstance(choice, str):
        if choice not in {"auto", "none", "required"}:
            raise RequestRejected(
                f"Invalid value: {choice!r}. Supported values are: 'none', 'auto', and 'required'.",
                param="tool_choice",
            )
        return choice
    if not isinstance(choice, dict) or choice.get("type") != "function":
        raise RequestRejected(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}.",
            param="tool_choice",
        )
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise _missing("tool_choice.function.name")
    if name not in {tool_name for tool_name, _ in tools}:
        raise RequestRejected(
            f"Invalid value for 'tool_choice': function {name!r} is not one of 'tools'.",
            param="tool_choice",
        )
    return ("named", name)


def openai_response_format(body: JsonObject) -> tuple[bool, JsonObject | None]:
    """(json mode, the schema asked for or None)."""
    response_format = body.get("response_format")
    if response_format is None:
        return False, None
    if not isinstance(response_format, dict):
        raise _wrong_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind == "json_object":
        return True, None
    if kind == "text":
        return False, None
    if kind != "json_schema":
        raise RequestRejected(
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object' and "
            "'json_schema'.",
            param="response_format.type",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise _missing("response_format.json_schema")
    if not isinstance(spec.get("name"), str):
        raise _missing("response_format.json_schema.name")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise _wrong_type("response_format.json_schema.schema", "an object", schema)
    return True, schema


def openai_n(body: JsonObject) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int):
        raise _wrong_type("n", "an integer", n)
    if not 1 <= n <= MAX_N:
        raise RequestRejected(
            f"Invalid 'n': integer out of range. Expected a value between 1 and {MAX_N}, but "
            f"got {n} instead.",
            param="n",
        )
    return n


def openai_history(
    messages: list[JsonObject], *, strict: bool = False
) -> tuple[list[str], str | None]:
    """(tools called in the history, the closing tool result's text), checking the shape of
    each assistant tool call; `strict` also checks, as the real API does, that every tool
    message answers a call of the assistant message just before it and every call is
    answered."""
    called: list[str] = []
    pending: list[str] = []  # ids of the last assistant's calls not answered yet
    after_calls = False  # only tool messages since an assistant message with tool_calls
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "tool" and not strict:
            continue
        if role == "tool":
            tool_call_id = message.get("tool_call_id")
            if not isinstance(tool_call_id, str):
                raise _missing(f"messages[{i}].tool_call_id")
            if not after_calls:
                raise RequestRejected(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    param=f"messages.[{i}].role",
                )
            if tool_call_id not in pending:
                raise RequestRejected(
                    f"Invalid parameter: 'tool_call_id' of '{tool_call_id}' not found in "
                    "'tool_calls' of previous message.",
                    param=f"messages.[{i}].tool_call_id",
                )
            pending.remove(tool_call_id)
            continue
        _unanswered(pending, i)
        after_calls = False
        if role == "assistant" and message.get("tool_calls") is not None:
            ids, names = _assistant_calls(message["tool_calls"], i)
            called.extend(names)
            pending, after_calls = (ids, bool(ids)) if strict else ([], False)
    _unanswered(pending, len(messages))
    last = messages[-1] if messages else {}
    result = content_text(last.get("content")) if last.get("role") == "tool" else None
    return called, result


def _unanswered(pending: list[str], index: int) -> None:
    if pending:
        raise RequestRejected(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(pending)}",
            param=f"messages.[{index}].role",
        )


def _assistant_calls(tool_calls: Any, i: int) -> tuple[list[str], list[str]]:
    where = f"messages[{i}].tool_calls"
    if not isinstance(tool_calls, list):
        raise _wrong_type(where, "an array", tool_calls)
    ids, names = [], []
    for j, tool_call in enumerate(tool_calls):
        at = f"{where}[{j}]"
        if not isinstance(tool_call, dict):
            raise _wrong_type(at, "an object", tool_call)
        if not isinstance(tool_call.get("id"), str):
            raise _missing(f"{at}.id")
        if tool_call.get("type") != "function":
            raise _missing(f"{at}.type")
        function = tool_call.get("function")
        if not isinstance(function, dict):
            raise _missing(f"{at}.function")
        if not isinstance(function.get("name"), str):
            raise _missing(f"{at}.function.name")
        if "arguments" not in function:
            raise _missing(f"{at}.function.arguments")
        if not isinstance(function["arguments"], str):
            raise _wrong_type(f"{at}.function.arguments", "a string", function["arguments"])
        ids.append(tool_call["id"])
        names.append(function["name"])
    return ids, names


# --- Ollama -------------------------------------------------------------------------------


def ollama_tools(body: JsonObject) -> list[tuple[str, JsonObject]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RequestRejected("json: cannot unmarshal tools into Go struct field of type api.Tools")
    parsed = []
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            parsed.append((function["name"], parameters if isinstance(parameters, dict) else {}))
    return parsed


def ollama_format(body: JsonObject) -> tuple[bool, JsonObject | None]:
    fmt = body.get("format")
    if fmt is None or fmt == "":
        return False, None
    if fmt == "json":
        return True, None
    if isinstance(fmt, dict):
        return True, fmt
    raise RequestRejected(f'invalid format: {fmt!r}; expected "json" or a valid JSON schema')


def ollama_history(messages: list[JsonObject]) -> tuple[list[str], str | None]:
    """Ollama checks no ids, but its Go types only take arguments as an object."""
    called: list[str] = []
    for message in messages:
        tool_calls = message.get("tool_calls")
        if message.get("role") != "assistant" or tool_calls is None:
            continue
        if not isinstance(tool_calls, list):
            raise RequestRejected(
                "json: cannot unmarshal tool_calls into Go struct field Message.messages.tool_calls"
                " of type []api.ToolCall"
            )
        for tool_call in tool_calls:
            function = tool_call.get("function") if isinstance(tool_call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise RequestRejected("invalid tool call: function.name is required")
            arguments = function.get("arguments", {})
            if not isinstance(arguments, dict):
                raise RequestRejected(
                    f"json: cannot unmarshal {_type_name(arguments).split()[-1]} into Go struct "
                    "field ToolCallFunction.messages.tool_calls.function.arguments of type "
                    "api.ToolCallFunctionArguments"
                )
            called.append(function["name"])
    last = messages[-1] if messages else {}
    result = content_text(last.get("content")) if last.get("role") == "tool" else None
    return called, result
