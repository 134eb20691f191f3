"""When tracing is on, and what it costs when it is off: the `OTEL_*` variables that turn it on
and off, nothing of OpenTelemetry imported by a router that is not traced, and the error that
names the extra when tracing is asked for without it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from import_blocker import run_without
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.errors import ConfigurationError
from gateway.testing import FakeUpstream
from gateway.tracing import (
    ENDPOINT_ENVS,
    configured,
    continue_incoming_traces,
    exporters,
    hooks_from_env,
    tracer_provider_from_env,
)

OTLP = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "gateway"}, ()),
        (OTLP, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console, OTLP"}, ("console", "otlp")),
        ({**OTLP, "OTEL_TRACES_EXPORTER": "none"}, ()),
        ({**OTLP, "OTEL_SDK_DISABLED": "true"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, ()),
    ],
)
def test_the_otel_variables_turn_tracing_on_and_off(
    environ: dict[str, str], expected: tuple[str, ...]
) -> None:
    assert exporters(environ) == expected
    assert configured(environ) is bool(expected)


def test_an_exporter_the_gateway_lacks_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match=r"OTEL_TRACES_EXPORTER is 'zipkin'.*'otlp'"):
        exporters({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_otlp_over_grpc_is_refused_with_the_fix() -> None:
    with pytest.raises(
        ConfigurationError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL is 'grpc'.*'http/protobuf'"
    ):
        tracer_provider_from_env({**OTLP, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_no_hook_is_added_when_tracing_is_off() -> None:
    assert hooks_from_env(lambda: None, {}) == []


def test_the_service_is_named_gateway_unless_otel_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    default = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})
    monkeypatch.setenv("OTEL_SERVICE_NAME", "llm-edge")
    named = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "console"})

    assert default is not None and named is not None
    assert default.resource.attributes["service.name"] == "gateway"
    assert named.resource.attributes["service.name"] == "llm-edge"
    default.shutdown()
    named.shutdown()


UNTRACED_ROUTER = """
import asyncio, json, os, sys
from gateway import Router
from gateway.policy import parse_policy
import gateway.tracing

POLICY = '''
version: 1
providers:
  mini: {type: openai, model: gpt-4o-mini, base_url: "URL/v1", api_key: k}
tasks: {default: {chain: [mini]}}
'''.replace("URL", os.environ["FAKE_URL"])


async def main() -> None:
    hooks = gateway.tracing.hooks_from_env(lambda: None)
    async with Router(parse_policy(POLICY), hooks=hooks) as router:
        reply = await router.generate([{"role": "user", "content": "Hi"}])
        deltas = [d async for d in router.stream([{"role": "user", "content": "Hi"}])]
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] == "opentelemetry")
    print(json.dumps({"hooks": len(hooks), "text": reply.text, "deltas": len(deltas),
                      "opentelemetry": loaded}))


asyncio.run(main())
"""


async def test_an_untraced_router_imports_nothing_of_opentelemetry(
    upstream: FakeUpstream,
) -> None:
    env = {"FAKE_URL": upstream.url, "OTEL_TRACES_EXPORTER": ""}
    env.update(dict.fromkeys(ENDPOINT_ENVS, ""))

    # redis-py imports OpenTelemetry for observability of its own, and pybreaker imports
    # redis when it is installed: blocked here, so that what is left is the gateway's doing.
    result = await asyncio.to_thread(run_without, {"redis"}, UNTRACED_ROUTER, env=env)

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["hooks"] == 0
    assert answer["text"]
    assert answer["deltas"] > 0
    assert answer["opentelemetry"] == []
    assert [r.headers.get("traceparent") for r in upstream.requests] == [None, None]


WITHOUT_OPENTELEMETRY = """
import json
from gateway.errors import MissingDependencyError
import gateway.tracing

ASK = {"OTEL_TRACES_EXPORTER": "otlp"}
results = {"off": gateway.tracing.hooks_from_env(lambda: None, {})}
for name, ask in [
    ("hooks", lambda: gateway.tracing.TracingHooks),
    ("env", lambda: gateway.tracing.hooks_from_env(lambda: None, ASK)),
    ("serve", lambda: gateway.tracing.continue_incoming_traces(None, ASK)),
]:
    try:
        ask()
    except MissingDependencyError as exc:
        results[name] = str(exc)
print(json.dumps(results))
"""


def test_asking_for_tracing_without_the_extra_names_it() -> None:
    result = run_without({"opentelemetry"}, WITHOUT_OPENTELEMETRY)

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["off"] == []
    for name in ("hooks", "env", "serve"):
        assert "pip install 'gateway[otel]'" in answer[name], name
        assert "OpenTelemetry" in answer[name], name


def _app_reporting_its_trace_context() -> Starlette:
    async def current(request: Request) -> JSONResponse:
        context = trace.get_current_span().get_span_context()
        return JSONResponse(
            {"trace": f"{context.trace_id:032x}", "span": f"{context.span_id:016x}"}
        )

    app = Starlette(routes=[Route("/", current)])
    continue_incoming_traces(app, {"OTEL_TRACES_EXPORTER": "console"})
    return app


async def test_a_callers_traceparent_is_the_current_context_while_it_is_served() -> None:
    app = _app_reporting_its_trace_context()
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        continued = (await c.get("/", headers={"traceparent": header})).json()
        fresh = (await c.get("/")).json()

    assert continued == {"trace": "4bf92f3577b34da6a3ce929d0e0e4736", "span": "00f067aa0ba902b7"}
    assert fresh == {"trace": "0" * 32, "span": "0" * 16}
    assert not trace.get_current_span().get_span_context().is_valid


async def test_a_request_already_under_a_server_span_keeps_it() -> None:
    inner = _app_reporting_its_trace_context()
    provider = TracerProvider()

    async def server_span(scope: Any, receive: Any, send: Any) -> None:
        # What an outer instrumentation (FastAPI's own, an ASGI middleware) does.
        with provider.get_tracer("outer").start_as_current_span("POST /"):
            await inner(scope, receive, send)

    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    transport = httpx.ASGITransport(server_span)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        seen = (await client.get("/", headers={"traceparent": header})).json()

    assert seen["span"] != "00f067aa0ba902b7"  # the outer span, not the caller's
    assert seen["span"] != "0" * 16
