"""The ASGI middleware every request passes first: one access-log line per request, and the
request body size cap.

The access line names the route, status, time, task, provider, attempts and cost; never the
prompt, the answer, the query string or any header (keys travel in headers). Every text field
goes through `escaped`: the path and the client's address are the client's to choose.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.server._config import BODY_TIMEOUT_ENV, MAX_BODY_BYTES_ENV
from gateway.server._errors import error_body
from gateway.types import Attempt

access_log = logging.getLogger("gateway.access")

TELEMETRY_SCOPE_KEY = "fastapi.telemetry"
"""Where FastAPI keeps a request's telemetry when its native OpenTelemetry is on."""

ACCESS_KEY = "gateway.access"
"""The scope key under which handlers leave what the access line should say."""

CLIENT_CLOSED = 499
"""Logged (never sent) when the client went away before its answer was ready."""


@dataclass(eq=False)
class AccessRecord:
    task: str | None = None
    provider: str | None = None
    attempts: Sequence[Attempt] = ()
    cost_usd: float | None = None
    outcome: str | None = None
    status: int | None = None
    """Overrides the HTTP status in the log, e.g. a stream that ended with an error event."""

    def answered(self, routed: Routed) -> None:
        """Notes who answered a routed request, after which attempts, at what cost."""
        self.provider, self.attempts, self.cost_usd = (
            routed.provider,
            routed.attempts,
            routed.cost_usd,
        )


class Routed(Protocol):
    """A routed answer, whole or streamed, as the access line reads it."""

    @property
    def provider(self) -> str | None: ...
    @property
    def attempts(self) -> Sequence[Attempt]: ...
    @property
    def cost_usd(self) -> float | None: ...


def attempts_detail(attempts: Sequence[Attempt]) -> str:
    """`mini:server_error,sonnet:success`: as the access line and x-gateway-attempts-detail
    show them."""
    return ",".join(f"{a.provider}:{a.outcome}" for a in attempts)


def access_record(scope: Scope) -> AccessRecord:
    record = scope.get(ACCESS_KEY)
    if not isinstance(record, AccessRecord):
        record = scope[ACCESS_KEY] = AccessRecord()
    return record


class Front:
    """Each HTTP request's access line, and the body limit: bodies over `max_bytes` get 413
    before the app parses any of them.

    A declared Content-Length is checked up front. Then a body is read (at most `max_bytes` +
    one chunk) and replayed to the app, except on `reads_own_body`: that route reads its body
    itself, once, and raises `BodyTooLarge` as soon as it is over the limit. It is also
    served from here, with the app's exception handlers but without the layers between (the
    router, FastAPI's exit stack): a stream may stay open for minutes, and each layer's frame
    would stay with it.

    A body that has not all arrived `body_timeout_s` after the read began gets 408 (the chat
    route bounds its own read the same way).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        reads_own_body: Route | None = None,
        body_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.reads_own_body = reads_own_body
        self._own: ASGIApp | None = None
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = access_record(scope)
        noted = StatusNoted(send)
        try:
            await self._limited(scope, receive, noted)
        finally:
            log_access(scope, record, noted.status or 500, time.perf_counter() - started)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await too_large_response(self.max_bytes)(scope, receive, send)
            return
        own = self.reads_own_body
        if own is not None:
            match, child_scope = own.matches(scope)
            if match is Match.FULL:
                if TELEMETRY_SCOPE_KEY in scope:
                    # FastAPI's own OpenTelemetry names a request's span after the route its
                    # router selects: with it on, the request goes the router's way.
                    await self.app(scope, receive, send)
                    return
                scope["route"] = own
                scope.update(child_scope)
                await self._own_app(scope)(scope, receive, send)
                return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body, more = await self._read(receive)
        except BodyTooLarge:
            await too_large_response(self.max_bytes)(scope, receive, send)
            return
        except TimeoutError:
            access_record(scope).outcome = "body_timeout"
            await body_timeout_response(self.body_timeout_s or 0)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if more is not None:  # the client went away while sending
            await self.app(scope, _first(more, receive), send)
            return
        await self.app(scope, replay, send)

    def _own_app(self, scope: Scope) -> ASGIApp:
        """`reads_own_body`'s endpoint, its errors answered by the app's exception handlers
        (built once the app's handlers are all registered, at its first request)."""
        if self._own is None:
            assert self.reads_own_body is not None
            # As Starlette's own stack does: a handler for 500 or Exception belongs to the
            # outermost error middleware, which still wraps this one.
            handlers = {
                key: handler
                for key, handler in scope["app"].exception_handlers.items()
                if key not in (500, Exception)
            }
            self._own = ExceptionMiddleware(self.reads_own_body.app, handlers=handlers)
        return self._own

    async def _read(self, receive: Receive) -> tuple[bytes, Message | None]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


class StatusNoted:
    """`send`, noting the status of the response it starts (0 until then)."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


def log_access(scope: Scope, record: AccessRecord, status: int, seconds: float) -> None:
    """The request's access line (`status`: what was sent; the record may override it)."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(_line(scope, record, status, seconds))


def _line(scope: Scope, record: AccessRecord, status: int, seconds: float) -> str:
    client = scope.get("client")
    parts = [
        f"{escaped(client[0]) if client else '-'} "
        f'"{escaped(scope["method"])} {escaped(scope["path"])}"',
        str(record.status or status),
        f"{seconds * 1000:.1f}ms",
    ]
    if record.task is not None:
        parts.append(f"task={escaped(record.task)}")
    if record.provider is not None:
        parts.append(f"provider={escaped(record.provider)}")
    if record.attempts:
        parts.append("attempts=" + escaped(attempts_detail(record.attempts)))
    if record.cost_usd is not None:
        parts.append(f"cost_usd={record.cost_usd:.8f}")
    if record.outcome is not None:
        parts.append(f"outcome={escaped(record.outcome)}")
    return " ".join(parts)


# What a log line must not hold as is. Line boundaries a log reader may split at (CR, LF, VT,
# FF, FS, GS, RS, NEL, U+2028, U+2029) would let a client write a line of its own choosing: the
# decoded path holds whatever the client percent-encodes, and uvicorn takes the client's
# address from X-Forwarded-For when the peer is a trusted proxy. The other C0 and C1 controls
# and DEL include terminal escape sequences, and the bidirectional controls can make a
# terminal show the line's text in another order. A space, `"` and `\` are escaped too, so
# that every field stays one field (an address of `1.2.3.4 "POST /api/v1/policy/reload" 200`
# would read as a request) and an escape in the log always stands for one character.
_UNSAFE = re.compile(r'[\x00-\x20\x7f-\x9f"\\\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]')
_NAMED = {"\n": r"\n", "\r": r"\r", "\t": r"\t", '"': r"\"", "\\": r"\\"}


def escaped(text: str) -> str:
    r"""`text` as a log line may show it: `\n`, `\r`, `\t`, `\"` and `\\`, `\xNN` for the other
    characters `_UNSAFE` matches below U+0100 and `\uNNNN` above; the rest as it is."""
    # Runs for each field of each access line: one search, and a copy only when there is
    # something to escape.
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class BodyTooLarge(Exception):
    """The request body is over the server's limit (answered 413 by `too_large_response`)."""


def too_large_response(max_bytes: int) -> Response:
    """413, closing the connection: the rest of the body is left unread."""
    body = error_body(
        f"the request body is over {max_bytes} bytes; send less (the server's limit "
        f"is {MAX_BODY_BYTES_ENV})",
        status=413,
        code="request_too_large",
    )
    return JSONResponse(body, status_code=413, headers={"connection": "close"})


class BodyTimeout(Exception):
    """The request body did not all arrive in time (answered 408 by `body_timeout_response`)."""


def body_timeout_response(seconds: float) -> Response:
    """408, closing the connection: the rest of the body is left unread."""
    body = error_body(
        f"the request body did not arrive within {seconds:g} s; send it at once (the "
        f"server's limit is {BODY_TIMEOUT_ENV})",
        status=408,
        code="request_timeout",
    )
    return JSONResponse(body, status_code=408, headers={"connection": "close"})


def _first(message: Message, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return message
        return await receive()

    return again


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
