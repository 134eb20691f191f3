"""`RedisState`: breakers shared by every replica through Redis, off the request path.

One background task per state object owns the Redis client. Each turn it sends, in one
pipeline, the ops the breakers queued since the last turn (in order, as atomic Lua scripts),
lease requests and returns, and every `refresh_interval_s` a snapshot of every breaker; the
replies become each breaker's local view. The request path only reads that view and appends
to the queue, so it never waits on Redis.

When Redis cannot be reached the task logs once, reports `on_error("redis")` for each failed
attempt, hands the ops it could not send back to their breakers' local state machines, and
retries with capped exponential backoff; the first turn that succeeds again replaces local
state with the shared record ("rejoins").

One provider's record that Redis answers but the gateway cannot use (a key of the wrong type, a
value the scripts never write: see `_lua`) is that provider's problem alone: its breaker is
detached (it decides locally, from the last record it read) until a reply carries a usable
record again, which the next failure or success any replica reports writes. Each replica logs
it once per key and counts each turn that met it, like a failed round trip; the link stays up
for every other provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway._outcomes import BreakerState
from gateway._resilience import TripReason
from gateway._secrets import mask_url, masked_as, scrub_text, url_secrets
from gateway.state import _lua
from gateway.state.shared_breaker import (
    DEFAULT_GRANT_HOLD_S,
    Op,
    OpKind,
    SharedBreaker,
    Snapshot,
)

if TYPE_CHECKING:
    from gateway._resilience import Breaker
    from gateway.policy import ProviderSpec, StateSpec

log = logging.getLogger("gateway")

BACKEND = "redis"
DEFAULT_REFRESH_INTERVAL_S = 0.25
DEFAULT_COMMAND_TIMEOUT_S = 0.5
RETRY_INITIAL_S = 0.25
RETRY_MAX_S = 5.0
# Ops waiting for the background task. Past this (Redis far slower than traffic) new ops are
# applied locally at once instead of queueing without bound.
MAX_PENDING_OPS = 10_000
# Ops per pipeline: encoding and decoding a batch runs on the event loop, so a burst of
# failures is sent in slices that each keep the loop busy for well under a millisecond.
MAX_BATCH_OPS = 128
# How long a breaker record outlives its last change: long enough for any reset timeout.
MIN_RECORD_TTL_S = 24 * 3600.0
CLOSE_TIMEOUT_S = 2.0

_BACKEND_ERRORS = (RedisError, OSError)


def breaker_key(namespace: str, provider: str) -> str:
    """The Redis hash of one provider's breaker. The braces are a Cluster hash tag."""
    return f"{namespace}:breaker:{{{provider}}}"


def lease_key(namespace: str, provider: str) -> str:
    return breaker_key(namespace, provider) + ":probe"


def window_key(namespace: str, provider: str) -> str:
    """The shared rate window of one provider's breaker (with a `failure_rate` policy)."""
    return breaker_key(namespace, provider) + ":window"


class RedisState:
    """Shared breaker state for one router: build its breakers with `breaker_factory`."""

    backend = BACKEND

    def __init__(
        self,
        spec: StateSpec,
        *,
        on_error: Callable[[str], None] | None = None,
        refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
        grant_hold_s: float = DEFAULT_GRANT_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.namespace = spec.namespace
        self._url = spec.url
        # What logs and reprs show: the URL's credentials (user:password@, ?password=) hidden.
        self._shown_url = mask_url(spec.url)
        self._url_secrets = masked_as(url_secrets(spec.url))
        self._on_error = on_error
        self._refresh_interval_s = refresh_interval_s
        self._command_timeout_s = command_timeout_s
        self._grant_hold_s = grant_hold_s
        self._clock = clock
        # Identifies this replica as the holder of a probe lease.
        self.owner = uuid.uuid4().hex
        self._breakers: weakref.WeakSet[SharedBreaker] = weakref.WeakSet()
        self._pending: list[Op] = []
        self._shared = True  # until a failure says otherwise
        self._outage_logged = False
        # Records Redis answered for but the gateway cannot use, key -> why; each is logged when
        # it enters and when it leaves, never per refresh.
        self._unusable: dict[str, str] = {}
        self._refusal_logged = False
        self._overflow_logged = False
        self._next_refresh = 0.0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self.errors = 0
        """Failed round trips to Redis so far, and turns that met a record it could not use
        (what on_error was told)."""
        self.round_trips = 0
        """Successful round trips to Redis so far."""

    def __repr__(self) -> str:
        mode = "shared" if self._shared else "local (Redis unreachable)"
        return f"RedisState({self._shown_url}, namespace={self.namespace!r}, {mode})"

    # --- what the router uses ---------------------------------------------------------------

    def breaker_factory(
        self,
        on_state_change: Callable[[str, BreakerState], None] | None = None,
        *,
        on_trip: Callable[[str, TripReason], None] | None = None,
    ) -> Callable[[ProviderSpec], Breaker]:
        def build(spec: ProviderSpec) -> Breaker:
            breaker = SharedBreaker(
                spec,
                self,
                key=breaker_key(self.namespace, spec.name),
                on_state_change=on_state_change,
                on_trip=on_trip,
                grant_hold_s=self._grant_hold_s,
                clock=self._clock,
            )
            self._breakers.add(breaker)
            # Refreshing starts now if a loop runs (else at the first request), so that a
            # replica with no traffic yet still shows shared breaker states in its metrics.
            self.ensure_running()
            return breaker

        return build

    async def aclose(self) -> None:
        """Send what is queued (bounded wait), then stop the task and close the client."""
        self._closing = True
        worker, self._worker = self._worker, None
        if worker is None or worker.done():
            return
        if not (self._shared and self._pending):
            worker.cancel()  # nothing to send, or no Redis to send it to
            await asyncio.gather(worker, return_exceptions=True)
            return
        if self._wake is not None:
            self._wake.set()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(worker)
        except TimeoutError:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    # --- StateLink: called on the request path, must not wait ---------------------------------

    @property
    def shared(self) -> bool:
        return self._shared

    def submit(self, op: Op) -> bool:
        if not self._shared or self._closing:
            return False
        if len(self._pending) >= MAX_PENDING_OPS:
            if not self._overflow_logged:
                self._overflow_logged = True
                log.warning(
                    "shared breaker state: %d changes wait for Redis; further ones are applied "
                    "to local breaker state only until the queue drains",
                    MAX_PENDING_OPS,
                )
            return False
        self._pending.append(op)
        self.ensure_running()
        if self._wake is not None:
            self._wake.set()
        return True

    def want_probe(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def ensure_running(self) -> None:
        if self._closing:
            return
        worker = self._worker
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: started by the first call made from one
        if worker is not None and not worker.done() and worker.get_loop() is loop:
            return
        self._wake = asyncio.Event()
        self._worker = loop.create_task(self._run(), name="gateway-shared-state")

    # --- the background task ----------------------------------------------------------------

    async def _run(self) -> None:
        client = aioredis.Redis.from_url(
            self._url,
            decode_responses=True,
            socket_timeout=self._command_timeout_s,
            socket_connect_timeout=self._command_timeout_s,
            # No automatic retries: a failure script sent twice would count twice.
            retry=Retry(NoBackoff(), 0),
        )
        backoff = RETRY_INITIAL_S
        try:
            while True:
                if await self._turn_survived(client):
                    backoff = RETRY_INITIAL_S
                    if not self._shared:
                        self._rejoined()
                    if self._closing and not self._pending:
                        return
                    await self._sleep(max(0.0, self._next_refresh - self._clock()))
                    continue
                if self._closing:
                    return
                await self._sleep(random.uniform(backoff / 2, backoff))
                backoff = min(RETRY_MAX_S, backoff * 2)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _turn_survived(self, client: aioredis.Redis) -> bool:
        """One turn; False (after switching to local state) if it failed."""
        try:
            await self._turn(client)
        except _BACKEND_ERRORS as exc:
            self._backend_failed(exc)
            return False
        except Exception as exc:  # a bug here must not take the breakers down with it
            log.exception("shared breaker state: unexpected error; breakers use local state")
            self._backend_failed(exc)
            return False
        return True

    async def _sleep(self, seconds: float) -> None:
        """Sleep until the next refresh is due or something is queued, whichever is first."""
        wake = self._wake
        assert wake is not None
        if not wake.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await wake.wait()
        wake.clear()

    async def _turn(self, client: aioredis.Redis) -> None:
        queued = _merged(self._pending)
        ops, self._pending = queued[:MAX_BATCH_OPS], queued[MAX_BATCH_OPS:]
        if self._pending and self._wake is not None:
            self._wake.set()  # the rest goes in the next turn, right after this one
        now = self._clock()
        breakers = list(self._breakers)
        refresh = not self._shared or now >= self._next_refresh
        if self._shared:
            for breaker in breakers:
                ops.extend(breaker.housekeeping(now, self._refresh_interval_s))
        if refresh:
            self._next_refresh = now + self._refresh_interval_s
            ops.extend(Op(OpKind.SNAPSHOT, b) for b in _one_per_key(breakers))
        if not ops:
            if refresh:  # nothing to read yet, but whether Redis answers decides the mode
                await client.ping()
                self.round_trips += 1
            return
        try:
            replies = await self._execute(client, ops)
        except BaseException:
            self._give_back(ops)
            raise
        self.round_trips += 1
        self._apply(ops, replies, sent_at=now)

    async def _execute(self, client: aioredis.Redis, ops: Sequence[Op]) -> list[Any]:
        replies = await self._pipeline(client, ops)
        # Redis forgets scripts on restart (or SCRIPT FLUSH). An op that got NOSCRIPT did not
        # run, so sending it again after loading the scripts cannot count anything twice.
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            for script in _lua.ALL_SCRIPTS:
                await client.script_load(script.source)
            again = await self._pipeline(client, [ops[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, client: aioredis.Redis, ops: Sequence[Op]) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for op in ops:
                script, args = self._script_call(op)
                name = op.breaker.name
                keys = (
                    breaker_key(self.namespace, name),
                    lease_key(self.namespace, name),
                    window_key(self.namespace, name),
                )
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    def _script_call(self, op: Op) -> tuple[_lua.Script, tuple[str | int | float, ...]]:
        breaker = op.breaker
        policy = breaker.policy
        ttl_ms = int(max(MIN_RECORD_TTL_S, 4 * policy.reset_timeout_s) * 1000)
        probe = 1 if op.probe else 0
        rule = policy.failure_rate
        # 0: no rate rule (the scripts then leave the window alone).
        window_ms = max(1, int(rule.window_s * 1000)) if rule is not None else 0
        if op.kind is OpKind.FAILURE:
            rate = (rule.min_calls, repr(rule.threshold)) if rule is not None else (0, "1")
            return _lua.FAILURE, (
                policy.fail_max, ttl_ms, self.owner, probe, op.count, op.ok, window_ms, *rate
            )  # fmt: skip
        if op.kind is OpKind.SUCCESS:
            return _lua.SUCCESS, (
                policy.success_threshold, ttl_ms, self.owner, probe, op.ok, window_ms
            )  # fmt: skip
        if op.kind is OpKind.TALLY:
            return _lua.TALLY, (op.ok, window_ms)
        if op.kind is OpKind.ACQUIRE_PROBE:
            reset_ms = int(policy.reset_timeout_s * 1000)
            lease_ms = int(breaker.lease_s * 1000)
            return _lua.ACQUIRE_PROBE, (reset_ms, lease_ms, self.owner, ttl_ms)
        if op.kind is OpKind.RELEASE_PROBE:
            return _lua.RELEASE_PROBE, (self.owner,)
        if op.kind is OpKind.FORCE_OPEN:
            return _lua.FORCE_OPEN, ()
        if op.kind is OpKind.RESET:
            return _lua.RESET, ()
        return _lua.SNAPSHOT, ()

    def _apply(self, ops: Sequence[Op], replies: Sequence[Any], *, sent_at: float) -> None:
        # Per key, what its last reply in this batch says: the record, or why it is unusable.
        latest: dict[str, Snapshot | _Unusable] = {}
        providers: dict[str, str] = {}  # key -> provider, for the log
        wrote: set[str] = set()  # keys a FAILURE or SUCCESS was applied to
        repaired: list[_Repair] = []
        refused: list[Op] = []
        trips: list[tuple[SharedBreaker, TripReason]] = []  # openings this replica caused
        for op, reply in zip(ops, replies, strict=True):
            key = op.breaker.key
            providers[key] = op.breaker.name
            if op.kind in (OpKind.FORCE_OPEN, OpKind.RESET) and not isinstance(
                reply, ResponseError
            ):
                op.breaker.operator_op_answered()  # a refused one is answered locally below
            if isinstance(reply, ResponseError):
                # Redis refused this op (a key of the wrong type, a record the scripts will not
                # read): it did not happen there, so it is applied to the local breaker.
                refused.append(op)
                latest[key] = _refusal(reply, self._scrub)
                continue
            try:
                snapshot, granted, fixed, tripped = _parse(reply)
            except (TypeError, ValueError):
                # It ran, so it is not applied again locally; the record is not trusted.
                if op.kind is OpKind.ACQUIRE_PROBE:
                    op.breaker.acquired(False, sent_at)
                latest[key] = _Unusable("an answer this gateway cannot read", _MALFORMED)
                continue
            latest[key] = snapshot
            if op.kind in (OpKind.FAILURE, OpKind.SUCCESS, OpKind.FORCE_OPEN, OpKind.RESET):
                wrote.add(key)
            if op.kind is OpKind.ACQUIRE_PROBE:
                op.breaker.acquired(granted, sent_at)
            if tripped is not None:
                trips.append((op.breaker, tripped))
            repaired.extend(self._repairs(op.breaker.name, fixed))
        for breaker in list(self._breakers):
            result = latest.get(breaker.key)
            if isinstance(result, Snapshot):
                if breaker.awaits_write and breaker.key not in wrote:
                    continue  # its refused outcomes are in its local state, not in this record
                breaker.apply_snapshot(result)
            elif result is not None:
                breaker.detach(until_write=result.kind is _REFUSED)
        for breaker, reason in trips:  # after the views moved to open, as locally
            breaker.opened_for(reason)
        self._give_back(refused)
        unusable = self._log_records(latest, providers, repaired)
        if unusable or repaired:
            self._count()

    def _repairs(self, provider: str, fixed: str) -> list[_Repair]:
        """What a script's `repaired` field says it overwrote."""
        found = []
        for part in filter(None, fixed.split(";")):
            if part == "lease":
                found.append(_Repair(lease_key(self.namespace, provider), provider, "probe lease"))
            elif part == "window":
                key = window_key(self.namespace, provider)
                found.append(_Repair(key, provider, "failure-rate window"))
            else:
                fields = part.removeprefix("record:").replace(",", ", ")
                key = breaker_key(self.namespace, provider)
                found.append(_Repair(key, provider, f"record (fields: {fields})"))
        return found

    def _log_records(
        self,
        latest: dict[str, Snapshot | _Unusable],
        providers: dict[str, str],
        repaired: Sequence[_Repair],
    ) -> bool:
        """Log each record that became unusable or usable again, and each one overwritten:
        once per change, never per refresh. True if some record was unusable in this batch."""
        overwritten = {r.key: r for r in repaired}
        unusable = False
        for key, result in latest.items():
            provider = providers[key]
            if isinstance(result, _Unusable):
                unusable = True
                if result.kind is _REFUSED:
                    # Not this record's fault (out of memory, a read-only replica...): every
                    # record meets it, so it is one line, not one per provider and per write.
                    if not self._refusal_logged:
                        self._refusal_logged = True
                        log.warning(
                            "shared breaker state: Redis at %s refuses breaker updates (%s); "
                            "each provider whose update it refuses uses its local breaker "
                            "until Redis takes one of its updates again",
                            self._shown_url,
                            result.reason,
                        )
                    continue
                if key in self._unusable:
                    continue
                self._unusable[key] = result.reason
                until = (
                    "the next failure or success reported for it rewrites the record"
                    if result.kind is _MALFORMED
                    else "the key is deleted (it is of another type; the gateway leaves it)"
                )
                log.warning(
                    "shared breaker state: Redis at %s cannot serve %s (%s); provider %s uses "
                    "its local breaker until %s. Other providers stay shared",
                    self._shown_url,
                    key,
                    result.reason,
                    provider,
                    until,
                )
            elif key in self._unusable:
                del self._unusable[key]
                how = "was rewritten" if overwritten.pop(key, None) else "is usable again"
                log.warning(
                    "shared breaker state: %s at Redis %s %s; provider %s shares its breaker again",
                    key,
                    self._shown_url,
                    how,
                    provider,
                )
        for repair in overwritten.values():
            log.warning(
                "shared breaker state: overwrote the malformed %s %s at Redis %s (provider %s)",
                repair.what,
                repair.key,
                self._shown_url,
                repair.provider,
            )
        return unusable

    def _give_back(self, ops: Sequence[Op]) -> None:
        for op in ops:
            op.breaker.apply_locally(op)

    def _backend_failed(self, exc: BaseException) -> None:
        if self._shared:
            self._shared = False
            for breaker in list(self._breakers):
                breaker.went_local()
            # Whatever queued while the failing turn was in flight goes local too.
            pending, self._pending = self._pending, []
            self._give_back(pending)
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "shared breaker state: Redis at %s is unreachable (%s: %s); breakers use local "
                "state until it answers again",
                self._shown_url,
                type(exc).__name__,
                self._scrub(str(exc)),
            )
        self._count()

    def _count(self) -> None:
        """One failed round trip, or one that met an unusable record: told to `on_error`."""
        self.errors += 1
        if self._on_error is not None:
            try:
                self._on_error(BACKEND)
            except Exception:  # a broken hook must not stop the state task
                log.exception("state backend error hook failed")

    def _rejoined(self) -> None:
        self._shared = True
        self._outage_logged = False
        self._refusal_logged = False
        self._overflow_logged = False
        log.warning(
            "shared breaker state: Redis at %s answers again; breakers rejoined shared state",
            self._shown_url,
        )

    def _scrub(self, text: str) -> str:
        """Error text without the URL's credentials, in case a client library echoes them."""
        return scrub_text(text, self._url_secrets)


def _merged(ops: Sequence[Op]) -> list[Op]:
    """The ops in order, each breaker's plain failures merged into its previous plain-failure
    op when nothing else of that breaker came between (one script call counts them all, and the
    successes each carried for the rate window)."""
    merged: list[Op] = []
    latest: dict[int, int] = {}  # breaker id -> index of its latest op in `merged`
    for op in ops:
        at = latest.get(id(op.breaker))
        if at is not None and op.mergeable and merged[at].mergeable:
            merged[at] = dataclasses.replace(
                merged[at], count=merged[at].count + op.count, ok=merged[at].ok + op.ok
            )
            continue
        latest[id(op.breaker)] = len(merged)
        merged.append(op)
    return merged


def _one_per_key(breakers: Sequence[SharedBreaker]) -> list[SharedBreaker]:
    seen: dict[str, SharedBreaker] = {}
    for breaker in breakers:
        seen.setdefault(breaker.key, breaker)
    return list(seen.values())


_STATES = frozenset({"closed", "open", "half_open"})


def _parse(reply: Sequence[Any]) -> tuple[Snapshot, bool, str, TripReason | None]:
    """A script's answer: the record, whether a lease was granted, what it overwrote, and why
    this call opened the breaker (None if it did not).

    The scripts check the record; this checks their answer again, so that nothing Redis sends
    back can reach a breaker as a state it does not have (ValueError or TypeError instead)."""
    state, failures, successes, open_for_ms, granted, repaired, tripped, forced = reply
    counts = int(failures), int(successes), int(open_for_ms)
    if state not in _STATES or min(counts) < 0 or not isinstance(repaired, str):
        raise ValueError("not a breaker record")
    reason = TripReason(tripped) if tripped else None  # ValueError for a word it never writes
    snapshot = Snapshot(str(state), counts[0], counts[1], counts[2] / 1000, forced=int(forced) == 1)
    return snapshot, int(granted) == 1, repaired, reason


class _Why(Enum):
    MALFORMED = "malformed"  # a value the scripts never write: the next FAILURE/SUCCESS rewrites it
    WRONG_TYPE = "wrong type"  # not a hash: maybe not the gateway's, so it is never overwritten
    REFUSED = "refused"  # any other refusal (OOM, READONLY...): Redis's state, not the record's


_MALFORMED, _WRONG_TYPE, _REFUSED = _Why.MALFORMED, _Why.WRONG_TYPE, _Why.REFUSED


@dataclass(frozen=True, slots=True)
class _Unusable:
    """Why one record could not be used."""

    reason: str
    kind: _Why


@dataclass(frozen=True, slots=True)
class _Repair:
    """A malformed record or lease that a script overwrote."""

    key: str
    provider: str
    what: str


def _refusal(error: ResponseError, scrub: Callable[[str], str]) -> _Unusable:
    """Why Redis refused an op on a record, for the log (its text, without credentials)."""
    text = str(error)
    if text.startswith("MALFORMED "):
        fields = text.removeprefix("MALFORMED ").replace(",", ", ")
        return _Unusable(f"malformed or missing fields: {fields}", _MALFORMED)
    kind = _WRONG_TYPE if text.startswith("WRONGTYPE") else _REFUSED
    return _Unusable(f"{type(error).__name__}: {scrub(text)}", kind)
