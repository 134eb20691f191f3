"""`LLMService`: the one interface every provider implements.

A provider implements two calls, `complete` and `stream`; the seed's four methods
(`generate`, `generate_json`, `stream_generation`, `get_token_usage`) are thin layers over them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from gateway.errors import ErrorKind, ProviderError
from gateway.types import ChatStream, Completion, Message

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 100


class LLMService(ABC):
    """A client for one model on one upstream, with one connection pool of its own.

    Subclasses set `type_name` (the registry name) and implement `complete` and `stream`.
    Their SDK's own retries are off: the router owns retries.
    """

    type_name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.name = name or self.type_name
        self.model = model or ""
        self.timeout_s = timeout_s or DEFAULT_TIMEOUT_S
        self.max_connections = max_connections or DEFAULT_MAX_CONNECTIONS

    def __repr__(self) -> str:
        # Never show credentials: only what identifies the instance.
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"

    @abstractmethod
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
        """One whole answer, with usage. Failures raise `ProviderError`."""

    @abstractmethod
    def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float | None = None,
        **params: Any,
    ) -> ChatStream:
        """Text deltas as they arrive; `usage` is set on the stream once it is exhausted.

        Nothing is sent until the first delta is awaited. Failures raise `ProviderError`.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional: not every provider holds a pool
        """Close the connection pool."""

    # The seed's interface, kept as thin layers over `complete` and `stream`.

    async def generate(
        self,
        messages: Sequence[Message],
        temperature: float | None = None,
        max_tokens: int | None = None,
        **kwargs: Any,
    ) -> str:
        completion = await self.complete(
            messages, temperature=temperature, max_tokens=max_tokens, **kwargs
        )
        return completion.text

    async def generate_json(self, messages: Sequence[Message], **kwargs: Any) -> dict[str, Any]:
        completion = await self.complete(messages, json_mode=True, **kwargs)
        return parse_json_object(completion.text, provider=self.name)

    async def stream_generation(
        self, messages: Sequence[Message], **kwargs: Any
    ) -> AsyncIterator[str]:
        async with self.stream(messages, **kwargs) as chunks:
            async for delta in chunks:
                yield delta

    async def get_token_usage(self, text: str) -> dict[str, int]:
        """An estimate of the tokens `text` costs as input (about four characters a token).

        Exact counts come back in `Completion.usage` from the provider itself.
        """
        return {"input_tokens": estimate_tokens(text), "characters": len(text)}

    async def __aenter__(self) -> LLMService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


def parse_json_object(text: str, *, provider: str = "") -> dict[str, Any]:
    """Parse a model's JSON reply; anything but a JSON object is an `invalid_response`."""
    stripped = text.strip()
    if stripped.startswith("```"):
        # Models often fence JSON even in JSON mode; the fence is not part of the answer.
        stripped = stripped.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ProviderError(
            f"reply is not valid JSON ({exc.msg} at position {exc.pos})",
            kind=ErrorKind.INVALID_RESPONSE,
            provider=provider,
        ) from exc
    if not isinstance(value, dict):
        raise ProviderError(
            f"reply is JSON but not an object (got {type(value).__name__})",
            kind=ErrorKind.INVALID_RESPONSE,
            provider=provider,
        )
    return value
