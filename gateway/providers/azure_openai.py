"""Azure OpenAI: OpenAI's protocol at a deployment URL, through the `openai` SDK's Azure client."""

from __future__ import annotations

try:
    import openai
except ImportError as exc:
    from gateway.errors import MissingDependencyError

    raise MissingDependencyError(
        "openai package required. Install with: pip install openai"
    ) from exc

from gateway.errors import ConfigurationError
from gateway.providers._http import check_limits, httpx2_client
from gateway.providers.base import LLMService
from gateway.providers.openai import OpenAIService
from gateway.settings import get_settings, require_key


class AzureOpenAIService(OpenAIService):
    """A deployment on an Azure OpenAI resource. The deployment name plays the model's role."""

    type_name = "azure_openai"

    def __init__(
        self,
        *,
        name: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        max_connections: int | None = None,
        api_version: str | None = None,
        deployment: str | None = None,
        default_headers: dict[str, str] | None = None,
        http_transport: str = "aiohttp",
    ) -> None:
        settings = get_settings()
        deployment = deployment or settings.AZURE_OPENAI_DEPLOYMENT
        # Skip OpenAIService.__init__: it builds a plain OpenAI client and wants OPENAI_API_KEY.
        check_limits(name or self.type_name, timeout_s, max_connections)
        LLMService.__init__(
            self,
            name=name,
            model=model or deployment,
            timeout_s=timeout_s,
            max_connections=max_connections,
        )
        key = require_key(
            api_key or settings.AZURE_OPENAI_API_KEY, "AZURE_OPENAI_API_KEY", "Azure OpenAI"
        )
        self.deployment = deployment or self.model
        if not self.deployment:
            raise ConfigurationError(
                f"{self.name}: no deployment: export AZURE_OPENAI_DEPLOYMENT=... "
                "or pass deployment= (or model=) to the provider"
            )
        endpoint = base_url or settings.AZURE_OPENAI_ENDPOINT
        if not endpoint:
            raise ConfigurationError(
                f"{self.name}: no endpoint: export AZURE_OPENAI_ENDPOINT=https://<resource>"
                ".openai.azure.com or pass base_url= to the provider"
            )
        self._http = httpx2_client(
            self.name,
            self.timeout_s,
            self.max_connections,
            transport=http_transport,
            aiohttp_client=openai.DefaultAioHttpClient,
        )
        self._client = openai.AsyncAzureOpenAI(
            api_key=key,
            azure_endpoint=endpoint,
            api_version=api_version or settings.OPENAI_API_VERSION,
            azure_deployment=self.deployment,
            default_headers=default_headers,
            timeout=self.timeout_s,
            max_retries=0,
            http_client=self._http,
        )

    @property
    def _wire_model(self) -> str:
        return self.deployment
