"""OpenAI Chat Completions through the official `openai` SDK (also the base of Azure OpenAI).

The request goes through the client's own `post()` (the SDK's documented way to call an
endpoint without its typed wrapper), so the SDK still owns the base URL, auth, Azure's
deployment paths, timeouts, the connection pool and its error classes; what it skips is
building typed request and response models, which cost about as much as the HTTP call itself
(see docs/performance.md). The JSON is read by `_openai_shape`.
"""

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

from gateway.errors import ProviderError
from gateway.providers import _errors, _openai_shape
from gateway.providers._http import (
    call_timeout,
    check_limits,
    httpx2_client,
    require_time,
    sdk_post,
)
from gateway.providers.base import LLMService
from gateway.settings import get_settings, require_key
from gateway.types import (
    ChatStream,
    Completion,
    Message,
    StreamEnd,
    validate_messages,
)

_PATH = "/chat/completions"


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
        http_transport: str = "aiohttp",
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
        self._http = httpx2_client(
            self.name,
            self.timeout_s,
            self.max_connections,
            transport=http_transport,
            aiohttp_client=openai.DefaultAioHttpClient,
        )
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
        request = _openai_shape.request_body(
            self._wire_model, checked, temperature, max_tokens, json_mode, params
        )
        timeout = call_timeout(timeout_s, self.timeout_s)
        require_time(timeout, self.name)
        with _errors.mapped_by(lambda exc: self._error(exc, checked)):
            response = await sdk_post(self._client, _PATH, request, timeout)
        return _openai_shape.completion(response, provider=self.name, model=self.model)

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
        request = _openai_shape.request_body(
            self._wire_model, checked, temperature, max_tokens, json_mode, params, stream=True
        )
        events = self._stream_events(request, checked, call_timeout(timeout_s, self.timeout_s))
        return ChatStream(events, model=self.model)

    async def _stream_events(
        self, request: dict[str, Any], checked: list[dict[str, Any]], timeout_s: float
    ) -> AsyncIterator[str | StreamEnd]:
        require_time(timeout_s, self.name)
        reader = _openai_shape.ChunkReader(provider=self.name, first_choice_only=True)
        with _errors.mapped_by(lambda exc: self._error(exc, checked)):
            stream = await sdk_post(
                self._client, _PATH, request, timeout_s, stream_cls=openai.AsyncStream[object]
            )
            async with stream:
                async for chunk in stream:
                    for delta in reader.read(chunk):
                        yield delta
        yield reader.end()

    def _error(self, exc: Exception, messages: list[dict[str, Any]]) -> ProviderError | None:
        """The `ProviderError` for an SDK failure; None for anything else."""
        redact = _errors.Redactor([self._client.api_key], messages)
        return openai_error(exc, provider=self.name, redact=redact)

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


def openai_error(
    exc: BaseException, *, provider: str, redact: _errors.Redactor
) -> ProviderError | None:
    """Map one `openai` SDK (or transport) exception to the gateway's taxonomy."""
    if isinstance(exc, openai.APIConnectionError):
        timed_out = isinstance(exc, openai.APITimeoutError)
        return _errors.connection_error(exc, provider=provider, timed_out=timed_out)
    if isinstance(exc, openai.APIStatusError):
        kind = _openai_shape.status_error_kind(exc.status_code, exc.code)
        return _errors.provider_error(
            _describe(exc, redact),
            kind,
            provider=provider,
            status=exc.status_code,
            headers=exc.response.headers,
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return _errors.malformed_error(exc, provider=provider)
    if isinstance(exc, openai.APIError):  # an in-stream `{"error": {...}}` chunk
        kind = _openai_shape.stream_error_kind(exc.code, exc.type)
        return ProviderError(
            f"error inside the stream: {_describe(exc, redact)}", kind=kind, provider=provider
        )
    return _errors.unwrapped_error(exc, provider=provider)


def _describe(exc: openai.APIError, redact: _errors.Redactor) -> str:
    """The upstream's own message and code, cleaned of secrets and prompt text."""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message") or type(exc).__name__
    code = f" (code {exc.code})" if exc.code else ""
    return redact(f"{message}{code}")
