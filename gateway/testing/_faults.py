"""`Fault`: what FakeUpstream does to one request instead of (or while) answering it.

A fault is plain data so it can cross a process boundary: `to_dict()` / `from_dict()` are the
format of FakeUpstream's control API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Shortcut kinds and the HTTP status each one answers with. `overloaded` is 529 for Anthropic
# only; the protocols without a 529 get 503 (decided in _protocols, which knows the protocol).
STATUS_SHORTCUTS: dict[str, int] = {
    "rate_limit": 429,
    "server_error": 500,
    "unavailable": 503,
    "overloaded": 529,
    "unauthorized": 401,
    "not_found": 404,
    "context_length": 400,
}

BEHAVIOUR_KINDS = frozenset(
    {
        "ok",
        "status",
        "content_filter",
        "reset",
        "hang",
        "slow_first_byte",
        "cut_stream",
        "stall",
        "malformed_json",
        "deep_json",
        "midstream_error",
        "huge_body",
        "gzip_bomb",
    }
)

FAULT_KINDS = frozenset(STATUS_SHORTCUTS) | BEHAVIOUR_KINDS

# The in-stream error kinds `midstream_error` knows how to phrase in every protocol.
MIDSTREAM_KINDS = frozenset({"overloaded", "server_error", "rate_limit"})

# The fields `to_dict` writes besides `kind`; `from_dict` accepts exactly these.
_FIELDS = ("code", "retry_after", "message", "seconds", "after_chunks", "error_kind", "size")

# Faults whose answer is `size` bytes of text, and how much of it the fake writes at a time.
OVERSIZED_KINDS = frozenset({"huge_body", "gzip_bomb"})


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour. Build one with the class methods, not the constructor."""

    kind: str
    code: int | None = None
    """The HTTP status of an error fault."""
    retry_after: float | None = None
    message: str | None = None
    seconds: float | None = None
    after_chunks: int | None = None
    error_kind: str | None = None
    size: int | None = None
    """The reply text's length in bytes (after decompression) of `huge_body`, `gzip_bomb`."""

    def __post_init__(self) -> None:
        _check_fault(self)

    # Healthy slot (for scripts that fail, then answer, then fail again).

    @classmethod
    def ok(cls) -> Fault:
        return cls("ok")

    # Error statuses in each protocol's own error body.

    @classmethod
    def status(
        cls, code: int, *, retry_after: float | None = None, message: str | None = None
    ) -> Fault:
        return cls("status", code=code, retry_after=retry_after, message=message)

    @classmethod
    def rate_limit(cls, retry_after: float | None = None) -> Fault:
        return cls("rate_limit", code=429, retry_after=retry_after)

    @classmethod
    def server_error(cls) -> Fault:
        return cls("server_error", code=500)

    @classmethod
    def unavailable(cls, retry_after: float | None = None) -> Fault:
        return cls("unavailable", code=503, retry_after=retry_after)

    @classmethod
    def overloaded(cls, retry_after: float | None = None) -> Fault:
        """529 for Anthropic; 503 for OpenAI, Azure and Ollama, which have no 529."""
        return cls("overloaded", code=529, retry_after=retry_after)

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls("unauthorized", code=401)

    @classmethod
    def not_found(cls) -> Fault:
        return cls("not_found", code=404)

    @classmethod
    def context_length(cls) -> Fault:
        return cls("context_length", code=400)

    @classmethod
    def content_filter(cls) -> Fault:
        """200 with the protocol's filtered ending; Ollama has none and answers normally."""
        return cls("content_filter")

    # Connection-level behaviour.

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def hang(cls, seconds: float | None = None) -> Fault:
        """Never answer, or answer normally after `seconds`."""
        return cls("hang", seconds=seconds)

    @classmethod
    def slow_first_byte(cls, seconds: float) -> Fault:
        return cls("slow_first_byte", seconds=seconds)

    @classmethod
    def cut_stream(cls, after_chunks: int) -> Fault:
        return cls("cut_stream", after_chunks=after_chunks)

    @classmethod
    def stall(cls, after_chunks: int, seconds: float | None = None) -> Fault:
        """Streams send `after_chunks` content chunks, then go silent with the connection open
        (for `seconds`, then finish normally; None: until the client gives up). Whole-body
        requests are held like `hang(seconds)`."""
        return cls("stall", after_chunks=after_chunks, seconds=seconds)

    @classmethod
    def malformed_json(cls) -> Fault:
        return cls("malformed_json")

    @classmethod
    def deep_json(cls) -> Fault:
        """200 with valid JSON nested 20,000 deep (past Python's recursion limit) as the whole
        body, or as a stream's first event after its opening: a body a client must refuse
        without crashing."""
        return cls("deep_json")

    @classmethod
    def midstream_error(cls, after_chunks: int, kind: str = "overloaded") -> Fault:
        return cls("midstream_error", after_chunks=after_chunks, error_kind=kind)

    # Oversized answers: the fake writes them piece by piece and never holds one whole, so a
    # test can measure what the client's side of the process holds.

    @classmethod
    def huge_body(cls, size: int) -> Fault:
        """200 with a reply text of `size` bytes ("xxx..."). A whole answer is one JSON body
        sent chunked (no Content-Length to judge it by); a stream is a normal stream whose one
        content event carries all of it, on one line."""
        return cls("huge_body", size=size)

    @classmethod
    def gzip_bomb(cls, size: int) -> Fault:
        """`huge_body` sent with `Content-Encoding: gzip`: about a thousandth of `size` on the
        wire, `size` once inflated. A stream is instead many events of 64 KiB of text each,
        `size` bytes of them in all, compressed together."""
        return cls("gzip_bomb", size=size)

    # Serialisation for the control API.

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None and not (name == "code" and self.kind in STATUS_SHORTCUTS):
                data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """The inverse of `to_dict`; raises ValueError naming the field that is wrong."""
        if isinstance(data, Fault):
            return data
        if not isinstance(data, dict):
            raise ValueError(
                f"a fault must be an object like {{'kind': 'rate_limit'}}, got {data!r}"
            )
        kind = data.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind is {kind!r}; use one of {sorted(FAULT_KINDS)}")
        unknown = sorted(set(data) - {"kind", *_FIELDS})
        if unknown:
            raise ValueError(
                f"fault {kind!r} has unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}"
            )
        fields = {name: data[name] for name in _FIELDS if data.get(name) is not None}
        if kind in STATUS_SHORTCUTS:
            fields["code"] = STATUS_SHORTCUTS[kind]
        if kind == "midstream_error":
            fields.setdefault("error_kind", "overloaded")
        return cls(kind, **fields)

    def __str__(self) -> str:
        extras = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "kind")
        return f"Fault.{self.kind}({extras})"


def _check_fault(fault: Fault) -> None:
    """Reject a fault that could not be acted on, naming the field and the fix."""
    kind = fault.kind
    if kind not in FAULT_KINDS:
        raise ValueError(f"Fault kind is {kind!r}; use one of {sorted(FAULT_KINDS)}")
    if kind == "status" or kind in STATUS_SHORTCUTS:
        if not isinstance(fault.code, int) or isinstance(fault.code, bool):
            raise ValueError(f"Fault.{kind}: code must be an int HTTP status, got {fault.code!r}")
        if not 400 <= fault.code <= 599:
            raise ValueError(f"Fault.{kind}: code is {fault.code}; use an error status (400-599)")
    _check_seconds(kind, "retry_after", fault.retry_after)
    _check_seconds(kind, "seconds", fault.seconds)
    if kind == "slow_first_byte" and fault.seconds is None:
        raise ValueError("Fault.slow_first_byte: seconds is required, e.g. slow_first_byte(2.0)")
    if kind in {"cut_stream", "midstream_error", "stall"}:
        after = fault.after_chunks
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ValueError(f"Fault.{kind}: after_chunks must be an int >= 0, got {after!r}")
    if kind in OVERSIZED_KINDS:
        size = fault.size
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"Fault.{kind}: size must be an int of bytes >= 0, got {size!r}")
    if kind == "midstream_error" and fault.error_kind not in MIDSTREAM_KINDS:
        raise ValueError(
            f"Fault.midstream_error: kind is {fault.error_kind!r}; "
            f"use one of {sorted(MIDSTREAM_KINDS)}"
        )
    if fault.message is not None and not isinstance(fault.message, str):
        raise ValueError(f"Fault.{kind}: message must be a string, got {fault.message!r}")


def _check_seconds(kind: str, name: str, value: object) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"Fault.{kind}: {name} must be a number of seconds >= 0, got {value!r}")
