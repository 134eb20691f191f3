"""What the router reports as it works, for metrics, logs and tests.

The router calls every registered `RouterHooks` at each event. Hooks must be fast and must not
raise (an exception in a hook is logged and swallowed, never fails a request). Every label value
passed here comes from the policy (task and provider names, models, `ErrorKind` values), never
from prompts or error text, so metrics built on them have bounded cardinality.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Protocol

from gateway.types import Usage

log = logging.getLogger("gateway")


class RouterHooks(Protocol):
    def on_request(self, *, task: str, outcome: str, duration_s: float, overhead_s: float) -> None:
        """A request ended. outcome: success, exhausted, deadline, rejected, cancelled.

        overhead_s is the time spent in the router that was not spent waiting on an upstream
        (nor in a deliberate backoff sleep).
        """

    def on_attempt(
        self, *, task: str, provider: str, model: str, outcome: str, duration_s: float | None
    ) -> None:
        """A candidate was tried or skipped. outcome: success, an ErrorKind value,
        breaker_open, saturated, skipped_context, unavailable, deadline, cancelled.
        duration_s is None for a skipped candidate (no call was made)."""

    def on_first_token(self, *, provider: str, model: str, seconds: float) -> None:
        """A stream's first text delta arrived, `seconds` after the call started."""

    def on_retry(self, *, provider: str, model: str, kind: str) -> None:
        """A failed call of this kind is about to be retried on the same candidate."""

    def on_fallback(self, *, task: str, from_provider: str, to_provider: str, kind: str) -> None:
        """The request moves on from one candidate to the next; kind is why it left."""

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        """Tokens were billed. cost_usd is None when the model has no known price."""

    def on_breaker_state(self, *, provider: str, state: str) -> None:
        """A breaker changed state (closed, half_open, open), or was created (closed)."""

    def on_provider_removed(self, *, provider: str) -> None:
        """A policy reload removed this provider: what is recorded per provider is stale."""

    def on_state_backend_error(self, *, backend: str) -> None:
        """Shared state (e.g. Redis) could not be read or written; local state is used."""

    def on_policy(self, *, outcome: str, version: int | None, sha256: str | None) -> None:
        """A policy load or reload. outcome: applied or rejected (version/sha of the file
        that is now serving)."""


class BaseHooks:
    """Every hook as a no-op: subclass it and override only the events you need."""

    def on_request(self, *, task: str, outcome: str, duration_s: float, overhead_s: float) -> None:
        pass

    def on_attempt(
        self, *, task: str, provider: str, model: str, outcome: str, duration_s: float | None
    ) -> None:
        pass

    def on_first_token(self, *, provider: str, model: str, seconds: float) -> None:
        pass

    def on_retry(self, *, provider: str, model: str, kind: str) -> None:
        pass

    def on_fallback(self, *, task: str, from_provider: str, to_provider: str, kind: str) -> None:
        pass

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        pass

    def on_breaker_state(self, *, provider: str, state: str) -> None:
        pass

    def on_provider_removed(self, *, provider: str) -> None:
        pass

    def on_state_backend_error(self, *, backend: str) -> None:
        pass

    def on_policy(self, *, outcome: str, version: int | None, sha256: str | None) -> None:
        pass


EVENTS = tuple(name for name in vars(BaseHooks) if name.startswith("on_"))


def deliver(hooks: Iterable[object], event: str, kwargs: Mapping[str, Any]) -> None:
    """Call `event` on every hook that has it. A hook that raises is logged and skipped: a
    broken hook must never fail a request."""
    for hook in hooks:
        method = getattr(hook, event, None)
        if method is None:
            continue
        try:
            method(**kwargs)
        except Exception:
            log.exception("router hook %s.%s failed", type(hook).__name__, event)


class Deferred:
    """Hooks that pass every event on to `hooks` at the event loop's next turn, rather than
    in the middle of the router's work.

    `gateway serve` wraps its metrics in this: nothing awaits between the router's answer and
    the response, so the answer is sent first and the metrics are recorded right after it,
    off the request's path. Events keep their order. Without a running event loop they are
    passed on at once.
    """

    # One attribute per event, set in __init__ (typed here for RouterHooks' sake).
    on_request: Callable[..., None]
    on_attempt: Callable[..., None]
    on_first_token: Callable[..., None]
    on_retry: Callable[..., None]
    on_fallback: Callable[..., None]
    on_usage: Callable[..., None]
    on_breaker_state: Callable[..., None]
    on_provider_removed: Callable[..., None]
    on_state_backend_error: Callable[..., None]
    on_policy: Callable[..., None]

    def __init__(self, *hooks: RouterHooks) -> None:
        self.hooks = hooks
        for event in EVENTS:
            setattr(self, event, partial(self._later, event))

    def __repr__(self) -> str:
        return f"Deferred({', '.join(map(repr, self.hooks))})"

    def _later(self, event: str, /, **kwargs: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            deliver(self.hooks, event, kwargs)
            return
        loop.call_soon(deliver, self.hooks, event, kwargs)
