"""The `ollama` provider (also registered as `local`): `OllamaCodec` on the default
transport. Ollama has no official SDK on this path."""

from __future__ import annotations

from gateway.providers._codec_ollama import OllamaCodec
from gateway.providers._embeddings import OllamaEmbeddingCodec, WireEmbedder
from gateway.providers._transport import Transport
from gateway.settings import get_settings


class OllamaService(WireEmbedder):
    """A model served by Ollama (or anything speaking its /api/chat and /api/embed).

    Ollama needs no key; one is sent as a bearer token only for a server behind an
    authenticating proxy.
    """

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
        max_response_bytes: int | None = None,
        pool_wait_s: float | None = None,
        keep_alive: str | float | None = None,
        transport: Transport | None = None,
    ) -> None:
        settings = get_settings()
        self.keep_alive = keep_alive
        self.embedding_codec = OllamaEmbeddingCodec(keep_alive=keep_alive)
        super().__init__(
            codec=OllamaCodec(keep_alive=keep_alive),
            base_url=base_url or settings.OLLAMA_BASE_URL,
            api_key=api_key,
            transport=transport,
            name=name,
            model=model or settings.LOCAL_MODEL,
            timeout_s=timeout_s,
            max_connections=max_connections,
            max_response_bytes=max_response_bytes,
            pool_wait_s=pool_wait_s,
        )
