"""The ops console at `/console`: live chains and breakers, recent requests, the policy editor."""

from __future__ import annotations

from fastapi import FastAPI


def add_console_routes(app: FastAPI) -> None:
    """Adds the console's page and its API to `app`."""
