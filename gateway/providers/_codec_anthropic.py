"""Anthropic's Messages API (`POST /v1/messages`): `AnthropicCodec`.

Message conversion (system prompt, merged turns, tool results) is described in
`gateway.providers._messages`. Anthropic has no JSON mode: `json_mode=True` adds an
instruction to the system prompt to answer with one JSON object only, and `generate_json`
parses (and rejects) the reply like any other provider's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.errors import ErrorKind, ProviderError
from gateway.providers import _errors
from gateway.providers._base import Call
from gateway.providers._codec import StreamReader, WireCodec, WireEvent
from gateway.providers._messages import to_anthropic
from gateway.types import Completion, StreamEnd, Usage

API_VERSION = "2023-06-01"
"""The `anthropic-version` header: the API version whose shapes this codec reads."""

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens` on every call; this is what a call without one asks for."""


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
        system, turns = to_anthropic(call.messages, json_mode=call.json_mode)
        body: dict[str, Any] = {
            "model": model,
            "messages": turns,
            "max_tokens": call.max_tokens or self.default_max_tokens,
        }
        if system:
            body["system"] = system
        if call.temperature is not None:
            body["temperature"] = call.temperature
        params = dict(call.params)
        stop = params.pop("stop", None)
        if stop is not None:
            # OpenAI's `stop`, in Anthropic's words.
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        body.update(params)
        if call.stream:
            body["stream"] = True
        return body

    def completion(self, data: Any, call: Call) -> Completion:
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise _malformed(call.provider, "no content list")
        stop_reason = _text_or_none(data.get("stop_reason"))
        if stop_reason == "refusal":
            raise _errors.content_filter_error(provider=call.provider, reason=stop_reason)
        parts = []
        for block in data["content"]:
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise _malformed(call.provider, "a text block without text")
                parts.append(text)
        return Completion(
            text="".join(parts),
            model=_text_or_none(data.get("model")) or call.model,
            finish_reason=_errors.finish_reason(stop_reason),
            usage=_errors.checked_usage(_usage(data.get("usage")), provider=call.provider),
            response_id=_text_or_none(data.get("id")),
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
    """Reads message_start (input usage, model, id), content_block_delta (text), message_delta
    (stop reason, cumulative usage) and message_stop; an `error` event raises."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._start_usage: Any = None
        self._delta_usage: Any = None
        self._stop_reason: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None

    def read(self, event: WireEvent) -> Iterator[str]:
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
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                text = delta["text"]
                if not isinstance(text, str):
                    raise _malformed(self._call.provider, "a text delta without text")
                yield text
        elif kind == "message_delta":
            self._stop_reason = (
                _text_or_none((data.get("delta") or {}).get("stop_reason")) or self._stop_reason
            )
            self._delta_usage = data.get("usage")
        elif kind == "message_stop":
            self.done = True

    def end(self) -> StreamEnd:
        provider = self._call.provider
        if not self.done:
            raise _errors.truncated_stream_error(provider=provider)
        if self._stop_reason == "refusal":
            raise _errors.content_filter_error(provider=provider, reason=self._stop_reason)
        usage = _stream_usage(self._start_usage, self._delta_usage)
        if usage is not None:
            usage = _errors.checked_usage(usage, provider=provider)
        return StreamEnd(
            usage, _errors.finish_reason(self._stop_reason), self._model, self._response_id
        )


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
