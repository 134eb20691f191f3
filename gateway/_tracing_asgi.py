"""`IncomingTraceContext`: an HTTP request's W3C trace context, continued by its spans."""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace


class IncomingTraceContext:
    """ASGI middleware: the trace context a request carries (`traceparent`, `tracestate`,
    or whatever the configured propagators read) is the current one while it is served, so
    the spans its routing records are children of the caller's span.

    A request already under a span (an outer instrumentation, e.g. FastAPI's own server
    span) is left as it is: that span continues the caller's trace already.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or trace.get_current_span().get_span_context().is_valid:
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            carrier[name] = f"{carrier[name]},{value}" if name in carrier else value
        # Attached and detached here, around the whole request, in the request's own task.
        token = otel_context.attach(propagate.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)
