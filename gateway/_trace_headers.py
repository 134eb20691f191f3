"""The trace headers an upstream call carries, when tracing is on.

Tracing (`gateway.tracing`) sets them, per attempt, in the attempt's context; the providers
add them to the request they build. The variable lives here, apart from tracing, so that a
provider reads it without importing OpenTelemetry: with tracing off it holds None and a
request pays one lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar

OUTGOING_TRACE_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar(
    "gateway_outgoing_trace_headers", default=None
)
"""`traceparent` (and `tracestate`, or whatever the configured propagators write) of the
attempt under way; None when nothing is traced."""
