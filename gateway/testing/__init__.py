"""Test doubles for the gateway and for code that uses it.

- `FakeUpstream`: a real HTTP server speaking the OpenAI, Azure OpenAI, Anthropic and Ollama
  APIs, with scriptable faults (`Fault`), for tests through the real SDKs.
- `FakeUpstreamClient` / `FakeUpstream.spawn()`: drive one in another process.
- `FakeLLM`: a scripted in-process `LLMService`, for unit tests with no HTTP.
- `set_waits_enabled(False)`: backoff waits return at once (decisions, counts and hooks stay
  the same), so tests of retries do not sleep.
- `set_routing_clock(clock)` / `set_routing_rng(random.Random(seed))`: the clock and random
  source routing decisions use (latency decay, exploration, slow start, weighted draws), so
  tests of them are exact; `None` restores the defaults.

Names are imported on first use, so `python -m gateway.testing.fake_upstream` runs cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FakeUpstream": "gateway.testing.fake_upstream",
    "ReceivedRequest": "gateway.testing.fake_upstream",
    "DEFAULT_CHAOS_RATES": "gateway.testing.fake_upstream",
    "Fault": "gateway.testing._faults",
    "fake_usage": "gateway.testing._replies",
    "FakeUpstreamClient": "gateway.testing._client",
    "SpawnedFakeUpstream": "gateway.testing._client",
    "ControlAPIError": "gateway.testing._client",
    "FakeLLM": "gateway.testing.fake_llm",
    "set_waits_enabled": "gateway._resilience",
    "set_routing_clock": "gateway._runtime",
    "set_routing_rng": "gateway._runtime",
}

__all__ = [
    "DEFAULT_CHAOS_RATES",
    "ControlAPIError",
    "FakeLLM",
    "FakeUpstream",
    "FakeUpstreamClient",
    "Fault",
    "ReceivedRequest",
    "SpawnedFakeUpstream",
    "fake_usage",
    "set_routing_clock",
    "set_routing_rng",
    "set_waits_enabled",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports lazily
    from gateway._resilience import set_waits_enabled
    from gateway._runtime import set_routing_clock, set_routing_rng
    from gateway.testing._client import ControlAPIError, FakeUpstreamClient, SpawnedFakeUpstream
    from gateway.testing._faults import Fault
    from gateway.testing._replies import fake_usage
    from gateway.testing.fake_llm import FakeLLM
    from gateway.testing.fake_upstream import DEFAULT_CHAOS_RATES, FakeUpstream, ReceivedRequest


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
