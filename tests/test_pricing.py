"""Prices: policy overrides over a bundled map, LiteLLM's or the packaged snapshot of it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from import_blocker import run_without

from gateway.policy import Price
from gateway.pricing import (
    BUNDLED_FILE,
    SNAPSHOT_PATH,
    ModelPrice,
    PriceBook,
    bundled_price_map,
    bundled_prices,
)
from gateway.types import Usage


def bundled_json() -> dict[str, Any]:
    """The bundled file read directly, so expectations come from the data, not from memory."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations, "litellm must be installed"
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


BUNDLED = bundled_json()
SNAPSHOT: dict[str, Any] = json.loads(SNAPSHOT_PATH.read_text(encoding="utf-8"))
SNAPSHOT_VERSION: str = SNAPSHOT["litellm_version"]
# What the snapshot promises to keep of LiteLLM's map, written out here rather than imported,
# so that a change to the trimming has to be made on purpose in both places.
KEPT_PROVIDERS = {"openai", "azure", "anthropic", "ollama"}
KEPT_MODES = {"chat", "completion", "responses", "embedding"}
KEPT_FIELDS = {
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "max_input_tokens",
    "litellm_provider",
}


@pytest.mark.parametrize(
    ("model", "provider_type"),
    [("gpt-4o-mini", None), ("gpt-4o-mini", "openai"), ("claude-sonnet-4-5", "anthropic")],
)
def test_bundled_prices_match_the_json_file(model: str, provider_type: str | None) -> None:
    entry = BUNDLED[model]

    price = PriceBook().price(model, provider_type)

    assert price == ModelPrice(
        input_per_token=entry["input_cost_per_token"],
        output_per_token=entry["output_cost_per_token"],
        cached_input_per_token=entry["cache_read_input_token_cost"],
        max_input_tokens=entry["max_input_tokens"],
    )


def test_cost_of_a_call_uses_the_bundled_rates() -> None:
    entry = BUNDLED["claude-sonnet-4-5"]

    cost = PriceBook().cost("claude-sonnet-4-5", Usage(2_000, 300), "anthropic")

    expected = 2_000 * entry["input_cost_per_token"] + 300 * entry["output_cost_per_token"]
    assert cost == pytest.approx(expected)


def test_cached_tokens_are_priced_at_the_cached_rate() -> None:
    entry = BUNDLED["gpt-4o-mini"]
    usage = Usage(input_tokens=1_000, output_tokens=100, cached_input_tokens=400)

    cost = PriceBook().cost("gpt-4o-mini", usage)

    expected = (
        600 * entry["input_cost_per_token"]
        + 400 * entry["cache_read_input_token_cost"]
        + 100 * entry["output_cost_per_token"]
    )
    assert cost == pytest.approx(expected)
    assert entry["cache_read_input_token_cost"] < entry["input_cost_per_token"]


def test_cached_tokens_without_a_cached_rate_cost_the_input_rate() -> None:
    book = PriceBook({"house-model": Price(input=2.0, output=4.0)}, bundled={})

    cost = book.cost("house-model", Usage(1_000_000, 0, cached_input_tokens=250_000))

    assert cost == pytest.approx(2.0)


def test_policy_override_wins_and_is_per_million_tokens() -> None:
    book = PriceBook({"gpt-4o-mini": Price(input=1.0, output=3.0, cached_input=0.5)})

    price = book.price("gpt-4o-mini", "openai")

    assert price is not None
    assert price.input_per_token == pytest.approx(1e-6)
    assert price.output_per_token == pytest.approx(3e-6)
    assert price.cached_input_per_token == pytest.approx(5e-7)
    # The override keeps the model's context window from the bundled map.
    assert price.max_input_tokens == BUNDLED["gpt-4o-mini"]["max_input_tokens"]
    assert book.cost("gpt-4o-mini", Usage(1_000_000, 1_000_000, 1_000_000)) == pytest.approx(3.5)


def test_override_for_a_model_the_bundle_lacks() -> None:
    book = PriceBook({"llama3.2": Price(input=0, output=0, max_input_tokens=131_072)})

    assert book.cost("llama3.2", Usage(5_000, 700), "ollama") == 0.0
    assert book.context_window("llama3.2", "ollama") == 131_072


def test_provider_prefixed_lookup() -> None:
    entry = BUNDLED["ollama/llama3"]

    price = PriceBook().price("llama3", "ollama")

    assert price is not None
    assert price.input_per_token == entry["input_cost_per_token"]
    assert price.max_input_tokens == entry["max_input_tokens"]
    assert PriceBook().price("llama3", "local") == price  # "local" is an ollama alias
    assert PriceBook().price("llama3") is None  # no type, no prefix to try


def test_prefix_is_stripped_as_a_last_resort() -> None:
    book = PriceBook({"house-model": Price(input=1, output=1)})

    assert book.price("openai/gpt-4o-mini") == PriceBook().price("gpt-4o-mini")
    assert book.price("vendor/house-model") == book.price("house-model")


def test_unpriced_model_is_none() -> None:
    book = PriceBook()

    assert book.price("no-such-model-anywhere") is None
    assert book.cost("no-such-model-anywhere", Usage(10, 10)) is None
    assert book.estimate_cost("no-such-model-anywhere", 10, 10) is None
    assert book.context_window("no-such-model-anywhere") is None


def test_entries_without_a_usable_price_are_unpriced() -> None:
    bundled = {
        "docs-only": {"input_cost_per_token": "see the docs", "max_input_tokens": "many"},
        "boolean": {"input_cost_per_token": True},
        "no-output": {"input_cost_per_token": 1e-6, "max_input_tokens": 4096},
    }
    book = PriceBook(bundled=bundled)

    assert book.price("docs-only") is None
    assert book.price("boolean") is None
    assert book.price("no-output") == ModelPrice(1e-6, 0.0, None, 4096)
    assert PriceBook().price("sample_spec") is None  # the real file's documentation entry


def test_estimate_and_context_window() -> None:
    entry = BUNDLED["gpt-4o-mini"]
    book = PriceBook()

    estimate = book.estimate_cost("gpt-4o-mini", 10_000, 2_000, "openai")

    assert estimate == pytest.approx(
        10_000 * entry["input_cost_per_token"] + 2_000 * entry["output_cost_per_token"]
    )
    assert book.context_window("gpt-4o-mini", "openai") == entry["max_input_tokens"]
    assert (
        book.context_window("claude-sonnet-4-5") == BUNDLED["claude-sonnet-4-5"]["max_input_tokens"]
    )


def test_lookups_are_cached_per_model_and_type() -> None:
    calls: list[str] = []

    class CountingMap(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            calls.append(key)
            return super().get(key, default)

    book = PriceBook(bundled=CountingMap({"m": {"input_cost_per_token": 1e-6}}))

    for _ in range(100):
        assert book.cost("m", Usage(1, 1), "openai") is not None
        assert book.cost("missing", Usage(1, 1), "openai") is None

    assert calls.count("m") == 1
    assert calls.count("missing") == 1


def test_bundled_map_is_read_once() -> None:
    assert bundled_price_map() is bundled_price_map()
    assert len(bundled_price_map()) == len(BUNDLED) - 1  # less the documentation entry


def test_installed_litellm_at_the_snapshots_version_or_newer_is_the_map_used() -> None:
    installed = importlib.metadata.version("litellm")

    source = bundled_prices()

    assert source.origin == "litellm"
    assert source.litellm_version == installed
    assert source.location is not None and source.location.endswith(BUNDLED_FILE)


def test_pricing_never_imports_litellm() -> None:
    code = (
        "import sys\n"
        "import gateway.pricing\n"
        "assert gateway.pricing.bundled_prices.cache_info().currsize == 0  # lazy\n"
        "price = gateway.pricing.PriceBook().price('gpt-4o-mini')\n"
        "assert price is not None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'litellm', 'openai', 'anthropic'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# What a subprocess reports about its PriceBook: the map's origin and two models' prices.
REPORT_PRICES = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from gateway.pricing import PriceBook, bundled_prices
book = PriceBook()
report = {"origin": bundled_prices().origin, "version": bundled_prices().litellm_version}
for model, provider_type in [("gpt-4o-mini", "openai"), ("claude-sonnet-4-5", "anthropic")]:
    price = book.price(model, provider_type)
    report[model] = None if price is None else [
        price.input_per_token, price.output_per_token,
        price.cached_input_per_token, price.max_input_tokens,
    ]
report["litellm imported"] = "litellm" in sys.modules
print(json.dumps(report))
"""


def expected_report(entries: Mapping[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for model in ("gpt-4o-mini", "claude-sonnet-4-5"):
        entry = entries[model]
        report[model] = [
            entry["input_cost_per_token"],
            entry["output_cost_per_token"],
            entry.get("cache_read_input_token_cost"),
            entry["max_input_tokens"],
        ]
    return report


def test_snapshot_prices_without_litellm() -> None:
    result = run_without(["litellm"], REPORT_PRICES)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing to warn about: the snapshot is the normal case
    report = json.loads(result.stdout)
    assert report.pop("origin") == "snapshot"
    assert report.pop("version") == SNAPSHOT_VERSION
    assert report.pop("litellm imported") is False
    assert report == expected_report(SNAPSHOT["models"])


def fake_litellm(root: Path, version: str, price_map: Mapping[str, Any]) -> Path:
    """An installed-looking litellm distribution under `root`: the package (which must never
    be imported, so importing it fails), its price map and the metadata naming its version."""
    package = root / "litellm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('gateway imported litellm')\n")
    (package / BUNDLED_FILE).write_text(json.dumps(price_map), encoding="utf-8")
    info = root / f"litellm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: litellm\nVersion: {version}\n", encoding="utf-8"
    )
    return root


def marked_up(entries: Mapping[str, Any]) -> dict[str, Any]:
    """LiteLLM-format entries for the two reported models, priced unlike any real map."""
    return {
        model: {
            **entries[model],
            "input_cost_per_token": 0.125,
            "output_cost_per_token": 0.5,
            "max_input_tokens": 12_345,
            "mode": "chat",
        }
        for model in ("gpt-4o-mini", "claude-sonnet-4-5")
    }


@pytest.mark.parametrize(
    ("version", "winner"),
    [
        ("99.0.0", "litellm"),  # newer than the snapshot
        (SNAPSHOT_VERSION, "litellm"),  # the snapshot's source, untrimmed
        (SNAPSHOT_VERSION + ".post1", "litellm"),
        ("1.0", "snapshot"),  # older: the snapshot's prices are newer
        ("unknown", "snapshot"),  # cannot be judged newer
    ],
)
def test_litellms_map_is_used_when_its_version_is_the_snapshots_or_newer(
    tmp_path: Path, version: str, winner: str
) -> None:
    litellm_map = marked_up(SNAPSHOT["models"])
    site = fake_litellm(tmp_path / "site", version, litellm_map)

    result = run_without([], REPORT_PRICES, env={"PYTHONPATH": str(site)})

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report.pop("litellm imported") is False
    assert report.pop("origin") == winner
    if winner == "litellm":
        assert report.pop("version") == version
        assert report == expected_report(litellm_map)
    else:
        assert report.pop("version") == SNAPSHOT_VERSION
        assert report == expected_report(SNAPSHOT["models"])


def run_refresh(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.pricing", "refresh", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_refresh_writes_the_installed_litellms_map_trimmed(tmp_path: Path) -> None:
    output = tmp_path / "out" / "model_prices.json"

    result = run_refresh("--output", str(output))

    assert result.returncode == 0, result.stderr
    written = json.loads(output.read_text(encoding="utf-8"))
    assert written["litellm_version"] == importlib.metadata.version("litellm")
    assert written["models"] == {
        name: {field: value for field, value in entry.items() if field in KEPT_FIELDS}
        for name, entry in BUNDLED.items()
        if entry.get("litellm_provider") in KEPT_PROVIDERS
        and entry.get("mode") in KEPT_MODES
        and isinstance(entry.get("input_cost_per_token"), int | float)
    }
    assert "gpt-4o-mini" in written["models"] and "claude-sonnet-4-5" in written["models"]
    assert not output.with_name(output.name + ".partial").exists()


def test_refresh_from_the_snapshots_litellm_version_reproduces_the_shipped_file(
    tmp_path: Path,
) -> None:
    # LiteLLM's map at the snapshot's version, as far as the snapshot shows it: every kept
    # entry with fields the snapshot drops, plus entries it leaves out.
    litellm_map: dict[str, Any] = {
        name: {**entry, "mode": "chat", "supports_vision": True, "max_output_tokens": 1}
        for name, entry in SNAPSHOT["models"].items()
    }
    litellm_map["sample_spec"] = {"input_cost_per_token": 0.0, "litellm_provider": "one of ..."}
    litellm_map["tts-9"] = {
        "input_cost_per_token": 1e-8,
        "litellm_provider": "openai",
        "mode": "audio_speech",
    }
    litellm_map["groq/some-llama"] = {
        "input_cost_per_token": 1e-7,
        "output_cost_per_token": 1e-7,
        "litellm_provider": "groq",
        "mode": "chat",
    }
    litellm_map["gpt-image-9"] = {"litellm_provider": "openai", "mode": "chat"}  # unpriced
    site = fake_litellm(tmp_path / "site", SNAPSHOT_VERSION, litellm_map)
    output = tmp_path / "model_prices.json"

    result = run_refresh("-o", str(output), env={"PYTHONPATH": str(site)})

    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == SNAPSHOT_PATH.read_bytes()


def test_refresh_without_litellm_says_what_to_install(tmp_path: Path) -> None:
    output = tmp_path / "model_prices.json"
    code = (
        "import sys\n"
        "from gateway.pricing import main\n"
        f"sys.exit(main(['refresh', '-o', {str(output)!r}]))\n"
    )

    result = run_without(["litellm"], code)

    assert result.returncode == 1
    assert "pip install 'gateway[litellm]'" in result.stderr
    assert not output.exists()


def test_snapshot_is_small_and_prices_the_shipped_policies_hosted_models() -> None:
    book = PriceBook(bundled=SNAPSHOT["models"])

    assert SNAPSHOT_PATH.stat().st_size < 200_000
    assert all(set(entry) <= KEPT_FIELDS for entry in SNAPSHOT["models"].values())
    for model, provider_type in [
        ("gpt-4o-mini", "openai"),
        ("gpt-4o", "openai_http"),
        ("gpt-4o", "azure_openai"),
        ("claude-sonnet-4-5", "anthropic"),
        ("llama3", "ollama"),
    ]:
        price = book.price(model, provider_type)
        assert price is not None and price.max_input_tokens, (model, provider_type)
