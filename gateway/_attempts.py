"""Book-keeping shared by the two chain walks (`router` and `streaming`): attempt outcomes,
one request's deadline and attempts, and the failure summary callers read."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.errors import ErrorKind, InvalidRequestError, ProviderError
from gateway.policy import TaskSpec
from gateway.runtime import Candidate
from gateway.types import Attempt, Usage

# Outcomes of a skipped candidate (no call was made).
BREAKER_OPEN = "breaker_open"
SATURATED = "saturated"
SKIPPED_CONTEXT = "skipped_context"
UNAVAILABLE = "unavailable"
DEADLINE = "deadline"
CANCELLED = "cancelled"
SUCCESS = "success"


@dataclass(eq=False)
class RequestState:
    """Book-keeping for one request in flight: its deadline, attempts and time upstream."""

    task: TaskSpec
    started: float
    deadline: float | None
    attempts: list[Attempt] = field(default_factory=list)
    upstream_s: float = 0.0
    waited_s: float = 0.0
    cost_usd: float = 0.0
    billed: Usage = field(default_factory=Usage)
    left_behind: tuple[str, str] | None = None
    """(provider, outcome) of the candidate just given up on: the next one is a fallback."""

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - time.perf_counter()

    def attempt_timeout(self, candidate: Candidate) -> tuple[float, bool]:
        """The bound for one call, and whether it is the deadline (not timeout_s) that binds."""
        timeout = candidate.spec.timeout_s
        left = self.remaining()
        if left is not None and left < timeout:
            return max(left, 0.0), True
        return timeout, False


class CandidateFailed(Exception):
    """One candidate is done without an answer; `outcome` says why."""

    def __init__(self, outcome: str, error: ProviderError | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.error = error


def refused(exc: InvalidRequestError, provider: str) -> ProviderError:
    """A provider-specific refusal of a request, as a `bad_request` that falls through."""
    return ProviderError(str(exc), kind=ErrorKind.BAD_REQUEST, provider=provider)


def summary(task: str, attempts: Sequence[Attempt], *, header: bool = True) -> str:
    parts = []
    for a in attempts:
        detail = f": {a.error}" if a.error else ""
        retried = f" after {a.retries} retr{'y' if a.retries == 1 else 'ies'}" if a.retries else ""
        parts.append(f"{a.provider} ({a.model}) {a.outcome}{retried}{detail}")
    listing = "; ".join(parts) or "no candidates"
    return f"every provider for task {task!r} failed: {listing}" if header else listing
