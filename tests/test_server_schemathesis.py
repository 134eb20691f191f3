"""The served OpenAPI document is honest: schemathesis generates requests from it against a
live `python -m gateway.server` (providers: a spawned FakeUpstream) and checks every response.

Only 502 and 504 are documented server errors (every provider failed; the deadline ran out);
any other 5xx, a status the document does not list, or a body that breaks its schema fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from server_harness import ServerProcess

from gateway.server import ServerSettings, create_app
from gateway.testing import FakeUpstream
from gateway.testing._client import SpawnedFakeUpstream

ADMIN_KEY = "schemathesis-admin-key-51d0"
CLIENT_KEY = "schemathesis-client-key-9e2b"
MAX_EXAMPLES = 50

CONFIG = {
    # The admin key opens every route; schemathesis also probes each route without it.
    "auth": {"openapi": {"HTTPBearer": {"bearer": ADMIN_KEY}}},
    "checks": {
        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "504"]},
        # Rules between fields (a named tool_choice must name one of `tools`; n > 1 cannot
        # stream) are checked past the document's schema, answered 400 naming the field.
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
        },
    },
}


def policy_yaml(fake_url: str) -> str:
    # Generated messages often lack a user turn (Anthropic refuses them) or carry image URLs
    # (Ollama refuses them): each refusal is that candidate's `bad_request`, which falls
    # through and never trips a breaker, so `default` puts both first to walk its whole chain.
    return f"""\
version: 1
defaults: {{timeout_s: 5, retry: {{attempts: 1}}}}
providers:
  mini:   {{type: openai, model: gpt-4o-mini, base_url: "{fake_url}/v1", api_key: sk-fake-1}}
  sonnet: {{type: anthropic, model: claude-sonnet-4-5, base_url: "{fake_url}", api_key: sk-fake-2}}
  llama:  {{type: ollama, model: llama3.2, base_url: "{fake_url}"}}
tasks:
  default:   {{chain: [sonnet, llama, mini], deadline_s: 10}}
  summarize: {{chain: [sonnet, llama]}}
  local:     {{chain: [llama]}}
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[SpawnedFakeUpstream]:
    with FakeUpstream.spawn() as up:
        yield up


@pytest.fixture(scope="module")
def server(fake: SpawnedFakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("schemathesis")
    policy = folder / "routing.yaml"
    policy.write_text(policy_yaml(fake.url))
    env = {
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
        "GATEWAY_POLICY_WATCH_S": "0",
    }
    with ServerProcess(policy, log_path=folder / "server.log", env=env) as process:
        process.wait_ready()
        yield process.url


def local_document() -> dict[str, Any]:
    """The document the server builds, made here without starting anything (the app's
    router is only created at startup), so schemathesis can plan its tests at collection."""
    app = create_app("unused-until-startup.yaml", settings=ServerSettings())
    return app.openapi()


DOCUMENT = local_document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict(CONFIG))


def test_openapi_document_is_served(server: str) -> None:
    response = httpx.get(server + "/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document == DOCUMENT  # what schemathesis tests is what the server serves
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "400", "401", "404", "413", "502", "504"} <= set(chat["responses"])
    assert "422" not in chat["responses"]  # validation errors are answered as 400
    assert "/api/v1/monitoring/providers" in document["paths"]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_responses_match_the_document(case: schemathesis.Case, server: str) -> None:
    case.call_and_validate(base_url=server, timeout=30)
