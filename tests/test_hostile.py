"""Hostile model output, upstream bodies, usage and request values (issue 14's hostile cases).

Each case loses nothing: an answer that cannot be parsed is `invalid_response` on its candidate
and the next is tried; usage that cannot be true is not billed; a request value no upstream can
take is refused naming its field, as a 400 over HTTP and `InvalidRequestError` in the Router.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client import CollectorRegistry
from server_harness import ServerProcess

from gateway import Router
from gateway.errors import ErrorKind, InvalidRequestError, ProviderError
from gateway.metrics import GatewayMetrics
from gateway.policy import parse_policy
from gateway.providers import LLMFactory, MockResponse, MockTransport
from gateway.testing import FakeUpstream, Fault
from gateway.types import Usage

BAD = "gpt-4o-mini"  # the candidate that misbehaves (a priced model, so usage is billed)
GOOD = "gpt-4o"  # its healthy backup
MESSAGES = [{"role": "user", "content": "Give me JSON."}]
DEEP_OBJECT = '{"a":' * 20_000 + "1" + "}" * 20_000
HUGE_INT = '{"a": ' + "9" * 5_000 + "}"


def policy(url: str, provider_type: str = "openai", name: str = "bad", **options: Any) -> str:
    """`name` (of `provider_type`, with client `options`) falls back to an OpenAI "good"."""
    base = f"{url}/v1" if provider_type == "openai" else url
    bad = {"type": provider_type, "model": BAD, "base_url": base, "api_key": "k"}
    doc = {
        "version": 1,
        "defaults": {"timeout_s": 30, "retry": {"attempts": 1}},
        "providers": {
            name: bad | ({"options": options} if options else {}),
            "good": {"type": "openai", "model": GOOD, "base_url": f"{url}/v1", "api_key": "k"},
        },
        "tasks": {"default": {"chain": [name, "good"]}},
    }
    return yaml.safe_dump(doc)


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def router(up: FakeUpstream) -> AsyncIterator[Router]:
    r = Router(parse_policy(policy(up.url)), hooks=[GatewayMetrics(CollectorRegistry())])
    yield r
    await r.aclose()


# --- 1. replies and bodies that cannot be parsed ---------------------------------------------


@pytest.mark.parametrize("text", [DEEP_OBJECT, HUGE_INT], ids=["nested-20000", "int-5000-digits"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama", "openai-sdk"])
async def test_an_unparseable_json_reply_falls_through(
    up: FakeUpstream, text: str, provider: str
) -> None:
    up.reply(BAD, text)
    provider_type, _, client = provider.partition("-")
    options = {"client": client} if client else {}
    router = Router(parse_policy(policy(up.url, provider_type, **options)))
    try:
        routed = await router.complete_json(MESSAGES)
    finally:
        await router.aclose()
    assert routed.provider == "good"
    assert (routed.attempts[0].provider, routed.attempts[0].outcome) == ("bad", "invalid_response")


@pytest.mark.parametrize(
    "provider", ["openai", "anthropic", "ollama", "openai-sdk", "anthropic-sdk"]
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_upstream_body_nested_too_deep_falls_through(
    up: FakeUpstream, provider: str, stream: bool
) -> None:
    up.script(BAD, Fault.deep_json())
    provider_type, _, client = provider.partition("-")
    options = {"client": client} if client else {}
    router = Router(parse_policy(policy(up.url, provider_type, **options)))
    try:
        if stream:
            async with router.stream(MESSAGES) as chunks:
                text = "".join([delta async for delta in chunks])
            result: Any = chunks
        else:
            result = await router.generate(MESSAGES)
            text = result.text
    finally:
        await router.aclose()
    assert text and result.provider == "good"
    assert (result.attempts[0].provider, result.attempts[0].outcome) == ("bad", "invalid_response")


@pytest.mark.parametrize("body", [DEEP_OBJECT, HUGE_INT], ids=["nested-20000", "int-5000-digits"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_unparseable_upstream_body_is_invalid_response(body: str, stream: bool) -> None:
    content = f"data: {body}\n\n" if stream else body
    transport = MockTransport(lambda request: MockResponse(content=content))
    llm = LLMFactory.create("openai", model=BAD, api_key="k", transport=transport)
    with pytest.raises(ProviderError) as caught:
        if stream:
            async with llm.stream(MESSAGES) as chunks:
                [delta async for delta in chunks]
        else:
            await llm.complete(MESSAGES)
    assert caught.value.kind is ErrorKind.INVALID_RESPONSE


@pytest.mark.parametrize("kind", ["anthropic", "ollama"])
async def test_an_unparseable_stream_event_is_invalid_response_on_every_protocol(
    kind: str,
) -> None:
    line = f"event: message_start\ndata: {DEEP_OBJECT}\n\n" if kind == "anthropic" else DEEP_OBJECT
    transport = MockTransport(lambda request: MockResponse(content=line + "\n"))
    llm = LLMFactory.create(kind, model=BAD, api_key="k", transport=transport)
    with pytest.raises(ProviderError) as caught:
        async with llm.stream(MESSAGES) as chunks:
            [delta async for delta in chunks]
    assert caught.value.kind is ErrorKind.INVALID_RESPONSE


# --- 2. usage that cannot be true -------------------------------------------------------------


@pytest.mark.parametrize(
    "provider", ["openai", "anthropic", "ollama", "openai-sdk", "anthropic-sdk"]
)
@pytest.mark.parametrize("tokens", [-1_000_000, 10**30], ids=["negative", "10^30"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_impossible_usage_is_not_billed(
    up: FakeUpstream, provider: str, tokens: int, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    up.reply(BAD, "hello there", usage=Usage(input_tokens=tokens, output_tokens=tokens))
    provider_type, _, client = provider.partition("-")
    options = {"client": client} if client else {}
    # Logged once per provider name for the process: each case names its own.
    name = f"bad-{provider}-{'stream' if stream else 'whole'}-{'neg' if tokens < 0 else 'big'}"
    registry = CollectorRegistry()
    router = Router(
        parse_policy(policy(up.url, provider_type, name, **options)),
        hooks=[GatewayMetrics(registry)],
    )
    try:
        for _ in range(2):
            if stream:
                async with router.stream(MESSAGES) as chunks:
                    [delta async for delta in chunks]
                result: Any = chunks
            else:
                result = await router.generate(MESSAGES)
    finally:
        await router.aclose()
    logged = [r for r in caplog.records if "reported usage" in r.getMessage()]
    assert len(logged) == 1 and name in logged[0].getMessage()
    assert result.provider == name
    assert 0 <= result.cost_usd < 0.01
    assert result.usage.input_tokens >= 0 and result.usage.output_tokens >= 0
    assert result.usage.input_tokens < 10**9 and result.usage.output_tokens < 10**9
    total = registry.get_sample_value("gateway_cost_usd_total", {"task": "default"}) or 0.0
    assert 0 <= total < 0.01


# --- 3. a lone surrogate in a request ---------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "user", "content": "hi \ud800"}], "messages[0].content"),
        (
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "\udfff"}]},
            ],
            "messages[1].content[0].text",
        ),
    ],
)
@pytest.mark.parametrize("client", ["default", "sdk"])
async def test_a_lone_surrogate_is_refused_naming_its_field(
    up: FakeUpstream, messages: list[Any], field: str, client: str
) -> None:
    options = {"client": "sdk"} if client == "sdk" else {}
    router = Router(parse_policy(policy(up.url, **options)))
    try:
        with pytest.raises(InvalidRequestError, match=field.replace("[", r"\[")):
            await router.generate(messages)
    finally:
        await router.aclose()


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": "x\ud800"}}]},
            "tools[0].function.description",
        ),
        ({"stop": ["ok", "\udfff"]}, "stop[1]"),
        ({"metadata": {"who": "\ud800"}}, "metadata.who"),
    ],
)
@pytest.mark.parametrize("client", ["default", "sdk"])
async def test_a_lone_surrogate_in_any_field_is_refused_naming_it(
    up: FakeUpstream, fields: dict[str, Any], where: str, client: str
) -> None:
    # The SDK clients raised a raw UnicodeEncodeError for these (a 500 over HTTP).
    options = {"client": "sdk"} if client == "sdk" else {}
    router = Router(parse_policy(policy(up.url, **options)))
    try:
        with pytest.raises(InvalidRequestError, match=re.escape(where)):
            await router.generate(MESSAGES, **fields)
    finally:
        await router.aclose()
    assert up.count() == 0


# --- 4. an absurd max_tokens ------------------------------------------------------------------


@pytest.mark.parametrize("value", [10**30, 1e30, 2.5, -1, 0, True, "100"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_absurd_max_tokens_is_refused(
    up: FakeUpstream, router: Router, value: Any, stream: bool
) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        if stream:
            async with router.stream(MESSAGES, max_tokens=value) as chunks:
                [delta async for delta in chunks]
        else:
            await router.generate(MESSAGES, max_tokens=value)
    assert up.count() == 0


# --- over HTTP --------------------------------------------------------------------------------


@pytest.fixture
def server(up: FakeUpstream, tmp_path: Path) -> Iterator[ServerProcess]:
    path = tmp_path / "routing.yaml"
    path.write_text(policy(up.url))
    with ServerProcess(
        path, log_path=tmp_path / "server.log", env={"GATEWAY_API_KEYS": ""}
    ) as running:
        running.wait_ready()
        yield running


def post_raw(server: ServerProcess, body: str) -> httpx.Response:
    """`body` as sent, so a JSON escape like `\\ud800` reaches the server unexpanded."""
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ('[{"role": "user", "content": "hi \\ud800"}]', "messages[0].content"),
        (
            '[{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]',
            "messages[0].content[0].text",
        ),
        ('[{"role": "user", "content": "hi", "name": "ann\\ud800"}]', "messages[0].name"),
        (
            '[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": '
            '[{"id": "c1", "type": "function", "function": {"name": "f", '
            '"arguments": "{\\"a\\": \\"\\ud800\\"}"}}]}, '
            '{"role": "tool", "tool_call_id": "c1", "content": "ok"}]',
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)
def test_http_a_lone_surrogate_is_a_400_naming_its_field(
    server: ServerProcess, messages: str, field: str
) -> None:
    response = post_raw(server, f'{{"model": "default", "messages": {messages}}}')
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


@pytest.mark.parametrize("value", ["1e30", "1000000000000000000000000000000", "2.5", "-1"])
@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_http_an_absurd_max_tokens_is_a_400_naming_it(
    server: ServerProcess, name: str, value: str
) -> None:
    messages = '[{"role": "user", "content": "hi"}]'
    body = f'{{"model": "default", "messages": {messages}, "{name}": {value}}}'
    response = post_raw(server, body)
    assert response.status_code == 400, response.text
    assert name in response.json()["error"]["message"]


@pytest.mark.parametrize("tokens", [-5, 10**30], ids=["negative", "10^30"])
async def test_http_a_reply_with_impossible_usage_costs_nothing_in_the_header(
    up: FakeUpstream, server: ServerProcess, tokens: int
) -> None:
    # Async: the FakeUpstream answers on this test's event loop.
    up.reply(BAD, "hello there", usage=Usage(input_tokens=tokens, output_tokens=tokens))
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")
    raw = await client.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}]
    )
    await client.close()
    assert raw.parse().choices[0].message.content == "hello there"
    assert 0 <= float(raw.headers["x-gateway-cost-usd"]) < 0.01
    usage = raw.parse().usage
    assert usage is not None and 0 <= usage.prompt_tokens < 10**9
