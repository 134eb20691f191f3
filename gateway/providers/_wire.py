"""`WireService`: a provider that is one wire codec spoken through one transport."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from gateway._trace_headers import OUTGOING_TRACE_HEADERS
from gateway.errors import ConfigurationError, ProviderError
from gateway.providers._base import Call, LLMService
from gateway.providers._codec import WireCodec, WireRequest
from gateway.providers._http import (
    DEFAULT_POOL_WAIT_S,
    PoolExhausted,
    check_pool_wait,
    saturated,
    split_extras,
)
from gateway.providers._transport import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AiohttpTransport,
    HTTPTransport,
    Transport,
    UpstreamStatusError,
)
from gateway.types import Completion, StreamSourceItem


class WireService(LLMService):
    """Builds each call with `codec`, sends it through `transport` (by default a pool of
    `max_connections` over aiohttp), reads the answer with `codec` again.

    `max_response_bytes` bounds an answer after decompression (`HTTPTransport`); None keeps
    the transport's own bound (`DEFAULT_MAX_RESPONSE_BYTES` unless it was given another).
    The provider owns its transport: `aclose` closes it.

    `pool_wait_s` bounds a call's wait for one of the pool's connections (default
    `DEFAULT_POOL_WAIT_S`; 0: none); past it the call raises `ProviderSaturated` with nothing
    sent. Its `timeout_s` starts once a connection is held, so a call may take up to
    `pool_wait_s` + `timeout_s` in all. With a `transport` of one's own, None keeps its wait.
    """

    def __init__(
        self,
        *,
        codec: WireCodec,
        base_url: str,
        api_key: str | None,
        transport: Transport | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        name: str | None = None,
        model: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        max_response_bytes: int | None = None,
        pool_wait_s: float | None = None,
    ) -> None:
        super().__init__(
            name=name, model=model, timeout_s=timeout_s, max_connections=max_connections
        )
        check_response_bound(self.name, max_response_bytes)
        check_pool_wait(self.name, pool_wait_s)
        self.codec = codec
        self.base_url = base_url.rstrip("/")
        self._api_key = SecretStr(api_key) if api_key else None
        self._headers = {**codec.headers(api_key), **(headers or {})}
        self._query = dict(query) if query else None
        if transport is None:
            transport = AiohttpTransport(
                max_connections=self.max_connections,
                max_response_bytes=max_response_bytes or DEFAULT_MAX_RESPONSE_BYTES,
                pool_wait_s=DEFAULT_POOL_WAIT_S if pool_wait_s is None else pool_wait_s,
            )
        else:
            if max_response_bytes is not None and isinstance(transport, HTTPTransport):
                transport.max_response_bytes = max_response_bytes
            if pool_wait_s is not None and transport.slots is not None:
                transport.slots.wait_s = pool_wait_s
        self.transport: Transport = transport

    @property
    def pool_wait_s(self) -> float:
        """The longest a call waits for a connection before it is sent (0: its transport
        has no pool of its own to wait for): a caller's bound for the whole call is this
        plus `timeout_s`."""
        slots = self.transport.slots
        return slots.wait_s if slots is not None else 0.0

    @property
    def bounds_calls(self) -> bool:
        return self.transport.bounds_send

    @property
    def wire_model(self) -> str:
        """What the request names as its model."""
        return self.model

    def request(self, call: Call) -> WireRequest:
        """The request `call` sends: the codec's body and path, the provider's address.

        The typed SDK methods' `extra_headers`/`extra_query`/`extra_body` keywords mean here
        what they mean there (`split_extras`).
        """
        return self.wire_request(
            self.codec.body(call, self.wire_model), self.codec.path(call), call.timeout_s
        )

    def wire_request(self, body: dict[str, Any], path: str, timeout_s: float) -> WireRequest:
        """The request that sends `body` to `path` on this provider: its headers and query,
        the attempt's trace context, and the `extra_*` keywords in `body` (`split_extras`)."""
        body, extra_headers, extra_query = split_extras(body)
        traced = OUTGOING_TRACE_HEADERS.get()
        if traced is not None:  # the attempt's trace context (the caller's own headers win)
            extra_headers = {**traced, **(extra_headers or {})}
        return WireRequest(
            url=self.base_url + path,
            path=path,
            body=body,
            headers={**self._headers, **extra_headers} if extra_headers else self._headers,
            extra_headers=extra_headers,
            query={**(self._query or {}), **extra_query} if extra_query else self._query,
            timeout_s=timeout_s,
            framing=self.codec.framing,
        )

    async def _send(self, call: Call) -> Completion:
        try:
            data = await self.transport.send(self.request(call))
        except PoolExhausted as exc:
            raise saturated(self.name, exc) from exc
        return self.codec.completion(data, call)

    def _open_stream(self, call: Call) -> AsyncIterator[StreamSourceItem]:
        return self._events(self.request(call), call)

    async def _events(self, request: WireRequest, call: Call) -> AsyncIterator[StreamSourceItem]:
        reader = self.codec.reader(call)
        async with contextlib.aclosing(self.transport.events(request)) as groups:  # type: ignore[type-var]
            try:
                async for group in groups:
                    pieces, failure = reader.read_group(group)
                    # Not held while the next read is awaited: a quiet upstream may take
                    # minutes, and an open stream should hold nothing of its last events.
                    del group
                    if pieces:
                        yield pieces
                        del pieces
                    if failure is not None:
                        raise failure
                    if reader.done:
                        break
            except PoolExhausted as exc:  # before anything was sent: no event came yet
                raise saturated(self.name, exc) from exc
        yield reader.end()

    def _error(self, exc: Exception, call: Call) -> ProviderError | None:
        if isinstance(exc, UpstreamStatusError):
            return self.codec.status_error(exc.status, exc.body, exc.headers, call)
        return self.transport.error(exc, call)

    def _secrets(self) -> Iterable[str | None]:
        return (self._api_key.get_secret_value(),) if self._api_key else ()

    async def aclose(self) -> None:
        await self.transport.aclose()


CLIENTS = ("http", "sdk")


def check_response_bound(provider: str, max_response_bytes: int | None) -> None:
    if max_response_bytes is None:
        return
    if (
        isinstance(max_response_bytes, bool)
        or not isinstance(max_response_bytes, int)
        or max_response_bytes < 1
    ):
        raise ConfigurationError(
            f"{provider}: max_response_bytes is {max_response_bytes!r}; use a whole number of "
            f"bytes >= 1 (the default is {DEFAULT_MAX_RESPONSE_BYTES}, 16 MiB)"
        )


def wants_sdk(
    provider: str,
    client: str,
    http_transport: str | None,
    transport: Transport | None,
    max_response_bytes: int | None = None,
) -> bool:
    """Whether a provider's `client` option asks for its official SDK; refuses the options
    that mean nothing with the client chosen, naming the fix."""
    if client not in CLIENTS:
        raise ConfigurationError(
            f"{provider}: client is {client!r}; use 'http' (the default: the gateway's own "
            "aiohttp transport) or 'sdk' (the official SDK, which must be installed)"
        )
    if client == "http" and http_transport is not None:
        raise ConfigurationError(
            f"{provider}: http_transport applies to the SDK's pool: add client: sdk, "
            "or remove http_transport"
        )
    if client == "sdk" and transport is not None:
        raise ConfigurationError(
            f"{provider}: transport= needs client: http; with client: sdk the SDK sends "
            "through its own pool"
        )
    if client == "sdk" and max_response_bytes is not None:
        # The SDKs read a whole answer into memory before handing it over: a bound they do
        # not apply would only look like protection.
        raise ConfigurationError(
            f"{provider}: max_response_bytes bounds the gateway's own transport; the SDK reads "
            "answers whole, unbounded: remove max_response_bytes, or use client: http"
        )
    return client == "sdk"


def configured_key(settings: Any, variable: str) -> str | None:
    """The key a setting (or, for a name the settings do not know, the environment) holds."""
    value = getattr(settings, variable, None)
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    return value or os.environ.get(variable) or None
