"""`LLMFactory`: creates providers by name, so new providers need no change to existing code.

Built-in providers are registered as import paths, not classes: a type's module is imported
only when a provider of that type is first created, and an SDK only when one asks for it.
Third-party packages add providers through the entry-point group `gateway.providers`
(`name = "package.module:Class"`).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

from gateway.errors import MissingDependencyError, UnknownProviderError
from gateway.providers._base import LLMService

ENTRY_POINT_GROUP = "gateway.providers"


@dataclass(frozen=True, slots=True)
class _Lazy:
    target: str  # "module:Class"
    requires: str | None  # the import name the type needs, or None for none beyond the core
    extra: str | None = None  # the `gateway[...]` extra that installs it, if it is not core
    embeds: bool | None = None  # the class's `embeds`, known without importing it; None: unknown

    def load(self) -> type[LLMService]:
        if self.requires and importlib.util.find_spec(self.requires) is None:
            fix = f"'gateway[{self.extra}]'" if self.extra else self.requires
            raise MissingDependencyError(
                f"{self.requires} package required. Install with: pip install {fix}"
            )
        module_name, _, attr = self.target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(cls, type) and issubclass(cls, LLMService)):
            raise TypeError(f"{self.target} is not an LLMService subclass")
        return cls

    def importable(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


# The types whose default transport is aiohttp need only the core; `client: sdk` imports the
# SDK when a provider asks for it (and names its extra when it is missing).
_BUILTINS: dict[str, _Lazy] = {
    "openai": _Lazy("gateway.providers._openai:OpenAIService", "aiohttp", embeds=True),
    # OpenAI's protocol on the default transport: the `openai` type's default, under the name
    # policies written for it use.
    "openai_http": _Lazy("gateway.providers._openai:OpenAIService", "aiohttp", embeds=True),
    "azure_openai": _Lazy("gateway.providers._openai:AzureOpenAIService", "aiohttp", embeds=True),
    "anthropic": _Lazy("gateway.providers._anthropic:AnthropicService", "aiohttp", embeds=False),
    "ollama": _Lazy("gateway.providers._ollama:OllamaService", "aiohttp", embeds=True),
    "local": _Lazy("gateway.providers._ollama:OllamaService", "aiohttp", embeds=True),
    "litellm": _Lazy(
        "gateway.providers._litellm:LiteLLMService", "litellm", "litellm", embeds=True
    ),
}


class LLMFactory:
    """The provider registry. All methods are class methods: there is one registry a process."""

    _registry: ClassVar[dict[str, type[LLMService] | _Lazy]] = dict(_BUILTINS)
    _entry_points_loaded: ClassVar[bool] = False

    @classmethod
    def register(cls, name: str, provider_class: type[LLMService] | str) -> None:
        """Register a class, or a `"module:Class"` path imported on first use."""
        if isinstance(provider_class, str):
            cls._registry[name] = _Lazy(provider_class, None)
        elif isinstance(provider_class, type) and issubclass(provider_class, LLMService):
            cls._registry[name] = provider_class
        else:
            raise TypeError(
                f"register({name!r}, ...) needs an LLMService subclass or a 'module:Class' path, "
                f"got {provider_class!r}"
            )

    @classmethod
    def unregister(cls, name: str) -> None:
        cls._registry.pop(name, None)

    @classmethod
    def create(cls, name: str | None = None, /, **options: Any) -> LLMService:
        """Create a provider. With no name, `LLM_PROVIDER` from the settings (default `openai`).

        `name` is positional-only so `options` may carry the instance's own `name=` (a policy
        provider's key, e.g. "mini"), which is what `ProviderSpec.factory_options()` passes.
        """
        if name is None:
            from gateway.settings import get_settings

            name = get_settings().LLM_PROVIDER
        provider_class = cls.provider_class(name)
        options.setdefault("name", name)
        return provider_class(**options)

    @classmethod
    def provider_class(cls, name: str) -> type[LLMService]:
        cls._load_entry_points()
        entry = cls._registry.get(name)
        if entry is None:
            raise UnknownProviderError(
                f"Unknown LLM provider: {name}. Available: {cls.available_providers()}"
            )
        if isinstance(entry, _Lazy):
            entry = entry.load()
            cls._registry[name] = entry
        return entry

    @classmethod
    def available_providers(cls) -> list[str]:
        """Registered names whose SDK can be imported here."""
        cls._load_entry_points()
        return [
            name
            for name, entry in cls._registry.items()
            if not isinstance(entry, _Lazy) or entry.importable()
        ]

    @classmethod
    def registered_providers(cls) -> list[str]:
        cls._load_entry_points()
        return list(cls._registry)

    @classmethod
    def chat_only_providers(cls) -> list[str]:
        """Registered names whose class cannot embed (`LLMService.embeds` is false): a policy
        refuses them in an embedding task. A plugin type not imported yet is not listed (its
        class is asked when it is built, and a request skips it if it cannot embed)."""
        cls._load_entry_points()
        return [
            name
            for name, entry in cls._registry.items()
            if (entry.embeds is False if isinstance(entry, _Lazy) else not entry.embeds)
        ]

    @classmethod
    def _load_entry_points(cls) -> None:
        if cls._entry_points_loaded:
            return
        cls._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            cls._registry.setdefault(ep.name, _Lazy(ep.value, None))

    @classmethod
    def reload_entry_points(cls) -> None:
        """Look for entry points again (after installing a plugin into a running process)."""
        cls._entry_points_loaded = False
        cls._load_entry_points()
