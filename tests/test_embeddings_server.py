"""`POST /v1/embeddings` on `gateway serve`, driven by the openai SDK (sync and async, float and
base64), served by openai and ollama providers on a FakeUpstream."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest
from client_harness import ThreadedFakeUpstream, loopback_only
from server_harness import GATEWAY_SERVE, ServerProcess

from gateway.server._embeddings_api import EmbeddingList
from gateway.testing import Fault

KEY = "embeddings-client-key-3f1a"
SMALL = "text-embedding-3-small"
LARGE = "text-embedding-3-large"
NOMIC = "nomic-embed-text"
TEXTS = ["the quick brown fox", "jumps over the lazy dog"]


def policy_yaml(url: str) -> str:
    return f"""\
version: 1
defaults: {{timeout_s: 5, retry: {{attempts: 1}}}}
providers:
  small:     {{type: openai, model: {SMALL}, base_url: "{url}/v1", api_key: sk-1}}
  small_too: {{type: openai, model: {SMALL}, base_url: "{url}/v1", api_key: sk-2}}
  large:     {{type: openai, model: {LARGE}, base_url: "{url}/v1", api_key: sk-3}}
  nomic:     {{type: ollama, model: {NOMIC}, base_url: "{url}"}}
  chat:      {{type: openai, model: gpt-4o-mini, base_url: "{url}/v1", api_key: sk-4}}
tasks:
  search:   {{kind: embedding, chain: [small, small_too]}}
  local:    {{kind: embedding, chain: [nomic]}}
  wrongdim: {{kind: embedding, chain: [large, nomic], mixed_dimensions: true}}
  default:  {{chain: [chat]}}
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[ThreadedFakeUpstream]:
    with ThreadedFakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gateway(fake: ThreadedFakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("embeddings")
    policy = directory / "routing.yaml"
    policy.write_text(policy_yaml(fake.url))
    env = {"GATEWAY_POLICY_WATCH_S": "0", "GATEWAY_API_KEYS": KEY, "GATEWAY_ADMIN_KEYS": ""}
    with ServerProcess(
        policy, log_path=directory / "server.log", env=env, command=GATEWAY_SERVE
    ) as server:
        server.wait_ready()
        yield server.url + "/v1"


@pytest.fixture(autouse=True)
def fresh(fake: ThreadedFakeUpstream) -> Iterator[None]:
    fake.reset()
    with loopback_only():
        yield


def expected(fake: ThreadedFakeUpstream, model: str, dimensions: int | None = None) -> list:
    return [fake.call(lambda t=t: fake.fake.embedding_for(model, t, dimensions)) for t in TEXTS]


def decoded(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.mark.parametrize("encoding", ["sdk-default", "float"])
def test_sync_sdk_gets_fake_upstreams_vectors(
    fake: ThreadedFakeUpstream, gateway: str, encoding: str
) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0)
    raw = client.embeddings.with_raw_response.create(
        model="search",
        input=TEXTS,
        **({"encoding_format": "float"} if encoding == "float" else {}),
    )
    answer = raw.parse()
    assert [d.embedding for d in answer.data] == expected(fake, SMALL)
    assert [d.index for d in answer.data] == [0, 1]
    assert answer.model == SMALL
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0
    assert raw.headers["x-gateway-task"] == "search"
    assert raw.headers["x-gateway-provider"] == "small"
    assert float(raw.headers["x-gateway-cost-usd"]) > 0
    # The gateway asks its providers for floats, whatever its own client asked for.
    [sent] = fake.requests()
    assert sent.body["encoding_format"] == "float" and sent.path == "/v1/embeddings"


@pytest.mark.parametrize("encoding", ["sdk-default", "float", "base64"])
async def test_async_sdk_falls_through_on_a_server_error(
    fake: ThreadedFakeUpstream, gateway: str, encoding: str
) -> None:
    fake.call(lambda: fake.fake.script_next(Fault.server_error()))
    client = openai.AsyncOpenAI(base_url=gateway, api_key=KEY, max_retries=0)
    asked = {} if encoding == "sdk-default" else {"encoding_format": encoding}
    try:
        raw = await client.embeddings.with_raw_response.create(
            model="search",
            input=TEXTS,
            **asked,  # type: ignore[arg-type]
        )
    finally:
        await client.close()
    answer = raw.parse()
    vectors = [d.embedding for d in answer.data]
    if encoding == "base64":  # asked for by name, the SDK leaves it encoded
        vectors = [decoded(v) for v in vectors]  # type: ignore[arg-type]
    assert vectors == expected(fake, SMALL)
    assert raw.headers["x-gateway-provider"] == "small_too"
    assert raw.headers["x-gateway-attempts-detail"] == "small:server_error,small_too:success"


def test_dimensions_reach_a_model_that_takes_them(fake: ThreadedFakeUpstream, gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0)
    answer = client.embeddings.create(model="search", input=TEXTS, dimensions=32)
    assert [d.embedding for d in answer.data] == expected(fake, SMALL, 32)
    assert fake.requests()[0].body["dimensions"] == 32


def test_dimensions_no_candidate_can_honour_are_a_clear_400(
    fake: ThreadedFakeUpstream, gateway: str
) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="local", input="x", dimensions=64)
    message = caught.value.message
    assert "dimensions=64" in message and "nomic-embed-text" in message and "768" in message
    assert fake.requests() == []
    answer = client.embeddings.create(model="local", input=TEXTS)
    assert [d.embedding for d in answer.data] == expected(fake, NOMIC)
    assert fake.requests()[0].path == "/api/embed"


def test_a_wrong_dimension_falls_through(fake: ThreadedFakeUpstream, gateway: str) -> None:
    fake.call(lambda: fake.fake.embedding_model(LARGE, dimensions=100))
    client = openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="wrongdim", input=TEXTS)
    assert raw.headers["x-gateway-attempts-detail"] == "large:invalid_response,nomic:success"
    assert [d.embedding for d in raw.parse().data] == expected(fake, NOMIC)


def test_every_provider_failing_is_a_502_with_the_attempts(
    fake: ThreadedFakeUpstream, gateway: str
) -> None:
    fake.call(lambda: fake.fake.script_next(Fault.server_error(), Fault.server_error()))
    client = openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model="search", input="x")
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict)
    assert [a["outcome"] for a in body["attempts"]] == ["server_error", "server_error"]


def test_refusals_name_the_problem(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="task 'default' is of kind chat"):
        client.embeddings.create(model="default", input="x")
    with pytest.raises(openai.BadRequestError, match="task 'search' is of kind embedding"):
        client.chat.completions.create(model="search", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match=r"input\[0\] is token ids"):
        client.embeddings.create(model="search", input=[[1, 2, 3]])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway, api_key="wrong", max_retries=0).embeddings.create(
            model="search", input="x"
        )


def test_the_task_header_and_the_document(gateway: str) -> None:
    base = gateway.removesuffix("/v1")
    answer = httpx.post(
        f"{gateway}/embeddings",
        json={"model": "anything", "input": "x", "encoding_format": "float"},
        headers={"authorization": f"Bearer {KEY}", "x-gateway-task": "local"},
    )
    assert answer.status_code == 200 and answer.headers["x-gateway-provider"] == "nomic"
    assert len(answer.json()["data"][0]["embedding"]) == 768
    EmbeddingList.model_validate(answer.json())  # the documented shape
    document = httpx.get(f"{base}/openapi.json").json()
    assert "post" in document["paths"]["/v1/embeddings"]


def test_the_body_limit_applies(fake: ThreadedFakeUpstream, gateway: str) -> None:
    too_big = {"model": "search", "input": ["x" * 1000] * 1100}  # over the 1 MiB default
    answer = httpx.post(
        f"{gateway}/embeddings", json=too_big, headers={"authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["type"]
    assert fake.requests() == []


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"model": "search"}', b'{"model": "search", "input": "hi"}']
)
def test_a_request_without_a_valid_key_is_401_whatever_its_body(gateway: str, body: bytes) -> None:
    for headers in ({}, {"authorization": "Bearer not-a-key"}):
        response = httpx.post(
            gateway + "/embeddings",
            content=body,
            headers={**headers, "content-type": "application/json"},
        )
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
