"""The OpenAI chat protocol's providers: `openai` (any compatible `base_url`) and
`azure_openai`. Both speak `OpenAIChatCodec` (and `OpenAIEmbeddingCodec` for embeddings), over
the default transport or, with `client="sdk"`, through the `openai` SDK's own client."""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import ConfigurationError
from gateway.providers._codec_openai import OpenAIChatCodec
from gateway.providers._embeddings import OpenAIEmbeddingCodec, WireEmbedder
from gateway.providers._transport import Transport
from gateway.providers._wire import configured_key, wants_sdk
from gateway.settings import get_settings, require_key

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIService(WireEmbedder):
    """/chat/completions on OpenAI or any compatible server.

    A vendor that speaks OpenAI's protocol is a subclass that sets `type_name`,
    `default_base_url`, `api_key_env` and `default_model` (see README, "Adding a provider").
    """

    type_name = "openai"
    default_base_url: ClassVar[str | None] = None
    """None: the OPENAI_BASE_URL setting, else OpenAI's own."""
    default_model: ClassVar[str | None] = None
    """None: the OPENAI_MODEL setting."""
    api_key_env: ClassVar[str] = "OPENAI_API_KEY"
    """Where the key comes from when `api_key` is not passed."""
    label: ClassVar[str] = "OpenAI"
    """The upstream's name in error messages."""
    embedding_codec = OpenAIEmbeddingCodec()

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
        organization: str | None = None,
        default_headers: dict[str, str] | None = None,
        client: str = "http",
        http_transport: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        settings = get_settings()
        provider = name or self.type_name
        sdk = wants_sdk(provider, client, http_transport, transport, max_response_bytes)
        key = require_key(
            api_key or configured_key(settings, self.api_key_env), self.api_key_env, self.label
        )
        url = base_url or self.default_base_url or settings.OPENAI_BASE_URL or OPENAI_BASE_URL
        super().__init__(
            codec=OpenAIChatCodec(organization=organization),
            base_url=url,
            api_key=key,
            transport=transport,
            headers=default_headers,
            name=name,
            model=model or self.default_model or settings.OPENAI_MODEL,
            timeout_s=timeout_s,
            max_connections=max_connections,
            max_response_bytes=max_response_bytes,
            pool_wait_s=pool_wait_s,
        )
        if sdk:
            from gateway.providers._sdk_openai import openai_transport

            self.transport = openai_transport(
                self.name,
                api_key=key,
                base_url=url,
                organization=organization,
                default_headers=default_headers,
                timeout_s=self.timeout_s,
                max_connections=self.max_connections,
                pool_wait_s=self.pool_wait_s,
                http_transport=http_transport or "aiohttp",
            )


class AzureOpenAIService(WireEmbedder):
    """A deployment on an Azure OpenAI resource. The deployment name plays the model's role.

    The key goes in Azure's `api-key` header; Azure AD token auth is the SDK's
    (`client="sdk"`).
    """

    type_name = "azure_openai"
    embedding_codec = OpenAIEmbeddingCodec()

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
        api_version: str | None = None,
        deployment: str | None = None,
        default_headers: dict[str, str] | None = None,
        client: str = "http",
        http_transport: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        settings = get_settings()
        provider = name or self.type_name
        sdk = wants_sdk(provider, client, http_transport, transport, max_response_bytes)
        key = require_key(
            api_key or settings.AZURE_OPENAI_API_KEY, "AZURE_OPENAI_API_KEY", "Azure OpenAI"
        )
        deployment = deployment or settings.AZURE_OPENAI_DEPLOYMENT or model
        if not deployment:
            raise ConfigurationError(
                f"{provider}: no deployment: export AZURE_OPENAI_DEPLOYMENT=... "
                "or pass deployment= (or model=) to the provider"
            )
        endpoint = base_url or settings.AZURE_OPENAI_ENDPOINT
        if not endpoint:
            raise ConfigurationError(
                f"{provider}: no endpoint: export AZURE_OPENAI_ENDPOINT=https://<resource>"
                ".openai.azure.com or pass base_url= to the provider"
            )
        version = api_version or settings.OPENAI_API_VERSION
        self.deployment = deployment
        super().__init__(
            codec=OpenAIChatCodec(key_header="api-key"),
            base_url=f"{endpoint.rstrip('/')}/openai/deployments/{deployment}",
            api_key=key,
            transport=transport,
            headers=default_headers,
            query=None if sdk else {"api-version": version},
            name=name,
            model=model or deployment,
            timeout_s=timeout_s,
            max_connections=max_connections,
            max_response_bytes=max_response_bytes,
            pool_wait_s=pool_wait_s,
        )
        if sdk:
            from gateway.providers._sdk_openai import azure_transport

            self.transport = azure_transport(
                self.name,
                api_key=key,
                endpoint=endpoint,
                api_version=version,
                deployment=deployment,
                default_headers=default_headers,
                timeout_s=self.timeout_s,
                max_connections=self.max_connections,
                pool_wait_s=self.pool_wait_s,
                http_transport=http_transport or "aiohttp",
            )

    @property
    def wire_model(self) -> str:
        return self.deployment
