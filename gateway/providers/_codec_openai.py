"""OpenAI's Chat Completions protocol: `OpenAIChatCodec`, and the readers LiteLLM shares.

The openai, azure_openai and openai_http providers (and any compatible server) speak it
through `OpenAIChatCodec`; LiteLLM hands back the same shapes as its own models. Both are
read here, once: a wire JSON dict and a LiteLLM model have the same fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from gateway.errors import ErrorKind, ProviderError
from gateway.providers import _errors
from gateway.providers._base import Call
from gateway.providers._codec import StreamReader, WireCodec, WireEvent
from gateway.providers._messages import JSON_INSTRUCTION
from gateway.request import OPENAI_FIELDS
from gateway.types import (
    Choice,
    Completion,
    StreamEnd,
    StreamPiece,
    ToolCall,
    ToolCallDelta,
    Usage,
    content_text,
)

REQUEST_FIELDS: dict[str, str] = {
    **{name: "sent as given" for name in OPENAI_FIELDS},
    "max_completion_tokens": "sent by this name (reasoning models refuse max_tokens)",
    "response_format": "sent as given (json_object also gets a system line asking for JSON when "
    "no message mentions it, as OpenAI requires)",
}
"""What the OpenAI protocol does with each request field: it is the protocol they belong to."""

# Error codes that say more than the HTTP status they come with.
_SPECIFIC_CODES = frozenset({ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_FILTER})


def request_body(
    model: str,
    messages: list[dict[str, Any]],
    temperature: float | None,
    max_tokens: int | None,
    json_mode: bool,
    params: dict[str, Any],
    *,
    stream: bool = False,
) -> dict[str, Any]:
    """A Chat Completions request. OpenAI's own fields (`params`) go on the wire by their own
    names, as given: this is the protocol they were written for.

    JSON mode without a `response_format` asks for `json_object`. A streamed request asks for
    the usage chunk at the end, which is where a stream's tokens (and so its cost) come from.
    """
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        **params,
        **sampling_fields(temperature, max_tokens, json_mode=json_mode, params=params),
    }
    response_format = request.get("response_format")
    if (
        isinstance(response_format, dict)
        and response_format.get("type") == "json_object"
        and not _mentions_json(messages)
    ):
        # OpenAI rejects JSON mode unless the conversation mentions JSON.
        request["messages"] = [{"role": "system", "content": JSON_INSTRUCTION}, *messages]
    if stream:
        request["stream"] = True
        request["stream_options"] = {**(params.get("stream_options") or {}), "include_usage": True}
    return request


def _mentions_json(messages: list[dict[str, Any]]) -> bool:
    return any("json" in content_text(m.get("content")).lower() for m in messages)


def sampling_fields(
    temperature: float | None, max_tokens: int | None, *, json_mode: bool, params: dict[str, Any]
) -> dict[str, Any]:
    """The request fields for the call's own settings; one left unset is left out, and so is
    one the caller set by OpenAI's own name (`max_completion_tokens`, `response_format`)."""
    fields: dict[str, Any] = {}
    if temperature is not None:
        fields["temperature"] = temperature
    if max_tokens is not None and "max_completion_tokens" not in params:
        fields["max_tokens"] = max_tokens
    if json_mode and "response_format" not in params:
        fields["response_format"] = {"type": "json_object"}
    return fields


class _Attributes:
    """A model's attributes read as a JSON dict's fields are (`_fields`)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def get(self, key: str) -> Any:
        return getattr(self._obj, key, None)


def _fields(obj: Any) -> dict[str, Any] | _Attributes:
    """A wire object whose fields `.get` reads: a JSON dict (the openai provider) as it is,
    anything else (a LiteLLM model) through its attributes. Taken once per object where
    several of its fields are read."""
    return obj if isinstance(obj, dict) else _Attributes(obj)


"""What an absent object reads as: no field."""


def _get(obj: Any, key: str) -> Any:
    """One field of a wire object (`_fields`)."""
    return _fields(obj).get(key)


def _count(fields: dict[str, Any] | _Attributes, key: str) -> int:
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value


def usage(raw: Any, *, provider: str) -> Usage | None:
    """A response's or chunk's `usage` object, as it may be billed; None when it has none."""
    if raw is None:
        return None
    fields = _fields(raw)
    details = fields.get("prompt_tokens_details")
    counted = Usage(
        input_tokens=_count(fields, "prompt_tokens"),
        output_tokens=_count(fields, "completion_tokens"),
        cached_input_tokens=_count(_fields(details), "cached_tokens") if details is not None else 0,
    )
    return _errors.checked_usage(counted, provider=provider)


def _malformed(provider: str, what: str) -> ProviderError:
    return ProviderError(
        f"upstream reply is not a chat completion ({what})",
        kind=ErrorKind.INVALID_RESPONSE,
        provider=provider,
    )


def completion(response: Any, *, provider: str, model: str) -> Completion:
    """Every choice of a chat completion; a filtered first one is a CONTENT_FILTER error.

    `model` stands in when the response names none. A reply of the wrong shape is
    INVALID_RESPONSE, never a crash: the upstream's JSON is read here unvalidated.
    """
    if not isinstance(response, dict) and not hasattr(response, "choices"):
        raise _malformed(provider, f"a {type(response).__name__}, not an object")
    fields = _fields(response)
    choices = fields.get("choices")
    if not choices:
        raise ProviderError(
            "reply has no choices", kind=ErrorKind.INVALID_RESPONSE, provider=provider
        )
    if not isinstance(choices, list | tuple):
        raise _malformed(provider, "choices is not a list")
    first, *others = (_choice(choice, i, provider) for i, choice in enumerate(choices))
    if first.finish_reason == "content_filter":
        raise _errors.content_filter_error(provider=provider, reason=first.finish_reason)
    answered_by = fields.get("model")
    response_id = fields.get("id")
    return Completion(
        text=first.text,
        model=answered_by if isinstance(answered_by, str) and answered_by else model,
        finish_reason=_errors.finish_reason(first.finish_reason),
        usage=usage(fields.get("usage"), provider=provider) or Usage(),
        response_id=response_id if isinstance(response_id, str) else None,
        tool_calls=first.tool_calls,
        refusal=first.refusal,
        extra=first.extra,
        other_choices=tuple(
            Choice(
                c.index,
                c.text,
                _errors.finish_reason(c.finish_reason),
                c.tool_calls,
                c.refusal,
                c.extra,
            )
            for c in others
        ),
    )


MESSAGE_EXTRAS = ("annotations", "audio", "function_call", "reasoning_content")
"""Fields of a reply's message the gateway carries as given, besides content, refusal and
tool calls."""


def _choice(choice: Any, position: int, provider: str) -> Choice:
    """One choice as read (finish reason still the upstream's word)."""
    choice = _fields(choice)
    raw_message = choice.get("message")
    # A choice without a message reads as one with no fields.
    message = _fields(raw_message) if raw_message is not None else _NO_FIELDS
    text = message.get("content")
    if text is not None and not isinstance(text, str):
        raise _malformed(provider, "message content is not a string")
    refusal = message.get("refusal")
    index = choice.get("index")
    reason = choice.get("finish_reason")
    extra = {
        key: _plain(value) for key in MESSAGE_EXTRAS if (value := message.get(key)) is not None
    }
    logprobs = choice.get("logprobs")
    if logprobs is not None:
        extra["logprobs"] = _plain(logprobs)
    calls = message.get("tool_calls")
    return Choice(
        index=index if isinstance(index, int) and not isinstance(index, bool) else position,
        text=text or "",
        finish_reason=reason if isinstance(reason, str) else None,
        tool_calls=tuple(_tool_call(call, provider) for call in calls) if calls else (),
        refusal=refusal if isinstance(refusal, str) else None,
        extra=extra or None,
    )


_NO_FIELDS: dict[str, Any] = {}


def _tool_call(call: Any, provider: str) -> ToolCall:
    function = _get(call, "function")
    name = _get(function, "name") if function is not None else None
    if not isinstance(name, str) or not name:
        raise _malformed(provider, "a tool call without a function name")
    call_id = _get(call, "id")
    return ToolCall(
        id=call_id if isinstance(call_id, str) and call_id else new_tool_call_id(),
        name=name,
        arguments=_arguments_text(_get(function, "arguments"), provider),
    )


def _arguments_text(arguments: Any, provider: str) -> str:
    """A tool call's arguments as JSON text; some compatible servers send an object."""
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False)
    raise _malformed(provider, "tool call arguments that are neither text nor an object")


def new_tool_call_id() -> str:
    """An id for a tool call whose upstream gave none (the caller must answer by id)."""
    return "call_" + os.urandom(12).hex()


def _plain(value: Any) -> Any:
    """JSON-ready data from a wire dict, or from a LiteLLM/pydantic model."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json", exclude_none=True) if callable(dump) else value


def status_error_kind(status: int, code: object) -> ErrorKind:
    """An error response's kind: its body's `code` where that says more, else its status."""
    specific = _errors.kind_for_error_type(code)
    return specific if specific in _SPECIFIC_CODES else _errors.kind_for_status(status)


def stream_error_kind(code: object, error_type: object) -> ErrorKind:
    """An in-stream `{"error": {...}}` chunk's kind.

    HTTP 200 was already sent, so only the error's own code or type can say what went wrong.
    """
    return _errors.kind_for_error_type(code, error_type) or ErrorKind.INVALID_RESPONSE


class ChunkReader(StreamReader):
    """What a stream of chat completion chunks has said so far.

    Feed each event to `read` (or each LiteLLM chunk to `read_chunk`) for its text; once the
    stream is exhausted, `end` says how it ended. `first_choice_only` keeps the text of
    choice 0 alone (the others' would interleave).
    """

    def __init__(
        self, *, provider: str, first_choice_only: bool, redact: _errors.Redactor | None = None
    ) -> None:
        self._provider = provider
        self._first_choice_only = first_choice_only
        self._redact = redact or _errors.Redactor()
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None
        self._refusal: list[str] = []
        self._tool_ids: set[int] = set()

    def read(self, event: WireEvent) -> list[StreamPiece]:
        chunk = event.data
        if isinstance(chunk, dict) and chunk.get("error"):
            raise in_stream_error(chunk["error"], self._provider, self._redact)
        return self.read_chunk(chunk)

    def read_chunk(self, chunk: Any) -> list[StreamPiece]:
        """The chunk's text deltas and tool-call pieces, noting its id, model, usage, refusal
        and finish reason."""
        if not isinstance(chunk, dict) and not hasattr(chunk, "choices"):
            raise _malformed(self._provider, f"a stream chunk that is a {type(chunk).__name__}")
        # Read once per object rather than through `_get` per field: this runs for every
        # event of every stream.
        fields = _fields(chunk)
        pieces: list[StreamPiece] = []
        self._response_id = self._response_id or fields.get("id")
        self._model = fields.get("model") or self._model
        chunk_usage = fields.get("usage")
        if chunk_usage is not None:
            self._usage = usage(chunk_usage, provider=self._provider)
        for choice in fields.get("choices") or ():
            choice = _fields(choice)
            if self._first_choice_only and choice.get("index") not in (0, None):
                continue
            delta = choice.get("delta")
            if delta is not None:
                delta = _fields(delta)
                content = delta.get("content")
                if content:
                    if not isinstance(content, str):
                        raise _malformed(self._provider, "a delta whose content is not a string")
                    pieces.append(content)
                for call in delta.get("tool_calls") or ():
                    pieces.append(self._tool_piece(call))
                refusal = delta.get("refusal")
                if isinstance(refusal, str) and refusal:
                    self._refusal.append(refusal)
            reason = choice.get("finish_reason")
            if reason:
                self._finish = reason
        return pieces

    def _tool_piece(self, call: Any) -> ToolCallDelta:
        index = _get(call, "index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise _malformed(self._provider, "a tool call delta without an index")
        function = _get(call, "function")
        name = _get(function, "name") if function is not None else None
        call_id = _get(call, "id")
        if index not in self._tool_ids:
            # A call's first piece names it; a server that gives no id gets one from us.
            if not isinstance(name, str) or not name:
                raise _malformed(self._provider, "a tool call without a function name")
            self._tool_ids.add(index)
            call_id = call_id if isinstance(call_id, str) and call_id else new_tool_call_id()
        arguments = _get(function, "arguments") if function is not None else None
        return ToolCallDelta(
            index=index,
            id=call_id if isinstance(call_id, str) and call_id else None,
            name=name if isinstance(name, str) and name else None,
            arguments=_arguments_text(arguments, self._provider),
        )

    def end(self) -> StreamEnd:
        """The stream's last event; a stream that never said it finished was cut."""
        if self._finish is None:
            raise _errors.truncated_stream_error(provider=self._provider)
        if self._finish == "content_filter":
            raise _errors.content_filter_error(provider=self._provider, reason=self._finish)
        return StreamEnd(
            self._usage,
            _errors.finish_reason(self._finish),
            self._model,
            self._response_id,
            "".join(self._refusal) or None,
        )


def in_stream_error(error: Any, provider: str, redact: _errors.Redactor) -> ProviderError:
    """An in-stream `{"error": {...}}` chunk: HTTP 200 was sent, its code says what failed."""
    fields: Mapping[str, Any] = error if isinstance(error, dict) else {"message": str(error)}
    kind = stream_error_kind(fields.get("code"), fields.get("type"))
    message = redact(str(fields.get("message") or "error"))
    return ProviderError(f"error inside the stream: {message}", kind=kind, provider=provider)


def describe(message: object, code: object, redact: _errors.Redactor) -> str:
    """An upstream error's own message and code, cleaned of secrets and prompt text."""
    return redact(f"{message} (code {code})" if code else str(message))


class OpenAIChatCodec(WireCodec):
    """`POST {base_url}/chat/completions`, as OpenAI and every compatible server speak it.

    `key_header` names the header that carries the key: `Authorization` (as a bearer token)
    for OpenAI, `api-key` for Azure. `organization` is OpenAI's `OpenAI-Organization` header.
    """

    framing = "sse"

    def __init__(self, *, key_header: str = "Authorization", organization: str | None = None):
        self.key_header = key_header
        self.organization = organization

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            bearer = self.key_header.lower() == "authorization"
            headers[self.key_header] = f"Bearer {api_key}" if bearer else api_key
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        return headers

    def path(self, call: Call) -> str:
        return "/chat/completions"

    def body(self, call: Call, model: str) -> dict[str, Any]:
        return request_body(
            model,
            call.messages,
            call.temperature,
            call.max_tokens,
            call.json_mode,
            call.params,
            stream=call.stream,
        )

    def completion(self, data: Any, call: Call) -> Completion:
        return completion(data, provider=call.provider, model=call.model)

    def reader(self, call: Call) -> ChunkReader:
        return ChunkReader(provider=call.provider, first_choice_only=True, redact=call.redact)

    def status_error(
        self, status: int, body: bytes, headers: Mapping[str, str], call: Call
    ) -> ProviderError:
        try:
            error = _errors.parse_untrusted_json(body).get("error")
        except (ValueError, AttributeError):
            error = None
        if not isinstance(error, dict):
            error = {}
        code = error.get("code")
        message = error.get("message") or f"HTTP {status}"
        return _errors.provider_error(
            describe(message, code, call.redact),
            status_error_kind(status, code),
            provider=call.provider,
            status=status,
            headers=headers,
        )
