"""Embeddings through the router: the policy's embedding tasks, `router.embed` over real
HTTP against FakeUpstream (OpenAI and Ollama wires), and FakeUpstream's embeddings."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway import (
    AllProvidersFailed,
    AttemptOutcome,
    DeadlineExceeded,
    InvalidRequestError,
    PolicyError,
    RequestRefused,
    RoutedEmbeddings,
    Router,
    SyncRouter,
)
from gateway.metrics import GatewayMetrics
from gateway.policy import parse_policy
from gateway.providers import LLMFactory
from gateway.testing import FakeUpstream, Fault

SMALL = "text-embedding-3-small"  # OpenAI, 1536 long, takes `dimensions`
NOMIC = "nomic-embed-text"  # Ollama, 768 long
TEXTS = ["routers route", "breakers break"]


def policy_doc(url: str, **task: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "defaults": {
            "timeout_s": 5,
            "retry": {"attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02},
            "breaker": {"fail_max": 2, "reset_timeout_s": 60},
        },
        "providers": {
            "small": {"type": "openai", "model": SMALL, "base_url": f"{url}/v1", "api_key": "k1"},
            "small_too": {
                "type": "openai",
                "model": SMALL,
                "base_url": f"{url}/v1",
                "api_key": "k2",
            },
            "nomic": {"type": "ollama", "model": NOMIC, "base_url": url},
            "chat": {
                "type": "openai",
                "model": "gpt-4o-mini",
                "base_url": f"{url}/v1",
                "api_key": "k",
            },
        },
        "tasks": {
            "embed": {"kind": "embedding", "chain": ["small", "small_too"], **task},
            "local": {"kind": "embedding", "chain": ["nomic"]},
            "mixed": {"kind": "embedding", "chain": ["small", "nomic"], "mixed_dimensions": True},
            "default": {"chain": ["chat"]},
        },
    }


def build(doc: dict[str, Any], registry: CollectorRegistry | None = None) -> Router:
    policy = parse_policy(
        yaml.safe_dump(doc),
        source="test.yaml",
        provider_types=LLMFactory.registered_providers(),
        chat_only_types=LLMFactory.chat_only_providers(),
    )
    return Router(policy, hooks=[GatewayMetrics(registry or CollectorRegistry())])


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def router(up: FakeUpstream) -> AsyncIterator[Router]:
    r = build(policy_doc(up.url))
    yield r
    await r.aclose()


# --- the policy ------------------------------------------------------------------------------


def test_a_chain_mixing_vector_lengths_is_refused_at_load() -> None:
    doc = policy_doc("http://127.0.0.1:1")
    doc["tasks"]["embed"]["chain"] = ["small", "nomic"]
    with pytest.raises(PolicyError) as caught:
        build(doc)
    message = str(caught.value)
    assert "task 'embed'" in message and "mix vector lengths" in message
    assert "small (1536)" in message and "nomic (768)" in message
    assert caught.value.path == "tasks.embed.chain"
    assert caught.value.line is not None


def test_declared_dimensions_and_chain_params_make_lengths_match() -> None:
    doc = policy_doc("http://127.0.0.1:1")
    doc["providers"]["custom"] = {"type": "ollama", "model": "my-embedder", "dimensions": 256}
    doc["tasks"]["embed"]["chain"] = [
        {"provider": "small", "params": {"dimensions": 256}},
        "custom",
    ]
    policy = parse_policy(yaml.safe_dump(doc), chat_only_types=LLMFactory.chat_only_providers())
    assert [e.dimensions for e in policy.tasks["embed"].chain] == [256, 256]


def test_a_chain_with_an_undeclared_length_is_refused() -> None:
    doc = policy_doc("http://127.0.0.1:1")
    doc["providers"]["custom"] = {"type": "ollama", "model": "my-embedder"}
    doc["tasks"]["embed"]["chain"] = ["small", "custom"]
    with pytest.raises(PolicyError, match=r"'custom' declare none.*dimensions: N"):
        build(doc)


def test_a_provider_that_cannot_embed_is_refused_in_an_embedding_task() -> None:
    doc = policy_doc("http://127.0.0.1:1")
    doc["providers"]["claude"] = {"type": "anthropic", "model": "claude-sonnet-4-5", "api_key": "k"}
    doc["tasks"]["embed"]["chain"] = ["small", "claude"]
    with pytest.raises(PolicyError) as caught:
        build(doc)
    assert "provider 'claude' (type anthropic) cannot embed" in str(caught.value)
    assert caught.value.path == "tasks.embed.chain[1]"


def test_every_builtin_type_says_without_importing_whether_it_embeds() -> None:
    chat_only = set(LLMFactory.chat_only_providers())
    assert "anthropic" in chat_only
    for name in ("openai", "openai_http", "azure_openai", "ollama", "local", "anthropic"):
        assert LLMFactory.provider_class(name).embeds is (name not in chat_only)


def test_a_redirect_to_a_task_of_another_kind_is_refused() -> None:
    doc = policy_doc("http://127.0.0.1:1")
    doc["tasks"]["embed"]["redirect"] = {"server_error": {"task": "default"}}
    with pytest.raises(PolicyError, match="only go to a task of its own kind"):
        build(doc)


# --- router.embed ----------------------------------------------------------------------------


async def test_embed_answers_one_vector_per_input_from_one_model(
    up: FakeUpstream, router: Router
) -> None:
    routed = await router.embed(TEXTS, task="embed")
    assert isinstance(routed, RoutedEmbeddings)
    assert routed.vectors == [up.embedding_for(SMALL, text) for text in TEXTS]
    assert (routed.provider, routed.model, routed.task, routed.dimensions) == (
        "small",
        SMALL,
        "embed",
        1536,
    )
    assert routed.usage.input_tokens > 0
    assert routed.cost_usd == pytest.approx(routed.usage.input_tokens * 0.02 / 1e6)
    assert [a.outcome for a in routed.attempts] == [AttemptOutcome.SUCCESS]
    [sent] = up.requests
    assert sent.path == "/v1/embeddings"
    assert sent.body == {"model": SMALL, "input": TEXTS, "encoding_format": "float"}


async def test_one_string_and_the_ollama_wire(up: FakeUpstream, router: Router) -> None:
    routed = await router.embed("hello", task="local")
    assert routed.vectors == [up.embedding_for(NOMIC, "hello")]
    assert len(routed.vectors[0]) == 768 and routed.provider == "nomic"
    [sent] = up.requests
    assert (sent.protocol, sent.path, sent.body) == (
        "ollama",
        "/api/embed",
        {"model": NOMIC, "input": ["hello"]},
    )


async def test_a_server_error_falls_through_to_the_next_provider(
    up: FakeUpstream, router: Router
) -> None:
    up.script_next(Fault.server_error(), Fault.server_error())
    routed = await router.embed(TEXTS, task="embed")
    assert routed.provider == "small_too"
    first, second = routed.attempts
    assert (first.provider, first.outcome, first.retries) == ("small", "server_error", 1)
    assert second.outcome is AttemptOutcome.SUCCESS
    assert routed.vectors == [up.embedding_for(SMALL, text) for text in TEXTS]


async def test_the_breaker_opens_after_failures_and_is_then_skipped(up: FakeUpstream) -> None:
    doc = policy_doc(up.url)
    doc["defaults"]["retry"]["attempts"] = 1
    router = build(doc)
    try:
        up.fail_always(SMALL, Fault.server_error())
        with pytest.raises(AllProvidersFailed):
            await router.embed("a", task="embed")
        with pytest.raises(AllProvidersFailed):
            await router.embed("a", task="embed")
        assert router.candidates["small"].breaker.state == "open"
        up.heal()
        up.reset_counts()
        with pytest.raises(AllProvidersFailed) as caught:
            await router.embed("a", task="embed")
        # Both share the failing model: both breakers are open, nothing was sent.
        assert [a.outcome for a in caught.value.attempts] == ["breaker_open", "breaker_open"]
        assert up.count() == 0
    finally:
        await router.aclose()


async def test_a_wrong_dimension_is_the_providers_fault_and_falls_through(
    up: FakeUpstream, router: Router
) -> None:
    routed = await router.embed("x", task="mixed")
    assert routed.provider == "small"
    up.embedding_model(SMALL, dimensions=512)  # the policy knows it as 1536 long
    routed = await router.embed("x", task="mixed")
    first, second = routed.attempts
    assert first.outcome is AttemptOutcome.INVALID_RESPONSE
    assert "has 512 dimensions, expected 1536" in (first.error or "")
    assert second.outcome is AttemptOutcome.SUCCESS
    assert routed.provider == "nomic" and len(routed.vectors[0]) == 768


async def test_dimensions_go_to_models_that_take_them(up: FakeUpstream, router: Router) -> None:
    routed = await router.embed(TEXTS, task="embed", dimensions=64)
    assert routed.vectors == [up.embedding_for(SMALL, t, 64) for t in TEXTS]
    assert up.requests[0].body["dimensions"] == 64


async def test_dimensions_a_model_cannot_honour_skip_it_with_a_reason(
    up: FakeUpstream, router: Router
) -> None:
    routed = await router.embed("x", task="mixed", dimensions=768)
    # text-embedding-3-small takes the parameter; make it fail to reach nomic.
    assert routed.provider == "small"
    with pytest.raises(RequestRefused) as caught:
        await router.embed("x", task="local", dimensions=64)
    [skipped] = caught.value.attempts
    assert skipped.outcome is AttemptOutcome.UNSUPPORTED
    assert "dimensions=64" in (skipped.error or "") and "768" in (skipped.error or "")
    assert caught.value.status == 400
    # Asking for its own length is no problem: nothing is passed.
    up.reset_counts()
    routed = await router.embed("x", task="local", dimensions=768)
    assert routed.provider == "nomic" and "dimensions" not in up.requests[0].body


async def test_the_deadline_bounds_the_request(up: FakeUpstream) -> None:
    router = build(policy_doc(up.url, deadline_s=0.3))
    try:
        up.fail_always(SMALL, Fault.hang(10))
        with pytest.raises(DeadlineExceeded) as caught:
            await router.embed("x", task="embed")
        assert caught.value.attempts[0].outcome is AttemptOutcome.DEADLINE
        # The caller's deadline is not the provider's failure.
        assert router.candidates["small"].breaker.state == "closed"
    finally:
        await router.aclose()


async def test_metrics_and_hooks_count_embedding_requests(up: FakeUpstream) -> None:
    registry = CollectorRegistry()
    router = build(policy_doc(up.url), registry)
    try:
        up.script_next(Fault.server_error(), Fault.server_error())
        routed = await router.embed(TEXTS, task="embed")
    finally:
        await router.aclose()

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert sample("gateway_requests_total", task="embed", outcome="success") == 1
    assert (
        sample(
            "gateway_attempts_total",
            task="embed",
            provider="small",
            model=SMALL,
            outcome="server_error",
        )
        == 1
    )
    assert sample("gateway_retries_total", provider="small", model=SMALL, kind="server_error") == 1
    assert (
        sample("gateway_tokens_total", provider="small_too", model=SMALL, type="input")
        == routed.usage.input_tokens
    )
    assert sample(
        "gateway_cost_usd_total", task="embed", provider="small_too", model=SMALL
    ) == pytest.approx(routed.cost_usd)


async def test_a_task_of_the_other_kind_is_refused_naming_it(router: Router) -> None:
    with pytest.raises(InvalidRequestError, match="task 'embed' is of kind embedding"):
        await router.generate([{"role": "user", "content": "hi"}], task="embed")
    with pytest.raises(InvalidRequestError, match="task 'default' is of kind chat"):
        await router.embed("hi", task="default")


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "empty list"),
        ([1, 2, 3], r"input\[0\] is token ids"),
        (["ok", ""], r"input\[1\] is an empty string"),
    ],
)
async def test_inputs_are_checked_before_anything_is_sent(
    up: FakeUpstream, router: Router, inputs: Any, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        await router.embed(inputs, task="embed")
    assert up.count() == 0


def test_sync_router_embeds(up_url: str) -> None:
    with SyncRouter(parse_policy(yaml.safe_dump(policy_doc(up_url))), hooks=[]) as router:
        routed = router.embed(TEXTS, task="embed")
    assert routed.provider == "small" and len(routed.vectors) == 2


@pytest.fixture
def up_url() -> Any:
    from client_harness import ThreadedFakeUpstream

    with ThreadedFakeUpstream() as upstream:
        yield upstream.url


# --- FakeUpstream ----------------------------------------------------------------------------


async def test_fake_upstream_embeds_on_the_openai_wire_for_the_sdk(up: FakeUpstream) -> None:
    up.embedding_model("my-model", dimensions=24)
    client = openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="k", max_retries=0)
    try:
        # The SDK asks for base64 and decodes it: float32-exact numbers come back equal.
        answer = await client.embeddings.create(model="my-model", input=TEXTS)
        assert [d.embedding for d in answer.data] == [
            up.embedding_for("my-model", t) for t in TEXTS
        ]
        assert up.requests[-1].body["encoding_format"] == "base64"
        floats = await client.embeddings.create(
            model="my-model", input="one", dimensions=8, encoding_format="float"
        )
        assert floats.data[0].embedding == up.embedding_for("my-model", "one", 8)
        assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
        up.script("my-model", Fault.rate_limit(retry_after=0))
        with pytest.raises(openai.RateLimitError):
            await client.embeddings.create(model="my-model", input="x")
        with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
            await client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)
    finally:
        await client.close()
    assert up.count("my-model", protocol="openai") == 3


async def test_fake_upstream_embeds_on_the_ollama_wire(up: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=up.url) as http:
        answer = (await http.post("/api/embed", json={"model": NOMIC, "input": "hi"})).json()
        assert answer["embeddings"] == [up.embedding_for(NOMIC, "hi")]
        assert answer["model"] == NOMIC and answer["prompt_eval_count"] >= 1
        up.script(NOMIC, Fault.server_error())
        failed = await http.post("/api/embed", json={"model": NOMIC, "input": ["a", "b"]})
        assert failed.status_code == 500 and "error" in failed.json()
    assert [r.path for r in up.requests] == ["/api/embed", "/api/embed"]
    assert up.count(NOMIC, protocol="ollama") == 2


def test_fake_vectors_are_exact_as_float32() -> None:
    from gateway.testing._replies import fake_vector

    vector = fake_vector("m", "t", 40)
    packed = base64.b64encode(struct.pack("<40f", *vector))
    assert list(struct.unpack("<40f", base64.b64decode(packed))) == vector
    assert fake_vector("m", "t", 40) == vector != fake_vector("m", "u", 40)


def test_the_shipped_price_snapshot_prices_openais_embedding_models() -> None:
    import json

    from gateway.pricing import SNAPSHOT_PATH

    models = json.loads(SNAPSHOT_PATH.read_text())["models"]
    for model, per_million in (
        ("text-embedding-3-small", 0.02),
        ("text-embedding-3-large", 0.13),
        ("text-embedding-ada-002", 0.10),
    ):
        assert models[model]["input_cost_per_token"] * 1e6 == pytest.approx(per_million)
        assert models[model]["output_cost_per_token"] == 0


async def test_azure_openai_and_litellm_providers_embed(up: FakeUpstream) -> None:
    doc = policy_doc(up.url)
    doc["providers"]["azure"] = {
        "type": "azure_openai",
        "model": SMALL,
        "base_url": up.azure_endpoint,
        "api_key": "k",
        "options": {"deployment": "embedder", "api_version": "2024-10-21"},
    }
    doc["providers"]["lite"] = {
        "type": "litellm",
        "model": f"openai/{SMALL}",
        "base_url": f"{up.url}/v1",
        "api_key": "k",
    }
    doc["tasks"]["azure"] = {"kind": "embedding", "chain": ["azure"]}
    doc["tasks"]["lite"] = {"kind": "embedding", "chain": ["lite"]}
    up.embedding_model("embedder", dimensions=1536)
    router = build(doc)
    try:
        azure = await router.embed(TEXTS, task="azure")
        lite = await router.embed(TEXTS, task="lite", dimensions=32)
    finally:
        await router.aclose()
    assert azure.vectors == [up.embedding_for("embedder", t) for t in TEXTS]
    assert lite.vectors == [up.embedding_for(SMALL, t, 32) for t in TEXTS]
    first, second = up.requests
    assert (first.protocol, first.path) == ("azure", "/openai/deployments/embedder/embeddings")
    assert first.query == {"api-version": "2024-10-21"}
    assert second.body["dimensions"] == 32 and second.body["input"] == TEXTS


def test_a_dimensions_param_on_a_model_that_takes_none_is_refused() -> None:
    doc = policy_doc("http://127.0.0.1:1")
    doc["tasks"]["local"]["chain"] = [{"provider": "nomic", "params": {"dimensions": 512}}]
    with pytest.raises(PolicyError) as caught:
        build(doc)
    assert "model 'nomic-embed-text' of provider 'nomic' takes no dimensions" in str(caught.value)
    assert caught.value.path == "tasks.local.chain[0].params.dimensions"


async def test_the_openai_sdk_client_embeds_too(up: FakeUpstream) -> None:
    doc = policy_doc(up.url)
    doc["providers"]["small"]["options"] = {"client": "sdk"}
    router = build(doc)
    try:
        routed = await router.embed(TEXTS, task="embed", dimensions=48)
    finally:
        await router.aclose()
    assert routed.vectors == [up.embedding_for(SMALL, t, 48) for t in TEXTS]
    assert up.requests[0].body["dimensions"] == 48


def test_the_control_api_sets_an_embedding_models_length() -> None:
    from gateway.testing import FakeUpstreamClient

    with FakeUpstream.spawn() as spawned:
        control = FakeUpstreamClient(spawned.url)
        control.embedding_model("tiny", dimensions=5, takes_dimensions=False)
        answer = httpx.post(
            f"{spawned.url}/v1/embeddings", json={"model": "tiny", "input": ["a", "b"]}
        ).json()
        assert [len(d["embedding"]) for d in answer["data"]] == [5, 5]
        refused = httpx.post(
            f"{spawned.url}/v1/embeddings", json={"model": "tiny", "input": "a", "dimensions": 3}
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "dimensions"
        assert control.count("tiny") == 1
        [recorded] = control.requests()
        assert recorded["path"] == "/v1/embeddings" and recorded["body"]["input"] == ["a", "b"]
        with pytest.raises(Exception, match="dimensions must be a whole number"):
            control.embedding_model("tiny", dimensions=0)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"data": [{"index": 0, "embedding": [0.1, 0.2]}]}, "answered 1 vectors for 2 inputs"),
        (
            {"data": [{"index": 0, "embedding": [0.1]}, {"index": 1, "embedding": [0.1, 0.2]}]},
            "vector 1 has 2 dimensions, expected 1",
        ),
        ({"data": [{"index": 0, "embedding": [0.1]}, {"index": 0, "embedding": [0.2]}]}, "index"),
        ({"data": [{"index": 0, "embedding": ["x"]}, {"index": 1, "embedding": [1]}]}, "holds"),
        ({"object": "list"}, "no 'data' list"),
    ],
)
async def test_an_answer_that_is_not_one_vector_per_input_is_invalid(
    answer: dict[str, Any], problem: str
) -> None:
    from gateway.errors import ErrorKind, ProviderError
    from gateway.providers import MockResponse, MockTransport

    transport = MockTransport(lambda request: MockResponse(json=answer))
    llm = LLMFactory.create("openai", model=SMALL, api_key="k", transport=transport)
    try:
        with pytest.raises(ProviderError, match=problem) as caught:
            await llm.embed(["a", "b"])
    finally:
        await llm.aclose()
    assert caught.value.kind is ErrorKind.INVALID_RESPONSE


async def test_a_malformed_body_falls_through(up: FakeUpstream, router: Router) -> None:
    up.script_next(Fault.malformed_json())
    routed = await router.embed(TEXTS, task="embed")
    first, _ = routed.attempts
    assert first.outcome is AttemptOutcome.INVALID_RESPONSE
    assert routed.provider == "small_too"


async def test_an_upstream_error_is_redacted_of_the_inputs_and_key() -> None:
    from gateway.errors import ProviderError
    from gateway.providers import MockResponse, MockTransport

    secret = "my very private document text"
    error = {"error": {"message": f"bad input '{secret}' with key sk-live-123456789abcdef"}}
    transport = MockTransport(lambda request: MockResponse(status=400, json=error))
    llm = LLMFactory.create(
        "openai", model=SMALL, api_key="sk-live-123456789abcdef", transport=transport
    )
    try:
        with pytest.raises(ProviderError) as caught:
            await llm.embed([secret])
    finally:
        await llm.aclose()
    assert secret not in str(caught.value) and "sk-live-123456789abcdef" not in str(caught.value)


def test_mixed_dimensions_on_a_chat_task_is_refused() -> None:
    doc = policy_doc("http://127.0.0.1:1")
    doc["tasks"]["default"]["mixed_dimensions"] = True
    with pytest.raises(PolicyError, match="mixed_dimensions applies to embedding tasks"):
        build(doc)
