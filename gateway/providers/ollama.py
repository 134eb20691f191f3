"""Ollama's native chat API (`POST /api/chat`) over httpx; registered as `ollama` and `local`.

Requests: `stream` is always set explicitly (Ollama streams when it is absent), temperature
and max_tokens go into `options` as `temperature`/`num_predict`, JSON mode is
`format: "json"`. Extra keyword params go into `options` (top_p, seed, stop, num_ctx, ...)
except Ollama's top-level fields (`keep_alive`, `tools`, `think`, `format`).
Usage comes from `prompt_eval_count`/`eval_count` of the final (done) line; Ollama has no
prompt cache counts and no response ids.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from gateway.errors import ErrorKind, ProviderError
from gateway.providers import _errors
from gateway.providers._http import call_timeout, check_limits, httpx_client
from gateway.providers._messages import to_ollama
from gateway.providers.base import LLMService
from gateway.settings import get_settings
from gateway.types import ChatStream, Completion, Message, StreamEnd, Usage, validate_messages

_TOP_LEVEL = frozenset({"keep_alive", "tools", "think", "format"})
_CHAT_PATH = "/api/chat"


class OllamaService(LLMService):
    """A model served by Ollama (or anything speaking its /api/chat)."""

    type_name = "ollama"

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        keep_alive: str | float | None = None,
    ) -> None:
        settings = get_settings()
        check_limits(name or self.type_name, timeout_s, max_connections)
        super().__init__(
            name=name,
            model=model or settings.LOCAL_MODEL,
            timeout_s=timeout_s,
            max_connections=max_connections,
        )
        self.base_url = (base_url or settings.OLLAMA_BASE_URL).rstrip("/")
        self.keep_alive = keep_alive
        # Ollama needs no key; one is sent only for a server behind an authenticating proxy.
        self._api_key = SecretStr(api_key) if api_key else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx_client(self.base_url, self.timeout_s, self.max_connections, headers)

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
        body = self._body(checked, temperature, max_tokens, json_mode, params, stream=False)
        redact = self._redactor(checked)
        timeout = call_timeout(timeout_s, self.timeout_s)
        with _errors.mapped_by(self._error):
            response = await self._http.post(_CHAT_PATH, json=body, timeout=timeout)
        self._raise_for_status(response, redact)
        try:
            data = response.json()
        except ValueError as exc:
            raise _errors.malformed_error(exc, provider=self.name) from exc
        if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
            if isinstance(data, dict) and data.get("error"):
                raise self._in_stream_error(data["error"], redact)
            raise ProviderError(
                "reply has no 'message' object", kind=ErrorKind.INVALID_RESPONSE, provider=self.name
            )
        return Completion(
            text=str(data["message"].get("content") or ""),
            model=data.get("model") or self.model,
            finish_reason=_errors.finish_reason(data.get("done_reason")),
            usage=_usage(data),
            response_id=None,
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
        body = self._body(checked, temperature, max_tokens, json_mode, params, stream=True)
        events = self._stream_events(
            body, self._redactor(checked), call_timeout(timeout_s, self.timeout_s)
        )
        return ChatStream(events, model=self.model)

    async def _stream_events(
        self, body: dict[str, Any], redact: _errors.Redactor, timeout_s: float
    ) -> AsyncIterator[str | StreamEnd]:
        final: dict[str, Any] | None = None
        with _errors.mapped_by(self._error):
            async with self._http.stream("POST", _CHAT_PATH, json=body, timeout=timeout_s) as rsp:
                if rsp.status_code >= 400:
                    await rsp.aread()
                    self._raise_for_status(rsp, redact)
                async for line in rsp.aiter_lines():
                    if not line.strip():
                        continue
                    data = json.loads(line)
                    if not isinstance(data, dict):
                        raise ProviderError(
                            "stream line is not a JSON object",
                            kind=ErrorKind.INVALID_RESPONSE,
                            provider=self.name,
                        )
                    if data.get("error"):
                        raise self._in_stream_error(data["error"], redact)
                    content = (data.get("message") or {}).get("content")
                    if content:
                        yield str(content)
                    if data.get("done"):
                        final = data
                        break
        if final is None:
            raise _errors.truncated_stream_error(provider=self.name)
        yield StreamEnd(
            _usage(final),
            _errors.finish_reason(final.get("done_reason")),
            final.get("model") or None,
            None,
        )

    def _body(
        self,
        messages: list[dict[str, Any]],
        temperature: float | None,
        max_tokens: int | None,
        json_mode: bool,
        params: dict[str, Any],
        *,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_ollama(messages),
            "stream": stream,
        }
        options: dict[str, Any] = {}
        if temperature is not None:
            options["temperature"] = temperature
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        for key, value in params.items():
            if key in _TOP_LEVEL:
                body[key] = value
            elif key == "stop":
                options["stop"] = [value] if isinstance(value, str) else list(value)
            else:
                options[key] = value
        if json_mode:
            body["format"] = "json"
        if self.keep_alive is not None:
            body.setdefault("keep_alive", self.keep_alive)
        if options:
            body["options"] = options
        return body

    def _redactor(self, messages: list[dict[str, Any]]) -> _errors.Redactor:
        secret = self._api_key.get_secret_value() if self._api_key else None
        return _errors.Redactor([secret], messages)

    def _error(self, exc: Exception) -> ProviderError | None:
        return ollama_error(exc, provider=self.name)

    def _raise_for_status(self, response: httpx.Response, redact: _errors.Redactor) -> None:
        """A `ProviderError` for an HTTP error status, chaining httpx's own."""
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise self._status_error(response, redact) from exc

    def _status_error(self, response: httpx.Response, redact: _errors.Redactor) -> ProviderError:
        message = _error_text(response)
        kind = _kind_from_text(message) or _errors.kind_for_status(response.status_code)
        return _errors.provider_error(
            redact(message),
            kind,
            provider=self.name,
            status=response.status_code,
            headers=response.headers,
        )

    def _in_stream_error(self, error: Any, redact: _errors.Redactor) -> ProviderError:
        message = str(error)
        kind = _kind_from_text(message) or ErrorKind.SERVER_ERROR
        return ProviderError(
            f"error inside the stream: {redact(message)}", kind=kind, provider=self.name
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _usage(data: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=int(data.get("prompt_eval_count") or 0),
        output_tokens=int(data.get("eval_count") or 0),
    )


def _error_text(response: httpx.Response) -> str:
    """Ollama's `{"error": "..."}` message, or the start of whatever the body was."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or f"HTTP {response.status_code}"
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    return f"HTTP {response.status_code}"


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


def ollama_error(exc: BaseException, *, provider: str) -> ProviderError | None:
    """Map an httpx or decoding failure of an Ollama call to the gateway's taxonomy."""
    return _errors.unwrapped_error(exc, provider=provider)
