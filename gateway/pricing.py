"""What a call costs: the policy's price overrides over LiteLLM's bundled price map.

The bundled map is the JSON file that ships inside the litellm package. It is located and read
without importing litellm (a slow import with side effects) and without any network, once, on
the first lookup. Policy prices are USD per 1M tokens; the bundled map is USD per token.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gateway.types import Usage

if TYPE_CHECKING:
    from gateway.policy import Price

__all__ = ["ModelPrice", "PriceBook", "bundled_price_map"]

logger = logging.getLogger(__name__)

TOKENS_PER_MILLION = 1_000_000
BUNDLED_FILE = "model_prices_and_context_window_backup.json"

# The bundled map keys most models by "<litellm provider>/<model>"; where this gateway's
# provider type names differ from LiteLLM's, this says which prefix to look under.
_BUNDLED_PREFIX: Mapping[str, str] = MappingProxyType(
    {"azure_openai": "azure", "local": "ollama", "openai_http": "openai"}
)
_CACHE_LIMIT = 4096
_DOCUMENTATION_ENTRY = "sample_spec"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per token, and the model's context window when known."""

    input_per_token: float
    output_per_token: float
    cached_input_per_token: float | None = None
    max_input_tokens: int | None = None

    def cost(self, usage: Usage) -> float:
        cached = min(max(usage.cached_input_tokens, 0), usage.input_tokens)
        cached_rate = (
            self.input_per_token
            if self.cached_input_per_token is None
            else self.cached_input_per_token
        )
        return (
            (usage.input_tokens - cached) * self.input_per_token
            + cached * cached_rate
            + usage.output_tokens * self.output_per_token
        )


@functools.cache
def bundled_price_map() -> Mapping[str, Any]:
    """LiteLLM's bundled price map, read once; empty (with a warning) when it is not there."""
    spec = importlib.util.find_spec("litellm")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        logger.warning(
            "litellm is not installed, so no bundled model prices are known: costs are only "
            "reported for models priced under `prices:` in the policy"
        )
        return MappingProxyType({})
    path = Path(locations[0]) / BUNDLED_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("cannot read the bundled price map %s (%s): costs unknown", path, exc)
        return MappingProxyType({})
    if not isinstance(data, dict):
        logger.warning("the bundled price map %s is not a JSON object: costs unknown", path)
        return MappingProxyType({})
    # The map documents its own fields in an entry with zero prices; it is not a model.
    data.pop(_DOCUMENTATION_ENTRY, None)
    return MappingProxyType(data)


def _number(value: Any) -> float | None:
    # bool is an int subclass, and the map's documentation entry holds prose in number fields.
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _bundled_entry_price(entry: Any) -> ModelPrice | None:
    if not isinstance(entry, Mapping):
        return None
    input_rate = _number(entry.get("input_cost_per_token"))
    if input_rate is None:
        return None
    window = entry.get("max_input_tokens")
    return ModelPrice(
        input_per_token=input_rate,
        output_per_token=_number(entry.get("output_cost_per_token")) or 0.0,
        cached_input_per_token=_number(entry.get("cache_read_input_token_cost")),
        max_input_tokens=window if type(window) is int and window > 0 else None,
    )


def _override_price(price: Price, fallback_window: int | None) -> ModelPrice:
    cached = price.cached_input
    return ModelPrice(
        input_per_token=price.input / TOKENS_PER_MILLION,
        output_per_token=price.output / TOKENS_PER_MILLION,
        cached_input_per_token=None if cached is None else cached / TOKENS_PER_MILLION,
        max_input_tokens=price.max_input_tokens or fallback_window,
    )


class PriceBook:
    """Prices by model name: policy overrides first, then the bundled map.

    Lookup order: the override for the exact model name; the bundled entry for the exact name;
    the bundled `{provider_type}/{model}` (ollama -> "ollama/llama3.2"); then both again for
    the model with a `provider/` prefix stripped. Results are cached per (model, provider type),
    as `cost()` runs on every request.
    """

    def __init__(
        self,
        overrides: Mapping[str, Price] | None = None,
        *,
        bundled: Mapping[str, Any] | None = None,
    ) -> None:
        self._overrides = dict(overrides or {})
        self._bundled = bundled
        self._cache: dict[tuple[str, str | None], ModelPrice | None] = {}

    def price(self, model: str, provider_type: str | None = None) -> ModelPrice | None:
        key = (model, provider_type)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._lookup(model, provider_type)
        if len(self._cache) >= _CACHE_LIMIT:
            # Model names come back from upstreams too; never let them grow memory unbounded.
            self._cache.clear()
        self._cache[key] = found
        return found

    def cost(self, model: str, usage: Usage, provider_type: str | None = None) -> float | None:
        """USD for one call's usage, or None when the model has no known price."""
        price = self.price(model, provider_type)
        return None if price is None else price.cost(usage)

    def estimate_cost(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        provider_type: str | None = None,
    ) -> float | None:
        """USD a call of this size would cost (no prompt cache assumed), or None if unpriced."""
        return self.cost(model, Usage(input_tokens, output_tokens), provider_type)

    def context_window(self, model: str, provider_type: str | None = None) -> int | None:
        price = self.price(model, provider_type)
        return None if price is None else price.max_input_tokens

    def _bundled_map(self) -> Mapping[str, Any]:
        if self._bundled is None:
            self._bundled = bundled_price_map()
        return self._bundled

    def _lookup(self, model: str, provider_type: str | None) -> ModelPrice | None:
        names = [model]
        _, slash, bare = model.partition("/")
        if slash and bare:
            names.append(bare)
        for name in names:
            bundled = self._bundled_price(name, provider_type)
            override = self._overrides.get(name)
            if override is not None:
                window = bundled.max_input_tokens if bundled else None
                return _override_price(override, window)
            if bundled is not None:
                return bundled
        return None

    def _bundled_price(self, name: str, provider_type: str | None) -> ModelPrice | None:
        bundled = self._bundled_map()
        candidates = [name]
        if provider_type:
            candidates.append(f"{_BUNDLED_PREFIX.get(provider_type, provider_type)}/{name}")
        for candidate in candidates:
            price = _bundled_entry_price(bundled.get(candidate))
            if price is not None:
                return price
        return None
