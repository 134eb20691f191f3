"""Plumbing shared by provider clients: limits, timeouts, TLS, the SDKs' pools and calls."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import math
import ssl
from collections.abc import Mapping
from typing import Any

from gateway.errors import (
    ConfigurationError,
    ErrorKind,
    InvalidRequestError,
    ProviderError,
    ProviderSaturated,
)


def check_limits(provider: str, timeout_s: float | None, max_connections: int | None) -> None:
    """Refuse limits that cannot work, naming the option and the fix (None: the default)."""
    if timeout_s is not None and not (
        isinstance(timeout_s, int | float)
        and not isinstance(timeout_s, bool)
        and timeout_s > 0
        and math.isfinite(timeout_s)
    ):
        raise ConfigurationError(
            f"{provider}: timeout_s is {timeout_s!r}; use a positive number of seconds (e.g. 30)"
        )
    if max_connections is not None and (
        isinstance(max_connections, bool)
        or not (isinstance(max_connections, int) and max_connections >= 1)
    ):
        raise ConfigurationError(
            f"{provider}: max_connections is {max_connections!r}; use a whole number >= 1"
        )


DEFAULT_POOL_WAIT_S = 1.0
"""How long a call waits for one of its provider's `max_connections` to come free.

The wait pays off only when a slot frees within it: a pool of N connections whose calls last
D seconds frees about N/D a second (100 connections of 10 s calls: 10 a second), so one second
absorbs a burst of that size while adding at most a second to the caller's time to the first
token. Past it the overload is sustained, and waiting longer only delays the fall-through to
the next provider in the chain. A chain with no other provider may want it longer."""


def check_pool_wait(provider: str, pool_wait_s: float | None) -> None:
    """Refuse a pool wait that cannot work, naming the fix (None: the default)."""
    if pool_wait_s is not None and not (
        isinstance(pool_wait_s, int | float)
        and not isinstance(pool_wait_s, bool)
        and pool_wait_s >= 0
        and math.isfinite(pool_wait_s)
    ):
        raise ConfigurationError(
            f"{provider}: pool_wait_s is {pool_wait_s!r}; use a number of seconds >= 0 "
            f"(0: never wait for a connection; the default is {DEFAULT_POOL_WAIT_S:g})"
        )


class PoolExhausted(Exception):
    """No connection slot came free within the pool's wait: nothing was sent. The provider
    raises it as `ProviderSaturated` (`saturated`), naming itself."""

    def __init__(self, size: int | None, waited: str) -> None:
        super().__init__(f"all {size} connections in use after waiting {waited}")
        self.size = size
        self.waited = waited


def saturated(provider: str, exc: PoolExhausted) -> ProviderSaturated:
    """What `exc` means to the router: our own pool was full, the provider was not reached."""
    pool = f"all {exc.size} of its connections" if exc.size else "its connection pool"
    return ProviderSaturated(
        f"no connection to {provider} came free within {exc.waited}; {pool} were busy, so "
        "nothing was sent: the provider's pool (max_concurrency in a policy, max_connections "
        "in code) or pool_wait_s may be raised, or another provider added to the chain"
    )


class ConnectionSlots:
    """`size` slots, one per connection of a pool, taken in order of arrival.

    An exchange holds one from before it is sent until it ends (a stream: until it is closed),
    so the pool itself never has to wait. `async with slots:` takes one, waiting at most
    `wait_s` for one to come free; past it `PoolExhausted` is raised, with nothing sent. The
    provider's own timeout starts once the slot is held: the wait is not the provider's.

    Not bound to an event loop (unlike `asyncio.Semaphore`): the count is plain, and each
    waiter's future belongs to the loop it waits in.
    """

    __slots__ = ("_waiters", "in_use", "size", "wait_s")

    def __init__(self, size: int, wait_s: float = DEFAULT_POOL_WAIT_S) -> None:
        self.size = size
        self.wait_s = wait_s
        self.in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    async def acquire(self) -> None:
        """Take a slot, waiting at most `wait_s`; `PoolExhausted` past it."""
        if self.in_use < self.size and not self._waiters:
            self.in_use += 1  # the common case: no await, no timer
            return
        if self.wait_s <= 0:
            raise PoolExhausted(self.size, "pool_wait_s=0")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait_s):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # A slot was handed over just as the wait ended: keep it if the wait was all
                # that ended, else pass it on.
                if isinstance(exc, TimeoutError):
                    return
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolExhausted(self.size, f"pool_wait_s={self.wait_s:g}") from None
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the longest waiter, as it is
                return
        self.in_use -= 1


def call_timeout(timeout_s: float | None, default: float) -> float:
    """The timeout for one call: its own `timeout_s` if given, else the provider's.

    0 is allowed and means no time is left (a caller's deadline ran out): the call fails
    with a timeout rather than being refused as a bad request.
    """
    if timeout_s is None:
        return default
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not (timeout_s >= 0 and math.isfinite(timeout_s))
    ):
        raise InvalidRequestError(
            f"timeout_s is {timeout_s!r}; use a number of seconds >= 0, or None for the "
            f"provider's {default:g} s"
        )
    return float(timeout_s)


def require_time(timeout_s: float, provider: str) -> None:
    """Time out at once a call that was given no time (a caller's deadline ran out).

    aiohttp reads a timeout of 0 as no timeout at all, so it cannot be left to the transport.
    """
    if timeout_s <= 0:
        raise ProviderError(
            f"no time left for the call (timeout_s={timeout_s:g})",
            kind=ErrorKind.TIMEOUT,
            provider=provider,
        )


HTTP_TRANSPORTS = ("aiohttp", "httpx2")


def httpx2_client(
    provider: str,
    timeout_s: float,
    max_connections: int,
    *,
    transport: str = "aiohttp",
    aiohttp_client: type[Any] | None = None,
) -> Any:
    """The pool an official SDK (which speaks httpx2) sends through.

    `transport="aiohttp"` (the default) uses `aiohttp_client`, the SDK's own
    `DefaultAioHttpClient`: httpx2's interface over the aiohttp adapter the SDKs ship for
    concurrency. Per request it costs about half the CPU of httpx2's own pool, which checks
    every pooled connection on every request (see docs/performance.md). Without aiohttp
    installed the SDK refuses to build it and httpx2's pool is used, as with
    `transport="httpx2"` (which also speaks HTTP/2, which the adapter does not).
    """
    import httpx2

    if transport not in HTTP_TRANSPORTS:
        raise ConfigurationError(
            f"{provider}: http_transport is {transport!r}; use 'aiohttp' (the default) or 'httpx2'"
        )
    options: dict[str, Any] = {
        "verify": _httpx2_tls(),
        "timeout": httpx2.Timeout(timeout_s),
        "limits": httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        "follow_redirects": False,
    }
    if transport == "aiohttp" and aiohttp_client is not None:
        try:
            return aiohttp_client(**options)
        except RuntimeError:  # "To use the aiohttp client you must have installed ... aiohttp"
            pass
    return httpx2.AsyncClient(**options)


# Building a TLS context loads the whole CA bundle (tens of ms); a process needs one per
# library, not one per provider instance. Built with each library's own defaults.
@functools.cache
def _httpx2_tls() -> ssl.SSLContext:
    import httpx2

    return httpx2.create_ssl_context()


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The TLS context of the default transport: certifi's CA bundle when installed (as the
    SDKs use), else the system's."""
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


# The typed SDK methods' per-call extras (`post()` and raw HTTP take them as headers and query).
_EXTRA_HEADERS, _EXTRA_QUERY, _EXTRA_BODY = "extra_headers", "extra_query", "extra_body"


async def sdk_post(
    client: Any,
    path: str,
    body: dict[str, Any],
    timeout_s: float,
    *,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, Any] | None = None,
    stream_cls: Any = None,
) -> Any:
    """POST `body` through an official SDK client's own `post()`: the reply's JSON as parsed,
    or with `stream_cls` (the SDK's `AsyncStream[object]`) its stream of parsed SSE events.

    The SDK still builds the URL and headers, applies the timeout, sends through its pool and
    raises its own error classes; what is skipped is its typed request and response models.
    """
    options: dict[str, Any] = {"timeout": timeout_s}
    if headers:
        options["headers"] = dict(headers)
    if query:
        options["params"] = dict(query)
    if stream_cls is None:
        return await client.post(path, body=body, cast_to=object, options=options)
    return await client.post(
        path, body=body, cast_to=object, options=options, stream=True, stream_cls=stream_cls
    )


def split_extras(
    request: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, str] | None, dict[str, Any] | None]:
    """(JSON body, extra headers, extra query) for one request.

    The typed SDK methods' `extra_headers`/`extra_query`/`extra_body` keywords keep working
    wherever the request is sent: `extra_body`'s fields are merged into the body. Any other
    field (a newer or vendor-specific parameter) goes on the wire as it is.
    """
    body = dict(request)
    headers = body.pop(_EXTRA_HEADERS, None)
    query = body.pop(_EXTRA_QUERY, None)
    extra = body.pop(_EXTRA_BODY, None)
    if extra:
        body.update(extra)
    return body, headers or None, query or None
