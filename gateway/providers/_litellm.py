"""Any model LiteLLM can reach (`model="<provider>/<name>"`), through `litellm.acompletion`
(and `litellm.aembedding` for embedding models).

LiteLLM keeps its own HTTP clients, so `max_connections` bounds the calls in flight from this
provider instead of a pool: a call that finds them all busy waits at most `pool_wait_s` for
one, then raises `ProviderSaturated` with nothing sent (LiteLLM's timeout starts after it).
Its retries are off (`num_retries=0`, `max_retries=0`): the router owns retries. Keys not
passed as `api_key` are LiteLLM's business (its env variables).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pydantic import SecretStr

from gateway.errors import ConfigurationError, ErrorKind, MissingDependencyError, ProviderError
from gateway.providers import _codec_openai, _errors
from gateway.providers._base import Call, EmbedCall, LLMService
from gateway.providers._http import (
    DEFAULT_POOL_WAIT_S,
    ConnectionSlots,
    PoolExhausted,
    check_pool_wait,
    saturated,
)
from gateway.request import OPENAI_FIELDS
from gateway.types import Completion, Embeddings, StreamSourceItem, Usage

# Without this LiteLLM downloads its price map from GitHub at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

try:
    import litellm
    import openai
except ImportError as exc:
    raise MissingDependencyError(
        "litellm package required. Install with: pip install 'gateway[litellm]'"
    ) from exc

litellm.suppress_debug_info = True  # its "Give Feedback / Get Help" banners go to stdout
litellm.telemetry = False
if "LITELLM_LOG" not in os.environ:
    # Failures reach callers as ProviderError; LiteLLM's own log lines would repeat them
    # (with request details). LITELLM_LOG=DEBUG still turns them back on.
    for _logger in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(_logger).setLevel(logging.CRITICAL)


REQUEST_FIELDS: dict[str, str] = {name: "as given (LiteLLM translates)" for name in OPENAI_FIELDS}
"""What the litellm provider does with each request field: LiteLLM takes OpenAI's fields and
translates them for its provider; one that provider cannot take fails that call (bad_request)."""


class LiteLLMService(LLMService):
    """One LiteLLM model string, e.g. `openai/gpt-4o-mini` or `bedrock/anthropic.claude-3`."""

    type_name = "litellm"
    embeds = True

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        api_version: str | None = None,
        pool_wait_s: float | None = None,
    ) -> None:
        super().__init__(
            name=name, model=model, timeout_s=timeout_s, max_connections=max_connections
        )
        check_pool_wait(self.name, pool_wait_s)
        if not self.model:
            raise ConfigurationError(
                f"{self.name}: model is required for litellm: pass model='<provider>/<model>', "
                "e.g. model='openai/gpt-4o-mini'"
            )
        self.base_url = base_url
        self.api_version = api_version
        self._api_key = SecretStr(api_key) if api_key else None
        self._slots = ConnectionSlots(
            self.max_connections, DEFAULT_POOL_WAIT_S if pool_wait_s is None else pool_wait_s
        )

    @property
    def pool_wait_s(self) -> float:
        """The longest a call waits for one of the `max_connections` slots before it is sent."""
        return self._slots.wait_s

    async def _send(self, call: Call) -> Completion:
        try:
            await self._slots.acquire()
        except PoolExhausted as exc:
            raise saturated(self.name, exc) from exc
        try:
            response = await litellm.acompletion(**self._request(call), stream=False)
        finally:
            self._slots.release()
        return _codec_openai.completion(response, provider=self.name, model=self.model)

    async def _embed(self, call: EmbedCall) -> Embeddings:
        request: dict[str, Any] = {
            "model": self.model,
            "input": list(call.inputs),
            "timeout": call.timeout_s,
            "num_retries": 0,
            "max_retries": 0,
            **self._connection(),
            **call.params,
        }
        if call.dimensions is not None:
            request["dimensions"] = call.dimensions
        try:
            await self._slots.acquire()
        except PoolExhausted as exc:
            raise saturated(self.name, exc) from exc
        try:
            response = await litellm.aembedding(**request)
        finally:
            self._slots.release()
        return _embeddings_of(response, call)

    def _open_stream(self, call: Call) -> AsyncIterator[StreamSourceItem]:
        request = self._request(call)
        request["stream_options"] = {"include_usage": True}
        return self._events(request)

    async def _events(self, request: dict[str, Any]) -> AsyncIterator[StreamSourceItem]:
        # Every choice's text passes, as LiteLLM's own streams do; the codec keeps choice 0.
        reader = _codec_openai.ChunkReader(provider=self.name, first_choice_only=False)
        try:
            await self._slots.acquire()
        except PoolExhausted as exc:
            raise saturated(self.name, exc) from exc
        try:
            stream = await litellm.acompletion(**request, stream=True)
            async with stream:
                async for chunk in stream:
                    pieces = reader.read_chunk(chunk)
                    if pieces:
                        yield pieces
        finally:
            self._slots.release()
        yield reader.end()

    def _request(self, call: Call) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": call.messages,
            "timeout": call.timeout_s,
            "num_retries": 0,
            "max_retries": 0,
            **call.params,
            **self._connection(),
        }
        request.update(
            _codec_openai.sampling_fields(
                call.temperature, call.max_tokens, json_mode=call.json_mode, params=call.params
            )
        )
        return request

    def _connection(self) -> dict[str, Any]:
        """Where and as whom LiteLLM calls: the key, base URL and API version given."""
        connection: dict[str, Any] = {}
        if self._api_key is not None:
            connection["api_key"] = self._api_key.get_secret_value()
        if self.base_url:
            connection["api_base"] = self.base_url
        if self.api_version:
            connection["api_version"] = self.api_version
        return connection

    def _error(self, exc: Exception, call: Call) -> ProviderError | None:
        return litellm_error(exc, provider=self.name, redact=call.redact)

    def _secrets(self) -> Iterable[str | None]:
        return (self._api_key.get_secret_value(),) if self._api_key else ()


def _embeddings_of(response: Any, call: EmbedCall) -> Embeddings:
    """LiteLLM's `EmbeddingResponse` (OpenAI's shape) as `Embeddings`."""
    data = response.model_dump() if hasattr(response, "model_dump") else response
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ProviderError(
            "malformed embedding answer: no 'data' list",
            kind=ErrorKind.INVALID_RESPONSE,
            provider=call.provider,
        )
    ordered = sorted(items, key=lambda item: item.get("index", 0) if isinstance(item, dict) else 0)
    vectors = []
    for item in ordered:
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list) or not all(type(x) in (int, float) for x in vector):
            raise ProviderError(
                "malformed embedding answer: an embedding is not a list of numbers",
                kind=ErrorKind.INVALID_RESPONSE,
                provider=call.provider,
            )
        vectors.append([float(x) for x in vector])
    usage = data.get("usage") or {}
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    model = data.get("model")
    return Embeddings(
        vectors=vectors,
        model=model if isinstance(model, str) and model else call.model,
        usage=Usage(input_tokens=tokens if isinstance(tokens, int) and tokens >= 0 else 0),
    )


def litellm_error(
    exc: BaseException, *, provider: str, redact: _errors.Redactor
) -> ProviderError | None:
    """Map one LiteLLM exception to the gateway's taxonomy.

    LiteLLM re-labels failures (a reset connection arrives as an InternalServerError with
    status 500, a cut stream as MidStreamFallbackError), so its own class and status come
    last: the exceptions it wrapped, innermost first, say what really happened.
    """
    status: int | None = None
    kind: ErrorKind | None
    if isinstance(exc, litellm.ContextWindowExceededError):
        kind, status = ErrorKind.CONTEXT_LENGTH, 400
    elif isinstance(exc, litellm.ContentPolicyViolationError):
        kind, status = ErrorKind.CONTENT_FILTER, 400
    else:
        kind, status = _kind_from_chain(exc)
    if kind is None:
        return None
    message = getattr(exc, "message", None) or type(exc).__name__
    return _errors.provider_error(
        redact(message), kind, provider=provider, status=status, headers=_headers(exc)
    )


def _kind_from_chain(exc: BaseException) -> tuple[ErrorKind | None, int | None]:
    """(kind, HTTP status) from the innermost exception that says what went wrong."""
    for error in reversed(list(_errors.exception_chain(exc))):
        kind = _errors.transport_kind(error)
        if kind is not None:
            return kind, None
        if _errors.is_malformed_body(error):
            return ErrorKind.INVALID_RESPONSE, None
        if isinstance(error, openai.APITimeoutError):
            return ErrorKind.TIMEOUT, None
        if isinstance(error, openai.APIConnectionError):
            return ErrorKind.CONNECTION, None
        status = getattr(error, "status_code", None)
        if isinstance(error, openai.APIStatusError):
            return _codec_openai.status_error_kind(error.status_code, error.code), error.status_code
        if isinstance(error, openai.APIError):
            if isinstance(status, int):
                return _errors.kind_for_status(status), status
            return _codec_openai.stream_error_kind(error.code, error.type), None
    return None, None


def _headers(exc: BaseException) -> dict[str, str]:
    """Response headers LiteLLM kept on the exception (where it keeps them varies by class)."""
    headers: dict[str, str] = {}
    response = getattr(exc, "response", None)
    for source in (
        getattr(response, "headers", None),
        getattr(exc, "litellm_response_headers", None),
        getattr(exc, "headers", None),
    ):
        if source:
            headers.update({str(k).lower(): str(v) for k, v in dict(source).items()})
    return headers
