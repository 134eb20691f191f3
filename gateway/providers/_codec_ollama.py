"""Ollama's native chat API (`POST /api/chat`, streamed as JSON lines): `OllamaCodec`.

Requests: `stream` is always set explicitly (Ollama streams when it is absent), temperature
and max_tokens go into `options` as `temperature`/`num_predict`. Every OpenAI request field is
translated, ignored or refused as `REQUEST_FIELDS` says, in one place (`_translate`): sampling
fields go into `options`, function tools are sent as they are (Ollama takes OpenAI's shape),
`response_format` becomes `format` (`"json"`, or the JSON schema), `reasoning_effort` becomes
`think`. Ollama cannot force a tool call, so a named `tool_choice` (or `required` with one
tool) sends no tools but asks for the tool's parameters as the `format` schema, and the JSON
answer is read back as one call to that tool; `required` with several tools sends them and
takes only an answer that calls one (else `invalid_response`, and the next candidate). Other
keyword params (Ollama's own: `num_ctx`, `top_k`, ...) go into `options`, except its top-level
fields (`keep_alive`, `think`, `format`).

Replies: `message.tool_calls` become `Completion.tool_calls` (Ollama gives them no ids: each
gets a `call_<hex>` id), streamed as one whole `ToolCallDelta` each. Usage comes from
`prompt_eval_count`/`eval_count` of the final (done) line; Ollama has no prompt cache counts
and no response ids.
"""

from __future__ import annotations

import json
import secrets
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
)
from gateway.providers._messages import to_ollama
from gateway.request import named_tool_choice
from gateway.types import Completion, StreamEnd, ToolCall, ToolCallDelta, Usage

_TOP_LEVEL = frozenset({"keep_alive", "think", "format"})
"""Ollama's own top-level fields a caller may pass as extras; other extras go into options."""

REQUEST_FIELDS: dict[str, str] = {
    "tools": "sent as given (Ollama takes OpenAI's function tools)",
    "tool_choice": "auto: tools sent; none: no tools sent; a named function (or required "
    "with one tool): no tools, format = its parameters, the JSON answer read back as one "
    "call to it; required with several tools: tools sent, and an answer without a tool call "
    "is invalid_response (the next candidate is tried)",
    "parallel_tool_calls": "false: refused (candidate skipped) when tools are sent, Ollama "
    "cannot promise one call; accepted when a tool is forced (one call by construction)",
    "response_format": 'json_schema -> format: the schema; json_object -> format: "json"; '
    "with tools both are sent; with a forced tool the tool's schema is the format instead",
    "seed": "sent as options.seed",
    "n": "refused (candidate skipped) when > 1: one choice per call",
    "top_p": "sent as options.top_p",
    "stop": "sent as options.stop",
    "frequency_penalty": "sent as options.frequency_penalty",
    "presence_penalty": "sent as options.presence_penalty",
    "logprobs": "refused (candidate skipped) when true: no log probabilities on this path",
    "top_logprobs": "refused (candidate skipped) when set: no log probabilities on this path",
    "logit_bias": "refused (candidate skipped) when non-empty: no token biases",
    "reasoning_effort": "sent as think: low/medium/high (minimal -> low, none -> false)",
    "metadata": "ignored: OpenAI's stored-completion tags",
    "store": "ignored: OpenAI's stored completions",
    "service_tier": "ignored: OpenAI's processing tiers",
    "user": "ignored: Ollama has no end-user field",
    "safety_identifier": "ignored: Ollama has no end-user field",
    "prompt_cache_key": "ignored: Ollama keeps its own prompt cache",
    "modalities": 'refused (candidate skipped) unless ["text"]: text output only',
    "audio": "refused (candidate skipped) when set: no audio output",
    "prediction": "ignored: a latency optimisation, the answer is the same",
    "web_search_options": "refused (candidate skipped) when set: no built-in web search",
    "verbosity": "refused (candidate skipped) when set: no verbosity control",
    "max_completion_tokens": "sent as options.num_predict (wins over max_tokens)",
    "functions": "refused (candidate skipped) when set: the deprecated form; use tools",
    "function_call": "refused (candidate skipped) when set: the deprecated form; use tool_choice",
}
"""What this codec does with each OpenAI request field (docs/server.md's table is checked
against it). Fields not listed are Ollama's own and are sent as given (see the module)."""

_OPTIONS = ("seed", "top_p", "frequency_penalty", "presence_penalty")
"""OpenAI fields sent under the same name in Ollama's `options`."""

_THINK_LEVELS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high"}


class OllamaCodec(WireCodec):
    """`keep_alive`, when set, is sent with every call that does not set its own."""

    framing = "ndjson"

    def __init__(self, *, keep_alive: str | float | None = None) -> None:
        self.keep_alive = keep_alive

    def path(self, call: Call) -> str:
        return "/api/chat"

    def body(self, call: Call, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": to_ollama(call.messages),
            "stream": call.stream,
        }
        options: dict[str, Any] = {}
        if call.temperature is not None:
            options["temperature"] = call.temperature
        max_tokens = call.params.get("max_completion_tokens") or call.max_tokens
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        _translate(call, body, options)
        if self.keep_alive is not None:
            body.setdefault("keep_alive", self.keep_alive)
        if options:
            body["options"] = options
        return body

    def completion(self, data: Any, call: Call) -> Completion:
        if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
            if isinstance(data, dict) and data.get("error"):
                raise in_stream_error(data["error"], call)
            raise ProviderError(
                "reply has no 'message' object",
                kind=ErrorKind.INVALID_RESPONSE,
                provider=call.provider,
            )
        message = data["message"]
        text = str(message.get("content") or "")
        forced = _forced_tool(call.params)
        if forced is not None:
            tool_calls: tuple[ToolCall, ...] = (ToolCall(_call_id(), forced, text),)
            text = ""
        else:
            tool_calls = tuple(
                _tool_call(raw, call.provider) for raw in _raw_tool_calls(message, call.provider)
            )
            if not tool_calls and _requires_a_call(call.params):
                raise _no_call(call.provider)
        finish_reason = _errors.finish_reason(data.get("done_reason"))
        if tool_calls and finish_reason in (None, "stop"):
            finish_reason = "tool_calls"
        return Completion(
            text=text,
            model=data.get("model") or call.model,
            finish_reason=finish_reason,
            usage=_usage(data, call.provider),
            response_id=None,
            tool_calls=tool_calls,
        )

    def reader(self, call: Call) -> OllamaReader:
        return OllamaReader(call)

    def status_error(
        self, status: int, body: bytes, headers: Mapping[str, str], call: Call
    ) -> ProviderError:
        message = _error_text(status, body)
        kind = _kind_from_text(message) or _errors.kind_for_status(status)
        return _errors.provider_error(
            call.redact(message), kind, provider=call.provider, status=status, headers=headers
        )


class OllamaReader(StreamReader):
    """Reads JSON lines: each one's `message.content` is text (or, for a forced tool, that
    call's argument pieces), its `message.tool_calls` whole calls; the `done` line ends it."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._final: dict[str, Any] | None = None
        self._forced = _forced_tool(call.params)
        self._requires_a_call = self._forced is None and _requires_a_call(call.params)
        self._held: list[str] = []
        self._tool_count = 0

    def read(self, event: WireEvent) -> Iterator[str | ToolCallDelta]:
        data = event.data
        if not isinstance(data, dict):
            raise ProviderError(
                "stream line is not a JSON object",
                kind=ErrorKind.INVALID_RESPONSE,
                provider=self._call.provider,
            )
        if data.get("error"):
            raise in_stream_error(data["error"], self._call)
        message = data.get("message") or {}
        if not isinstance(message, dict):
            raise ProviderError(
                "stream line's 'message' is not an object",
                kind=ErrorKind.INVALID_RESPONSE,
                provider=self._call.provider,
            )
        content = message.get("content")
        if content:
            if self._requires_a_call and self._tool_count == 0:
                # Held until a call comes: an answer that never calls one fails whole.
                self._held.append(str(content))
            elif self._forced is None:
                yield str(content)
            else:
                if self._tool_count == 0:
                    self._tool_count = 1
                    yield ToolCallDelta(index=0, id=_call_id(), name=self._forced)
                yield ToolCallDelta(index=0, arguments=str(content))
        for raw in _raw_tool_calls(message, self._call.provider):
            tool_call = _tool_call(raw, self._call.provider)
            if self._held:
                yield "".join(self._held)
                self._held.clear()
            index = self._tool_count
            self._tool_count += 1
            yield ToolCallDelta(index, tool_call.id, tool_call.name, tool_call.arguments)
        if data.get("done"):
            self._final = data
            self.done = True

    def end(self) -> StreamEnd:
        final = self._final
        if final is None:
            raise _errors.truncated_stream_error(provider=self._call.provider)
        if self._requires_a_call and self._tool_count == 0:
            raise _no_call(self._call.provider)
        finish_reason = _errors.finish_reason(final.get("done_reason"))
        if self._tool_count and finish_reason in (None, "stop"):
            finish_reason = "tool_calls"
        return StreamEnd(
            _usage(final, self._call.provider),
            finish_reason,
            final.get("model") or None,
            None,
        )


# --- request fields ---------------------------------------------------------------------------


def _translate(call: Call, body: dict[str, Any], options: dict[str, Any]) -> None:
    """Set `body` and `options` from `call.params` as `REQUEST_FIELDS` says;
    `InvalidRequestError` for a field Ollama cannot honour."""
    params = call.params
    refuse_unhonoured(params, _CANNOT)
    tools = params.get("tools") or []
    forced = _forced_tool(params)
    choice = params.get("tool_choice")
    if forced is not None:
        # Ollama cannot force a call: ask for the tool's arguments as the answer instead.
        # Any response_format is moot then (a forced call's answer has no text).
        body["format"] = _parameters(tools, forced)
    elif tools and choice != "none":
        if params.get("parallel_tool_calls") is False:
            raise InvalidRequestError(
                "parallel_tool_calls=false: Ollama cannot promise at most one tool call; "
                "force one tool with tool_choice, or allow parallel calls"
            )
        body["tools"] = [dict(tool) for tool in tools]
    if forced is None and call.json_schema is not None:
        spec = call.json_schema
        schema = spec.get("schema")
        body["format"] = dict(schema) if isinstance(schema, Mapping) and schema else "json"
    elif forced is None and call.json_mode:
        body["format"] = "json"
    effort = params.get("reasoning_effort")
    if effort is not None:
        body["think"] = False if effort == "none" else _THINK_LEVELS.get(str(effort), "high")
    stop = params.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    for key in _OPTIONS:
        if params.get(key) is not None:
            options[key] = params[key]
    for key, value in params.items():
        if key in REQUEST_FIELDS:
            continue
        if key in _TOP_LEVEL:
            if not (key == "format" and "format" in body):  # response_format decides
                body[key] = value
        else:
            options[key] = value  # Ollama's own options (num_ctx, top_k, ...), as given


_CANNOT: dict[str, str] = {
    "n": "Ollama answers one choice per call",
    "logprobs": "Ollama's chat API returns no log probabilities here",
    "top_logprobs": "Ollama's chat API returns no log probabilities here",
    "logit_bias": "Ollama takes no token biases",
    "modalities": "Ollama answers in text only",
    "audio": "Ollama gives no audio output",
    "web_search_options": "Ollama has no built-in web search",
    "verbosity": "Ollama has no verbosity control",
    "functions": "the deprecated form is not translated; send tools",
    "function_call": "the deprecated form is not translated; send tool_choice",
}
"""The fields Ollama cannot honour, and why: a request that asks for one skips it."""


def _requires_a_call(params: Mapping[str, Any]) -> bool:
    """`required` with several tools: Ollama cannot force one, so the answer is checked."""
    return params.get("tool_choice") == "required" and bool(params.get("tools"))


def _no_call(provider: str) -> ProviderError:
    return ProviderError(
        'tool_choice="required", but the model answered without calling a tool (Ollama '
        "cannot force a call to one of several tools)",
        kind=ErrorKind.INVALID_RESPONSE,
        provider=provider,
    )


def _forced_tool(params: Mapping[str, Any]) -> str | None:
    """The tool a call must call: a named tool_choice, or `required` with one tool."""
    tools = params.get("tools") or []
    choice = params.get("tool_choice")
    if not tools:
        return None
    if choice == "required" and len(tools) == 1:
        return str(tools[0]["function"]["name"])
    return named_tool_choice(choice)


def _parameters(tools: list[Mapping[str, Any]], name: str) -> dict[str, Any]:
    for tool in tools:
        function = tool["function"]
        if function.get("name") == name:
            return dict(function.get("parameters") or {"type": "object", "properties": {}})
    return {"type": "object", "properties": {}}


# --- replies ----------------------------------------------------------------------------------


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _raw_tool_calls(message: Mapping[str, Any], provider: str) -> list[Any]:
    raw = message.get("tool_calls")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ProviderError(
            "reply's message.tool_calls is not a list",
            kind=ErrorKind.INVALID_RESPONSE,
            provider=provider,
        )
    return raw


def _tool_call(raw: Any, provider: str) -> ToolCall:
    """One of Ollama's `{"function": {"name", "arguments": {...}}}`, with an id of its own
    (Ollama's, when a newer server sends one)."""
    function = raw.get("function") if isinstance(raw, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(name, str) or not name:
        raise ProviderError(
            "a tool call in the reply has no function name",
            kind=ErrorKind.INVALID_RESPONSE,
            provider=provider,
        )
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        text = arguments
    else:
        try:
            text = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ProviderError(
                f"a tool call's arguments cannot be written as JSON ({exc})",
                kind=ErrorKind.INVALID_RESPONSE,
                provider=provider,
            ) from exc
    given = raw.get("id")
    return ToolCall(given if isinstance(given, str) and given else _call_id(), name, text)


def in_stream_error(error: Any, call: Call) -> ProviderError:
    message = str(error)
    kind = _kind_from_text(message) or ErrorKind.SERVER_ERROR
    return ProviderError(
        f"error inside the stream: {call.redact(message)}", kind=kind, provider=call.provider
    )


def _usage(data: dict[str, Any], provider: str) -> Usage:
    counted = Usage(
        input_tokens=int(data.get("prompt_eval_count") or 0),
        output_tokens=int(data.get("eval_count") or 0),
    )
    return _errors.checked_usage(counted, provider=provider)


def _error_text(status: int, body: bytes) -> str:
    """Ollama's `{"error": "..."}` message, or the start of whatever the body was."""
    try:
        data = _errors.parse_untrusted_json(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace") or f"HTTP {status}"
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    return f"HTTP {status}"


def _kind_from_text(message: str) -> ErrorKind | None:
    """What an Ollama error message means when its status (or lack of one) does not say.

    Ollama's errors are bare strings, with no type or code, so for the cases a router must tell
    apart (the prompt does not fit; the server is busy or rate limited, e.g. by a proxy in
    front of it) the text is all there is.
    """
    lowered = message.lower()
    if "context length" in lowered or "context window" in lowered:
        return ErrorKind.CONTEXT_LENGTH
    if "server busy" in lowered or "overloaded" in lowered:
        return ErrorKind.OVERLOADED
    if "rate limit" in lowered:
        return ErrorKind.RATE_LIMIT
    return None
