"""What the router reports as it works, for metrics, logs and tests.

`RouterHooks` is the protocol; subclass `BaseHooks` and override the events you need. The
router calls its hooks through one `HookSet`, whose methods have the protocol's signatures,
so every event the router emits is type-checked. A hook that raises is logged and skipped:
it never fails a request. Every label value passed here comes from the policy (task and
provider names, models) or from the outcome enums (and `UNRESOLVED_TASK`), never from prompts,
error text or a task name the caller made up, so metrics built on them have bounded
cardinality.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, get_args

from gateway._outcomes import (
    AttemptOutcome,
    BreakerState,
    ErrorKind,
    PolicyOutcome,
    RequestOutcome,
)
from gateway._resilience import TripReason
from gateway.types import Usage

__all__ = [
    "UNRESOLVED_TASK",
    "BaseHooks",
    "Deferred",
    "HookSet",
    "Operation",
    "RouterHooks",
    "TripReason",
]

log = logging.getLogger("gateway")

Operation = Literal["chat", "embeddings"]
"""What a request asks of the models, named as OpenTelemetry's `gen_ai.operation.name`."""

UNRESOLVED_TASK = "(unknown)"
"""The `task` of a request that ended before its task was resolved (a name the policy does not
define and no `default` task). The name the caller gave is in the error, never in an event:
callers choose it freely, and each one would become a new metric series."""


class RouterHooks(Protocol):
    def on_request_start(self, *, task: str, operation: Operation = "chat") -> None:
        """A request's task is resolved and its checks passed: its walk down the chain begins.
        Its `on_request` follows, in the same task. `operation` is what it asks of the models:
        `chat` or `embeddings`."""

    def on_attempt_start(self, *, task: str, provider: str, model: str) -> None:
        """A candidate is about to be called (its retries included): its `on_attempt` follows,
        in the same asyncio task, and the upstream calls are made in between."""

    def on_response(
        self, *, task: str, provider: str, model: str, finish_reason: str | None
    ) -> None:
        """A candidate answered: `model` is the model the answer names, `finish_reason` the
        first choice's (None for an embedding)."""

    def on_request(
        self, *, task: str, outcome: RequestOutcome, duration_s: float, overhead_s: float
    ) -> None:
        """A request ended. `task` is the task that served it, or `UNRESOLVED_TASK`.

        overhead_s is the time spent in the router that was not spent waiting on an upstream
        (nor in a deliberate backoff sleep).
        """

    def on_attempt(
        self,
        *,
        task: str,
        provider: str,
        model: str,
        outcome: AttemptOutcome,
        duration_s: float | None,
    ) -> None:
        """A candidate was tried or skipped. duration_s is None for a skipped candidate (no
        call was made)."""

    def on_first_token(self, *, provider: str, model: str, seconds: float) -> None:
        """A stream's first text delta arrived, `seconds` after the call started."""

    def on_retry(self, *, provider: str, model: str, kind: ErrorKind) -> None:
        """A failed call of this kind is about to be retried on the same candidate."""

    def on_fallback(
        self, *, task: str, from_provider: str, to_provider: str, kind: AttemptOutcome
    ) -> None:
        """The request moves on from one candidate to the next; kind is why it left."""

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        """Tokens were billed. cost_usd is None when the model has no known price."""

    def on_breaker_state(self, *, provider: str, state: BreakerState) -> None:
        """A breaker changed state, or was created (closed)."""

    def on_breaker_trip(self, *, provider: str, reason: TripReason) -> None:
        """A breaker opened, and why: `consecutive` failures, the `failure_rate` rule, or a
        failed half-open `probe`. With shared state only the replica whose reported outcome
        opened it hears this (the others see the state change), so summed over replicas it
        counts each opening once."""

    def on_provider_removed(self, *, provider: str) -> None:
        """A policy reload removed this provider: what is recorded per provider is stale."""

    def on_state_backend_error(self, *, backend: str) -> None:
        """Shared state (e.g. Redis) could not be read or written; local state is used."""

    def on_policy(self, *, outcome: PolicyOutcome, version: int | None, sha256: str | None) -> None:
        """A policy load or reload (version/sha of the file that is now serving)."""


class BaseHooks:
    """Every hook as a no-op: subclass it and override only the events you need."""

    def on_request_start(self, *, task: str, operation: Operation = "chat") -> None:
        pass

    def on_attempt_start(self, *, task: str, provider: str, model: str) -> None:
        pass

    def on_response(
        self, *, task: str, provider: str, model: str, finish_reason: str | None
    ) -> None:
        pass

    def on_request(
        self, *, task: str, outcome: RequestOutcome, duration_s: float, overhead_s: float
    ) -> None:
        pass

    def on_attempt(
        self,
        *,
        task: str,
        provider: str,
        model: str,
        outcome: AttemptOutcome,
        duration_s: float | None,
    ) -> None:
        pass

    def on_first_token(self, *, provider: str, model: str, seconds: float) -> None:
        pass

    def on_retry(self, *, provider: str, model: str, kind: ErrorKind) -> None:
        pass

    def on_fallback(
        self, *, task: str, from_provider: str, to_provider: str, kind: AttemptOutcome
    ) -> None:
        pass

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        pass

    def on_breaker_state(self, *, provider: str, state: BreakerState) -> None:
        pass

    def on_breaker_trip(self, *, provider: str, reason: TripReason) -> None:
        pass

    def on_provider_removed(self, *, provider: str) -> None:
        pass

    def on_state_backend_error(self, *, backend: str) -> None:
        pass

    def on_policy(self, *, outcome: PolicyOutcome, version: int | None, sha256: str | None) -> None:
        pass


Event = Literal[
    "on_request_start",
    "on_attempt_start",
    "on_response",
    "on_request",
    "on_attempt",
    "on_first_token",
    "on_retry",
    "on_fallback",
    "on_usage",
    "on_breaker_state",
    "on_breaker_trip",
    "on_provider_removed",
    "on_state_backend_error",
    "on_policy",
]
"""The name of each event: `HookSet` delivers by it, so a misspelt name is a type error."""

EVENTS: tuple[Event, ...] = get_args(Event)

Handler = Callable[..., None]


class HookSet(BaseHooks):
    """Several hooks as one: each event goes to every hook that has it, in order.

    Each hook's methods are looked up once, here, so a hook may implement only some events
    and the router pays no attribute lookup per event. An exception in a hook is logged and
    swallowed.
    """

    def __init__(self, hooks: Iterable[object] = ()) -> None:
        self.hooks = tuple(hooks)
        self._handlers: dict[Event, tuple[Handler, ...]] = {
            event: tuple(
                method
                for hook in self.hooks
                if callable(method := getattr(hook, event, None))
                and not _inherited_no_op(hook, event)
            )
            for event in EVENTS
        }

    def __repr__(self) -> str:
        return f"HookSet({', '.join(map(repr, self.hooks))})"

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def emit(self, event: Event, kwargs: dict[str, Any]) -> None:
        """Deliver one event by name (for `Deferred`, which replays typed calls later)."""
        for handler in self._handlers[event]:
            try:
                handler(**kwargs)
            except Exception:
                log.exception("router hook %s failed", getattr(handler, "__qualname__", event))

    def listens(self, event: Event) -> bool:
        """Whether any hook handles `event` (a caller may skip work only that event needs)."""
        return bool(self._handlers[event])

    def on_request_start(self, *, task: str, operation: Operation = "chat") -> None:
        if self._handlers["on_request_start"]:
            self.emit("on_request_start", {"task": task, "operation": operation})

    def on_attempt_start(self, *, task: str, provider: str, model: str) -> None:
        if self._handlers["on_attempt_start"]:
            self.emit("on_attempt_start", {"task": task, "provider": provider, "model": model})

    def on_response(
        self, *, task: str, provider: str, model: str, finish_reason: str | None
    ) -> None:
        if self._handlers["on_response"]:
            self.emit(
                "on_response",
                {
                    "task": task,
                    "provider": provider,
                    "model": model,
                    "finish_reason": finish_reason,
                },
            )

    def on_request(
        self, *, task: str, outcome: RequestOutcome, duration_s: float, overhead_s: float
    ) -> None:
        self.emit(
            "on_request",
            {"task": task, "outcome": outcome, "duration_s": duration_s, "overhead_s": overhead_s},
        )

    def on_attempt(
        self,
        *,
        task: str,
        provider: str,
        model: str,
        outcome: AttemptOutcome,
        duration_s: float | None,
    ) -> None:
        self.emit(
            "on_attempt",
            {
                "task": task,
                "provider": provider,
                "model": model,
                "outcome": outcome,
                "duration_s": duration_s,
            },
        )

    def on_first_token(self, *, provider: str, model: str, seconds: float) -> None:
        self.emit("on_first_token", {"provider": provider, "model": model, "seconds": seconds})

    def on_retry(self, *, provider: str, model: str, kind: ErrorKind) -> None:
        self.emit("on_retry", {"provider": provider, "model": model, "kind": kind})

    def on_fallback(
        self, *, task: str, from_provider: str, to_provider: str, kind: AttemptOutcome
    ) -> None:
        self.emit(
            "on_fallback",
            {
                "task": task,
                "from_provider": from_provider,
                "to_provider": to_provider,
                "kind": kind,
            },
        )

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        self.emit(
            "on_usage",
            {
                "task": task,
                "provider": provider,
                "model": model,
                "usage": usage,
                "cost_usd": cost_usd,
            },
        )

    def on_breaker_state(self, *, provider: str, state: BreakerState) -> None:
        self.emit("on_breaker_state", {"provider": provider, "state": state})

    def on_breaker_trip(self, *, provider: str, reason: TripReason) -> None:
        self.emit("on_breaker_trip", {"provider": provider, "reason": reason})

    def on_provider_removed(self, *, provider: str) -> None:
        self.emit("on_provider_removed", {"provider": provider})

    def on_state_backend_error(self, *, backend: str) -> None:
        self.emit("on_state_backend_error", {"backend": backend})

    def on_policy(self, *, outcome: PolicyOutcome, version: int | None, sha256: str | None) -> None:
        self.emit("on_policy", {"outcome": outcome, "version": version, "sha256": sha256})


def _inherited_no_op(hook: object, event: str) -> bool:
    """`hook` has `event` only as `BaseHooks`' no-op: it need not be called."""
    return isinstance(hook, BaseHooks) and getattr(type(hook), event) is getattr(BaseHooks, event)


class Deferred(HookSet):
    """Hooks that receive every event at the event loop's next turn, rather than in the
    middle of the router's work.

    `gateway serve` wraps its metrics in this: nothing awaits between the router's answer and
    the response, so the answer is sent first and the metrics are recorded right after it,
    off the request's path. Events keep their order. Without a running event loop they are
    passed on at once.
    """

    def __init__(self, *hooks: object) -> None:
        super().__init__(hooks)
        self._pending: list[tuple[Event, dict[str, Any]]] = []
        self._delivery: asyncio.AbstractEventLoop | None = None
        """The loop a delivery of `_pending` is scheduled on, if one is."""

    def __repr__(self) -> str:
        return f"Deferred({', '.join(map(repr, self.hooks))})"

    def emit(self, event: Event, kwargs: dict[str, Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().emit(event, kwargs)
            return
        # One delivery for all the events of a turn (a request emits several), not one
        # callback each. A delivery scheduled on a loop that has since closed never ran: its
        # events go with the next.
        self._pending.append((event, kwargs))
        if self._delivery is not loop:
            self._delivery = loop
            loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        pending, self._pending, self._delivery = self._pending, [], None
        for event, kwargs in pending:
            super().emit(event, kwargs)
