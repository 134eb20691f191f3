"""The tracer provider `gateway.tracing.tracer_provider_from_env` builds from `OTEL_*`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from gateway.errors import ConfigurationError

PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
OTLP_PROTOCOL = "http/protobuf"
"""The one OTLP protocol the extra's exporter speaks."""

DEFAULT_SERVICE_NAME = "gateway"
"""`service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one."""


def build_tracer_provider(exporters: Sequence[str], environ: Mapping[str, str]) -> TracerProvider:
    """A provider batching spans to each of `exporters`. The SDK reads the rest of `OTEL_*`
    itself (endpoint, headers, timeout, sampler, batch sizes, resource attributes)."""
    provider = TracerProvider(resource=Resource.create(_default_resource()))
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    return provider


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    for variable in PROTOCOL_ENVS:
        protocol = environ.get(variable, "").strip()
        if protocol:
            if protocol != OTLP_PROTOCOL:
                raise ConfigurationError(
                    f"{variable} is {protocol!r}; the gateway exports OTLP over HTTP: set it "
                    f"to {OTLP_PROTOCOL!r} or unset it"
                )
            break
    return OTLPSpanExporter()


def _default_resource() -> dict[str, str]:
    # The SDK reads the resource from the process's environment, so it is asked here too.
    named = os.environ.get("OTEL_SERVICE_NAME", "").strip() or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    return {} if named else {"service.name": DEFAULT_SERVICE_NAME}
