"""FakeLLM: a scripted in-process provider for unit tests that need no HTTP at all.

    llm = FakeLLM(replies=["first", "second"], errors=[ProviderError("busy", kind="overloaded")])
    await llm.complete(messages)   # raises the scripted error
    await llm.complete(messages)   # "first"
    llm.calls                      # the messages of both calls

Each call takes the next slot of `errors` (None or an exhausted list: no error); a call that
does not fail takes the next reply. When the replies run out the last one repeats.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from gateway.providers import LLMService
from gateway.testing._replies import default_text, fake_usage, split_words
from gateway.types import ChatStream, Completion, Message, StreamEnd, Usage, validate_messages

ReplySource = Sequence[str] | Callable[[list[dict[str, Any]]], str]
ScriptedError = BaseException | type[BaseException] | None


class FakeLLM(LLMService):
    """An `LLMService` whose answers and failures are set by the test."""

    type_name = "fake"

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = "fake-1",
        replies: ReplySource | None = None,
        errors: Sequence[ScriptedError] = (),
        latency_s: float = 0.0,
        usage: Usage | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            name=name,
            model=model or "fake-1",
            timeout_s=timeout_s,
            max_connections=max_connections,
        )
        if isinstance(replies, str):
            raise TypeError(
                f"FakeLLM replies must be a list of strings or a callable, got the string "
                f"{replies!r}; wrap it: replies=[{replies!r}]"
            )
        if latency_s < 0:
            raise ValueError(f"FakeLLM latency_s must be >= 0, got {latency_s!r}")
        self.base_url = base_url
        self.options = options
        self.latency_s = latency_s
        self._replies = replies
        self._errors = list(errors)
        self._usage = usage
        self._call_index = 0
        self._reply_index = 0
        self._ids = itertools.count(1)
        self.calls: list[list[dict[str, Any]]] = []
        """The validated messages of every call, in order (failed calls included)."""
        self.call_params: list[dict[str, Any]] = []
        """The keyword parameters of every call (temperature, max_tokens, json_mode, ...)."""
        self.closed = False

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
        checked = self._record(
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            json_mode=json_mode,
            timeout_s=timeout_s,
            **params,
        )
        error = self._next_error()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if error is not None:
            raise error
        text = self._next_reply(checked, json_mode=json_mode)
        return Completion(
            text=text,
            model=self.model,
            finish_reason="stop",
            usage=self._usage or fake_usage(checked, text),
            response_id=f"fake-{next(self._ids)}",
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float | None = None,
        **params: Any,
    ) -> ChatStream:
        # Validate now, as real providers do, but record and answer only once iteration starts.
        checked = validate_messages(messages)
        call_params = dict(
            temperature=temperature,
            max_tokens=max_tokens,
            timeout_s=timeout_s,
            stream=True,
            **params,
        )
        return ChatStream(self._stream_source(checked, call_params), model=self.model)

    async def _stream_source(
        self, checked: list[dict[str, Any]], call_params: dict[str, Any]
    ) -> AsyncIterator[str | StreamEnd]:
        self.calls.append(checked)
        self.call_params.append(call_params)
        error = self._next_error()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if error is not None:
            raise error
        text = self._next_reply(checked, json_mode=False)
        for piece in split_words(text):
            yield piece
        yield StreamEnd(
            usage=self._usage or fake_usage(checked, text),
            finish_reason="stop",
            model=self.model,
            response_id=f"fake-{next(self._ids)}",
        )

    async def aclose(self) -> None:
        self.closed = True

    def _record(self, messages: Sequence[Message], **params: Any) -> list[dict[str, Any]]:
        checked = validate_messages(messages)
        self.calls.append(checked)
        self.call_params.append(params)
        return checked

    def _next_error(self) -> BaseException | None:
        index = self._call_index
        self._call_index += 1
        error = self._errors[index] if index < len(self._errors) else None
        if isinstance(error, type):
            return error()
        return error

    def _next_reply(self, messages: list[dict[str, Any]], *, json_mode: bool) -> str:
        replies = self._replies
        if callable(replies):
            return replies(messages)
        if not replies:
            return '{"ok": true}' if json_mode else default_text(self.model)
        index = min(self._reply_index, len(replies) - 1)
        self._reply_index += 1
        return replies[index]
