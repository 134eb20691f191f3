"""`TracingHooks`: the router's events as OpenTelemetry spans. Imports OpenTelemetry; reached
only through `gateway.tracing`, which names the extra to install when it is missing.

One span per routed request, and under it one per attempt (a candidate, its retries
included). The events of one request arrive in the asyncio task that runs it, so the spans
under way are kept in a `ContextVar`: concurrent requests never see each other's. A stream's
walk runs inside async generators, in the task that reads the stream, which is the same task
from its start to its end unless the stream is abandoned and closed later by the garbage
collector; so the attempt's context is detached only in the task that attached it, and a span
is ended wherever its last event arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway import __version__
from gateway._outcomes import AttemptOutcome, BreakerState, ErrorKind, RequestOutcome
from gateway._trace_headers import OUTGOING_TRACE_HEADERS
from gateway.hooks import BaseHooks, Operation
from gateway.types import Usage

if TYPE_CHECKING:
    from gateway._router import Router

INSTRUMENTATION_NAME = "gateway"

PROVIDER_NAMES = {
    "openai": "openai",
    "openai_http": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "ollama": "ollama",
    "local": "ollama",
    "litellm": "litellm",
}
"""Provider types as OpenTelemetry's `gen_ai.provider.name`: the convention's well-known
values where one applies (openai, anthropic, azure.ai.openai); Ollama and LiteLLM have none,
so they are named as themselves. A type registered by an application is named as its type."""

_NOT_FAILED = frozenset({AttemptOutcome.SUCCESS, AttemptOutcome.STREAMING})


@dataclass(slots=True)
class _Attempt:
    span: trace.Span
    provider: str
    token: object | None = None
    """The context token of the attach that made this span current; None once detached."""
    owner: asyncio.Task[Any] | None = None
    """The task that attached it: only there may it be detached."""
    retries: int = 0


@dataclass(slots=True, eq=False)
class _Request:
    span: trace.Span
    task: str
    operation: Operation
    previous: _Request | None
    """The request that was under way in this context before this one (nested routers)."""
    attempt: _Attempt | None = None
    left: tuple[str, AttemptOutcome] | None = None
    """The candidate the walk just left, and why: the next attempt's fallback reason."""
    tried: int = 0
    cost_usd: float = 0.0
    usage: Usage = field(default_factory=Usage)
    answered_by: str | None = None
    owner: asyncio.Task[Any] | None = None
    """The task that began it, where its events normally arrive."""
    ended: bool = False


_current: ContextVar[_Request | None] = ContextVar("gateway_trace_request", default=None)


@dataclass(frozen=True, slots=True)
class _Provider:
    """What the spans say of one provider instance, looked up once per candidate."""

    name: str
    attributes: Mapping[str, Any]


class TracingHooks(BaseHooks):
    """Router hooks that record each request and each attempt as OpenTelemetry spans.

    `router` returns the router these hooks belong to (a router is built with its hooks, so
    pass a function: `hooks=[TracingHooks(lambda: router)]`); the spans read the providers'
    types, addresses and breaker states from it. `tracer_provider` defaults to the global one
    (`opentelemetry.trace.set_tracer_provider`). No prompt or completion text is recorded.
    """

    def __init__(
        self,
        router: Callable[[], Router | None],
        *,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._router = router
        self._tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
        )
        self._providers: WeakKeyDictionary[Any, _Provider] = WeakKeyDictionary()
        self._breakers: dict[str, BreakerState] = {}
        self._open: dict[_Request, None] = {}
        """Requests under way, oldest first: where an event from another task is matched."""

    def __repr__(self) -> str:
        return f"TracingHooks(tracer={self._tracer!r})"

    # --- a request ---------------------------------------------------------------------

    def on_request_start(self, *, task: str, operation: Operation = "chat") -> None:
        span = self._tracer.start_span(
            f"{operation} {task}",
            kind=SpanKind.INTERNAL,
            attributes={"gateway.task": task, "gateway.operation": operation},
        )
        request = _Request(span, task, operation, _current.get(), owner=_running_task())
        self._open[request] = None
        _current.set(request)

    def on_request(
        self, *, task: str, outcome: RequestOutcome, duration_s: float, overhead_s: float
    ) -> None:
        request = self._request(task)
        if request is None:
            # Refused before its walk began (an unknown task, malformed messages): one span
            # says so, with no attempt under it.
            span = self._tracer.start_span(
                f"chat {task}",
                kind=SpanKind.INTERNAL,
                attributes={"gateway.task": task},
                start_time=time.time_ns() - int(duration_s * 1e9),
            )
            request = _Request(span, task, "chat", _current.get())
        else:
            self._open.pop(request, None)
            if _current.get() is request:
                _current.set(request.previous)
        request.ended = True
        if request.attempt is not None:  # no attempt outlives its request
            self._end_attempt(request, request.attempt, AttemptOutcome.CANCELLED)
        span = request.span
        span.set_attributes(
            {
                "gateway.outcome": outcome.value,
                "gateway.attempts": request.tried,
                "gateway.cost_usd": request.cost_usd,
                "gateway.overhead_s": overhead_s,
                "gen_ai.usage.input_tokens": request.usage.input_tokens,
                "gen_ai.usage.output_tokens": request.usage.output_tokens,
            }
        )
        if request.answered_by is not None:
            span.set_attribute("gateway.provider", request.answered_by)
        if outcome is not RequestOutcome.SUCCESS:
            span.set_attribute("error.type", outcome.value)
            span.set_status(Status(StatusCode.ERROR, outcome.value))
        span.end()

    # --- an attempt --------------------------------------------------------------------

    def on_attempt_start(self, *, task: str, provider: str, model: str) -> None:
        request = self._request(task)
        span = self._attempt_span(request, provider, model)
        context = trace.set_span_in_context(span)
        headers: dict[str, str] = {}
        propagate.inject(headers, context=context)
        attempt = _Attempt(span, provider)
        attempt.token = otel_context.attach(context)
        attempt.owner = _running_task()
        OUTGOING_TRACE_HEADERS.set(headers)
        if request is not None:
            request.attempt = attempt

    def on_retry(self, *, provider: str, model: str, kind: ErrorKind) -> None:
        attempt = self._attempt(None, provider)
        if attempt is not None:
            attempt.retries += 1
            attempt.span.add_event("gateway.retry", {"error.type": kind.value})

    def on_first_token(self, *, provider: str, model: str, seconds: float) -> None:
        attempt = self._attempt(None, provider)
        if attempt is not None:
            attempt.span.set_attributes(
                {"gen_ai.request.stream": True, "gen_ai.response.time_to_first_chunk": seconds}
            )

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        request = self._request(task, provider)
        if request is not None:
            request.usage = request.usage + usage
            request.cost_usd += cost_usd or 0.0
        attempt = self._attempt(task, provider)
        if attempt is None:
            return
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
        }
        if usage.cached_input_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
        if cost_usd is not None:
            attributes["gateway.cost_usd"] = cost_usd
        attempt.span.set_attributes(attributes)

    def on_response(
        self, *, task: str, provider: str, model: str, finish_reason: str | None
    ) -> None:
        request = self._request(task, provider)
        if request is not None:
            request.answered_by = provider
        attempt = self._attempt(task, provider)
        if attempt is None:
            return
        attempt.span.set_attribute("gen_ai.response.model", model)
        if finish_reason is not None:
            attempt.span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))

    def on_attempt(
        self,
        *,
        task: str,
        provider: str,
        model: str,
        outcome: AttemptOutcome,
        duration_s: float | None,
    ) -> None:
        request = self._request(task, provider)
        if request is not None:
            request.tried += 1
        attempt = request.attempt if request is not None else None
        if attempt is None or attempt.provider != provider:
            # Skipped without a call (breaker open, saturated...): a span of no duration
            # that says why.
            attempt = _Attempt(self._attempt_span(request, provider, model), provider)
        self._end_attempt(request, attempt, outcome)

    def on_fallback(
        self, *, task: str, from_provider: str, to_provider: str, kind: AttemptOutcome
    ) -> None:
        request = self._request(task)
        if request is not None:
            request.left = (from_provider, kind)

    def on_breaker_state(self, *, provider: str, state: BreakerState) -> None:
        # Kept from the events, not read from the breaker: a shared breaker's state may be
        # behind a network call.
        self._breakers[provider] = state

    def on_provider_removed(self, *, provider: str) -> None:
        self._breakers.pop(provider, None)

    # --- spans -------------------------------------------------------------------------

    def _attempt_span(self, request: _Request | None, provider: str, model: str) -> trace.Span:
        described = self._describe(provider)
        operation = request.operation if request is not None else "chat"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": described.name,
            "gen_ai.request.model": model,
            "gateway.provider": provider,
            **described.attributes,
        }
        breaker = self._breakers.get(provider)
        if breaker is not None:
            attributes["gateway.breaker_state"] = breaker.value
        if request is not None:
            attributes["gateway.task"] = request.task
            if request.left is not None:
                left_name, why = request.left
                attributes["gateway.fallback_from"] = left_name
                attributes["gateway.fallback_reason"] = why.value
                request.left = None
        parent = trace.set_span_in_context(request.span) if request is not None else None
        return self._tracer.start_span(
            f"{operation} {model}", context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )

    def _end_attempt(
        self, request: _Request | None, attempt: _Attempt, outcome: AttemptOutcome
    ) -> None:
        span = attempt.span
        span.set_attributes(
            {"gateway.attempt.outcome": outcome.value, "gateway.retries": attempt.retries}
        )
        if outcome not in _NOT_FAILED and not outcome.skipped:
            # A candidate skipped without a call did not fail: its outcome says why.
            span.set_attribute("error.type", outcome.value)
            span.set_status(Status(StatusCode.ERROR, outcome.value))
        span.end()
        if attempt.token is not None:
            if attempt.owner is _running_task():
                otel_context.detach(attempt.token)  # type: ignore[arg-type]
                OUTGOING_TRACE_HEADERS.set(None)
            attempt.token = None
        if request is not None and request.attempt is attempt:
            request.attempt = None

    def _request(self, task: str | None, provider: str | None = None) -> _Request | None:
        """The request an event belongs to: the one under way in this context, begun by
        this task; or else, for an event from another task (a stream read elsewhere, or
        closed by the garbage collector in a task of its own), the request under way that
        matches it best: same task, an attempt open on `provider`, the one this context
        holds, or one whose own task has ended. A request still being served by another
        task is never taken. None when none matches."""
        current = _current.get()
        if current is not None and not current.ended and current.owner is _running_task():
            return current
        best: _Request | None = None
        best_rank = (-1, -1, -1)
        for request in self._open:
            if task is not None and request.task != task:
                continue
            held = request is current
            abandoned = request.owner is not None and request.owner.done()
            if not (held or abandoned):
                continue
            attempt = request.attempt
            on_provider = attempt is not None and attempt.provider == provider
            rank = (int(on_provider), int(held), int(abandoned))
            if rank > best_rank:
                best, best_rank = request, rank
        return best

    def _attempt(self, task: str | None, provider: str) -> _Attempt | None:
        request = self._request(task, provider)
        attempt = request.attempt if request is not None else None
        return attempt if attempt is not None and attempt.provider == provider else None

    def _describe(self, provider: str) -> _Provider:
        router = self._router()
        candidate = router.candidates.get(provider) if router is not None else None
        if candidate is None:
            return _Provider(provider, {})
        described = self._providers.get(candidate)
        if described is None:
            described = _provider_of(candidate)
            self._providers[candidate] = described
        return described


def _running_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop: the hooks were called from plain code
        return None


def _provider_of(candidate: Any) -> _Provider:
    """The convention's provider name and the server's address, for one candidate: from
    its client's base URL (the one it really calls), else the policy's."""
    spec = candidate.spec
    base_url = getattr(candidate.client, "base_url", None) or spec.base_url
    attributes: dict[str, Any] = {}
    if isinstance(base_url, str) and base_url:
        try:
            parts = urlsplit(base_url)
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if host:
            attributes["server.address"] = host
            if port is None:
                port = {"http": 80, "https": 443}.get(parts.scheme)
            if port is not None:
                attributes["server.port"] = port
    return _Provider(PROVIDER_NAMES.get(spec.type, spec.type), attributes)
