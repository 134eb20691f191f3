"""Transports: how a codec's requests travel and come back as parsed JSON.

`Transport` is what a `WireService` sends through. `HTTPTransport` does the part every HTTP
transport shares, once: an error status becomes `UpstreamStatusError` (its body read, bounded,
for the codec to explain), a whole answer is parsed as JSON, and a stream is framed into
events, as server-sent events (`SSEDecoder`: the SSE spec's `event:` names and multi-line
`data:`; OpenAI's `[DONE]` ends it) or as JSON lines (`NDJSONDecoder`). Its subclasses only
open one exchange: `AiohttpTransport` (the default) over a real connection pool,
`MockTransport` in memory, for tests that hand a provider a handler instead of a server.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import ssl
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from gateway.errors import ProviderError
from gateway.providers import _errors
from gateway.providers._base import Call
from gateway.providers._codec import WireEvent, WireRequest
from gateway.providers._http import default_tls, sdk_post

if TYPE_CHECKING:
    import aiohttp

ERROR_BODY_LIMIT = 64 * 1024
"""How much of an error response is read: enough for any JSON error, bounded for any other."""


class UpstreamStatusError(Exception):
    """An HTTP error response, before its codec has said what it means."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


class Transport(ABC):
    """Sends a `WireRequest`; answers with parsed JSON, or a stream of `WireEvent`s."""

    @abstractmethod
    async def send(self, request: WireRequest) -> Any:
        """The parsed JSON of a successful answer. An error status raises
        `UpstreamStatusError` (or the transport's own error, which `error` maps)."""

    @abstractmethod
    def events(self, request: WireRequest) -> AsyncIterator[WireEvent]:
        """The stream's events, framed as `request.framing` says; nothing is sent before the
        first is awaited. Closing the iterator closes the exchange."""

    def error(self, exc: Exception, call: Call) -> ProviderError | None:
        """The `ProviderError` one of this transport's own failures means; None for others."""
        return _errors.unwrapped_error(exc, provider=call.provider)

    async def aclose(self) -> None:  # noqa: B027 - optional: not every transport holds a pool
        """Close the connection pool."""


class SDKErrorMap(Protocol):
    def __call__(
        self, exc: BaseException, *, provider: str, redact: _errors.Redactor
    ) -> ProviderError | None: ...


class SDKTransport(Transport):
    """Sends through an official SDK client's own `post()` (its documented way to call an
    endpoint without its typed wrapper): the SDK owns the base URL, auth, timeouts, the pool
    and its error classes, which `to_error` maps; the codec still builds the body and reads
    the JSON. `stream_cls` is the SDK's `AsyncStream[object]`."""

    def __init__(
        self, client: Any, http_client: Any, *, stream_cls: Any, to_error: SDKErrorMap
    ) -> None:
        self.client = client
        self._http = http_client
        self._stream_cls = stream_cls
        self._to_error = to_error

    async def send(self, request: WireRequest) -> Any:
        return await sdk_post(
            self.client,
            request.path,
            request.body,
            request.timeout_s,
            headers=request.extra_headers,
            query=request.query,
        )

    async def events(self, request: WireRequest) -> AsyncIterator[WireEvent]:
        stream = await sdk_post(
            self.client,
            request.path,
            request.body,
            request.timeout_s,
            headers=request.extra_headers,
            query=request.query,
            stream_cls=self._stream_cls,
        )
        async with stream:
            async for event in stream:
                yield WireEvent(None, event)

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
        """The body, or at most `limit` bytes of it."""
        ...

    def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, each with its line ending."""
        ...


class HTTPTransport(Transport):
    """A transport over HTTP: subclasses open one exchange, this does the rest."""

    @abstractmethod
    def open(
        self, request: WireRequest, *, stream: bool
    ) -> contextlib.AbstractAsyncContextManager[HTTPResponse]:
        """POST `request`; the response's body is read inside the block. `request.timeout_s`
        bounds the whole exchange, or with `stream` the connection and each wait for data."""

    async def send(self, request: WireRequest) -> Any:
        async with self.open(request, stream=False) as response:
            if response.status >= 400:
                raise await _status_error(response)
            return json.loads(await response.read())

    async def events(self, request: WireRequest) -> AsyncIterator[WireEvent]:
        async with self.open(request, stream=True) as response:
            if response.status >= 400:
                raise await _status_error(response)
            decoder = SSEDecoder() if request.framing == "sse" else NDJSONDecoder()
            async for line in response.lines():
                event = decoder.feed(line)
                if event is not None:
                    yield event
                elif decoder.done:
                    return

    def error(self, exc: Exception, call: Call) -> ProviderError | None:
        mapped = _errors.unwrapped_error(exc, provider=call.provider)
        if mapped is None and isinstance(exc, ValueError):
            # Bad JSON, bad UTF-8, or a line longer than the transport's limit: either way
            # not what the protocol promises.
            return _errors.malformed_error(exc, provider=call.provider)
        return mapped


async def _status_error(response: HTTPResponse) -> UpstreamStatusError:
    return UpstreamStatusError(
        response.status, response.headers, await response.read(ERROR_BODY_LIMIT)
    )


class SSEDecoder:
    """Server-sent events as the SSE spec frames them, fed one line at a time.

    `event:` names the event, `data:` lines (joined with newlines) carry it, a blank line
    dispatches it, a line starting with `:` is a comment, and an event the stream cut before
    its blank line is never dispatched. Lines end in LF or CRLF. Data of `[DONE]` (OpenAI's
    end marker) sets `done`; any other data is parsed as JSON. `id` and `retry` serve
    reconnection, which a chat stream never does, and are ignored.
    """

    __slots__ = ("_data", "_event", "done")

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[bytes] = []
        self.done = False

    def feed(self, raw: bytes) -> WireEvent | None:
        """The event `raw` completes, if it completes one."""
        line = raw.rstrip(b"\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            self._event = line[6:].strip().decode("utf-8")
        return None

    def _dispatch(self) -> WireEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], None
        if not data:
            return None
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if payload == b"[DONE]":
            self.done = True
            return None
        return WireEvent(event, json.loads(payload))


class NDJSONDecoder:
    """One event per non-blank line of JSON."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def feed(self, raw: bytes) -> WireEvent | None:
        return WireEvent(None, json.loads(raw)) if raw.strip() else None


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
    """A pool of up to `max_connections` connections, over aiohttp."""

    def __init__(self, *, max_connections: int = 100, tls: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
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
        if stream:
            timeout = aiohttp.ClientTimeout(
                sock_connect=request.timeout_s, sock_read=request.timeout_s
            )
        else:
            timeout = aiohttp.ClientTimeout(total=request.timeout_s)
        return _AiohttpExchange(
            self._session.post(
                request.url,
                data=json.dumps(request.body).encode(),
                headers=dict(request.headers),
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
        return await self._sent.content.read(limit)

    def lines(self) -> AsyncIterator[bytes]:
        return self._sent.content.__aiter__()


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
    play a failed exchange. `requests` keeps what was sent, in order.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []

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

    async def lines(self) -> AsyncIterator[bytes]:
        for line in self._body.splitlines(keepends=True):
            yield line
