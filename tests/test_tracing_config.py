"""When tracing is on, and what it costs when it is off: the `OTEL_*` variables that turn it on
and off, nothing of OpenTelemetry imported by a router that is not traced, and the error that
names the extra when tracing is asked for without it."""

from __future__ import annotations

import asyncio
import json

import pytest
from import_blocker import run_without

from gateway.errors import ConfigurationError
from gateway.testing import FakeUpstream
from gateway.tracing import (
    ENDPOINT_ENVS,
    configured,
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
