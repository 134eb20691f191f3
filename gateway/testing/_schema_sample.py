"""One deterministic value that fits a JSON schema: FakeUpstream's tool-call arguments and its
schema-shaped (structured output) replies.

Deterministic so a test can assert the exact arguments a tool was called with; complete (every
property, recursively) so a client that validates the value against its own model (pydantic,
instructor, pydantic-ai) accepts it. It covers what SDKs and pydantic actually emit: `$ref` into
`$defs`/`definitions`, `anyOf`/`oneOf` for unions and Optional, `allOf` wrappers, `enum`/`const`,
`default`, numeric bounds and string formats. A recursive model ends where it recurses: an array
of itself is empty, an optional self is null.
"""

from __future__ import annotations

import copy
import math
from typing import Any

JsonSchema = dict[str, Any]

_WORD = "Paris"
_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
}


class _Cycle:
    """A `$ref` met again inside its own expansion: the caller leaves that branch out."""


_CYCLE = _Cycle()


def sample(schema: Any) -> Any:
    """A value valid against `schema` (a JSON schema as a dict; `True`/`{}` accept anything)."""
    defs: dict[str, Any] = {}
    if isinstance(schema, dict):
        for key in ("$defs", "definitions"):
            if isinstance(schema.get(key), dict):
                defs.update({f"#/{key}/{name}": s for name, s in schema[key].items()})
    value = _sample(schema, defs, ())
    return None if value is _CYCLE else value


def _sample(schema: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if not isinstance(schema, dict):
        return _WORD if schema is not False else None
    if "default" in schema:
        return copy.deepcopy(schema["default"])
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return copy.deepcopy(enum[0])
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            return _CYCLE
        return _sample(defs.get(ref, {}), defs, (*seen, ref))
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return _first_branch(branches, defs, seen)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        return _all_of(all_of, defs, seen)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema or "prefixItems" in schema:
            kind = "array"
    if kind == "object":
        return _object(schema, defs, seen)
    if kind == "array":
        return _array(schema, defs, seen)
    if kind == "integer":
        return int(_bounded(schema, 1))
    if kind == "number":
        return _bounded(schema, 1.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema)


def _first_branch(branches: list[Any], defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    """The first branch that is not null (Optional[X] is anyOf [X, null]) and not a cycle."""
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "null":
            continue
        value = _sample(branch, defs, seen)
        if value is not _CYCLE:
            return value
    return None


def _all_of(branches: list[Any], defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    values = [_sample(branch, defs, seen) for branch in branches]
    if all(isinstance(v, dict) for v in values):
        merged: dict[str, Any] = {}
        for value in values:
            merged.update(value)
        return merged
    return values[0]


def _object(schema: JsonSchema, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    properties = schema.get("properties")
    result: dict[str, Any] = {}
    if isinstance(properties, dict):
        for name, sub in properties.items():
            value = _sample(sub, defs, seen)
            if value is not _CYCLE:
                result[name] = value
    return result


def _array(schema: JsonSchema, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list):
        values = [_sample(item, defs, seen) for item in prefix]
        return [v for v in values if v is not _CYCLE]
    item = _sample(schema.get("items", {}), defs, seen)
    if item is _CYCLE:
        return []
    count = schema.get("minItems")
    count = count if isinstance(count, int) and not isinstance(count, bool) and count > 1 else 1
    max_items = schema.get("maxItems")
    if isinstance(max_items, int) and not isinstance(max_items, bool):
        count = min(count, max_items)
    return [copy.deepcopy(item) for _ in range(count)]


def _bounded(schema: JsonSchema, value: float) -> float:
    """`value` moved inside the schema's minimum/maximum (exclusive ones too), if it is not."""
    is_int = schema.get("type") == "integer" or (
        isinstance(schema.get("type"), list) and "integer" in schema["type"]
    )
    step = 1.0 if is_int else 0.5
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    ex_low, ex_high = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    if low is not None and value < low:
        value = math.ceil(low) if is_int else low
    if ex_low is not None and value <= ex_low:
        value = math.floor(ex_low) + 1 if is_int else ex_low + step
    if high is not None and value > high:
        value = math.floor(high) if is_int else high
    if ex_high is not None and value >= ex_high:
        value = math.ceil(ex_high) - 1 if is_int else ex_high - step
    return value


def _bound(schema: JsonSchema, key: str) -> float | None:
    value = schema.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _string(schema: JsonSchema) -> str:
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, _WORD) if isinstance(fmt, str) else _WORD
    min_length, max_length = schema.get("minLength"), schema.get("maxLength")
    if isinstance(min_length, int) and len(text) < min_length:
        text += "s" * (min_length - len(text))
    if isinstance(max_length, int) and len(text) > max_length:
        text = text[:max_length]
    return text
