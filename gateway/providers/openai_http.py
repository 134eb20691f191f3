"""OpenAI Chat Completions over aiohttp directly: the same wire protocol, no SDK on the path.

For the lowest overhead per call, e.g. inside `gateway serve` or in front of a local vLLM: the
`openai` provider, even through the SDK's `post()`, spends about 0.4 ms of CPU per request in
the SDK (request options as models, URL parsing, httpx2's request and response objects). This
one builds the request, reads the JSON and the SSE `data:` lines itself, through the same
`_openai_shape` reader as the `openai` provider, and maps errors onto the same kinds. What the
SDK would add, it does not do: Azure's auth flows, the SDK's newer API surfaces, multi-line SSE
events (OpenAI sends one line per event).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

try:
    import aiohttp
except ImportError as exc:
    from gateway.errors import MissingDependencyError

    raise MissingDependencyError(
        "aiohttp package required. Install with: pip install aiohttp"
    ) from exc
from pydantic import SecretStr

from gateway.errors import ErrorKind, ProviderError
from gateway.providers import _errors, _openai_shape
from gateway.providers._http import (
    call_timeout,
    check_limits,
    httpx_tls,
    require_time,
    split_extras,
)
from gateway.providers.base import LLMService
from gateway.settings import get_settings, require_key
from gateway.types import ChatStream, Completion, Message, StreamEnd, validate_messages

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
_ERROR_BODY_LIMIT = 64 * 1024
"""How much of an error response is read: enough for any JSON error, bounded for any other."""


class OpenAIHTTPService(LLMService):
    """/v1/chat/completions on OpenAI or any compatible server, spoken over aiohttp."""

    type_name = "openai_http"

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
        self._api_key = SecretStr(key)
        base = (base_url or settings.OPENAI_BASE_URL or _DEFAULT_BASE_URL).rstrip("/")
        self._url = f"{base}/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            **({"OpenAI-Organization": organization} if organization else {}),
            **(default_headers or {}),
        }
        # Made on first use: an aiohttp session belongs to the event loop it was made in.
        self._session: aiohttp.ClientSession | None = None

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
            self.model, checked, temperature, max_tokens, json_mode, params
        )
        timeout = call_timeout(timeout_s, self.timeout_s)
        require_time(timeout, self.name)
        redact = self._redactor(checked)
        body, headers, query = split_extras(request)
        with _errors.mapped_by(self._error):
            async with self._post(
                body, headers, query, aiohttp.ClientTimeout(total=timeout)
            ) as rsp:
                if rsp.status >= 400:
                    raise await self._status_error(rsp, redact) from _http_error(rsp)
                data = json.loads(await rsp.read())
        return _openai_shape.completion(data, provider=self.name, model=self.model)

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
            self.model, checked, temperature, max_tokens, json_mode, params, stream=True
        )
        events = self._stream_events(request, checked, call_timeout(timeout_s, self.timeout_s))
        return ChatStream(events, model=self.model)

    async def _stream_events(
        self, request: dict[str, Any], checked: list[dict[str, Any]], timeout_s: float
    ) -> AsyncIterator[str | StreamEnd]:
        require_time(timeout_s, self.name)
        redact = self._redactor(checked)
        reader = _openai_shape.ChunkReader(provider=self.name, first_choice_only=True)
        body, headers, query = split_extras(request)
        # timeout_s bounds the connection and each wait for data, not the whole stream.
        timeout = aiohttp.ClientTimeout(sock_connect=timeout_s, sock_read=timeout_s)
        with _errors.mapped_by(self._error):
            async with self._post(body, headers, query, timeout) as rsp:
                if rsp.status >= 400:
                    raise await self._status_error(rsp, redact) from _http_error(rsp)
                async for line in rsp.content:
                    if not line.startswith(b"data:"):
                        continue  # comments, blank separators, event names
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and chunk.get("error"):
                        raise _in_stream_error(chunk["error"], self.name, redact)
                    for delta in reader.read(chunk):
                        yield delta
        yield reader.end()

    def _post(
        self,
        body: dict[str, Any],
        headers: dict[str, str] | None,
        query: dict[str, Any] | None,
        timeout: aiohttp.ClientTimeout,
    ) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, ssl=httpx_tls()),
                headers=self._headers,
            )
        return self._session.post(
            self._url,
            data=json.dumps(body).encode(),
            headers=headers,
            params=query,
            timeout=timeout,
            allow_redirects=False,
        )

    async def _status_error(
        self, response: aiohttp.ClientResponse, redact: _errors.Redactor
    ) -> ProviderError:
        raw = await response.content.read(_ERROR_BODY_LIMIT)
        try:
            error = json.loads(raw).get("error")
        except (ValueError, AttributeError):
            error = None
        if not isinstance(error, dict):
            error = {}
        code = error.get("code")
        message = str(error.get("message") or f"HTTP {response.status}")
        described = redact(f"{message} (code {code})" if code else message)
        return _errors.provider_error(
            described,
            _openai_shape.status_error_kind(response.status, code),
            provider=self.name,
            status=response.status,
            headers=response.headers,
        )

    def _redactor(self, messages: list[dict[str, Any]]) -> _errors.Redactor:
        return _errors.Redactor([self._api_key.get_secret_value()], messages)

    def _error(self, exc: Exception) -> ProviderError | None:
        kind = _errors.aiohttp_kind(exc)
        if kind is None and isinstance(exc, TimeoutError):
            kind = ErrorKind.TIMEOUT
        if kind is not None:
            return _errors.transport_error(exc, kind, provider=self.name)
        if isinstance(exc, ValueError):
            # Bad JSON, or an SSE line longer than aiohttp's line limit (64 KiB): either way
            # not what the protocol promises.
            return _errors.malformed_error(exc, provider=self.name)
        return _errors.unwrapped_error(exc, provider=self.name)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _http_error(response: aiohttp.ClientResponse) -> aiohttp.ClientResponseError:
    """aiohttp's own error for an error status, chained under ours as the SDKs' would be."""
    return aiohttp.ClientResponseError(
        response.request_info,
        response.history,
        status=response.status,
        message=response.reason or "",
    )


def _in_stream_error(error: Any, provider: str, redact: _errors.Redactor) -> ProviderError:
    """An in-stream `{"error": {...}}` chunk: HTTP 200 was sent, its code says what failed."""
    fields: Mapping[str, Any] = error if isinstance(error, dict) else {"message": str(error)}
    kind = _openai_shape.stream_error_kind(fields.get("code"), fields.get("type"))
    message = redact(str(fields.get("message") or "error"))
    return ProviderError(f"error inside the stream: {message}", kind=kind, provider=provider)
