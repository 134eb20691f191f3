"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`."""

from __future__ import annotations

from fastapi import FastAPI


def add_messages_routes(app: FastAPI) -> None:
    """Adds the Messages routes to `app`."""
