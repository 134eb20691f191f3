"""What a call costs: the policy's price overrides over a bundled price map.

The bundled map is one of two files, chosen once, on the first lookup, with no network:

- the snapshot shipped inside this package (`gateway/pricing_data/model_prices.json`), so
  prices are known without litellm installed. It is LiteLLM's price map trimmed to the
  providers this gateway speaks to directly (LiteLLM's `openai`, `azure`, `anthropic` and
  `ollama` entries whose mode generates text or embeds it: chat, completion, responses,
  embedding; an embedding model's price is per input token) and to the fields
  read here (input, output and cached-input cost per token, `max_input_tokens`,
  `litellm_provider`), and it records the litellm version it was taken from;
- LiteLLM's own map, the JSON file inside the installed litellm package, read without
  importing litellm (a slow import with side effects). It is used instead of the snapshot when
  the installed litellm's version is the snapshot's or higher: a higher version has the newer
  prices, and the same version has the snapshot's prices untrimmed (every vendor the `litellm`
  provider type reaches). An older or unversioned litellm leaves the snapshot in use.

Regenerate the snapshot from the installed litellm's map (after upgrading litellm):

    python -m gateway.pricing refresh            # rewrites the packaged snapshot
    python -m gateway.pricing refresh -o FILE    # or writes it elsewhere
    python -m gateway.pricing source             # which map lookups use, and why

Policy prices are USD per 1M tokens; both maps are USD per token.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gateway.types import Usage

if TYPE_CHECKING:
    from gateway.policy import Price

__all__ = [
    "ModelPrice",
    "PriceBook",
    "PriceMap",
    "bundled_price_map",
    "bundled_prices",
    "litellm_map_path",
    "refresh",
    "render_snapshot",
    "snapshot_of",
]

logger = logging.getLogger(__name__)

TOKENS_PER_MILLION = 1_000_000
BUNDLED_FILE = "model_prices_and_context_window_backup.json"
"""LiteLLM's price map, inside the litellm package."""
SNAPSHOT_PACKAGE = "gateway.pricing_data"
SNAPSHOT_FILE = "model_prices.json"
SNAPSHOT_PATH = Path(__file__).parent / "pricing_data" / SNAPSHOT_FILE
"""Where `refresh` writes by default: the snapshot in this package's own directory."""

# What the snapshot keeps of LiteLLM's map: entries of the LiteLLM providers that this
# gateway's provider types call (openai and openai_http -> openai, azure_openai -> azure,
# anthropic, ollama), for modes that generate or embed text, with only the fields read below.
SNAPSHOT_PROVIDERS = frozenset({"openai", "azure", "anthropic", "ollama"})
SNAPSHOT_MODES = frozenset({"chat", "completion", "responses", "embedding"})
SNAPSHOT_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "max_input_tokens",
    "litellm_provider",
)

# The bundled map keys most models by "<litellm provider>/<model>"; where this gateway's
# provider type names differ from LiteLLM's, this says which prefix to look under.
_BUNDLED_PREFIX: Mapping[str, str] = MappingProxyType(
    {"azure_openai": "azure", "local": "ollama", "openai_http": "openai"}
)
_CACHE_LIMIT = 4096
_DOCUMENTATION_ENTRY = "sample_spec"
_RELEASE = re.compile(r"\d+(?:\.\d+)*")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


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


@dataclass(frozen=True, slots=True)
class PriceMap:
    """A bundled price map (LiteLLM's entry format, USD per token) and where it came from."""

    models: Mapping[str, Any]
    origin: str
    """"litellm" (the installed package's map), "snapshot" (this package's) or "none"."""
    litellm_version: str | None
    """The installed litellm's version, or the one the snapshot was taken from."""
    location: str | None

    def describe(self) -> str:
        if self.origin == "litellm":
            where = f"litellm {self.litellm_version}'s map"
        elif self.origin == "snapshot":
            where = f"the snapshot of litellm {self.litellm_version}'s map"
        else:
            return "no bundled price map: only the policy's `prices:` are known"
        return f"{where} ({self.location}), {len(self.models)} models"


def litellm_map_path() -> Path | None:
    """The installed litellm's price map file, found without importing litellm; None when
    litellm cannot be imported."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        # A meta path finder that refuses the name raises instead of answering None.
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) / BUNDLED_FILE if locations else None


def _litellm_version() -> str | None:
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str | None) -> tuple[int, ...] | None:
    """A version's release numbers ("1.74.9.post1" -> (1, 74, 9)), trailing zeros dropped so
    that 1.2 and 1.2.0 compare equal; None when the text does not start with one."""
    match = _RELEASE.match(version.strip()) if version else None
    if match is None:
        return None
    numbers = [int(part) for part in match.group().split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def _litellm_supersedes(installed: str | None, snapshot: str | None) -> bool:
    installed_release = _release(installed)
    snapshot_release = _release(snapshot)
    if installed_release is None:
        return False  # an unversioned litellm's map cannot be judged newer
    return snapshot_release is None or installed_release >= snapshot_release


def _read_object(location: str, text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError as exc:
        logger.warning("cannot read the price map %s (%s)", location, exc)
        return None
    if not isinstance(data, dict):
        logger.warning("the price map %s is not a JSON object", location)
        return None
    return data


def _load_snapshot() -> PriceMap | None:
    resource = importlib.resources.files(SNAPSHOT_PACKAGE).joinpath(SNAPSHOT_FILE)
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:
        logger.warning("cannot read the price snapshot %s (%s)", resource, exc)
        return None
    document = _read_object(str(resource), text)
    models = document.get("models") if document else None
    if not isinstance(models, dict):
        return None
    version = document.get("litellm_version") if document else None
    return PriceMap(
        models=MappingProxyType(models),
        origin="snapshot",
        litellm_version=version if isinstance(version, str) else None,
        location=str(resource),
    )


def _load_litellm(path: Path, version: str | None) -> PriceMap | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        logger.warning("cannot read litellm's price map %s (%s)", path, exc)
        return None
    data = _read_object(str(path), text)
    if data is None:
        return None
    # The map documents its own fields in an entry with zero prices; it is not a model.
    data.pop(_DOCUMENTATION_ENTRY, None)
    return PriceMap(
        models=MappingProxyType(data), origin="litellm", litellm_version=version, location=str(path)
    )


@functools.cache
def bundled_prices() -> PriceMap:
    """The bundled price map lookups use, chosen and read once (see the module docstring)."""
    snapshot = _load_snapshot()
    path = litellm_map_path()
    if path is not None:
        version = _litellm_version()
        if snapshot is None or _litellm_supersedes(version, snapshot.litellm_version):
            loaded = _load_litellm(path, version)
            if loaded is not None:
                return loaded
    if snapshot is not None:
        return snapshot
    logger.warning(
        "no bundled price map could be read: costs are only reported for models priced under "
        "`prices:` in the policy"
    )
    return PriceMap(models=_EMPTY, origin="none", litellm_version=None, location=None)


def bundled_price_map() -> Mapping[str, Any]:
    """The models of `bundled_prices()`: LiteLLM's entry format, keyed by model name."""
    return bundled_prices().models


def _number(value: Any) -> float | None:
    # bool is an int subclass, and the map's documentation entry holds prose in number fields.
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _snapshot_entry(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, Mapping):
        return None
    if entry.get("litellm_provider") not in SNAPSHOT_PROVIDERS:
        return None
    if (
        entry.get("mode") not in SNAPSHOT_MODES
        or _number(entry.get("input_cost_per_token")) is None
    ):
        return None
    return {field: entry[field] for field in SNAPSHOT_FIELDS if field in entry}


def snapshot_of(litellm_map: Mapping[str, Any], litellm_version: str) -> dict[str, Any]:
    """The snapshot document for a LiteLLM price map: its entries that the snapshot keeps
    (see SNAPSHOT_PROVIDERS, SNAPSHOT_MODES), each cut down to SNAPSHOT_FIELDS."""
    models = {}
    for name, entry in litellm_map.items():
        kept = _snapshot_entry(entry)
        if kept is not None:
            models[name] = kept
    return {"litellm_version": litellm_version, "models": models}


def render_snapshot(document: Mapping[str, Any]) -> str:
    """The snapshot as the file holds it: sorted, one model a line, so a refresh diffs well."""
    models: Mapping[str, Any] = document["models"]
    lines = [
        f"    {json.dumps(name)}: {json.dumps(models[name], sort_keys=True)}"
        for name in sorted(models)
    ]
    return (
        "{\n"
        f'  "refresh": {json.dumps("python -m gateway.pricing refresh")},\n'
        f'  "litellm_version": {json.dumps(document["litellm_version"])},\n'
        '  "models": {\n' + ",\n".join(lines) + "\n  }\n}\n"
    )


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


def refresh(output: Path) -> PriceMap:
    """Write the snapshot of the installed litellm's price map to `output`; what was written.

    Raises LookupError when litellm is not installed or has no version, ValueError when its
    map cannot be read.
    """
    path = litellm_map_path()
    if path is None:
        raise LookupError("litellm is not installed: pip install 'gateway[litellm]' first")
    version = _litellm_version()
    if version is None:
        raise LookupError(f"the litellm at {path.parent} has no version in its metadata")
    data = _read_object(str(path), path.read_text(encoding="utf-8"))
    if data is None:
        raise ValueError(f"litellm's price map {path} is not a JSON object")
    document = snapshot_of(data, version)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a reader never sees half a file.
    partial = output.with_name(output.name + ".partial")
    partial.write_text(render_snapshot(document), encoding="utf-8")
    partial.replace(output)
    return PriceMap(
        models=MappingProxyType(document["models"]),
        origin="snapshot",
        litellm_version=version,
        location=str(output),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.pricing", description="The bundled model price map."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    refresh_parser = commands.add_parser(
        "refresh", help="regenerate the price snapshot from the installed litellm's map"
    )
    refresh_parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=SNAPSHOT_PATH,
        help="where to write it (default: the snapshot this package ships, %(default)s)",
    )
    commands.add_parser("source", help="say which price map lookups use")
    args = parser.parse_args(argv)

    if args.command == "source":
        print(bundled_prices().describe())
        return 0
    try:
        written = refresh(args.output)
    except (LookupError, OSError, ValueError) as exc:
        print(f"refresh failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
