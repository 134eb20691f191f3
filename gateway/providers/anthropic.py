"""Anthropic's Messages API through the official `anthropic` SDK.

As in `openai.py`, the call goes through the client's own `post()`: the SDK owns base URL,
auth and version headers, timeouts, the pool and its error classes (and its SSE parser, which
turns an `event: error` into its status errors), and the JSON is read here without building
the SDK's typed models.

Message conversion (system prompt, merged turns, tool results) is described in
`gateway.providers._messages`. Anthropic has no JSON mode: `json_mode=True` adds an
instruction to the system prompt to answer with one JSON object only, and `generate_json`
parses (and rejects) the reply like any other provider's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

try:
    import anthropic
except ImportError as exc:
    from gateway.errors import MissingDependencyError

    raise MissingDependencyError(
        "anthropic package required. Install with: pip install anthropic"
    ) from exc

from gateway.errors import ErrorKind, ProviderError
from gateway.providers import _errors
from gateway.providers._http import (
    call_timeout,
    check_limits,
    httpx2_client,
    require_time,
    sdk_post,
)
from gateway.providers._messages import to_anthropic
from gateway.providers.base import LLMService
from gateway.settings import get_settings, require_key
from gateway.types import ChatStream, Completion, Message, StreamEnd, Usage, validate_messages

_PATH = "/v1/messages"

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens` on every call; this is what a call without one asks for."""


class AnthropicService(LLMService):
    """Claude models over /v1/messages."""

    type_name = "anthropic"

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        default_headers: dict[str, str] | None = None,
        http_transport: str = "aiohttp",
    ) -> None:
        settings = get_settings()
        check_limits(name or self.type_name, timeout_s, max_connections)
        super().__init__(
            name=name,
            model=model or settings.ANTHROPIC_MODEL,
            timeout_s=timeout_s,
            max_connections=max_connections,
        )
        key = require_key(api_key or settings.ANTHROPIC_API_KEY, "ANTHROPIC_API_KEY", "Anthropic")
        self.default_max_tokens = default_max_tokens
        self._http = httpx2_client(
            self.name,
            self.timeout_s,
            self.max_connections,
            transport=http_transport,
            aiohttp_client=anthropic.DefaultAioHttpClient,
        )
        self._client = anthropic.AsyncAnthropic(
            api_key=key,
            base_url=base_url or settings.ANTHROPIC_BASE_URL,
            default_headers=default_headers,
            timeout=self.timeout_s,
            max_retries=0,
            http_client=self._http,
        )

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
        timeout_s: float | None = None,
        **params: Any,
    ) -> Completion:
        checked = validate_messages(messages)
        request = self._request(checked, temperature, max_tokens, json_mode, params)
        timeout = call_timeout(timeout_s, self.timeout_s)
        require_time(timeout, self.name)
        with _errors.mapped_by(lambda exc: self._error(exc, checked)):
            response = await sdk_post(self._client, _PATH, request, timeout)
        return self._completion(response)

    def _completion(self, response: Any) -> Completion:
        if not isinstance(response, dict) or not isinstance(response.get("content"), list):
            raise _malformed(self.name, "no content list")
        stop_reason = _text_or_none(response.get("stop_reason"))
        if stop_reason == "refusal":
            raise _errors.content_filter_error(provider=self.name, reason=stop_reason)
        parts = []
        for block in response["content"]:
            if isinstance(block, dict) and block.get("type") == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise _malformed(self.name, "a text block without text")
                parts.append(text)
        return Completion(
            text="".join(parts),
            model=_text_or_none(response.get("model")) or self.model,
            finish_reason=_errors.finish_reason(stop_reason),
            usage=_usage(response.get("usage")),
            response_id=_text_or_none(response.get("id")),
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float | None = None,
        json_mode: bool = False,
        **params: Any,
    ) -> ChatStream:
        checked = validate_messages(messages)
        request = self._request(checked, temperature, max_tokens, json_mode, params)
        events = self._stream_events(request, checked, call_timeout(timeout_s, self.timeout_s))
        return ChatStream(events, model=self.model)

    async def _stream_events(
        self, request: dict[str, Any], checked: list[dict[str, Any]], timeout_s: float
    ) -> AsyncIterator[str | StreamEnd]:
        require_time(timeout_s, self.name)
        start_usage: Any = None
        delta_usage: Any = None
        stop_reason: str | None = None
        model: str | None = None
        response_id: str | None = None
        finished = False
        with _errors.mapped_by(lambda exc: self._error(exc, checked)):
            stream = await sdk_post(
                self._client,
                _PATH,
                {**request, "stream": True},
                timeout_s,
                stream_cls=anthropic.AsyncStream[object],
            )
            async with stream:
                async for event in stream:
                    if not isinstance(event, dict):
                        raise _malformed(self.name, "a stream event that is not an object")
                    kind = event.get("type")
                    if kind == "message_start":
                        message = event.get("message") or {}
                        start_usage = message.get("usage")
                        model = _text_or_none(message.get("model"))
                        response_id = _text_or_none(message.get("id"))
                    elif kind == "content_block_delta":
                        delta = event.get("delta") or {}
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            text = delta["text"]
                            if not isinstance(text, str):
                                raise _malformed(self.name, "a text delta without text")
                            yield text
                    elif kind == "message_delta":
                        stop_reason = (
                            _text_or_none((event.get("delta") or {}).get("stop_reason"))
                            or stop_reason
                        )
                        delta_usage = event.get("usage")
                    elif kind == "message_stop":
                        finished = True
        if not finished:
            raise _errors.truncated_stream_error(provider=self.name)
        if stop_reason == "refusal":
            raise _errors.content_filter_error(provider=self.name, reason=stop_reason)
        usage = _stream_usage(start_usage, delta_usage)
        yield StreamEnd(usage, _errors.finish_reason(stop_reason), model, response_id)

    def _request(
        self,
        messages: list[dict[str, Any]],
        temperature: float | None,
        max_tokens: int | None,
        json_mode: bool,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        system, turns = to_anthropic(messages, json_mode=json_mode)
        request: dict[str, Any] = {
            "model": self.model,
            "messages": turns,
            "max_tokens": max_tokens or self.default_max_tokens,
        }
        if system:
            request["system"] = system
        if temperature is not None:
            request["temperature"] = temperature
        params = dict(params)
        stop = params.pop("stop", None)
        if stop is not None:
            # OpenAI's `stop`, in Anthropic's words.
            request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        request.update(params)
        return request

    def _error(self, exc: Exception, messages: list[dict[str, Any]]) -> ProviderError | None:
        """The `ProviderError` for an SDK failure; None for anything else."""
        redact = _errors.Redactor([self._client.api_key], messages)
        return anthropic_error(exc, provider=self.name, redact=redact)

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


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


def anthropic_error(
    exc: BaseException, *, provider: str, redact: _errors.Redactor
) -> ProviderError | None:
    """Map one `anthropic` SDK (or transport) exception to the gateway's taxonomy."""
    if isinstance(exc, anthropic.APIConnectionError):
        timed_out = isinstance(exc, anthropic.APITimeoutError)
        return _errors.connection_error(exc, provider=provider, timed_out=timed_out)
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        error_type = getattr(exc, "type", None)
        api_message = getattr(exc, "api_message", None) or ""
        in_stream = status < 400  # an `event: error` after HTTP 200 was sent
        if error_type == "overloaded_error":
            kind = ErrorKind.OVERLOADED
        elif error_type == "invalid_request_error" and _is_prompt_too_long(api_message):
            kind = ErrorKind.CONTEXT_LENGTH
        elif in_stream:
            kind = _errors.kind_for_error_type(error_type) or ErrorKind.SERVER_ERROR
        else:
            kind = _errors.kind_for_status(status)
        described = redact(f"{api_message or type(exc).__name__} (type {error_type})")
        return _errors.provider_error(
            f"error inside the stream: {described}" if in_stream else described,
            kind,
            provider=provider,
            status=None if in_stream else status,
            headers=exc.response.headers,
        )
    if isinstance(exc, anthropic.APIResponseValidationError):
        return _errors.malformed_error(exc, provider=provider)
    return _errors.unwrapped_error(exc, provider=provider)


def _is_prompt_too_long(message: str) -> bool:
    """Whether an invalid_request_error is a context-window overflow.

    Anthropic gives this case no error code of its own (type is the generic
    invalid_request_error), so its message is the only signal: "prompt is too long: N tokens
    > M maximum", or "input length and `max_tokens` exceed context limit: ...".
    """
    lowered = message.lower()
    return "prompt is too long" in lowered or "exceed context limit" in lowered
