"""The `anthropic` provider: Claude models over `AnthropicCodec`, on the default transport
or, with `client="sdk"`, through the `anthropic` SDK's own client."""

from __future__ import annotations

from gateway.providers._codec_anthropic import DEFAULT_MAX_TOKENS, AnthropicCodec
from gateway.providers._transport import Transport
from gateway.providers._wire import WireService, wants_sdk
from gateway.settings import get_settings, require_key

ANTHROPIC_BASE_URL = "https://api.anthropic.com"


class AnthropicService(WireService):
    """Claude models over /v1/messages."""

    type_name = "anthropic"

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        max_response_bytes: int | None = None,
        pool_wait_s: float | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        default_headers: dict[str, str] | None = None,
        client: str = "http",
        http_transport: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        settings = get_settings()
        sdk = wants_sdk(
            name or self.type_name, client, http_transport, transport, max_response_bytes
        )
        key = require_key(api_key or settings.ANTHROPIC_API_KEY, "ANTHROPIC_API_KEY", "Anthropic")
        url = base_url or settings.ANTHROPIC_BASE_URL or ANTHROPIC_BASE_URL
        self.default_max_tokens = default_max_tokens
        super().__init__(
            codec=AnthropicCodec(default_max_tokens=default_max_tokens),
            base_url=url,
            api_key=key,
            transport=transport,
            headers=default_headers,
            name=name,
            model=model or settings.ANTHROPIC_MODEL,
            timeout_s=timeout_s,
            max_connections=max_connections,
            max_response_bytes=max_response_bytes,
            pool_wait_s=pool_wait_s,
        )
        if sdk:
            from gateway.providers._sdk_anthropic import anthropic_transport

            self.transport = anthropic_transport(
                self.name,
                api_key=key,
                base_url=url,
                default_headers=default_headers,
                timeout_s=self.timeout_s,
                max_connections=self.max_connections,
                pool_wait_s=self.pool_wait_s,
                http_transport=http_transport or "aiohttp",
            )
