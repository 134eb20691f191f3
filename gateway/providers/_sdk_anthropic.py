"""The `anthropic` SDK as a transport (`client: sdk`) for the Anthropic codec.

As for OpenAI's, the call goes through the client's own `post()`: the SDK owns base URL, auth
and version headers, timeouts, the pool and its error classes (and its SSE parser, which turns
an `event: error` into its status errors); the codec builds the body and reads the JSON.
Imported only when a provider asks for it.
"""

from __future__ import annotations

from collections.abc import Mapping

try:
    import anthropic
except ImportError as exc:
    from gateway.errors import MissingDependencyError

    raise MissingDependencyError(
        "anthropic package required. Install with: pip install 'gateway[anthropic]'"
    ) from exc

from gateway.errors import ProviderError
from gateway.providers import _errors
from gateway.providers._codec_anthropic import api_error
from gateway.providers._http import ConnectionSlots, httpx2_client
from gateway.providers._transport import SDKTransport


def anthropic_transport(
    provider: str,
    *,
    api_key: str,
    base_url: str | None,
    default_headers: Mapping[str, str] | None,
    timeout_s: float,
    max_connections: int,
    http_transport: str,
    pool_wait_s: float,
) -> SDKTransport:
    http = httpx2_client(
        provider,
        timeout_s,
        max_connections,
        transport=http_transport,
        aiohttp_client=anthropic.DefaultAioHttpClient,
    )
    client = anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        default_headers=default_headers,
        timeout=timeout_s,
        max_retries=0,
        http_client=http,
    )
    return SDKTransport(
        client,
        http,
        stream_cls=anthropic.AsyncStream[object],
        to_error=anthropic_error,
        slots=ConnectionSlots(max_connections, pool_wait_s),
    )


def anthropic_error(
    exc: BaseException, *, provider: str, redact: _errors.Redactor
) -> ProviderError | None:
    """Map one `anthropic` SDK (or transport) exception to the gateway's taxonomy."""
    if isinstance(exc, anthropic.APIConnectionError):
        timed_out = isinstance(exc, anthropic.APITimeoutError)
        return _errors.connection_error(exc, provider=provider, timed_out=timed_out)
    if isinstance(exc, anthropic.APIStatusError):
        in_stream = exc.status_code < 400  # an `event: error` after HTTP 200 was sent
        return api_error(
            None if in_stream else exc.status_code,
            getattr(exc, "type", None),
            getattr(exc, "api_message", None) or type(exc).__name__,
            provider=provider,
            redact=redact,
            headers=exc.response.headers,
        )
    if isinstance(exc, anthropic.APIResponseValidationError):
        return _errors.malformed_error(exc, provider=provider)
    return _errors.unwrapped_error(exc, provider=provider)
