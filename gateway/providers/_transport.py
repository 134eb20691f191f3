"""Transports: how a codec's requests travel and come back as parsed JSON.

`Transport` is what a `WireService` sends through. `HTTPTransport` does the part every HTTP
transport shares, once: an error status becomes `UpstreamStatusError` (its body read, bounded,
for the codec to explain), a whole answer is parsed as JSON, and a stream is framed into
events, as server-sent events (`SSEDecoder`: the SSE spec's `event:` names and multi-line
`data:`; OpenAI's `[DONE]` ends it) or as JSON lines (`NDJSONDecoder`). Its subclasses only
open one exchange: `AiohttpTransport` (the default) over a real connection pool,
`MockTransport` in memory, for tests that hand a provider a handler instead of a server.

A pooled transport holds `slots` (`ConnectionSlots`, one per connection): each exchange takes
one before it is sent and keeps it until it ends, waiting at most `pool_wait_s` for one to come
free; past it `PoolExhausted` is raised with nothing sent, and the provider raises it as
`ProviderSaturated` (the attempt is `saturated`, never the provider's failure). The request's
`timeout_s` starts once the slot is held.

An answer's size is bounded after decompression, as it is read (`max_response_bytes`): a
whole answer past it, a stream event past it, or a stream past `STREAM_BYTES_FACTOR` times
it raises `ResponseTooLargeError` once the bound is crossed, never after holding the rest.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import ssl
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import msgspec

from gateway.errors import ProviderError
from gateway.providers import _errors
from gateway.providers._base import Call
from gateway.providers._codec import WireEvent, WireRequest
from gateway.providers._http import (
    DEFAULT_POOL_WAIT_S,
    ConnectionSlots,
    PoolExhausted,
    default_tls,
    sdk_post,
)

if TYPE_CHECKING:
    import aiohttp

ERROR_BODY_LIMIT = 64 * 1024
"""How much of an error response is read: enough for any JSON error, bounded for any other."""

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""The largest answer (after decompression) a provider accepts unless told otherwise.

The longest real answers are far below it: 128k output tokens are about 0.5 MB of text,
3 MB with every character JSON-escaped; 16 MiB leaves room for `n` choices and logprobs
while keeping one hostile body from costing more than that (and its parse) in memory."""

STREAM_BYTES_FACTOR = 8
"""A stream may carry this many times `max_response_bytes` in all (128 MiB by default).

Each stream event repeats its framing (id, model, created, ~150-250 bytes) for a few
characters of text, so a stream's bytes run to ~50 times its text; nothing of them is held,
only the text, so the bound on the whole stream can be looser than on one answer."""


_encode_json = msgspec.json.Encoder().encode


def request_body(body: dict[str, Any]) -> bytes:
    """`body` as the JSON bytes of a request, meaning the same as `json.dumps(body)`.

    msgspec encodes (~0.2 µs a request against ~2.2); it writes UTF-8 where json.dumps
    writes `\\u` escapes, which every JSON parser reads the same. It writes NaN and Infinity
    as null, though, which would change a value the caller sent: an encoding holding null is
    made again by `json.dumps`, as is anything msgspec refuses, so those requests go (or
    fail) exactly as the standard library has them.
    """
    try:
        encoded = _encode_json(body)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.MsgspecError):
        return json.dumps(body).encode()
    return json.dumps(body).encode() if b"null" in encoded else encoded


class ResponseTooLargeError(Exception):
    """The upstream's answer (after decompression) went past the provider's bound."""

    def __init__(self, limit: int, what: str = "answer") -> None:
        super().__init__(f"upstream {what} is larger than {limit} bytes")
        self.limit = limit
        self.what = what


class UpstreamStatusError(Exception):
    """An HTTP error response, before its codec has said what it means."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


_NO_SLOTS: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class Transport(ABC):
    """Sends a `WireRequest`; answers with parsed JSON, or a stream of `WireEvent`s.

    `slots`, when the transport has a pool, bounds the exchanges in flight and the wait for
    one (`ConnectionSlots`); None: the transport waits for nothing of its own.
    """

    slots: ConnectionSlots | None = None
    bounds_send: bool = False
    """Whether `send` ends by itself within `request.timeout_s` of holding a connection, with
    an error the transport maps to a timeout: a caller then needs no timer of its own."""

    @abstractmethod
    async def send(self, request: WireRequest) -> Any:
        """The parsed JSON of a successful answer. An error status raises
        `UpstreamStatusError` (or the transport's own error, which `error` maps)."""

    @abstractmethod
    def events(self, request: WireRequest) -> AsyncIterator[list[WireEvent]]:
        """The stream's events, framed as `request.framing` says, in the groups one read of
        the upstream brought (none empty): under load many events come in one read, and a
        group travels to the client as one write. Nothing is sent before the first group is
        awaited. Closing the iterator closes the exchange."""

    def error(self, exc: Exception, call: Call) -> ProviderError | None:
        """The `ProviderError` one of this transport's own failures means; None for others."""
        return _errors.unwrapped_error(exc, provider=call.provider)

    async def aclose(self) -> None:  # noqa: B027 - optional: not every transport holds a pool
        """Close the connection pool."""


GROUP_LINES = 64
"""The most lines of one read that make one group of events (about 30 events of a chat
stream): enough that a group's trip to the client costs little per event, few enough that
a read holding a whole answer does not hold back its first token for long."""


class SDKErrorMap(Protocol):
    def __call__(
        self, exc: BaseException, *, provider: str, redact: _errors.Redactor
    ) -> ProviderError | None: ...


class SDKTransport(Transport):
    """Sends through an official SDK client's own `post()` (its documented way to call an
    endpoint without its typed wrapper): the SDK owns the base URL, auth, timeouts, the pool
    and its error classes, which `to_error` maps; the codec still builds the body and reads
    the JSON. `stream_cls` is the SDK's `AsyncStream[object]`.

    `slots`, as many as the SDK's pool has connections, are taken before the SDK is called:
    the SDK's own wait for a connection is not told apart from a slow connect on its aiohttp
    adapter (both are its `connect` timeout), so the wait is bounded here, where it is known
    for what it is. Should the SDK's pool still run dry (httpx2's `PoolTimeout`), that too is
    `PoolExhausted`.
    """

    def __init__(
        self,
        client: Any,
        http_client: Any,
        *,
        stream_cls: Any,
        to_error: SDKErrorMap,
        slots: ConnectionSlots | None = None,
    ) -> None:
        self.client = client
        self._http = http_client
        self._stream_cls = stream_cls
        self._to_error = to_error
        self.slots = slots

    async def send(self, request: WireRequest) -> Any:
        async with self.slots or _NO_SLOTS:
            try:
                return await sdk_post(
                    self.client,
                    request.path,
                    request.body,
                    request.timeout_s,
                    headers=request.extra_headers,
                    query=request.query,
                )
            except Exception as exc:
                dry = self._pool_ran_dry(exc, request)
                if dry is None:
                    raise
                raise dry from exc

    async def events(self, request: WireRequest) -> AsyncIterator[list[WireEvent]]:
        async with self.slots or _NO_SLOTS:
            try:
                stream = await sdk_post(
                    self.client,
                    request.path,
                    request.body,
                    request.timeout_s,
                    headers=request.extra_headers,
                    query=request.query,
                    stream_cls=self._stream_cls,
                )
            except Exception as exc:
                dry = self._pool_ran_dry(exc, request)
                if dry is None:
                    raise
                raise dry from exc
            async with stream:
                async for event in stream:  # the SDK's stream gives its events one by one
                    yield [WireEvent(None, event)]

    def _pool_ran_dry(self, exc: Exception, request: WireRequest) -> PoolExhausted | None:
        """`PoolExhausted` for the SDK's own pool timeout (httpx2's `PoolTimeout`, which the
        SDKs wrap in their `APITimeoutError`); None for any other exception."""
        for error in _errors.exception_chain(exc):
            if type(error).__name__ == "PoolTimeout" and type(error).__module__.startswith("httpx"):
                size = self.slots.size if self.slots is not None else None
                return PoolExhausted(size, f"the SDK pool's timeout ({request.timeout_s:g} s)")
        return None

    def error(self, exc: Exception, call: Call) -> ProviderError | None:
        return self._to_error(exc, provider=call.provider, redact=call.redact)

    async def aclose(self) -> None:
        await self.client.close()
        await self._http.aclose()


class HTTPResponse(Protocol):
    """The little of an HTTP response `HTTPTransport` reads."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up by lower-case name."""
        ...

    async def read(self, limit: int = -1) -> bytes:
        """The body, or its first `limit` bytes (all of them when it is longer)."""
        ...

    async def body(self, limit: int) -> bytes:
        """The whole body; past `limit` bytes, `ResponseTooLargeError` without holding more."""
        ...

    def line_batches(self, max_line: int) -> AsyncIterator[list[bytes]]:
        """The body's lines, without their LF, as lists: each the complete lines one read
        brought (a stream's events come many to a read; one list each saves a hop through
        the generators per line). A line longer than `max_line` raises
        `ResponseTooLargeError` before more of it is held."""
        ...


class HTTPTransport(Transport):
    """A transport over HTTP: subclasses open one exchange, this does the rest.

    `max_response_bytes` bounds what one answer may hold once decompressed (see
    `DEFAULT_MAX_RESPONSE_BYTES`); past it the exchange raises `ResponseTooLargeError`,
    which `error` makes an `invalid_response`.
    """

    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    @abstractmethod
    def open(
        self, request: WireRequest, *, stream: bool
    ) -> contextlib.AbstractAsyncContextManager[HTTPResponse]:
        """POST `request`; the response's body is read inside the block. `request.timeout_s`
        bounds the whole exchange, or with `stream` the connection and each wait for data."""

    async def send(self, request: WireRequest) -> Any:
        limit = self.max_response_bytes
        async with self.slots or _NO_SLOTS, self.open(request, stream=False) as response:
            if response.status >= 400:
                raise await _status_error(response)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                # Too long as announced (a compressed body is announced smaller than it is,
                # and is caught as it is read): no need to read any of it.
                raise ResponseTooLargeError(limit)
            return _errors.parse_untrusted_json(await response.body(limit))

    async def events(self, request: WireRequest) -> AsyncIterator[list[WireEvent]]:
        limit = self.max_response_bytes
        total_limit = limit * STREAM_BYTES_FACTOR
        async with self.slots or _NO_SLOTS, self.open(request, stream=True) as response:
            if response.status >= 400:
                raise await _status_error(response)
            decoder = SSEDecoder(limit) if request.framing == "sse" else NDJSONDecoder()
            feed = decoder.feed
            total = 0
            async for batch in response.line_batches(limit):
                # The bytes of the lines and of the line ends the split took off.
                total += sum(map(len, batch)) + len(batch)
                if total > total_limit:
                    raise ResponseTooLargeError(total_limit, "stream")
                # A read may bring a whole answer: cut into groups, so that its first events
                # are on their way before the last are decoded.
                for start in range(0, len(batch), GROUP_LINES):
                    events, failure = feed(batch[start : start + GROUP_LINES])
                    if events:
                        yield events
                    if failure is not None:
                        raise failure
                    if decoder.done:
                        return
                # Keep nothing of this read while the next is awaited: a stream held open by a
                # quiet upstream would otherwise keep its last lines and events alive.
                del batch, events

    def error(self, exc: Exception, call: Call) -> ProviderError | None:
        if isinstance(exc, ResponseTooLargeError):
            return _errors.oversized_error(exc.what, exc.limit, provider=call.provider)
        mapped = _errors.unwrapped_error(exc, provider=call.provider)
        if mapped is None and isinstance(exc, ValueError):
            # Bad JSON or bad UTF-8: not what the protocol promises.
            return _errors.malformed_error(exc, provider=call.provider)
        return mapped


async def _status_error(response: HTTPResponse) -> UpstreamStatusError:
    return UpstreamStatusError(
        response.status, response.headers, await response.read(ERROR_BODY_LIMIT)
    )


class SSEDecoder:
    """Server-sent events as the SSE spec frames them, fed the lines as they are read.

    `event:` names the event, `data:` lines (joined with newlines) carry it, a blank line
    dispatches it, a line starting with `:` is a comment, and an event the stream cut before
    its blank line is never dispatched. Lines end in LF or CRLF. Data of `[DONE]` (OpenAI's
    end marker) sets `done`; any other data is parsed as JSON. `id` and `retry` serve
    reconnection, which a chat stream never does, and are ignored. An event whose data lines
    add up to more than `max_event` bytes raises `ResponseTooLargeError`.
    """

    __slots__ = ("_data", "_event", "_max_event", "_size", "done")

    def __init__(self, max_event: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self._event: str | None = None
        self._data: list[bytes] = []
        self._size = 0
        self._max_event = max_event
        self.done = False

    def feed(self, lines: Iterable[bytes]) -> tuple[list[WireEvent], Exception | None]:
        """The events `lines` complete, in order, none after the end marker; and the error of
        an event that could not be read (bad JSON or UTF-8, too large), which ends them: the
        events before it are the caller's to pass on before it raises it. Each line comes
        without its LF (a CR before it may remain), as `HTTPResponse.line_batches` gives it.
        """
        found: list[WireEvent] = []
        try:
            self._feed(lines, found)
        except (ValueError, ResponseTooLargeError) as exc:
            return found, exc
        return found, None

    def _feed(self, lines: Iterable[bytes], found: list[WireEvent]) -> None:
        data = self._data
        for raw in lines:
            # Most lines are `data: {...}` or the blank line after it: those two first.
            if raw.startswith(b"data:"):
                value = raw[5:].rstrip(b"\r")
                if value.startswith(b" "):
                    value = value[1:]
                # Each line is bounded by the transport; many `data:` lines make one event too.
                self._size += len(value)
                if self._size > self._max_event:
                    raise ResponseTooLargeError(self._max_event, "stream event")
                data.append(value)
            elif not raw or raw == b"\r":
                if not data:
                    continue
                payload = data[0] if len(data) == 1 else b"\n".join(data)
                name, self._event, self._size = self._event, None, 0
                data.clear()
                if payload == b"[DONE]":
                    self.done = True
                    return
                # Decoded here: SSE is UTF-8 by definition, and json.loads would otherwise
                # sniff the encoding. Bad UTF-8 raises UnicodeDecodeError, a ValueError.
                found.append(WireEvent(name, _errors.parse_untrusted_json(payload.decode())))
            elif raw.startswith(b"event:"):
                self._event = raw[6:].strip().decode("utf-8")


class NDJSONDecoder:
    """One event per non-blank line of JSON."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def feed(self, lines: Iterable[bytes]) -> tuple[list[WireEvent], ValueError | None]:
        """The events of `lines`, one each that is not blank; and, as `SSEDecoder.feed`, the
        error of a line that is not JSON, which ends them."""
        found: list[WireEvent] = []
        try:
            for line in lines:
                if line.strip():
                    found.append(WireEvent(None, _errors.parse_untrusted_json(line)))
        except ValueError as exc:
            return found, exc
        return found, None


# --- aiohttp: the default ---------------------------------------------------------------------


class EnvironmentProxies:
    """HTTP(S)_PROXY and NO_PROXY, as the SDKs' clients apply them.

    Read from the environment when the transport is made, and decided once per scheme and
    host: aiohttp's own `trust_env` looks them (and ~/.netrc) up again on every request,
    which costs more than the rest of the call.
    """

    def __init__(self) -> None:
        proxies = urllib.request.getproxies_environment()
        self._no_proxy = [
            entry.strip().lstrip(".").lower()
            for entry in proxies.pop("no", "").split(",")
            if entry.strip()
        ]
        self._proxies = proxies
        self._by_origin: dict[tuple[str, str], str | None] = {}

    def for_url(self, url: str) -> str | None:
        if not self._proxies:
            return None
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        if origin not in self._by_origin:
            proxy = self._proxies.get(parts.scheme) or self._proxies.get("all")
            if proxy and self._bypassed(parts.hostname or "", parts.port):
                proxy = None
            self._by_origin[origin] = proxy
        return self._by_origin[origin]

    def _bypassed(self, host: str, port: int | None) -> bool:
        for entry in self._no_proxy:
            if entry == "*":
                return True
            name, _, entry_port = entry.partition(":")
            if entry_port and str(port) != entry_port:
                continue
            if host == name or host.endswith("." + name):
                return True
        return False


class AiohttpTransport(HTTPTransport):
    """A pool of up to `max_connections` connections, over aiohttp.

    An exchange that finds them all busy waits at most `pool_wait_s` for one (`slots`), then
    raises `PoolExhausted`; aiohttp's own pool limit is the same size, so it never waits.
    aiohttp's total timeout bounds a whole answer from connecting to its last byte
    (`bounds_send`).
    """

    bounds_send = True

    def __init__(
        self,
        *,
        max_connections: int = 100,
        tls: ssl.SSLContext | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        pool_wait_s: float = DEFAULT_POOL_WAIT_S,
    ) -> None:
        self.max_connections = max_connections
        self.slots = ConnectionSlots(max_connections, pool_wait_s)
        self.max_response_bytes = max_response_bytes
        self._tls = tls
        # Made on first use: an aiohttp session belongs to the event loop it was made in.
        self._session: aiohttp.ClientSession | None = None
        self._proxies = EnvironmentProxies()

    def open(self, request: WireRequest, *, stream: bool) -> _AiohttpExchange:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, ssl=self._tls or default_tls()
                ),
            )
        timeout = _aiohttp_timeout(request.timeout_s, stream)
        return _AiohttpExchange(
            self._session.post(
                request.url,
                data=request_body(request.body),
                headers=request.headers,
                params=dict(request.query) if request.query else None,
                timeout=timeout,
                allow_redirects=False,
                proxy=self._proxies.for_url(request.url),
            )
        )

    def error(self, exc: Exception, call: Call) -> ProviderError | None:
        kind = _errors.aiohttp_kind(exc)
        if kind is not None:
            return _errors.transport_error(exc, kind, provider=call.provider)
        return super().error(exc, call)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


# aiohttp's timeouts are immutable, so one per (timeout_s, stream) serves every request; a
# request under a deadline has a timeout of its own, hence a bounded cache.
@functools.lru_cache(maxsize=32)
def _aiohttp_timeout(timeout_s: float, stream: bool) -> aiohttp.ClientTimeout:
    """`timeout_s` bounds a whole answer; a stream, its connection and each wait for data."""
    import aiohttp

    if stream:
        return aiohttp.ClientTimeout(sock_connect=timeout_s, sock_read=timeout_s)
    # aiohttp rounds a timeout of 5 s or more up to the next whole second of the loop's clock
    # (to share timers); here the bound is timeout_s as configured.
    return aiohttp.ClientTimeout(total=timeout_s, ceil_threshold=math.inf)


class _AiohttpExchange:
    """One aiohttp request as an `HTTPResponse` context: the response is read inside it."""

    __slots__ = ("_pending", "_response")

    def __init__(self, pending: Any) -> None:
        self._pending = pending  # aiohttp's request context manager, not yet sent
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> _AiohttpExchange:
        self._response = await self._pending.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._pending.__aexit__(*exc)

    @property
    def _sent(self) -> aiohttp.ClientResponse:
        assert self._response is not None, "read inside the `async with` block"
        return self._response

    @property
    def status(self) -> int:
        return self._sent.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._sent.headers

    async def read(self, limit: int = -1) -> bytes:
        if limit < 0:
            return await self._sent.read()
        content = self._sent.content
        first = await content.read(limit)
        if not first or len(first) >= limit:
            return first
        pieces, size = [first], len(first)
        while size < limit:
            piece = await content.read(limit - size)
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)

    async def body(self, limit: int) -> bytes:
        # aiohttp inflates a compressed body as it is read, under its flow control; what is
        # read is counted before it is kept, so a bomb costs the bound, not its inflated size.
        content = self._sent.content
        pieces: list[bytes] = []
        size = 0
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLargeError(limit)
            pieces.append(chunk)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def line_batches(self, max_line: int) -> AsyncIterator[list[bytes]]:
        # Split here rather than with aiohttp's line iterator: its longest line differs by
        # version (512 KiB in 3.14) and is no bound of ours, and past it aiohttp raises its own
        # LineTooLong, which no error mapping knows. Here an over-long line stops at once.
        content = self._sent.content
        pending: list[bytes] = []
        held = 0
        while chunk := await content.readany():
            lines = chunk.split(b"\n")
            rest = lines.pop()  # after the last LF: the start of a line still to come
            if lines and pending:
                pending.append(lines[0])
                lines[0] = b"".join(pending)
                pending = []
            # No line can be too long unless what is held and this read together are.
            if held + len(chunk) > max_line and any(len(line) > max_line for line in lines):
                raise ResponseTooLargeError(max_line, "stream line")
            if lines:
                held = 0
                yield lines
            if rest:
                held += len(rest)
                if held > max_line:
                    raise ResponseTooLargeError(max_line, "stream line")
                pending.append(rest)
            del chunk, lines, rest  # nothing of this read held while the next is awaited
        if pending:
            yield [b"".join(pending)]


# --- in memory, for tests ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MockRequest:
    """What a provider sent through a `MockTransport`."""

    url: str
    headers: Mapping[str, str]
    query: Mapping[str, Any]
    body: dict[str, Any]
    stream: bool
    timeout_s: float


@dataclass(frozen=True, slots=True)
class MockResponse:
    """A scripted answer: `json` (serialised) or raw `content`, e.g. SSE text."""

    status: int = 200
    json: Any = None
    content: bytes | str = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        if self.json is not None:
            return json.dumps(self.json).encode()
        return self.content.encode() if isinstance(self.content, str) else self.content


Handler = Callable[[MockRequest], MockResponse | Awaitable[MockResponse]]


class MockTransport(HTTPTransport):
    """Answers every request with `handler(request)`, in memory, as httpx's MockTransport does.

    The handler may be sync or async and may raise (`TimeoutError`, `ConnectionError`) to
    play a failed exchange. `requests` keeps what was sent, in order. With `max_connections`
    it plays a pool of that size: an exchange waits at most `pool_wait_s` for a slot.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_connections: int | None = None,
        pool_wait_s: float = DEFAULT_POOL_WAIT_S,
    ) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []
        if max_connections is not None:
            self.slots = ConnectionSlots(max_connections, pool_wait_s)

    @contextlib.asynccontextmanager
    async def open(self, request: WireRequest, *, stream: bool) -> AsyncIterator[HTTPResponse]:
        sent = MockRequest(
            url=request.url,
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query or {}),
            body=request.body,
            stream=stream,
            timeout_s=request.timeout_s,
        )
        self.requests.append(sent)
        answer = self.handler(sent)
        if inspect.isawaitable(answer):
            answer = await answer
        yield _MockHTTPResponse(answer)


class _MockHTTPResponse:
    __slots__ = ("_body", "headers", "status")

    def __init__(self, answer: MockResponse) -> None:
        self.status = answer.status
        self.headers = {k.lower(): v for k, v in answer.headers.items()}
        self._body = answer.body()

    async def read(self, limit: int = -1) -> bytes:
        return self._body if limit < 0 else self._body[:limit]

    async def body(self, limit: int) -> bytes:
        if len(self._body) > limit:
            raise ResponseTooLargeError(limit)
        return self._body

    async def line_batches(self, max_line: int) -> AsyncIterator[list[bytes]]:
        lines = self._body.splitlines()
        if any(len(line) > max_line for line in lines):
            raise ResponseTooLargeError(max_line, "stream line")
        if lines:
            yield lines
