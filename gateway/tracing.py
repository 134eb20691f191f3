"""OpenTelemetry traces of routed requests (the `otel` extra: `pip install 'gateway[otel]'`).

Each request is a span, and each attempt (one candidate, its retries included; a skipped
candidate too) a child span with OpenTelemetry's GenAI attributes; the attempt's trace
context goes to the provider as `traceparent`. See docs/observability.md.

Off unless asked for. In code: `Router(policy, hooks=[..., TracingHooks(lambda: router)])`
sends spans to the global tracer provider, or to `tracer_provider=`. From the environment
(what `gateway serve` does): the standard `OTEL_*` variables, read by `hooks_from_env`;
tracing is on when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP
endpoint is set, and off with `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`.

Importing this module imports nothing of OpenTelemetry; `TracingHooks` and the functions
that build spans do, and say what to install when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigurationError, MissingDependencyError
from gateway.hooks import RouterHooks

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from gateway._router import Router
    from gateway._tracing_hooks import TracingHooks

__all__ = [
    "INSTALL",
    "TracingHooks",
    "configured",
    "continue_incoming_traces",
    "exporters",
    "hooks_from_env",
    "tracer_provider_from_env",
]

INSTALL = "pip install 'gateway[otel]'"

SDK_DISABLED_ENV = "OTEL_SDK_DISABLED"
EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
EXPORTERS = ("otlp", "console")
"""What `OTEL_TRACES_EXPORTER` may name: OTLP over HTTP (protobuf), or lines on stdout."""

Environ = Mapping[str, str]


def exporters(environ: Environ | None = None) -> tuple[str, ...]:
    """The span exporters the `OTEL_*` variables ask for; () when tracing is off.

    An OTLP endpoint alone turns OTLP on; `OTEL_TRACES_EXPORTER=none` or
    `OTEL_SDK_DISABLED=true` turn everything off.
    """
    env = os.environ if environ is None else environ
    if env.get(SDK_DISABLED_ENV, "").strip().lower() == "true":
        return ()
    raw = env.get(EXPORTER_ENV, "").strip()
    if not raw:
        return ("otlp",) if any(env.get(name, "").strip() for name in ENDPOINT_ENVS) else ()
    names = tuple(dict.fromkeys(name.strip().lower() for name in raw.split(",") if name.strip()))
    if "none" in names:
        return ()
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise ConfigurationError(
            f"{EXPORTER_ENV} is {raw!r}; the gateway exports traces with "
            f"{' or '.join(map(repr, EXPORTERS))} (OTLP over HTTP, or the console), "
            "or 'none' for no traces"
        )
    return names


def configured(environ: Environ | None = None) -> bool:
    """Whether the `OTEL_*` variables ask for traces."""
    return bool(exporters(environ))


def tracer_provider_from_env(environ: Environ | None = None) -> TracerProvider | None:
    """A tracer provider exporting as the `OTEL_*` variables say (service name, resource,
    sampler, OTLP endpoint, headers and batching included); None when they ask for no
    traces. It is not made the global provider: the process's own, if any, is left alone."""
    names = exporters(environ)
    if not names:
        return None
    try:
        from gateway._tracing_export import build_tracer_provider
    except ModuleNotFoundError as exc:
        _explain_missing(exc)
        raise
    return build_tracer_provider(names, os.environ if environ is None else environ)


def hooks_from_env(
    router: Callable[[], Router | None], environ: Environ | None = None
) -> list[RouterHooks]:
    """`[TracingHooks(router, ...)]` exporting as the `OTEL_*` variables say, or `[]` when
    they ask for no traces (then no hook is added, and tracing costs nothing)."""
    provider = tracer_provider_from_env(environ)
    if provider is None:
        return []
    return [_tracing_hooks()(router, tracer_provider=provider)]


def continue_incoming_traces(app: Any, environ: Environ | None = None) -> None:
    """When the `OTEL_*` variables ask for traces, add to the ASGI `app` (anything with
    Starlette's `add_middleware`) the middleware by which a request's `traceparent` and
    `tracestate` become the parent of the spans its routing records."""
    if not configured(environ):
        return
    try:
        from gateway._tracing_asgi import IncomingTraceContext
    except ModuleNotFoundError as exc:
        _explain_missing(exc)
        raise
    app.add_middleware(IncomingTraceContext)


def _tracing_hooks() -> type[TracingHooks]:
    try:
        from gateway._tracing_hooks import TracingHooks
    except ModuleNotFoundError as exc:
        _explain_missing(exc)
        raise
    return TracingHooks


def _explain_missing(exc: ModuleNotFoundError) -> None:
    """Raise the error naming the extra when `exc` is OpenTelemetry's absence."""
    if (exc.name or "").partition(".")[0] == "opentelemetry":
        raise MissingDependencyError(
            f"tracing needs OpenTelemetry, which is not installed ({exc.name}): {INSTALL}"
        ) from exc


def __getattr__(name: str) -> Any:
    # `TracingHooks` is imported on first use, so that this module stays free of
    # OpenTelemetry until tracing is asked for.
    if name == "TracingHooks":
        return _tracing_hooks()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
