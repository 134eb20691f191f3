"""Embeddings on the wire: OpenAI's `/embeddings` and Ollama's `/api/embed`.

An `EmbeddingCodec` builds one embedding call's request and reads its answer into
`Embeddings`; `WireEmbedder` is a `WireService` that also embeds, sending that request through
the provider's own transport (pool, bounds, proxy, SDK client) and explaining its failures with
the provider's chat codec, whose error bodies are the same. The vectors are asked for as
floats: the server encodes them for its own clients.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.errors import ErrorKind, InvalidRequestError, ProviderError
from gateway.providers._base import EmbedCall
from gateway.providers._codec import WireRequest, refuse_unhonoured
from gateway.providers._http import PoolExhausted, saturated
from gateway.providers._wire import WireService
from gateway.types import Embeddings, Usage


class EmbeddingCodec(ABC):
    """One embedding wire protocol. Stateless."""

    @abstractmethod
    def path(self) -> str:
        """The request's path below the provider's base URL."""

    @abstractmethod
    def body(self, call: EmbedCall, model: str) -> dict[str, Any]:
        """The JSON body for `call`, naming `model`; `InvalidRequestError` for a field the
        protocol cannot honour."""

    @abstractmethod
    def embeddings(self, data: Any, call: EmbedCall) -> Embeddings:
        """The answer from its parsed JSON; a reply of the wrong shape is an
        `invalid_response`."""


class OpenAIEmbeddingCodec(EmbeddingCodec):
    """`POST /embeddings`: `{"data": [{"index", "embedding"}], "model", "usage"}`."""

    def path(self) -> str:
        return "/embeddings"

    def body(self, call: EmbedCall, model: str) -> dict[str, Any]:
        if "encoding_format" in call.params:
            raise InvalidRequestError(
                "encoding_format is the gateway's to choose with a provider (it asks for "
                "floats); ask the gateway's /v1/embeddings for base64 instead"
            )
        body: dict[str, Any] = {"model": model, "input": list(call.inputs), **call.params}
        body["encoding_format"] = "float"
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        return body

    def embeddings(self, data: Any, call: EmbedCall) -> Embeddings:
        items = _field(data, "data", list, call)
        by_index: dict[int, list[float]] = {}
        for position, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise _malformed(call, f"data[{position}] is not an object")
            index = item.get("index", position)
            if type(index) is not int or index in by_index:
                raise _malformed(call, f"data[{position}].index is {index!r}")
            by_index[index] = _vector(item.get("embedding"), f"data[{position}]", call)
        if sorted(by_index) != list(range(len(by_index))):
            raise _malformed(call, "the indices of data are not 0..n-1")
        usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
        tokens = usage.get("prompt_tokens", usage.get("total_tokens", 0))
        model = data.get("model")
        return Embeddings(
            vectors=[by_index[i] for i in range(len(by_index))],
            model=model if isinstance(model, str) and model else call.model,
            usage=Usage(input_tokens=tokens if type(tokens) is int and tokens >= 0 else 0),
        )


OLLAMA_FIELDS = frozenset({"truncate", "keep_alive", "options"})
"""The fields of Ollama's /api/embed besides `model` and `input`."""


class OllamaEmbeddingCodec(EmbeddingCodec):
    """`POST /api/embed`: `{"model", "embeddings": [[...]], "prompt_eval_count"}`."""

    def __init__(self, *, keep_alive: str | float | None = None) -> None:
        self.keep_alive = keep_alive

    def path(self) -> str:
        return "/api/embed"

    def body(self, call: EmbedCall, model: str) -> dict[str, Any]:
        refuse_unhonoured(
            {"dimensions": call.dimensions, **call.params},
            {"dimensions": "Ollama's models answer vectors of their own length only"},
        )
        unknown = sorted(set(call.params) - OLLAMA_FIELDS)
        if unknown:
            raise InvalidRequestError(
                f"{unknown[0]}: Ollama's /api/embed has no such field (it takes "
                f"{', '.join(sorted(OLLAMA_FIELDS))})"
            )
        body: dict[str, Any] = {"model": model, "input": list(call.inputs)}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        body.update(call.params)
        return body

    def embeddings(self, data: Any, call: EmbedCall) -> Embeddings:
        rows = _field(data, "embeddings", list, call)
        tokens = data.get("prompt_eval_count", 0)
        model = data.get("model")
        return Embeddings(
            vectors=[_vector(row, f"embeddings[{i}]", call) for i, row in enumerate(rows)],
            model=model if isinstance(model, str) and model else call.model,
            usage=Usage(input_tokens=tokens if type(tokens) is int and tokens >= 0 else 0),
        )


class WireEmbedder(WireService):
    """A `WireService` whose upstream also embeds, with `embedding_codec`."""

    embeds: ClassVar[bool] = True
    embedding_codec: EmbeddingCodec

    def embedding_request(self, call: EmbedCall) -> WireRequest:
        """The request `call` sends (the SDK methods' `extra_*` keywords as in chat)."""
        codec = self.embedding_codec
        return self.wire_request(codec.body(call, self.wire_model), codec.path(), call.timeout_s)

    async def _embed(self, call: EmbedCall) -> Embeddings:
        request = self.embedding_request(call)
        try:
            data = await self.transport.send(request)
        except PoolExhausted as exc:
            raise saturated(self.name, exc) from exc
        return self.embedding_codec.embeddings(data, call)


def _field(data: Any, name: str, kind: type, call: EmbedCall) -> Any:
    value = data.get(name) if isinstance(data, Mapping) else None
    if not isinstance(value, kind):
        raise _malformed(call, f"no {name!r} list in the answer")
    return value


def _vector(value: Any, where: str, call: EmbedCall) -> list[float]:
    if not isinstance(value, list) or not value:
        raise _malformed(call, f"{where} is not a list of numbers")
    vector: list[float] = []
    for number in value:
        if type(number) not in (float, int) or not math.isfinite(number):
            raise _malformed(call, f"{where} holds {type(number).__name__} {number!r:.20}")
        vector.append(float(number))
    return vector


def _malformed(call: EmbedCall, detail: str) -> ProviderError:
    return ProviderError(
        f"malformed embedding answer: {detail}",
        kind=ErrorKind.INVALID_RESPONSE,
        provider=call.provider,
    )
