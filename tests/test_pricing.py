"""Prices: policy overrides over LiteLLM's bundled map, read without importing litellm."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.policy import Price
from gateway.pricing import BUNDLED_FILE, ModelPrice, PriceBook, bundled_price_map
from gateway.types import Usage


def bundled_json() -> dict[str, Any]:
    """The bundled file read directly, so expectations come from the data, not from memory."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations, "litellm must be installed"
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


BUNDLED = bundled_json()


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


def test_missing_litellm_gives_an_empty_map_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "litellm" else real_find_spec(name, *a),
    )
    bundled_price_map.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.pricing"):
            assert PriceBook().price("gpt-4o-mini") is None
            assert PriceBook().price("claude-sonnet-4-5") is None
    finally:
        bundled_price_map.cache_clear()

    warnings = [r for r in caplog.records if r.name == "gateway.pricing"]
    assert len(warnings) == 1
    assert "litellm is not installed" in warnings[0].getMessage()


def test_pricing_never_imports_litellm() -> None:
    code = (
        "import sys\n"
        "import gateway.pricing\n"
        "assert gateway.pricing.bundled_price_map.cache_info().currsize == 0  # lazy\n"
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
