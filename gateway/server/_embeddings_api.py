"""OpenAI's embeddings API: `POST /v1/embeddings`."""

from __future__ import annotations

from fastapi import FastAPI


def add_embeddings_routes(app: FastAPI) -> None:
    """Adds the embeddings route to `app`."""
