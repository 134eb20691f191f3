"""`python tests/traced_server.py ARGS`: `python -m gateway.server ARGS`, traced.

Before the server starts, the global OpenTelemetry tracer provider is set to one that writes
each span, as it ends, as one JSON line to the file named by `GATEWAY_TEST_SPANS`: what an
application that configures OpenTelemetry would export. FastAPI's own instrumentation picks
the provider up.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    Span,
    SpanKind,
    Status,
    StatusCode,
)

SPANS_ENV = "GATEWAY_TEST_SPANS"


class RecordedSpan(NonRecordingSpan):
    def __init__(self, name: str, kind: SpanKind, attributes: Mapping[str, Any], path: str) -> None:
        super().__init__(INVALID_SPAN_CONTEXT)
        self.name = name
        self.kind = kind
        self.attributes = dict(attributes)
        self.path = path
        self.error = False

    def is_recording(self) -> bool:
        return True

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        code = status.status_code if isinstance(status, Status) else status
        self.error = code is StatusCode.ERROR

    def end(self, end_time: int | None = None) -> None:
        line = {
            "name": self.name,
            "kind": self.kind.name,
            "attributes": self.attributes,
            "error": self.error,
        }
        with open(self.path, "a", encoding="utf-8") as spans:
            spans.write(json.dumps(line, default=str) + "\n")


class RecordingTracer(trace.Tracer):
    def __init__(self, path: str) -> None:
        self.path = path

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        return RecordedSpan(name, kind, attributes or {}, self.path)

    @contextmanager
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(name, context, kind, attributes)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


class RecordingTracerProvider(trace.TracerProvider):
    def __init__(self, path: str) -> None:
        self.tracer = RecordingTracer(path)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> trace.Tracer:
        return self.tracer


def main() -> int:
    trace.set_tracer_provider(RecordingTracerProvider(os.environ[SPANS_ENV]))
    from gateway.server.__main__ import main as serve_main

    return serve_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
