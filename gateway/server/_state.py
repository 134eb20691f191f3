"""What every route shares: the process's `ServerState` and the key checks, as FastAPI
dependencies (`require_client`, `require_admin`), with the error responses they document."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway._router import Router
from gateway.errors import PolicyError
from gateway.server._auth import Access, Denial, KeyChecker, bearer_key, denial
from gateway.server._config import ServerSettings
from gateway.server._console_feed import ConsoleFeed
from gateway.server._openai_compat import ErrorResponse

log = logging.getLogger("gateway.server")


@dataclass(eq=False)
class ServerState:
    router: Router
    settings: ServerSettings
    keys: KeyChecker
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    policy_path: str | None = None
    """The policy file the router reads (the console's editor writes it)."""
    console: ConsoleFeed | None = None
    """The ops console's recent requests and shared worker status (`_console_feed`)."""

    async def reload(self, origin: str) -> bool:
        """Re-read the policy file now; PolicyError leaves the old policy serving."""
        async with self.reload_lock:
            try:
                applied = await self.router.reload()
            except PolicyError as exc:
                log.error(
                    "policy reload (%s) rejected, the previous policy keeps serving: %s",
                    origin,
                    exc,
                )
                raise
        sha = self.router.policy.sha256
        log.info(
            "policy reload (%s): %s (sha256 %s)",
            origin,
            "applied" if applied else "unchanged",
            sha[:12],
        )
        return applied


class AccessDenied(Exception):
    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.message)
        self.denial = denial


_bearer = HTTPBearer(
    auto_error=False,
    description="A key from GATEWAY_API_KEYS (GATEWAY_ADMIN_KEYS for admin routes).",
)

ERROR = {"model": ErrorResponse}
CLIENT_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**ERROR, "description": "Missing or unknown API key."},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **CLIENT_ERRORS,
    403: {**ERROR, "description": "Not an admin key, or admin routes are disabled."},
}


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.gateway
    return state


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def _key(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def check_client(state: ServerState, key: str | None, peer: str | None) -> None:
    """Raise `AccessDenied` unless `key`, from `peer`, may use the client routes."""
    access = state.keys.client(key, peer)
    if access is not Access.GRANTED:
        raise AccessDenied(denial(access))


def require_client(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> None:
    check_client(server_state(request), _key(credentials), _peer(request))


def documented_client_key(
    credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> None:
    """Shows a `KeyFirstRoute`'s key in the OpenAPI document; the route has checked it."""


def require_admin(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> None:
    access = server_state(request).keys.admin(_key(credentials), _peer(request))
    if access is not Access.GRANTED:
        raise AccessDenied(denial(access))


class KeyFirstRoute(APIRoute):
    """A route that checks the client key before FastAPI reads the body (it reads a body
    before it runs a route's dependencies), so a client without a valid key gets 401 and
    learns nothing about its body. An admin route's own dependency still applies after; a
    client route needs none (`documented_client_key` shows the key in the OpenAPI document)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            key = bearer_key(request.headers.get("authorization"))
            check_client(server_state(request), key, _peer(request))
            return await handler(request)

        return route
