"""What the router did for the request being served, collected from its hooks.

`Router.generate_json` returns only the parsed object, and a `RoutedStream` names its provider
only once it is exhausted, but the response headers need both earlier. The router reports
every attempt, first token and bill to its hooks, synchronously and in the task serving the
request; `TraceHooks` files those events under the `RequestTrace` the handler set in a
context variable, so concurrent requests never see each other's events.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from gateway.types import Usage

_current: ContextVar[RequestTrace | None] = ContextVar("gateway_request_trace", default=None)


@dataclass(eq=False)
class RequestTrace:
    attempts: list[tuple[str, str]] = field(default_factory=list)
    """(provider, outcome) for every candidate tried or skipped, in order."""
    provider: str | None = None
    """The candidate that answered (or, for a stream, is answering)."""
    model: str | None = None
    cost_usd: float = 0.0
    usage_by_provider: dict[str, Usage] = field(default_factory=dict)

    @property
    def usage(self) -> Usage:
        """What the answering candidate billed (other candidates' bills are in cost_usd)."""
        if self.provider is None:
            return Usage()
        return self.usage_by_provider.get(self.provider, Usage())


def start_trace() -> RequestTrace:
    """File the router's events from here on in this task under a new trace.

    Each request is served in a task of its own, so the trace ends with the request. A stream
    body runs in another task: it calls `resume_trace` with the same trace before iterating.
    """
    return resume_trace(RequestTrace())


def resume_trace(trace: RequestTrace) -> RequestTrace:
    _current.set(trace)
    return trace


class TraceHooks:
    """The `RouterHooks` events a response needs; the others are left to the metrics hooks."""

    def on_attempt(
        self, *, task: str, provider: str, model: str, outcome: str, duration_s: float | None
    ) -> None:
        trace = _current.get()
        if trace is None:
            return
        trace.attempts.append((provider, outcome))
        if outcome == "success":
            trace.provider, trace.model = provider, model

    def on_first_token(self, *, provider: str, model: str, seconds: float) -> None:
        trace = _current.get()
        if trace is not None:
            trace.provider, trace.model = provider, model

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        trace = _current.get()
        if trace is None:
            return
        trace.cost_usd += cost_usd or 0.0
        trace.usage_by_provider[provider] = usage
