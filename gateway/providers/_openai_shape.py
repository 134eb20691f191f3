"""Reading and writing OpenAI's chat wire shapes, for every client that speaks them.

The `openai` SDK and LiteLLM both take Chat Completions requests and return Chat Completions
responses and `chat.completion.chunk` streams; what they say is read here, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.errors import ErrorKind, ProviderError
from gateway.providers import _errors
from gateway.types import Completion, StreamEnd, Usage

# Error codes that say more than the HTTP status they come with.
_SPECIFIC_CODES = frozenset({ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_FILTER})


def sampling_fields(
    temperature: float | None, max_tokens: int | None, *, json_mode: bool
) -> dict[str, Any]:
    """The request fields for the call's own settings; one left unset is left out."""
    fields: dict[str, Any] = {}
    if temperature is not None:
        fields["temperature"] = temperature
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
    if json_mode:
        fields["response_format"] = {"type": "json_object"}
    return fields


def usage(raw: Any) -> Usage | None:
    """A response's or chunk's `usage` object; None when it has none."""
    if raw is None:
        return None
    details = getattr(raw, "prompt_tokens_details", None)
    return Usage(
        input_tokens=getattr(raw, "prompt_tokens", 0) or 0,
        output_tokens=getattr(raw, "completion_tokens", 0) or 0,
        cached_input_tokens=getattr(details, "cached_tokens", 0) or 0,
    )


def completion(response: Any, *, provider: str, model: str) -> Completion:
    """The first choice of a chat completion; a filtered one is a CONTENT_FILTER error.

    `model` stands in when the response names none.
    """
    if not response.choices:
        raise ProviderError(
            "reply has no choices", kind=ErrorKind.INVALID_RESPONSE, provider=provider
        )
    choice = response.choices[0]
    if choice.finish_reason == "content_filter":
        raise _errors.content_filter_error(provider=provider, reason=choice.finish_reason)
    return Completion(
        text=choice.message.content or "",
        model=response.model or model,
        finish_reason=_errors.finish_reason(choice.finish_reason),
        usage=usage(getattr(response, "usage", None)) or Usage(),
        response_id=response.id,
    )


def status_error_kind(status: int, code: object) -> ErrorKind:
    """An error response's kind: its body's `code` where that says more, else its status."""
    specific = _errors.kind_for_error_type(code)
    return specific if specific in _SPECIFIC_CODES else _errors.kind_for_status(status)


def stream_error_kind(code: object, error_type: object) -> ErrorKind:
    """An in-stream `{"error": {...}}` chunk's kind.

    HTTP 200 was already sent, so only the error's own code or type can say what went wrong.
    """
    return _errors.kind_for_error_type(code, error_type) or ErrorKind.INVALID_RESPONSE


class ChunkReader:
    """What a stream of chat completion chunks has said so far.

    Feed each chunk to `read` for its text; once the stream is exhausted, `end` says how it
    ended. `first_choice_only` keeps the text of choice 0 alone (the others' would interleave).
    """

    def __init__(self, *, provider: str, first_choice_only: bool) -> None:
        self._provider = provider
        self._first_choice_only = first_choice_only
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._model: str | None = None
        self._response_id: str | None = None

    def read(self, chunk: Any) -> Iterator[str]:
        """The chunk's text deltas, noting its id, model, usage and finish reason."""
        self._response_id = self._response_id or chunk.id
        self._model = chunk.model or self._model
        chunk_usage = getattr(chunk, "usage", None)
        if chunk_usage is not None:
            self._usage = usage(chunk_usage)
        for choice in chunk.choices:
            if self._first_choice_only and choice.index != 0:
                continue
            if choice.delta is not None and choice.delta.content:
                yield choice.delta.content
            if choice.finish_reason:
                self._finish = choice.finish_reason

    def end(self) -> StreamEnd:
        """The stream's last event; a stream that never said it finished was cut."""
        if self._finish is None:
            raise _errors.truncated_stream_error(provider=self._provider)
        if self._finish == "content_filter":
            raise _errors.content_filter_error(provider=self._provider, reason=self._finish)
        return StreamEnd(
            self._usage, _errors.finish_reason(self._finish), self._model, self._response_id
        )
