"""Retry (tenacity) and circuit breaking (pybreaker) for one candidate's calls.

pybreaker is synchronous: handing it a coroutine function would record a success the moment
the coroutine object is created. So the breaker here is driven *around* the awaited call:
`Breaker.admit()` before, then `success()`, `failure()` or `release()` after, replaying the
outcome into pybreaker's state machine with `CircuitBreaker.call`.

Beside pybreaker's consecutive count, a breaker whose policy has a `failure_rate` keeps a
`RateWindow` of its recent calls and opens when their failed share reaches the threshold.
Each trip is reported with its `TripReason`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import pybreaker
import tenacity

from gateway._outcomes import BreakerState
from gateway.errors import ErrorKind, ProviderError

if TYPE_CHECKING:
    from gateway.policy import BreakerPolicy, RetryPolicy
    from gateway.policy.models import FailureRate

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

_STATES = {
    pybreaker.STATE_CLOSED: BreakerState.CLOSED,
    pybreaker.STATE_HALF_OPEN: BreakerState.HALF_OPEN,
    pybreaker.STATE_OPEN: BreakerState.OPEN,
}


class TripReason(StrEnum):
    """Why a breaker opened (the `reason` of `gateway_breaker_trips_total`)."""

    CONSECUTIVE = "consecutive"
    """`fail_max` failures in a row while closed."""
    FAILURE_RATE = "failure_rate"
    """The failed share of the calls in the `failure_rate` window reached its threshold."""
    PROBE = "probe"
    """The half-open trial call failed: open again for another `reset_timeout_s`."""


WINDOW_BUCKETS = 10
"""A rate window is kept as this many buckets of `window_s / WINDOW_BUCKETS` each: what it
counts is the calls of the last `window_s`, give or take one bucket (a bucket leaves the window
whole). The Redis backend keeps the same buckets (`gateway/state/_lua.py`)."""


class RateWindow:
    """Calls and failures of the last `rule.window_s`, in fixed buckets (constant memory and
    constant work per call, whatever the traffic)."""

    __slots__ = ("_calls", "_clock", "_failures", "_slots", "_width", "rule")

    def __init__(self, rule: FailureRate, clock: Clock) -> None:
        self.rule = rule
        self._clock = clock
        self._width = rule.window_s / WINDOW_BUCKETS
        self._slots = [-1] * WINDOW_BUCKETS  # the bucket number each slot now holds
        self._calls = [0] * WINDOW_BUCKETS
        self._failures = [0] * WINDOW_BUCKETS

    def __repr__(self) -> str:
        calls, failures = self.totals()
        return f"RateWindow({failures}/{calls} failed in {self.rule.window_s:g}s)"

    def _bucket(self) -> int:
        return math.floor(self._clock() / self._width)

    def add(self, *, calls: int = 1, failures: int = 0) -> None:
        """Count `calls` calls, `failures` of them failed."""
        bucket = self._bucket()
        slot = bucket % WINDOW_BUCKETS
        if self._slots[slot] != bucket:
            self._slots[slot] = bucket
            self._calls[slot] = self._failures[slot] = 0
        self._calls[slot] += calls
        self._failures[slot] += failures

    def totals(self) -> tuple[int, int]:
        """(calls, failures) within the window now."""
        oldest = self._bucket() - WINDOW_BUCKETS
        calls = failures = 0
        for slot, bucket in enumerate(self._slots):
            if oldest < bucket:
                calls += self._calls[slot]
                failures += self._failures[slot]
        return calls, failures

    def tripped(self) -> bool:
        """At least `min_calls` calls in the window, and the failed share at the threshold."""
        return rate_trips(self.rule, *self.totals())

    def clear(self) -> None:
        self._slots = [-1] * WINDOW_BUCKETS


def rate_trips(rule: FailureRate, calls: int, failures: int) -> bool:
    """The rate rule (the Redis scripts compute the same share, in the same doubles)."""
    return calls >= rule.min_calls and failures / calls >= rule.threshold


class Admission(Enum):
    CALL = "call"  # closed: call normally
    PROBE = "probe"  # half-open: this call is the one trial call
    REJECT = "reject"  # open, or half-open with a probe already in flight: skip


class _Tripped(Exception):
    """Replays a failed awaited call into pybreaker's synchronous state machine."""


def _noop() -> None:
    return None


def _raise_tripped() -> None:
    raise _Tripped


class Breaker:
    """One circuit breaker per provider instance, shared by every task that uses it.

    Only `ErrorKind`s in the policy's `trip_on` count as failures (`failure`). Other outcomes
    that say nothing about the provider's health, such as a caller's cancellation or a 400
    caused by the prompt, `release()` the admission without touching the counters (nor the
    rate window: they are not calls in its count).

    It opens on `fail_max` consecutive failures, or, with a `failure_rate` policy, when the
    failed share of the window's calls (successes and `trip_on` failures of calls admitted while
    closed) reaches the threshold; `on_trip(provider, reason)` hears each opening and why.
    `clock` (monotonic seconds) times the rate window.
    """

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        on_state_change: Callable[[str, BreakerState], None] | None = None,
        on_trip: Callable[[str, TripReason], None] | None = None,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy
        self.trip_on = frozenset(policy.trip_on)
        self._on_state_change = on_state_change
        self._on_trip = on_trip
        rule = policy.failure_rate
        self._window = RateWindow(rule, clock) if rule is not None else None
        self.last_trip: TripReason | None = None
        """Why this process last saw the breaker open by its own outcome (None: never)."""
        self._storage = storage or pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=policy.fail_max,
            reset_timeout=policy.reset_timeout_s,
            success_threshold=policy.success_threshold,
            state_storage=self._storage,
            listeners=[_StateListener(self)],
            name=name,
            throw_new_error_on_trip=False,
        )
        self._probe_in_flight = False
        self._forced = False

    def __repr__(self) -> str:
        return f"Breaker({self.name!r}, state={self.state!r}, failures={self.failure_count})"

    @property
    def forced(self) -> bool:
        """Forced open by an operator (`force_open`): no call and no probe until `reset`."""
        return self._forced

    def force_open(self) -> None:
        """Drain the provider: open now and stay open, whatever the probe timer says, until
        `reset()`. Calls already admitted finish; their outcomes change nothing."""
        self._forced = True
        self._probe_in_flight = False
        if self._cb.current_state != pybreaker.STATE_OPEN:
            self._cb.open()

    def reset(self) -> None:
        """Close the breaker now with clean counts (and lift a forced opening)."""
        self._forced = False
        self._probe_in_flight = False
        if self._window is not None:
            self._window.clear()
        self._cb.close()

    @property
    def state(self) -> BreakerState:
        return _STATES[self._cb.current_state]

    @property
    def failure_count(self) -> int:
        return self._cb.fail_counter

    def seconds_until_probe(self) -> float | None:
        """Seconds until an open breaker lets a probe through; None unless open, and None
        while forced open (no probe is due until an operator resets it)."""
        if self._forced or self._cb.current_state != pybreaker.STATE_OPEN:
            return None
        opened_at = self._storage.opened_at
        if opened_at is None:
            return 0.0
        elapsed = (datetime.now(UTC) - opened_at).total_seconds()
        return max(0.0, self.policy.reset_timeout_s - elapsed)

    def refusing(self) -> bool:
        """Open and not yet due for a probe: any call now would be refused. No side effects,
        so the router can skip the candidate before setting anything up for a call."""
        if self._forced:
            return True
        return self._cb.current_state == pybreaker.STATE_OPEN and bool(self.seconds_until_probe())

    def admit(self) -> Admission:
        if self._forced:
            return Admission.REJECT
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return Admission.CALL
        if state == pybreaker.STATE_OPEN:
            if self.seconds_until_probe():
                return Admission.REJECT
            self._cb.half_open()
        if self._probe_in_flight:
            return Admission.REJECT
        self._probe_in_flight = True
        return Admission.PROBE

    @property
    def window(self) -> RateWindow | None:
        """The rate window of this process (None without a `failure_rate` policy)."""
        return self._window

    def success(self, admission: Admission) -> None:
        self._end(admission)
        if self._forced:
            return  # admitted before the operator drained it: says nothing now
        closed = self._cb.current_state == pybreaker.STATE_CLOSED
        if self._window is not None and admission is Admission.CALL and closed:
            self._window.add()
        self._replay_success(admission, closed=closed)

    def _replay_success(self, admission: Admission, *, closed: bool) -> None:
        """A success into pybreaker's state machine (the rate window is the caller's)."""
        if admission is Admission.CALL and self._cb.fail_counter == 0 and closed:
            # Nothing to record (pybreaker would reset a counter that is already 0); this is
            # every healthy request, so skip its lock and state machine.
            return
        # A call admitted while closed can finish after concurrent failures opened the
        # breaker; pybreaker then refuses to replay it. The answer is still good: the success
        # is simply not counted, as the open breaker already decided on other evidence.
        with contextlib.suppress(pybreaker.CircuitBreakerError):
            self._cb.call(_noop)

    def failure(self, admission: Admission, kind: ErrorKind) -> None:
        """Record a failed call; kinds outside `trip_on` only release the admission."""
        self._end(admission)
        if kind not in self.trip_on or self._forced:
            return
        before = self._cb.current_state
        with contextlib.suppress(_Tripped, pybreaker.CircuitBreakerError):
            self._cb.call(_raise_tripped)
        after = self._cb.current_state
        window = self._window
        reason: TripReason | None = None
        if after == pybreaker.STATE_OPEN and before != pybreaker.STATE_OPEN:
            probe = before == pybreaker.STATE_HALF_OPEN
            reason = TripReason.PROBE if probe else TripReason.CONSECUTIVE
        elif window is not None and before == after == pybreaker.STATE_CLOSED:
            window.add(failures=1)
            if window.tripped():
                self._cb.open()
                reason = TripReason.FAILURE_RATE
        if reason is not None:
            self.opened_for(reason)

    def opened_for(self, reason: TripReason) -> None:
        """The breaker opened for `reason`: the window starts afresh for the next closed
        period, and `on_trip` is told."""
        self.last_trip = reason
        if self._window is not None:
            self._window.clear()
        if self._on_trip is not None:
            self._on_trip(self.name, reason)

    def release(self, admission: Admission) -> None:
        """The call ended without saying anything about the provider's health."""
        self._end(admission)

    def _end(self, admission: Admission) -> None:
        if admission is Admission.PROBE:
            self._probe_in_flight = False

    def admitted(self) -> Ticket:
        """Admit one call, as a `Ticket` that settles it; `BreakerOpen` if it must not run."""
        admission = self.admit()
        if admission is Admission.REJECT:
            raise BreakerOpen(self.name)
        return Ticket(self, admission)

    def state_changed(self, new_state: str) -> None:
        """pybreaker moved to `new_state` (its state's name)."""
        if self._on_state_change is not None:
            self._on_state_change(self.name, _STATES[new_state])


class BreakerOpen(Exception):
    """The breaker refused the call: open, or half-open with its probe already in flight."""


class Ticket:
    """One admitted call, settled exactly once as a success, a failure or a release.

    Used as `with ticket:` around the call: any exception leaving the block settles it (a
    `ProviderError` or a timeout as a failure of that kind, anything else, cancellation and
    bugs below us included, as a release that says nothing about the provider's health).
    The code inside settles the ticket itself when the call succeeds, or when it knows
    better than the exception (a reply it rejects after the provider answered). Settling
    again is a no-op, so a ticket can be guarded twice, around the call and around reading
    a stream, and released once more in a `finally` for good measure.
    """

    __slots__ = ("_admission", "_breaker", "settled")

    def __init__(self, breaker: Breaker, admission: Admission) -> None:
        self._breaker = breaker
        self._admission = admission
        self.settled = False

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and not self.settled:
            kind = failure_kind(exc)
            if kind is None:
                self.release()
            else:
                self.fail(kind)

    def succeed(self) -> None:
        if not self.settled:
            self.settled = True
            self._breaker.success(self._admission)

    def fail(self, kind: ErrorKind) -> None:
        if not self.settled:
            self.settled = True
            self._breaker.failure(self._admission, kind)

    def release(self) -> None:
        if not self.settled:
            self.settled = True
            self._breaker.release(self._admission)


def failure_kind(exc: BaseException) -> ErrorKind | None:
    """The provider failure an exception stands for; None when it says nothing about the
    provider (a refusal of the request, a cancellation, a bug)."""
    if isinstance(exc, ProviderError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT
    return None


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self._breaker.state_changed(new_state.name)


# --- retries -------------------------------------------------------------------------------

_waits_enabled = True


def set_waits_enabled(enabled: bool) -> None:
    """Testing switch: with waits off, backoff sleeps return at once (the decisions, counts
    and hooks stay the same)."""
    global _waits_enabled
    _waits_enabled = enabled


def backoff_s(policy: RetryPolicy, retry_number: int, error: BaseException | None) -> float:
    """How long to wait before retry number `retry_number` (1 = the first retry).

    The upstream's Retry-After wins when it gave one; otherwise exponential backoff capped at
    `max_backoff_s`, with jitter spreading each wait over its upper half so that replicas that
    failed together do not retry together.
    """
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        return max(0.0, float(retry_after))
    wait = min(policy.max_backoff_s, policy.initial_backoff_s * (2 ** (retry_number - 1)))
    if policy.jitter:
        wait = random.uniform(wait / 2, wait)
    return wait


class RetryAborted(Exception):
    """The next retry would not be useful: its wait runs past the deadline."""

    def __init__(self, error: ProviderError, wait_s: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait_s = wait_s


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    remaining_s: Callable[[], float | None],
    on_retry: Callable[[ProviderError, float], None],
    sleep: Sleep = asyncio.sleep,
) -> T:
    """Run `attempt` until it succeeds, raises a kind outside `policy.on`, or attempts run out.

    `remaining_s()` is the time left before the request's deadline (None: no deadline); a wait
    that would end past it is not taken, and `RetryAborted` is raised instead so the router
    can fall through to the next candidate while there is still time.
    """
    # Most calls succeed the first time: they pay for one try, not for setting up tenacity,
    # which costs more per call than the rest of the router's own work.
    try:
        return await attempt()
    except ProviderError as exc:
        if exc.kind not in policy.on or policy.attempts <= 1:
            raise
        first_error = exc

    async def do_sleep(seconds: float) -> None:
        if _waits_enabled and seconds > 0:
            await sleep(seconds)

    def plan_retry(error: ProviderError, retry_number: int) -> float:
        wait = backoff_s(policy, retry_number, error)
        left = remaining_s()
        if left is not None and wait >= left:
            raise RetryAborted(error, wait)
        return wait

    wait = plan_retry(first_error, 1)
    on_retry(first_error, wait)
    await do_sleep(wait)

    # The remaining attempts run under tenacity; its attempt n is the call's attempt n + 1.
    # tenacity asks `wait` and `stop` in an order that has changed between versions; both
    # read the same plan, made once per failed attempt.
    plan: dict[int, float] = {}

    def error_of(state: tenacity.RetryCallState) -> ProviderError:
        error = state.outcome.exception() if state.outcome else None
        assert isinstance(error, ProviderError)
        return error

    def planned_wait(state: tenacity.RetryCallState) -> float:
        wait = plan.get(state.attempt_number)
        if wait is None:
            wait = plan[state.attempt_number] = plan_retry(
                error_of(state), state.attempt_number + 1
            )
        return wait

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number + 1 >= policy.attempts:
            return True
        planned_wait(state)  # raises RetryAborted when the wait would pass the deadline
        return False

    retrying = tenacity.AsyncRetrying(
        stop=stop,
        wait=planned_wait,
        retry=tenacity.retry_if_exception(
            lambda exc: isinstance(exc, ProviderError) and exc.kind in policy.on
        ),
        before_sleep=lambda state: on_retry(error_of(state), planned_wait(state)),
        sleep=do_sleep,
        reraise=True,
    )
    return await retrying(attempt)
