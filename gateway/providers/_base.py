"""`LLMService`: the one interface every provider implements, and the skeleton they share.

`complete` and `stream` are template methods: they validate the messages (free for a
`Conversation` the router already checked), check the call's timeout, and run the provider's
`_send` / `_open_stream` under one error mapping that turns upstream failures into
`ProviderError` with the key and the prompt's texts redacted. `embed` is the same skeleton
around `_embed`, for the providers whose upstream embeds text (`embeds`), and it checks the
answer's shape (a vector per input, each of the expected length) before anyone sees it.
A provider writes only what is its own: how to send one call, and (by overriding `_error`)
what its failures mean.
A provider may instead override `complete` and `stream` themselves (as a test double does).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.errors import ErrorKind, GatewayError, InvalidRequestError, ProviderError
from gateway.providers import _errors
from gateway.providers._errors import Redactor
from gateway.providers._http import call_timeout, check_limits, require_time
from gateway.request import check_embedding_inputs, check_request_fields, json_schema_of
from gateway.types import (
    ChatStream,
    Completion,
    Conversation,
    Embeddings,
    Message,
    StreamSourceItem,
    validate_messages,
)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 100


@dataclass(frozen=True, slots=True)
class Call:
    """One call to one provider, as checked by the skeleton: what codecs and transports see."""

    provider: str
    model: str
    """The provider's model: what a reply that names none was answered by."""
    messages: Conversation
    temperature: float | None
    max_tokens: int | None
    json_mode: bool
    """The answer must be one JSON object: `json_mode=True`, or a `response_format` of type
    `json_object` or `json_schema`."""
    params: dict[str, Any]
    """Every other request field the caller set, in OpenAI's names (`tools`, `tool_choice`,
    `response_format`, `seed`, `n`, ...), checked by `check_request_fields`. Each codec
    forwards, translates or refuses them."""
    timeout_s: float
    stream: bool
    redact: Redactor = field(repr=False)
    """Cleans upstream error text of the key and this call's prompt texts."""

    @property
    def json_schema(self) -> Mapping[str, Any] | None:
        """The `json_schema` object (`name`, `schema`, `strict`) the answer must match."""
        return json_schema_of(self.params)


@dataclass(frozen=True, slots=True)
class EmbedCall:
    """One embedding call to one provider, as checked by the skeleton."""

    provider: str
    model: str
    inputs: tuple[str, ...]
    dimensions: int | None
    """The vector length asked of the model (OpenAI's `dimensions`); None: its own."""
    expected_dimensions: int | None
    """The vector length the answer must have (asked, or known from the policy); None: any,
    as long as every vector has the same."""
    params: dict[str, Any]
    """Every other request field the caller set (`user`, a vendor's own); each codec forwards
    or refuses them."""
    timeout_s: float
    redact: Redactor = field(repr=False)


class LLMService:
    """A client for one model on one upstream, with one connection pool of its own.

    Subclasses set `type_name` (the registry name) and implement `_send` and `_open_stream`
    (or override `complete` and `stream`). Their SDK's own retries are off: the router owns
    retries.
    """

    type_name: ClassVar[str] = ""
    embeds: ClassVar[bool] = False
    """Whether this provider implements `_embed`: only such a type may serve an embedding
    task (the policy refuses any other at load)."""

    @property
    def pool_wait_s(self) -> float:
        """The longest a call may wait for one of this provider's pooled connections before it
        is `saturated` (0 for a provider with no pool of its own)."""
        return 0.0

    @property
    def bounds_calls(self) -> bool:
        """Whether `complete` and `embed` end by themselves within `pool_wait_s` + the
        `timeout_s` they are given, raising a `ProviderError` of kind `timeout` past it. The
        router sets a timer of its own around a call to a provider that does not."""
        return False

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        check_limits(name or self.type_name, timeout_s, max_connections)
        self.name = name or self.type_name
        self.model = model or ""
        self.timeout_s = timeout_s or DEFAULT_TIMEOUT_S
        self.max_connections = max_connections or DEFAULT_MAX_CONNECTIONS

    def __repr__(self) -> str:
        # Never show credentials: only what identifies the instance.
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"

    # --- the public calls --------------------------------------------------------------------

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
        call = self._call(messages, temperature, max_tokens, json_mode, timeout_s, params, False)
        require_time(call.timeout_s, self.name)
        with _errors.mapped_by(lambda exc: self._mapped(exc, call)):
            return await self._send(call)

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
        """Text deltas as they arrive; `usage` is set on the stream once it is exhausted.

        Nothing is sent until the first delta is awaited. Failures raise `ProviderError`;
        a malformed request raises `InvalidRequestError` here, before anything is sent.
        """
        call = self._call(messages, temperature, max_tokens, json_mode, timeout_s, params, True)
        return ChatStream(self._mapped_stream(call, self._open_stream(call)), model=self.model)

    async def embed(
        self,
        inputs: str | Sequence[str],
        *,
        dimensions: int | None = None,
        expected_dimensions: int | None = None,
        timeout_s: float | None = None,
        **params: Any,
    ) -> Embeddings:
        """One vector per input, all from one model in one call. Failures raise
        `ProviderError`; an answer with the wrong count of vectors, or vectors of another
        length than `dimensions` (or `expected_dimensions`), or of mixed lengths, is an
        `invalid_response`."""
        texts = check_embedding_inputs(inputs)
        call = EmbedCall(
            provider=self.name,
            model=self.model,
            inputs=texts,
            dimensions=dimensions,
            expected_dimensions=dimensions or expected_dimensions,
            params=params,
            timeout_s=call_timeout(timeout_s, self.timeout_s),
            redact=Redactor(self._secrets(), [{"content": text} for text in texts]),
        )
        if not self.embeds:
            raise InvalidRequestError(
                f"{self.name}: provider type {self.type_name or type(self).__name__!r} "
                "cannot embed text"
            )
        require_time(call.timeout_s, self.name)
        # The error mapping reads a call's provider and redactor, which an embedding call
        # carries too.
        context = Call(
            self.name,
            call.model,
            Conversation(),
            None,
            None,
            False,
            {},
            call.timeout_s,
            False,
            call.redact,
        )
        with _errors.mapped_by(lambda exc: self._mapped(exc, context)):
            answer = await self._embed(call)
        check_vectors(answer.vectors, len(texts), call.expected_dimensions, self.name)
        return answer

    # --- what a provider implements ----------------------------------------------------------

    async def _embed(self, call: EmbedCall) -> Embeddings:
        """Send one embedding call and return its vectors (for a type that `embeds`)."""
        raise NotImplementedError(f"{type(self).__name__} sets embeds but implements no _embed")

    async def _send(self, call: Call) -> Completion:
        """Send one call and return its whole answer."""
        raise NotImplementedError(f"{type(self).__name__} implements neither complete nor _send")

    def _open_stream(self, call: Call) -> AsyncIterator[StreamSourceItem]:
        """The call's events: text deltas and tool-call pieces (alone, or in lists of those one
        read of the upstream brought), then one `StreamEnd`. Called
        by `stream` itself, so the request can be built (and refused) at once; nothing may be
        sent before the first event is awaited."""
        raise NotImplementedError(
            f"{type(self).__name__} implements neither stream nor _open_stream"
        )

    def _error(self, exc: Exception, call: Call) -> ProviderError | None:
        """The `ProviderError` an exception of this provider's client means; None if it is no
        upstream failure (a bug, passed on unchanged)."""
        return _errors.unwrapped_error(exc, provider=self.name)

    def _secrets(self) -> Iterable[str | None]:
        """What must never appear in an error's text (the API key)."""
        return ()

    async def aclose(self) -> None:
        """Close the connection pool."""

    # --- the skeleton ------------------------------------------------------------------------

    def _call(
        self,
        messages: Sequence[Message],
        temperature: float | None,
        max_tokens: int | None,
        json_mode: bool,
        timeout_s: float | None,
        params: dict[str, Any],
        stream: bool,
    ) -> Call:
        conversation = validate_messages(messages)
        check_request_fields(params, stream=stream)
        response_format = params.get("response_format")
        if isinstance(response_format, Mapping) and response_format.get("type") != "text":
            json_mode = True
        return Call(
            provider=self.name,
            model=self.model,
            messages=conversation,
            temperature=temperature,
            max_tokens=max_tokens,
            json_mode=json_mode,
            params=params,
            timeout_s=call_timeout(timeout_s, self.timeout_s),
            stream=stream,
            redact=Redactor(self._secrets(), conversation),
        )

    def _mapped(self, exc: Exception, call: Call) -> ProviderError | None:
        if isinstance(exc, GatewayError):
            return None  # already in the gateway's terms (a ProviderError, a refused request)
        return self._error(exc, call)

    async def _mapped_stream(
        self, call: Call, source: AsyncIterator[StreamSourceItem]
    ) -> AsyncIterator[StreamSourceItem]:
        # `aclosing`: closing this stream early must close the provider's too (its connection).
        async with contextlib.aclosing(source):  # type: ignore[type-var]
            require_time(call.timeout_s, self.name)
            with _errors.mapped_by(lambda exc: self._mapped(exc, call)):
                async for event in source:
                    yield event

    # --- generate, generate_json, stream_generation, get_token_usage: thin layers over the two -

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
        value = _errors.parse_untrusted_json(stripped)
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            detail = f"{exc.msg} at position {exc.pos}"
        else:  # nested too deep, or an integer past the digit limit
            detail = str(exc)
        raise ProviderError(
            f"reply is not valid JSON ({detail})",
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


def check_vectors(
    vectors: Sequence[Sequence[float]], count: int, dimensions: int | None, provider: str
) -> None:
    """An embedding answer is usable only whole and uniform: `count` vectors, each of
    `dimensions` numbers (or, with None, all of one length). Anything else is the provider's
    `invalid_response`: vectors of different lengths must never reach one caller."""
    if len(vectors) != count:
        raise ProviderError(
            f"answered {len(vectors)} vectors for {count} inputs",
            kind=ErrorKind.INVALID_RESPONSE,
            provider=provider,
        )
    want = dimensions if dimensions is not None else (len(vectors[0]) if vectors else 0)
    for index, vector in enumerate(vectors):
        if len(vector) != want:
            expected = f"{dimensions} (as asked or declared)" if dimensions else f"{want}"
            raise ProviderError(
                f"vector {index} has {len(vector)} dimensions, expected {expected}",
                kind=ErrorKind.INVALID_RESPONSE,
                provider=provider,
            )
