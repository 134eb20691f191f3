"""The words the gateway reports what happened in: error kinds, attempt, request, policy and
breaker outcomes. Hooks, metrics, `Attempt`, the server and the demo all use these enums, so a
misspelt outcome is a type error rather than a silent new label.

They are `StrEnum`s: each member equals its string value, which is what policies, metrics
labels and JSON bodies carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorKind(StrEnum):
    """How an upstream call failed. Retry and breaker policies are written in these words."""

    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER_ERROR = "server_error"
    OVERLOADED = "overloaded"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    INVALID_RESPONSE = "invalid_response"


class AttemptOutcome(StrEnum):
    """What became of one candidate for one request: an answer, a failed call (one member per
    `ErrorKind`, same value), or a skip made without calling it."""

    SUCCESS = "success"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER_ERROR = "server_error"
    OVERLOADED = "overloaded"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    INVALID_RESPONSE = "invalid_response"
    BREAKER_OPEN = "breaker_open"
    """Skipped: the provider's breaker is open."""
    SATURATED = "saturated"
    """Skipped: the provider is at its `max_concurrency`."""
    SKIPPED_CONTEXT = "skipped_context"
    """Skipped: the prompt does not fit the model's context window."""
    UNAVAILABLE = "unavailable"
    """Skipped: the provider could not be built (missing key or SDK)."""
    UNSUPPORTED = "unsupported"
    """Skipped: the candidate cannot honour something the request asks for (`n` > 1 on
    Anthropic, an audio part on Ollama...); the attempt's `error` names it."""
    DEADLINE = "deadline"
    """The task's `deadline_s` ran out before or during this candidate."""
    CANCELLED = "cancelled"
    """The caller went away (cancelled, or closed the stream) during the call."""
    STREAMING = "streaming"
    """Answering right now: a stream still in progress, as the server's headers show it.
    Never recorded: the stream's attempt is recorded with how it ended."""

    @classmethod
    def failed(cls, kind: ErrorKind) -> AttemptOutcome:
        """The outcome of a call that failed with `kind`."""
        return cls(kind.value)

    @property
    def skipped(self) -> bool:
        """True for the outcomes of a candidate left without a call."""
        return self in _SKIPS


_SKIPS = frozenset(
    {
        AttemptOutcome.BREAKER_OPEN,
        AttemptOutcome.SATURATED,
        AttemptOutcome.SKIPPED_CONTEXT,
        AttemptOutcome.UNAVAILABLE,
        AttemptOutcome.UNSUPPORTED,
    }
)

REQUEST_FAULTS = frozenset(
    {
        AttemptOutcome.BAD_REQUEST,
        AttemptOutcome.NOT_FOUND,
        AttemptOutcome.CONTEXT_LENGTH,
        AttemptOutcome.SKIPPED_CONTEXT,
        AttemptOutcome.UNSUPPORTED,
    }
)
"""Outcomes that say the request itself could not be served as sent: when every candidate
ends in one, the caller gets a 4xx it should not retry, not an upstream failure."""


class RequestOutcome(StrEnum):
    """How one routed request ended."""

    SUCCESS = "success"
    EXHAUSTED = "exhausted"
    """Every candidate failed or was skipped (or a stream failed after text was sent)."""
    DEADLINE = "deadline"
    REJECTED = "rejected"
    """Refused before any candidate was tried: an unknown task or malformed messages."""
    CANCELLED = "cancelled"


class PolicyOutcome(StrEnum):
    """What became of a policy load or reload."""

    APPLIED = "applied"
    REJECTED = "rejected"


class BreakerState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One candidate the router considered for one request."""

    provider: str
    model: str
    outcome: AttemptOutcome
    retries: int = 0
    latency_s: float = 0.0
    error: str | None = None
    """A short description of the last failure, safe to show (no secrets, no prompt text)."""
    status: int | None = None
    """The upstream's HTTP status for the last failure, when it answered with one."""
