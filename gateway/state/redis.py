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
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway._outcomes import BreakerState
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
        self._overflow_logged = False
        self._next_refresh = 0.0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self.errors = 0
        """Failed round trips to Redis so far (what on_error was told)."""
        self.round_trips = 0
        """Successful round trips to Redis so far."""

    def __repr__(self) -> str:
        mode = "shared" if self._shared else "local (Redis unreachable)"
        return f"RedisState({self._shown_url}, namespace={self.namespace!r}, {mode})"

    # --- what the router uses ---------------------------------------------------------------

    def breaker_factory(
        self, on_state_change: Callable[[str, BreakerState], None] | None = None
    ) -> Callable[[ProviderSpec], Breaker]:
        def build(spec: ProviderSpec) -> Breaker:
            breaker = SharedBreaker(
                spec,
                self,
                key=breaker_key(self.namespace, spec.name),
                on_state_change=on_state_change,
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
                keys = (breaker_key(self.namespace, name), lease_key(self.namespace, name))
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    def _script_call(self, op: Op) -> tuple[_lua.Script, tuple[str | int | float, ...]]:
        breaker = op.breaker
        policy = breaker.policy
        ttl_ms = int(max(MIN_RECORD_TTL_S, 4 * policy.reset_timeout_s) * 1000)
        probe = 1 if op.probe else 0
        if op.kind is OpKind.FAILURE:
            return _lua.FAILURE, (policy.fail_max, ttl_ms, self.owner, probe, op.count)
        if op.kind is OpKind.SUCCESS:
            return _lua.SUCCESS, (policy.success_threshold, ttl_ms, self.owner, probe)
        if op.kind is OpKind.ACQUIRE_PROBE:
            reset_ms = int(policy.reset_timeout_s * 1000)
            lease_ms = int(breaker.lease_s * 1000)
            return _lua.ACQUIRE_PROBE, (reset_ms, lease_ms, self.owner, ttl_ms)
        if op.kind is OpKind.RELEASE_PROBE:
            return _lua.RELEASE_PROBE, (self.owner,)
        return _lua.SNAPSHOT, ()

    def _apply(self, ops: Sequence[Op], replies: Sequence[Any], *, sent_at: float) -> None:
        latest: dict[str, Snapshot] = {}
        failed: list[Op] = []
        for op, reply in zip(ops, replies, strict=True):
            if isinstance(reply, ResponseError):
                failed.append(op)
                continue
            snapshot, granted = _parse(reply)
            latest[op.breaker.key] = snapshot
            if op.kind is OpKind.ACQUIRE_PROBE:
                op.breaker.acquired(granted, sent_at)
        for breaker in list(self._breakers):
            if breaker.key in latest:
                breaker.apply_snapshot(latest[breaker.key])
        if failed:
            # Redis answered but refused (e.g. a key of the wrong type): those changes are
            # kept locally; the link stays up for the others.
            self._give_back(failed)
            self._report(next(r for r in replies if isinstance(r, ResponseError)), outage=False)

    def _give_back(self, ops: Sequence[Op]) -> None:
        for op in ops:
            op.breaker.apply_locally(op)

    def _backend_failed(self, exc: BaseException) -> None:
        if self._shared:
            self._shared = False
            for breaker in list(self._breakers):
                breaker.forget_lease()
            # Whatever queued while the failing turn was in flight goes local too.
            pending, self._pending = self._pending, []
            self._give_back(pending)
        self._report(exc, outage=True)

    def _report(self, exc: BaseException, *, outage: bool) -> None:
        self.errors += 1
        if not self._outage_logged:
            self._outage_logged = True
            what = "is unreachable" if outage else "refused a breaker update"
            log.warning(
                "shared breaker state: Redis at %s %s (%s: %s); breakers use local state "
                "until it answers again",
                self._shown_url,
                what,
                type(exc).__name__,
                self._scrub(str(exc)),
            )
        if self._on_error is not None:
            try:
                self._on_error(BACKEND)
            except Exception:  # a broken hook must not stop the state task
                log.exception("state backend error hook failed")

    def _rejoined(self) -> None:
        self._shared = True
        self._outage_logged = False
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
    op when nothing else of that breaker came between (one script call counts them all)."""
    merged: list[Op] = []
    latest: dict[int, int] = {}  # breaker id -> index of its latest op in `merged`
    for op in ops:
        at = latest.get(id(op.breaker))
        if at is not None and op.mergeable and merged[at].mergeable:
            merged[at] = dataclasses.replace(merged[at], count=merged[at].count + op.count)
            continue
        latest[id(op.breaker)] = len(merged)
        merged.append(op)
    return merged


def _one_per_key(breakers: Sequence[SharedBreaker]) -> list[SharedBreaker]:
    seen: dict[str, SharedBreaker] = {}
    for breaker in breakers:
        seen.setdefault(breaker.key, breaker)
    return list(seen.values())


def _parse(reply: Sequence[Any]) -> tuple[Snapshot, bool]:
    state, failures, successes, open_for_ms, granted = reply
    snapshot = Snapshot(str(state), int(failures), int(successes), int(open_for_ms) / 1000)
    return snapshot, int(granted) == 1
