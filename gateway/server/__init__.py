"""`gateway serve`: the HTTP gateway, OpenAI-compatible, around one shared `Router` a process.

    create_app(policy_path)   the ASGI app (FastAPI), for embedding or testing
    serve(policy_path, host, port, workers, simulate)   run it under uvicorn; returns an exit code

docs/server.md describes the routes, auth, limits and signals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app", "serve"]

if TYPE_CHECKING:
    from gateway.server.app import create_app
    from gateway.server.process import serve


def __getattr__(name: str) -> Any:
    # Imported on first use: `gateway.server` must not load FastAPI or prometheus_client before
    # `serve` has set PROMETHEUS_MULTIPROC_DIR for its workers.
    if name == "create_app":
        from gateway.server.app import create_app

        return create_app
    if name == "serve":
        from gateway.server.process import serve

        return serve
    raise AttributeError(f"module 'gateway.server' has no attribute {name!r}")
