"""`gateway serve`: the HTTP gateway, OpenAI-compatible, around one shared `Router` a process.

    create_app(policy_path, settings=None, handle_sighup=False)
        the ASGI app (FastAPI), for embedding or testing
    serve(policy_path, host, port, workers, banner=None)
        run it under uvicorn; returns an exit code
    ServerSettings
        the server's settings (keys, limits, policy watch), read from the environment

docs/server.md describes the routes, auth, limits and signals. The modules with a leading
underscore are the implementation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ServerSettings", "create_app", "serve"]

_EXPORTS = {
    "create_app": "gateway.server._app",
    "serve": "gateway.server._process",
    "ServerSettings": "gateway.server._config",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports lazily
    from gateway.server._app import create_app
    from gateway.server._config import ServerSettings
    from gateway.server._process import serve


def __getattr__(name: str) -> Any:
    # Imported on first use: `gateway.server` must not load FastAPI or prometheus_client before
    # `serve` has set PROMETHEUS_MULTIPROC_DIR for its workers.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
