"""`SharedBreaker`: a `Breaker` that mirrors a breaker record kept in shared storage.

The request path reads memory only. While shared state is in use, `admit()` reads a local
view of the shared record (kept fresh by the backend's background task) and the outcomes of
calls are handed to the backend as `Op`s, applied atomically in storage and echoed back into
the view; the local pybreaker state machine is not driven then. While the backend is out of
reach, the same object behaves as a plain local `Breaker`, starting from the last view, until
the backend is back and its record replaces the local state. While the backend is reachable but
this one record is not usable (`detach()`: a key of the wrong type, a malformed value), the
breaker admits locally the same way; its outcomes are still sent, since the next one written
is what repairs the record, and the reply that carries a usable record again re-attaches it.

With a `failure_rate` policy the rate window is shared too, and kept in storage: a failure's op
carries the successes this replica saw since its last op, and the background task hands the
rest over each turn (`TALLY`), so a healthy request queues nothing and wakes nobody. The window
of the local `Breaker` counts only while the backend is out of reach.

Half-open probing across replicas goes through a lease: a replica probes only after the
backend has granted it the lease, which the background task asks for as soon as this replica
wants to call a provider whose breaker may be probed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Protocol

import pybreaker

from gateway._outcomes import BreakerState
from gateway._resilience import Admission, Breaker, TripReason
from gateway.errors import ErrorKind

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.policy import ProviderSpec

# An unused probe lease is given back after this long, so that a replica that asked for one
# and then got no more traffic for the provider does not keep the others from probing.
DEFAULT_GRANT_HOLD_S = 2.0
# A breaker that rejected a request within this window still "wants" a probe: the background
# task asks for the lease on its behalf as soon as the reset timeout has passed.
PROBE_DEMAND_WINDOW_S = 60.0
# Extra lifetime of a lease beyond hold + call timeout, for a probe that starts at the end of
# the hold and runs to its timeout.
LEASE_MARGIN_S = 1.0

_TO_PYBREAKER = {
    "closed": pybreaker.STATE_CLOSED,
    "open": pybreaker.STATE_OPEN,
    "half_open": pybreaker.STATE_HALF_OPEN,
}


class OpKind(Enum):
    SNAPSHOT = "snapshot"
    FAILURE = "failure"
    SUCCESS = "success"
    ACQUIRE_PROBE = "acquire_probe"
    RELEASE_PROBE = "release_probe"
    TALLY = "tally"
    FORCE_OPEN = "force_open"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class Op:
    """One change to (or read of) a shared breaker, for the backend to apply in order."""

    kind: OpKind
    breaker: SharedBreaker
    probe: bool = False
    error_kind: ErrorKind | None = None
    count: int = 1
    """How many failures a FAILURE op stands for (queued failures are merged)."""
    ok: int = 0
    """Successes for the rate window, seen before this op (FAILURE, SUCCESS, TALLY)."""

    @property
    def mergeable(self) -> bool:
        return self.kind is OpKind.FAILURE and not self.probe


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A shared breaker as the backend last saw it."""

    state: str  # closed, open or half_open
    failures: int
    successes: int
    open_for_s: float  # time since it opened, on the backend's clock; 0 when closed
    forced: bool = False  # held open by an operator until reset


class StateLink(Protocol):
    """What a SharedBreaker needs from its backend; every method returns at once."""

    @property
    def shared(self) -> bool:
        """True while the backend is reachable (or not yet known to be unreachable)."""

    def submit(self, op: Op) -> bool:
        """Queue an op; False if it cannot be queued (then the breaker applies it locally)."""

    def want_probe(self) -> None:
        """A breaker wants a probe lease: ask for it soon rather than at the next refresh."""

    def ensure_running(self) -> None:
        """Start the background task on the running loop if it is not running."""


class _ViewStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker storage in memory that the shared record can overwrite."""

    def __init__(self) -> None:
        super().__init__("shared-view")
        self._state: str = pybreaker.STATE_CLOSED
        self._failures = 0
        self._successes = 0
        self._opened_at: datetime | None = None

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state

    def increment_counter(self) -> None:
        self._failures += 1

    def reset_counter(self) -> None:
        self._failures = 0

    def increment_success_counter(self) -> None:
        self._successes += 1

    def reset_success_counter(self) -> None:
        self._successes = 0

    @property
    def counter(self) -> int:
        return self._failures

    @property
    def success_counter(self) -> int:
        return self._successes

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._opened_at = value

    def overwrite_counts(self, failures: int, successes: int, opened_at: datetime | None) -> None:
        self._failures = failures
        self._successes = successes
        self._opened_at = opened_at


class SharedBreaker(Breaker):
    """The breaker of one provider instance, shared by every replica through a `StateLink`."""

    def __init__(
        self,
        spec: ProviderSpec,
        link: StateLink,
        *,
        key: str,
        on_state_change: Callable[[str, BreakerState], None] | None = None,
        on_trip: Callable[[str, TripReason], None] | None = None,
        grant_hold_s: float = DEFAULT_GRANT_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = _ViewStorage()
        super().__init__(
            spec.name,
            spec.breaker,
            on_state_change=on_state_change,
            on_trip=on_trip,
            storage=self._view,
            clock=clock,
        )
        # Successes for the shared rate window not yet handed to the backend.
        self._unsent_ok = 0
        self.key = key
        self._link = link
        self._clock = clock
        self._grant_hold_s = grant_hold_s
        # The lease outlives the hold by one full call, so a probe started at the last moment
        # of the hold still holds it until its own timeout.
        self.lease_s = grant_hold_s + spec.timeout_s + LEASE_MARGIN_S
        self._grant_until: float | None = None
        self._acquiring = False
        self._last_acquire_at: float | None = None
        self._wants_probe_at: float | None = None
        self._detached = False  # see detach()
        self._until_write = False
        # Operator changes (FORCE_OPEN, RESET) sent but not yet answered: a record read before
        # one of them reached Redis must not undo it in this replica's view meanwhile.
        self._operator_pending = 0

    # --- the Breaker interface the router drives --------------------------------------------

    def admit(self) -> Admission:
        self._link.ensure_running()
        if self._detached or not self._link.shared or self._forced:
            return super().admit()
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return Admission.CALL
        now = self._clock()
        self._wants_probe_at = now
        if state == pybreaker.STATE_OPEN and self.seconds_until_probe():
            return Admission.REJECT
        if self._probe_in_flight:
            return Admission.REJECT
        if self._grant_until is not None and now < self._grant_until:
            self._grant_until = None
            self._probe_in_flight = True
            return Admission.PROBE
        self._link.want_probe()
        return Admission.REJECT

    def success(self, admission: Admission) -> None:
        if not self._link.shared:
            super().success(admission)
            return
        self._end(admission)
        closed = self._cb.current_state == pybreaker.STATE_CLOSED
        if self._window is not None and admission is Admission.CALL and closed:
            self._unsent_ok += 1  # sent with the next op, or by the next turn's TALLY
        if admission is Admission.CALL and closed and self._view.counter == 0:
            return  # nothing to reset; other replicas' failures are reset by their next success
        self._submit(
            Op(OpKind.SUCCESS, self, probe=admission is Admission.PROBE, ok=self._take_ok())
        )

    def failure(self, admission: Admission, kind: ErrorKind) -> None:
        if not self._link.shared:
            super().failure(admission, kind)
            return
        self._end(admission)
        probe = admission is Admission.PROBE
        if kind in self.trip_on:
            ok = self._take_ok()
            self._submit(Op(OpKind.FAILURE, self, probe=probe, error_kind=kind, ok=ok))
        elif probe:
            self._submit(Op(OpKind.RELEASE_PROBE, self))

    def release(self, admission: Admission) -> None:
        if not self._link.shared:
            super().release(admission)
            return
        self._end(admission)
        if admission is Admission.PROBE:
            self._submit(Op(OpKind.RELEASE_PROBE, self))

    def force_open(self) -> None:
        """Open now for every replica, and keep it open (no probe) until `reset()`."""
        super().force_open()
        self._send_operator_op(OpKind.FORCE_OPEN)

    def reset(self) -> None:
        """Close now for every replica, with clean shared counts."""
        super().reset()
        self._unsent_ok = 0
        self.forget_lease()
        self._send_operator_op(OpKind.RESET)

    def _send_operator_op(self, kind: OpKind) -> None:
        # Applied to the local view already; a detached record gets it with the next write.
        if not self._detached and self._link.submit(Op(kind, self)):
            self._operator_pending += 1

    def operator_op_answered(self) -> None:
        """The backend answered a FORCE_OPEN or RESET of this breaker."""
        self._operator_pending = max(0, self._operator_pending - 1)

    # --- for the backend --------------------------------------------------------------------

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Make the shared record this breaker's state (listeners hear of any change)."""
        if self._operator_pending:
            return  # read before the operator's change reached the backend: it is stale
        self._detached = self._until_write = False
        self._forced = snapshot.forced
        self._view.state = _TO_PYBREAKER[snapshot.state]
        # Reading `state` makes pybreaker notice the change and notify listeners; entering
        # closed resets its counter, so the counts are written after.
        _ = self._cb.state
        opened_at = None
        if snapshot.state != "closed":
            opened_at = datetime.now(UTC) - timedelta(seconds=snapshot.open_for_s)
        self._view.overwrite_counts(snapshot.failures, snapshot.successes, opened_at)
        if snapshot.state == "closed":
            self._wants_probe_at = None
            self._grant_until = None

    def acquired(self, granted: bool, asked_at: float) -> None:
        """The answer to this breaker's ACQUIRE_PROBE (sent at `asked_at`)."""
        self._acquiring = False
        if granted:
            self._grant_until = asked_at + self._grant_hold_s

    def apply_locally(self, op: Op) -> None:
        """Apply an op the backend could not take to the local state machine instead."""
        self._count_locally(op.ok)
        if op.kind is OpKind.FAILURE and op.error_kind is not None:
            for _ in range(op.count):
                Breaker.failure(self, Admission.CALL, op.error_kind)
        elif op.kind is OpKind.SUCCESS:
            # Its own success is among op.ok, already in the window.
            closed = self._cb.current_state == pybreaker.STATE_CLOSED
            self._replay_success(Admission.CALL, closed=closed)
        elif op.kind is OpKind.ACQUIRE_PROBE:
            self._acquiring = False
        elif op.kind is OpKind.FORCE_OPEN:
            self.operator_op_answered()
            Breaker.force_open(self)
        elif op.kind is OpKind.RESET:
            self.operator_op_answered()
            Breaker.reset(self)

    def housekeeping(self, now: float, min_interval_s: float) -> list[Op]:
        """Lease requests and returns due now, and the successes the rate window has not had
        yet (called by the backend's background task)."""
        ops = self._lease_ops(now, min_interval_s)
        if self._unsent_ok:
            ops.insert(0, Op(OpKind.TALLY, self, ok=self._take_ok()))
        return ops

    def _take_ok(self) -> int:
        ok, self._unsent_ok = self._unsent_ok, 0
        return ok

    def _lease_ops(self, now: float, min_interval_s: float) -> list[Op]:
        if self._detached:
            return []  # probes are local until the record is usable again
        if self._grant_until is not None:
            if now < self._grant_until:
                return []
            self._grant_until = None
            return [Op(OpKind.RELEASE_PROBE, self)]
        if not self._wants_probe() or self._acquiring or self._probe_in_flight:
            return []
        if self._last_acquire_at is not None and now - self._last_acquire_at < min_interval_s:
            return []
        self._acquiring = True
        self._last_acquire_at = now
        return [Op(OpKind.ACQUIRE_PROBE, self)]

    @property
    def awaits_write(self) -> bool:
        """Detached because the backend refused an outcome: only a record that an outcome
        was written to may replace the local state (a plain read would drop what it refused)."""
        return self._detached and self._until_write

    def detach(self, *, until_write: bool = False) -> None:
        """The backend answered, but with nothing usable for this record: admit locally,
        starting from the last view, until `apply_snapshot` brings a usable record."""
        self._detached = True
        self._until_write = self._until_write or until_write
        self._wants_probe_at = None
        self.forget_lease()

    def forget_lease(self) -> None:
        """The backend went away: any lease it granted is void (it expires on its own)."""
        self._grant_until = None
        self._acquiring = False

    def went_local(self) -> None:
        """The backend is out of reach: its leases are void, and the successes not yet handed
        over count in the local window, which decides until the backend is back."""
        self.forget_lease()
        self._count_locally(self._take_ok())

    def _count_locally(self, ok: int) -> None:
        """`ok` successes into the local rate window (while closed)."""
        if ok and self._window is not None and self._cb.current_state == pybreaker.STATE_CLOSED:
            self._window.add(calls=ok)

    def _wants_probe(self) -> bool:
        if self._wants_probe_at is None or self._forced:
            return False
        if self._clock() - self._wants_probe_at > PROBE_DEMAND_WINDOW_S:
            return False
        state = self._cb.current_state
        if state == pybreaker.STATE_HALF_OPEN:
            return True
        return state == pybreaker.STATE_OPEN and not self.seconds_until_probe()

    def _submit(self, op: Op) -> None:
        if not self._link.submit(op):
            self.apply_locally(op)
