"""The `openai` SDK as a transport (`client: sdk`) for the OpenAI chat codec.

The request goes through the client's own `post()` (the SDK's documented way to call an
endpoint without its typed wrapper), so the SDK owns the base URL, auth (Azure AD tokens
included), Azure's deployment paths, timeouts, the connection pool and its error classes; the
codec still builds the body and reads the JSON. Imported only when a provider asks for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import openai
except ImportError as exc:
    from gateway.errors import MissingDependencyError

    raise MissingDependencyError(
        "openai package required. Install with: pip install 'gateway[openai]'"
    ) from exc

from gateway.errors import ProviderError
from gateway.providers import _errors
from gateway.providers._codec_openai import describe, status_error_kind, stream_error_kind
from gateway.providers._http import ConnectionSlots, httpx2_client
from gateway.providers._transport import SDKTransport


def openai_transport(
    provider: str,
    *,
    api_key: str,
    base_url: str | None,
    organization: str | None,
    default_headers: Mapping[str, str] | None,
    timeout_s: float,
    max_connections: int,
    http_transport: str,
    pool_wait_s: float,
) -> SDKTransport:
    http = _pool(provider, timeout_s, max_connections, http_transport)
    client = openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        organization=organization,
        default_headers=default_headers,
        timeout=timeout_s,
        max_retries=0,
        http_client=http,
    )
    return SDKTransport(
        client,
        http,
        stream_cls=openai.AsyncStream[object],
        to_error=openai_error,
        slots=ConnectionSlots(max_connections, pool_wait_s),
    )


def azure_transport(
    provider: str,
    *,
    api_key: str,
    endpoint: str,
    api_version: str,
    deployment: str,
    default_headers: Mapping[str, str] | None,
    timeout_s: float,
    max_connections: int,
    http_transport: str,
    pool_wait_s: float,
) -> SDKTransport:
    http = _pool(provider, timeout_s, max_connections, http_transport)
    client = openai.AsyncAzureOpenAI(
        api_key=api_key,
        azure_endpoint=endpoint,
        api_version=api_version,
        azure_deployment=deployment,
        default_headers=default_headers,
        timeout=timeout_s,
        max_retries=0,
        http_client=http,
    )
    return SDKTransport(
        client,
        http,
        stream_cls=openai.AsyncStream[object],
        to_error=openai_error,
        slots=ConnectionSlots(max_connections, pool_wait_s),
    )


def _pool(provider: str, timeout_s: float, max_connections: int, http_transport: str) -> Any:
    return httpx2_client(
        provider,
        timeout_s,
        max_connections,
        transport=http_transport,
        aiohttp_client=openai.DefaultAioHttpClient,
    )


def openai_error(
    exc: BaseException, *, provider: str, redact: _errors.Redactor
) -> ProviderError | None:
    """Map one `openai` SDK (or transport) exception to the gateway's taxonomy."""
    if isinstance(exc, openai.APIConnectionError):
        timed_out = isinstance(exc, openai.APITimeoutError)
        return _errors.connection_error(exc, provider=provider, timed_out=timed_out)
    if isinstance(exc, openai.APIStatusError):
        return _errors.provider_error(
            _describe(exc, redact),
            status_error_kind(exc.status_code, exc.code),
            provider=provider,
            status=exc.status_code,
            headers=exc.response.headers,
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return _errors.malformed_error(exc, provider=provider)
    if isinstance(exc, openai.APIError):  # an in-stream `{"error": {...}}` chunk
        kind = stream_error_kind(exc.code, exc.type)
        return ProviderError(
            f"error inside the stream: {_describe(exc, redact)}", kind=kind, provider=provider
        )
    return _errors.unwrapped_error(exc, provider=provider)


def _describe(exc: openai.APIError, redact: _errors.Redactor) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return describe(body.get("message") or type(exc).__name__, exc.code, redact)
