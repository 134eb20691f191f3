"""What the policy knows of embedding models without being told: their vector lengths, and
which of them can be asked for shorter vectors (OpenAI's `dimensions`).

The table is small on purpose: the models most policies name. Any other model's length is
declared on its provider (`dimensions:`), and a chain of two or more embedding providers needs
every length known (see `Resolver`), so that a fallback can never answer with vectors of
another length than the ones already in a caller's index.
"""

from __future__ import annotations

from types import MappingProxyType

KNOWN_DIMENSIONS = MappingProxyType(
    {
        # OpenAI (also through Azure OpenAI and LiteLLM's `openai/` models)
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
        "text-embedding-ada-002": 1536,
        # Ollama library models
        "nomic-embed-text": 768,
        "mxbai-embed-large": 1024,
        "all-minilm": 384,
    }
)
"""Vector length by model name (the part after a `provider/` prefix, before an Ollama
`:tag`)."""

SHORTENING_PREFIX = "text-embedding-3"
"""OpenAI's models that take `dimensions` (and return vectors that long)."""


def _bare(model: str) -> str:
    return model.rsplit("/", 1)[-1].split(":", 1)[0]


def known_dimensions(model: str | None) -> int | None:
    """The vector length `KNOWN_DIMENSIONS` gives `model`; None when it is not listed."""
    return KNOWN_DIMENSIONS.get(_bare(model)) if model else None


def shortens_vectors(model: str | None) -> bool:
    """Whether `model` takes OpenAI's `dimensions` parameter."""
    return bool(model) and _bare(model or "").startswith(SHORTENING_PREFIX)
