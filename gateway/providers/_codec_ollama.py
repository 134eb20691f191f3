"""Ollama's native chat API (`POST /api/chat`, streamed as JSON lines): `OllamaCodec`.

Requests: `stream` is always set explicitly (Ollama streams when it is absent), temperature
and max_tokens go into `options` as `temperature`/`num_predict`, JSON mode is
`format: "json"`. Extra keyword params go into `options` (top_p, seed, stop, num_ctx, ...)
except Ollama's top-level fields (`keep_alive`, `tools`, `think`, `format`).
Usage comes from `prompt_eval_count`/`eval_count` of the final (done) line; Ollama has no
prompt cache counts and no response ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.errors import ErrorKind, ProviderError
from gateway.providers import _errors
from gateway.providers._base import Call
from gateway.providers._codec import StreamReader, WireCodec, WireEvent
from gateway.providers._messages import to_ollama
from gateway.types import Completion, StreamEnd, Usage

_TOP_LEVEL = frozenset({"keep_alive", "tools", "think", "format"})


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
        if call.max_tokens is not None:
            options["num_predict"] = call.max_tokens
        for key, value in call.params.items():
            if key in _TOP_LEVEL:
                body[key] = value
            elif key == "stop":
                options["stop"] = [value] if isinstance(value, str) else list(value)
            else:
                options[key] = value
        if call.json_mode:
            body["format"] = "json"
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
        return Completion(
            text=str(data["message"].get("content") or ""),
            model=data.get("model") or call.model,
            finish_reason=_errors.finish_reason(data.get("done_reason")),
            usage=_usage(data, call.provider),
            response_id=None,
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
    def __init__(self, call: Call) -> None:
        self._call = call
        self._final: dict[str, Any] | None = None

    def read(self, event: WireEvent) -> Iterator[str]:
        data = event.data
        if not isinstance(data, dict):
            raise ProviderError(
                "stream line is not a JSON object",
                kind=ErrorKind.INVALID_RESPONSE,
                provider=self._call.provider,
            )
        if data.get("error"):
            raise in_stream_error(data["error"], self._call)
        content = (data.get("message") or {}).get("content")
        if content:
            yield str(content)
        if data.get("done"):
            self._final = data
            self.done = True

    def end(self) -> StreamEnd:
        final = self._final
        if final is None:
            raise _errors.truncated_stream_error(provider=self._call.provider)
        return StreamEnd(
            _usage(final, self._call.provider),
            _errors.finish_reason(final.get("done_reason")),
            final.get("model") or None,
            None,
        )


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
