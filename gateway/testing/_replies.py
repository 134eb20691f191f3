"""What a healthy FakeUpstream answer says, and the token counts it reports for it."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.types import Message, Usage, content_text

_WORD = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class ReplySpec:
    """How healthy answers for one model look (set with `FakeUpstream.reply`)."""

    text: str | None = None
    """None: the default text, or a small JSON object when the request asked for JSON mode."""
    cached_input_tokens: int = 0
    latency_s: float = 0.0
    """Wait before the response headers."""
    chunk_delay_s: float = 0.0
    """Wait between stream chunks."""
    usage: Usage | None = None
    """None: the counts `fake_usage` gives. Set, reported as given, however impossible
    (negative, 10**30), to test how a client takes an upstream's untrue usage."""
    tool_calls: tuple[ScriptedCall, ...] | None = None
    """None: call tools as the request suggests (see `_plan`). Set: answer exactly these calls
    (several are parallel calls); empty: never call a tool."""
    refusal: str | None = None
    """Answer with this refusal (OpenAI's message.refusal; Anthropic's stop_reason refusal)."""

    def __post_init__(self) -> None:
        if self.refusal is not None and not isinstance(self.refusal, str):
            raise ValueError(f"refusal must be a string, got {type(self.refusal).__name__}")
        if self.usage is not None and not isinstance(self.usage, Usage):
            raise ValueError(
                f"usage must be a gateway.types.Usage, got {type(self.usage).__name__}"
            )
        if self.text is not None and not isinstance(self.text, str):
            raise ValueError(f"reply text must be a string, got {type(self.text).__name__}")
        if (
            isinstance(self.cached_input_tokens, bool)
            or not isinstance(self.cached_input_tokens, int)
            or self.cached_input_tokens < 0
        ):
            raise ValueError(
                f"cached_input_tokens must be an int >= 0, got {self.cached_input_tokens!r}"
            )
        for name in ("latency_s", "chunk_delay_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")

    def text_for(self, model: str, *, json_mode: bool) -> str:
        if self.text is not None:
            return self.text
        if json_mode:
            return json.dumps({"model": model, "answer": "hello", "ok": True})
        return default_text(model)


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One tool call `reply(tool_calls=...)` scripts: the tool's name and its arguments."""

    name: str
    arguments: dict[str, Any]


def scripted_calls(calls: Any) -> tuple[ScriptedCall, ...] | None:
    """`reply(tool_calls=...)`'s list of {"name": ..., "arguments": {...}}, checked."""
    if calls is None:
        return None
    if isinstance(calls, str | bytes | Mapping) or not isinstance(calls, Sequence):
        raise ValueError(
            "tool_calls must be a list like [{'name': 'get_weather', 'arguments': {...}}], "
            f"got {calls!r}"
        )
    parsed = []
    for i, call in enumerate(calls):
        if isinstance(call, ScriptedCall):
            parsed.append(call)
            continue
        if not isinstance(call, Mapping) or set(call) - {"name", "arguments"}:
            raise ValueError(
                f"tool_calls[{i}] must be {{'name': str, 'arguments': dict}}, got {call!r}"
            )
        name, arguments = call.get("name"), call.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise ValueError(f"tool_calls[{i}].name must be a non-empty string, got {name!r}")
        if not isinstance(arguments, Mapping):
            raise ValueError(f"tool_calls[{i}].arguments must be a dict, got {arguments!r}")
        parsed.append(ScriptedCall(name, dict(arguments)))
    return tuple(parsed)


def default_text(model: str) -> str:
    return f"Hello from {model}. This is a fake reply."


def split_words(text: str) -> list[str]:
    """The stream deltas for `text`: one a word, each with the whitespace before it.

    Joined, they give back `text` exactly; their number is the reply's output token count.
    """
    pieces = _WORD.findall(text)
    tail = text[sum(map(len, pieces)) :]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces.append(tail)
    return pieces


def prompt_tokens(messages: Sequence[Message]) -> int:
    """The fake input token count: all message text, about four characters a token."""
    characters = sum(len(content_text(message.get("content"))) for message in messages)
    return max(1, characters // 4)


def fake_usage(messages: Sequence[Message], text: str, cached_input_tokens: int = 0) -> Usage:
    """The usage FakeUpstream reports for a prompt of `messages` answered with `text`.

    `input_tokens` = characters of all message contents // 4 (at least 1; a system prompt sent
    as Anthropic's `system` field counts like a system message), `output_tokens` = the number of
    stream deltas (words), `cached_input_tokens` = what `reply(..., cached_input_tokens=)` set,
    capped at the input tokens. Every protocol reports these same numbers in its own fields.
    """
    input_tokens = prompt_tokens(messages)
    return Usage(
        input_tokens=input_tokens,
        output_tokens=len(split_words(text)),
        cached_input_tokens=min(cached_input_tokens, input_tokens),
    )


DEFAULT_EMBEDDING_DIMENSIONS = 16
"""The vector length of an embedding model FakeUpstream was told nothing of, and whose name
`gateway.policy.KNOWN_DIMENSIONS` does not list."""


def fake_vector(model: str, text: str, dimensions: int) -> list[float]:
    """The vector FakeUpstream answers for `text` embedded by `model`: deterministic, and
    every number a multiple of 1/128 in [-1, 1), exact as a float32 (so a base64 answer
    decodes to exactly these numbers)."""
    numbers: list[float] = []
    block = 0
    while len(numbers) < dimensions:
        digest = hashlib.sha256(f"{model}\0{text}\0{block}".encode()).digest()
        numbers.extend((byte - 128) / 128 for byte in digest)
        block += 1
    return numbers[:dimensions]


def embedding_tokens(texts: Sequence[str]) -> int:
    """The fake input token count of an embedding request: about four characters a token,
    at least one an input."""
    return sum(max(1, len(text) // 4) for text in texts)
