"""Plumbing shared by provider clients: limits, timeouts, TLS, the SDKs' pools and calls."""

from __future__ import annotations

import functools
import math
import ssl
from collections.abc import Mapping
from typing import Any

from gateway.errors import ConfigurationError, ErrorKind, InvalidRequestError, ProviderError


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
