"""Connection pools and timeouts for provider clients: one bounded pool per provider instance."""

from __future__ import annotations

import math
from typing import Any

from gateway.errors import ConfigurationError


def check_limits(provider: str, timeout_s: float, max_connections: int) -> None:
    """Refuse limits that cannot work, naming the option and the fix."""
    if not (isinstance(timeout_s, int | float) and timeout_s > 0 and math.isfinite(timeout_s)):
        raise ConfigurationError(
            f"{provider}: timeout_s is {timeout_s!r}; use a positive number of seconds (e.g. 30)"
        )
    if isinstance(max_connections, bool) or not (
        isinstance(max_connections, int) and max_connections >= 1
    ):
        raise ConfigurationError(
            f"{provider}: max_connections is {max_connections!r}; use a whole number >= 1"
        )


def httpx2_client(timeout_s: float, max_connections: int) -> Any:
    """The pool the official SDKs (which speak httpx2) send through."""
    import httpx2

    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout_s),
        limits=httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )
