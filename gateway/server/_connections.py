"""`serve`'s HTTP connections: uvicorn's own protocols (httptools or h11), with the bounds
uvicorn leaves out, and the start of the shutdown grace.

- **The request head.** uvicorn bounds only the idle time between requests (its keep-alive
  timer, armed when a response ends and dropped at the next byte). A connection that sends
  nothing after opening, or trickles its head a byte at a time, was held for ever. Here each
  connection must deliver a whole request head within `header_timeout_s` of opening, and after
  that within `header_timeout_s` of the first byte that follows a response (blank lines, which
  start no request in the parser, included); otherwise it is closed. So is a connection that
  sends more than `MAX_HEAD_BYTES` without completing a head: httptools sets no bound on a
  head's size, and 10 s at full speed is a lot of memory.
- **The number of connections.** A connection opened while `max_connections` are already open
  is refused: its first request is answered 503 (`too_many_connections`) and the connection is
  closed. Connections already admitted keep being served, so a flood of new connections does
  not cut off the clients already in. A refused connection gets `REFUSED_HEAD_TIMEOUT_S` for
  its head, not the full bound, so that a flood of idle connections beyond the cap holds few
  descriptors. (It is not closed at once: a response written before the request is read is
  often lost to the reset that closing with the request unread sends.)
- **The shutdown.** uvicorn asks each connection to shut down when the server stops; the first
  such call starts the grace period (`SHUTDOWN`), at whose end requests in flight are ended
  with an answer that says so (see `_disconnect`).

The head ends where uvicorn calls the app: that is the one point both parsers share, so the
guard wraps the app of its connection instead of reading either parser's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.server._collector import collect_as_a_server
from gateway.server._config import MAX_CONNECTIONS_ENV, ServerSettings
from gateway.server._disconnect import CONNECTION_LOSS, SHUTDOWN, LossNotice
from gateway.server._errors import error_body

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is a dependency, but h11 serves where it cannot be installed
    HttpToolsProtocol = H11Protocol  # type: ignore[misc,assignment]

log = logging.getLogger("gateway.server")

MAX_HEAD_BYTES = 1024 * 1024
"""The most a connection may send while no request of it is being served (a request head,
blank lines, or the unread rest of a body answered without reading it). Heads are a few KB
(h11 refuses more than 16 KB); this leaves room for the start of a body that arrives with its
head, before the app is called."""

REFUSED_HEAD_TIMEOUT_S = 1.0
"""How long a connection beyond the cap may take to send the head its 503 answers (at most the
header timeout): a real client sends it at once."""

REFUSAL_LOG_EVERY_S = 10.0
"""Refused connections are logged at most this often (with a count), not one line each: a
flood of them would otherwise flood the log too."""


class ServeConfig(uvicorn.Config):
    """uvicorn's configuration, carrying the server's settings to its connections (and, pickled,
    to worker processes)."""

    def __init__(self, app: Any, *, settings: ServerSettings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.settings = settings

    def load(self) -> None:
        """Loads the app (in each worker process), then sets the collector for serving."""
        super().load()
        collect_as_a_server()


class RefusalLog:
    """How many connections were refused since the last warning; one warning per interval."""

    def __init__(self) -> None:
        self.count = 0
        self.logged_at = float("-inf")

    def refused(self, limit: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= REFUSAL_LOG_EVERY_S:
            log.warning(
                "too many connections: refused %d over %s=%d",
                self.count,
                MAX_CONNECTIONS_ENV,
                limit,
            )
            self.logged_at, self.count = now, 0


REFUSALS = RefusalLog()


class ConnectionGuard:
    """One connection's head timer and admission, and the app it calls for each request."""

    __slots__ = (
        "app",
        "head_bytes",
        "in_flight",
        "loop",
        "loss",
        "refused",
        "settings",
        "timer",
        "transport",
    )

    def __init__(
        self, app: ASGIApp, settings: ServerSettings, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.app = app
        self.settings = settings
        self.loop = loop
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.in_flight = 0
        self.head_bytes = 0
        self.refused = False
        self.loss = LossNotice()

    def opened(self, transport: asyncio.BaseTransport, open_connections: int) -> None:
        """`open_connections`: how many are open, this one included."""
        self.transport = transport
        self.refused = open_connections > self.settings.max_connections
        self.arm()

    def received(self, size: int) -> None:
        """Data came in: if no request is being served, it starts (or continues) a head,
        which must be complete within the bound from its first byte, and within
        MAX_HEAD_BYTES."""
        if self.in_flight:
            return
        if self.timer is None:
            self.arm()
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES and self.transport is not None:
            log.debug("closing a connection that sent over %d bytes of head", MAX_HEAD_BYTES)
            self.transport.close()

    def arm(self) -> None:
        seconds = self.settings.header_timeout_s
        if self.refused:
            seconds = min(seconds, REFUSED_HEAD_TIMEOUT_S)
        self.timer = self.loop.call_later(seconds, self.head_timed_out)

    def disarm(self) -> None:
        self.head_bytes = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def head_timed_out(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            log.debug("closing a connection that sent no whole request head in time")
            self.transport.close()

    def closed(self) -> None:
        self.disarm()
        self.transport = None
        self.loss.lost()  # the request in flight, if any, ends in ClientGone

    def shutting_down(self) -> None:
        SHUTDOWN.begin(self.settings.shutdown_grace_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.disarm()  # the head is complete: uvicorn calls the app once it has parsed it
        if self.refused:
            REFUSALS.refused(self.settings.max_connections)
            await refusal(self.settings.max_connections)(scope, receive, send)
            return
        self.in_flight += 1
        # Set in the request's own task: its CancelOnDisconnect blocks find this connection.
        CONNECTION_LOSS.set(self.loss)
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def refusal(limit: int) -> JSONResponse:
    body = error_body(
        f"the server has {limit} connections open, its limit ({MAX_CONNECTIONS_ENV}); "
        "try again shortly",
        status=503,
        code="too_many_connections",
    )
    return JSONResponse(body, status_code=503, headers={"connection": "close", "retry-after": "1"})


def _settings_of(config: uvicorn.Config) -> ServerSettings:
    return config.settings if isinstance(config, ServeConfig) else ServerSettings()


class GuardedConnection:
    """The overrides that put a `ConnectionGuard` on one of uvicorn's HTTP protocols, mixed in
    before it: connection_made, data_received, connection_lost and shutdown are asyncio's and
    uvicorn's protocol interface, and `app` the one attribute replaced (the app each request
    is run with)."""

    app: Any
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    transport: asyncio.Transport

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        self.guard = ConnectionGuard(self.app, _settings_of(config), self.loop)
        self.app = self.guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.guard.opened(cast(asyncio.Transport, transport), len(self.connections))

    def data_received(self, data: bytes) -> None:
        self.guard.received(len(data))
        if not self.transport.is_closing():
            super().data_received(data)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed()
        super().connection_lost(exc)  # type: ignore[misc]

    def shutdown(self) -> None:
        self.guard.shutting_down()
        super().shutdown()  # type: ignore[misc]


class HttpToolsConnection(GuardedConnection, HttpToolsProtocol):
    pass


class H11Connection(GuardedConnection, H11Protocol):
    pass


def connection_class(parser: str) -> type[asyncio.Protocol]:
    """The guarded protocol for uvicorn's `http` setting: "httptools" or "h11"."""
    return HttpToolsConnection if parser == "httptools" else H11Connection
