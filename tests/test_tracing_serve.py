"""`gateway serve` configured only by the standard `OTEL_*` variables: its spans reach a real
OTLP/HTTP receiver (a small HTTP server in this test, decoding the protobuf export), continue
the caller's `traceparent` and `tracestate`, and hand the attempt's context to the upstream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from server_harness import ServerProcess

from gateway.testing import FakeUpstream, Fault

PRIMARY = "gpt-4o-mini"
BACKUP = "claude-sonnet-4-5"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
STREAM_TRACE = "5cf92f3577b34da6a3ce929d0e0e4799"
STREAM_SPAN = "11f067aa0ba902c8"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps every span it is sent, with its
    resource's attributes."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def received(self) -> list[tuple[dict[str, Any], Span]]:
        with self.lock:
            return list(self.spans)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        export = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            self.server.paths.append(self.path)
            for resource_spans in export.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend((resource, span) for span in scope_spans.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        fake.fail_always(PRIMARY, Fault.server_error())
        yield fake


def write_policy(path: Path, url: str) -> Path:
    path.write_text(
        "version: 1\n"
        "defaults:\n"
        "  retry: {attempts: 2, initial_backoff_s: 0.01, max_backoff_s: 0.02}\n"
        "providers:\n"
        f"  primary: {{type: openai, model: {PRIMARY}, base_url: '{url}/v1', api_key: k}}\n"
        f"  backup: {{type: anthropic, model: {BACKUP}, base_url: '{url}', api_key: k}}\n"
        "tasks:\n"
        "  chat: {chain: [primary, backup]}\n",
        encoding="utf-8",
    )
    return path


def wait_for_spans(receiver: Receiver, count: int, server: ServerProcess) -> None:
    """Until the receiver holds `count` spans (the exporter batches them every 50 ms here);
    the server's exit flushes whatever is left."""
    for _ in range(200):
        if len(receiver.received()) >= count:
            return
        threading.Event().wait(0.05)
    server.stop()
    assert len(receiver.received()) >= count, server.log


async def test_serve_exports_spans_over_otlp_continuing_the_caller_s_trace(
    receiver: Receiver, upstream: FakeUpstream, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path / "routing.yaml", upstream.url)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "GATEWAY_API_KEYS": "",
    }
    with ServerProcess(policy, log_path=tmp_path / "server.log", env=env) as server:
        await asyncio.to_thread(server.wait_ready)
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hello there"}],
            extra_headers={
                "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                "tracestate": "vendor=abc",
            },
        )
        chunks = await client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hello there"}],
            stream=True,
            extra_headers={"traceparent": f"00-{STREAM_TRACE}-{STREAM_SPAN}-01"},
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        await client.close()
        await asyncio.to_thread(wait_for_spans, receiver, 6, server)

    assert reply.choices[0].message.content
    assert streamed == reply.choices[0].message.content
    assert set(receiver.paths) == {"/v1/traces"}
    received = receiver.received()
    assert {resource["service.name"] for resource, _ in received} == {"gateway-under-test"}
    spans = [span for _, span in received]

    for trace_hex, parent_hex, state in (
        (CALLER_TRACE, CALLER_SPAN, "vendor=abc"),
        (STREAM_TRACE, STREAM_SPAN, ""),
    ):
        in_trace = [s for s in spans if s.trace_id.hex() == trace_hex]
        (request,) = [s for s in in_trace if s.parent_span_id.hex() == parent_hex]
        assert request.name == "chat chat"
        assert request.trace_state == state
        assert attributes(request)["gateway.outcome"] == "success"
        attempts = sorted(
            (s for s in in_trace if s.parent_span_id == request.span_id),
            key=lambda s: s.start_time_unix_nano,
        )
        assert [s.name for s in attempts] == [f"chat {PRIMARY}", f"chat {BACKUP}"]
        assert len(in_trace) == 3
        failed, answered = attempts
        assert failed.kind == Span.SPAN_KIND_CLIENT
        assert failed.status.code == Status.STATUS_CODE_ERROR
        assert attributes(failed)["error.type"] == "server_error"
        assert attributes(failed)["gateway.retries"] == 1
        assert attributes(answered)["gen_ai.provider.name"] == "anthropic"
        assert attributes(answered)["gateway.fallback_reason"] == "server_error"
        assert attributes(answered)["gen_ai.usage.output_tokens"] > 0

        # Each upstream call carried its attempt's context, in the caller's trace.
        sent = [
            (r.model, r.headers.get("traceparent", ""))
            for r in upstream.requests
            if trace_hex in r.headers.get("traceparent", "")
        ]
        assert [(model, header.split("-")[2]) for model, header in sent] == [
            (PRIMARY, failed.span_id.hex()),
            (PRIMARY, failed.span_id.hex()),
            (BACKUP, answered.span_id.hex()),
        ]
        if state:
            assert {
                r.headers.get("tracestate")
                for r in upstream.requests
                if trace_hex in r.headers.get("traceparent", "")
            } == {state}
