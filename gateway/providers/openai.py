"""OpenAI Chat Completions through the official `openai` SDK (also the base of Azure OpenAI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

try:
    import openai
except ImportError as exc:
    from gateway.errors import MissingDependencyError

    raise MissingDependencyError(
        "openai package required. Install with: pip install openai"
    ) from exc

from gateway.errors import ErrorKind, ProviderError
from gateway.providers import _errors
from gateway.providers._http import (
    call_timeout,
    check_limits,
    fit_to_sdk,
    httpx2_client,
    sdk_parameters,
)
from gateway.providers._messages import JSON_INSTRUCTION
from gateway.providers.base import LLMService
from gateway.settings import get_settings, require_key
from gateway.types import (
    ChatStream,
    Completion,
    Message,
    StreamEnd,
    Usage,
    content_text,
    validate_messages,
)

# Fields the SDK has no keyword for (vendor extensions of compatible servers) go in extra_body.
_CREATE_PARAMETERS = sdk_parameters(openai.resources.chat.completions.AsyncCompletions.create)

# Codes in a 4xx body that say more than the status does.
_SPECIFIC_CODES = frozenset({ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_FILTER})


class OpenAIService(LLMService):
    """OpenAI's /v1/chat/completions. `base_url` points it at any compatible server."""

    type_name = "openai"

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        organization: str | None = None,
        default_headers: dict[str, str] | None = None,
    ) -> None:
        settings = get_settings()
        check_limits(name or self.type_name, timeout_s, max_connections)
        super().__init__(
            name=name,
            model=model or settings.OPENAI_MODEL,
            timeout_s=timeout_s,
            max_connections=max_connections,
        )
        key = require_key(api_key or settings.OPENAI_API_KEY, "OPENAI_API_KEY", "OpenAI")
        self._http = httpx2_client(self.timeout_s, self.max_connections)
        self._client: openai.AsyncOpenAI = openai.AsyncOpenAI(
            api_key=key,
            base_url=base_url or settings.OPENAI_BASE_URL,
            organization=organization,
            default_headers=default_headers,
            timeout=self.timeout_s,
            max_retries=0,
            http_client=self._http,
        )

    @property
    def _wire_model(self) -> str:
        """What goes in the request's `model` field."""
        return self.model

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
        try:
            response = await self._client.chat.completions.create(
                **fit_to_sdk(request, _CREATE_PARAMETERS), timeout=timeout
            )
        except Exception as exc:
            error = self._error(exc, checked)
            if error is None:
                raise  # not an upstream failure: a bug to see as is
            raise error from exc
        if not response.choices:
            raise ProviderError(
                "reply has no choices", kind=ErrorKind.INVALID_RESPONSE, provider=self.name
            )
        choice = response.choices[0]
        if choice.finish_reason == "content_filter":
            raise _errors.content_filter_error(provider=self.name, reason=choice.finish_reason)
        return Completion(
            text=choice.message.content or "",
            model=response.model or self.model,
            finish_reason=_errors.finish_reason(choice.finish_reason),
            usage=_usage(response.usage),
            response_id=response.id,
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
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
        events = self._stream_events(request, checked, call_timeout(timeout_s, self.timeout_s))
        return ChatStream(events, model=self.model)

    async def _stream_events(
        self, request: dict[str, Any], checked: list[dict[str, Any]], timeout_s: float
    ) -> AsyncIterator[str | StreamEnd]:
        usage: Usage | None = None
        finish: str | None = None
        model: str | None = None
        response_id: str | None = None
        try:
            stream = await self._client.chat.completions.create(
                **fit_to_sdk(request, _CREATE_PARAMETERS), timeout=timeout_s
            )
            async with stream:
                async for chunk in stream:
                    response_id = response_id or chunk.id
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    for choice in chunk.choices:
                        if choice.index != 0:
                            continue
                        if choice.delta is not None and choice.delta.content:
                            yield choice.delta.content
                        if choice.finish_reason:
                            finish = choice.finish_reason
        except Exception as exc:
            error = self._error(exc, checked)
            if error is None:
                raise  # not an upstream failure: a bug to see as is
            raise error from exc
        if finish is None:
            raise _errors.truncated_stream_error(provider=self.name)
        if finish == "content_filter":
            raise _errors.content_filter_error(provider=self.name, reason=finish)
        yield StreamEnd(usage, _errors.finish_reason(finish), model, response_id)

    def _request(
        self,
        messages: list[dict[str, Any]],
        temperature: float | None,
        max_tokens: int | None,
        json_mode: bool,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self._wire_model, "messages": messages, **params}
        if temperature is not None:
            request["temperature"] = temperature
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if json_mode:
            request["response_format"] = {"type": "json_object"}
            # OpenAI rejects JSON mode unless the conversation mentions JSON.
            if not any("json" in content_text(m.get("content")).lower() for m in messages):
                request["messages"] = [{"role": "system", "content": JSON_INSTRUCTION}, *messages]
        return request

    def _error(self, exc: Exception, messages: list[dict[str, Any]]) -> ProviderError | None:
        """The `ProviderError` for an SDK failure; None for anything else."""
        redact = _errors.Redactor([self._client.api_key], messages)
        return openai_error(exc, provider=self.name, redact=redact)

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cached_input_tokens=cached,
    )


def openai_error(
    exc: BaseException, *, provider: str, redact: _errors.Redactor
) -> ProviderError | None:
    """Map one `openai` SDK (or transport) exception to the gateway's taxonomy."""
    if isinstance(exc, openai.APITimeoutError):
        return _errors.transport_error(exc.__cause__ or exc, ErrorKind.TIMEOUT, provider=provider)
    if isinstance(exc, openai.APIConnectionError):
        kind = _errors.transport_kind(exc.__cause__) if exc.__cause__ else None
        return _errors.transport_error(
            exc.__cause__ or exc, kind or ErrorKind.CONNECTION, provider=provider
        )
    if isinstance(exc, openai.APIStatusError):
        specific = _errors.kind_for_error_type(exc.code)
        kind = specific if specific in _SPECIFIC_CODES else _errors.kind_for_status(exc.status_code)
        return _errors.provider_error(
            _describe(exc, redact),
            kind,
            provider=provider,
            status=exc.status_code,
            headers=exc.response.headers,
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return _errors.malformed_error(exc, provider=provider)
    if isinstance(exc, openai.APIError):
        # An in-stream `{"error": {...}}` chunk: HTTP 200 was already sent, so only the
        # error's own type/code can say what went wrong.
        kind = _errors.kind_for_error_type(exc.code, exc.type) or ErrorKind.INVALID_RESPONSE
        return ProviderError(
            f"error inside the stream: {_describe(exc, redact)}", kind=kind, provider=provider
        )
    kind = _errors.transport_kind(exc)
    if kind is not None:
        return _errors.transport_error(exc, kind, provider=provider)
    if _errors.is_malformed_body(exc):
        return _errors.malformed_error(exc, provider=provider)
    return None


def _describe(exc: openai.APIError, redact: _errors.Redactor) -> str:
    """The upstream's own message and code, cleaned of secrets and prompt text."""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message") or type(exc).__name__
    code = f" (code {exc.code})" if exc.code else ""
    return redact(f"{message}{code}")
