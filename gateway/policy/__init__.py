"""The routing policy: routing.yaml as ops write it, checked and resolved for the router.

Everything callers use is importable from here. One module per step:

- `models`: the resolved policy the router reads (`Policy`, `ProviderSpec`, `TaskSpec`, ...).
- `document`: the file form ops write, and its JSON Schema.
- `load`: `parse_policy` and `load_policy`, which run the steps below in order.
- `_yaml`: YAML read with the line of every key, duplicate keys rejected, YAML 1.2 booleans.
- `_env`: `${VAR}` substitution.
- `_messages`: pydantic's errors turned into ones naming the key, the value and the fix.
- `_resolve`: defaults merged, chains spliced, names cross-checked.
- `_embedding`: the vector lengths of well-known embedding models.
- `_cli` (run as `python -m gateway.policy`): check files, or print the JSON Schema.

A policy is shown with its secrets hidden by `gateway._secrets`, the rules logs and errors share.
"""

from __future__ import annotations

# main lives in _cli rather than __main__: importing __main__ here would make runpy warn on
# `python -m gateway.policy`.
from gateway.policy._cli import main
from gateway.policy._embedding import KNOWN_DIMENSIONS, known_dimensions, shortens_vectors
from gateway.policy._yaml import KeyPath, format_path, read_policy_yaml
from gateway.policy.document import (
    BreakerOverrides,
    ChainItem,
    PolicyDocument,
    ProviderEntry,
    RetryOverrides,
    TaskEntry,
    policy_json_schema,
)
from gateway.policy.load import load_policy, parse_policy
from gateway.policy.models import (
    DEFAULT_RETRY_ON,
    DEFAULT_TASK,
    DEFAULT_TRIP_ON,
    BreakerPolicy,
    ChainEntry,
    Defaults,
    Policy,
    Price,
    ProviderSpec,
    RetryPolicy,
    Seconds,
    StateSpec,
    Strategy,
    TaskKind,
    TaskSpec,
)

__all__ = [
    "DEFAULT_RETRY_ON",
    "DEFAULT_TASK",
    "DEFAULT_TRIP_ON",
    "KNOWN_DIMENSIONS",
    "BreakerOverrides",
    "BreakerPolicy",
    "Capability",
    "ChainEntry",
    "ChainItem",
    "Defaults",
    "KeyPath",
    "Policy",
    "PolicyDocument",
    "Price",
    "ProviderEntry",
    "ProviderSpec",
    "RetryOverrides",
    "RetryPolicy",
    "Seconds",
    "StateSpec",
    "Strategy",
    "TaskEntry",
    "TaskKind",
    "TaskSpec",
    "format_path",
    "known_dimensions",
    "load_policy",
    "main",
    "parse_policy",
    "policy_json_schema",
    "read_policy_yaml",
    "shortens_vectors",
]
