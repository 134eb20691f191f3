"""Providers over real HTTP against FakeUpstream: on the default aiohttp transport, and through
the real SDKs (`client: sdk`) where a type has one."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway import LLMFactory
from gateway.errors import ConfigurationError, ErrorKind, InvalidRequestError, ProviderError
from gateway.providers import LLMService
from gateway.providers._errors import retry_after_seconds
from gateway.providers._http import httpx2_client
from gateway.providers._messages import JSON_INSTRUCTION
from gateway.providers._transport import request_body
from gateway.testing import FakeUpstream, Fault, fake_usage
from gateway.testing._replies import split_words

PROVIDERS = ["openai", "openai_http", "azure_openai", "anthropic", "ollama"]
OPENAI_WIRE = ("openai", "openai_http", "azure_openai")
MODELS = {
    "openai": "gpt-test",
    "openai_http": "gpt-test",
    "azure_openai": "deploy-test",
    "anthropic": "claude-test",
    "ollama": "llama-test",
    "litellm": "openai/lite-test",
}
PROTOCOLS = {
    "openai": "openai",
    "openai_http": "openai",
    "azure_openai": "azure",
    "anthropic": "anthropic",
    "ollama": "ollama",
}
KEY = "sk-test-secret-key-0123456789"
PROMPT = "Summarise the quarterly numbers for the board, please."
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": PROMPT},
]
REPLY = "Revenue grew and costs fell."


def make(name: str, up: FakeUpstream, **options: Any) -> LLMService:
    base_url = {
        "openai": up.openai_base_url,
        "openai_http": up.openai_base_url,
        "azure_openai": up.azure_endpoint,
        "anthropic": up.anthropic_base_url,
        "ollama": up.ollama_base_url,
        "litellm": up.openai_base_url,
    }[name]
    settings: dict[str, Any] = {
        "model": MODELS[name],
        "base_url": base_url,
        "timeout_s": 5,
        "api_key": KEY,  # Ollama needs none, but sends one (for a proxy in front) when given
    }
    settings.update(options)
    return LLMFactory.create(name, **settings)


# Every type runs every test on its default transport (aiohttp, no SDK); the types with an
# official SDK run them through it too (`client: sdk`), over the SDK's aiohttp adapter (its
# default) and over httpx2's own pool (the fallback and the `http_transport: httpx2` option).
SDK = {"client": "sdk"}
SDK_HTTPX2 = {"client": "sdk", "http_transport": "httpx2"}
CLIENTS = [
    pytest.param(("openai", {}), id="openai"),
    pytest.param(("openai", SDK), id="openai-sdk"),
    pytest.param(("openai", SDK_HTTPX2), id="openai-sdk-httpx2"),
    pytest.param(("openai_http", {}), id="openai_http"),
    pytest.param(("azure_openai", {}), id="azure_openai"),
    pytest.param(("azure_openai", SDK), id="azure_openai-sdk"),
    pytest.param(("azure_openai", SDK_HTTPX2), id="azure_openai-sdk-httpx2"),
    pytest.param(("anthropic", {}), id="anthropic"),
    pytest.param(("anthropic", SDK), id="anthropic-sdk"),
    pytest.param(("anthropic", SDK_HTTPX2), id="anthropic-sdk-httpx2"),
    pytest.param(("ollama", {}), id="ollama"),
]


# Each type on its default client, and each type that has one on its SDK.
PROVIDER_CLIENTS = [(name, {}) for name in PROVIDERS] + [
    (name, SDK) for name in ("openai", "azure_openai", "anthropic")
]


@pytest.fixture(params=CLIENTS)
async def llm(
    request: pytest.FixtureRequest, upstream: FakeUpstream, isolated_settings: object
) -> AsyncIterator[LLMService]:
    name, options = request.param
    service = make(name, upstream, **options)
    yield service
    await service.aclose()


def model_of(llm: LLMService) -> str:
    return MODELS[llm.name]


async def drain(llm: LLMService, **kwargs: Any) -> list[str]:
    async with llm.stream(MESSAGES, **kwargs) as stream:
        return [delta async for delta in stream]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


# --- healthy answers ------------------------------------------------------------------------


async def test_complete_returns_text_usage_finish_reason_and_id(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    upstream.reply(model_of(llm), REPLY, cached_input_tokens=5)

    completion = await llm.complete(MESSAGES)

    assert completion.text == REPLY
    assert completion.model == model_of(llm)
    assert completion.finish_reason == "stop"
    # Ollama has no prompt cache counts; the others report 5 cached tokens in their own fields
    # (Anthropic's input_tokens excludes them and the provider adds them back).
    cached = 0 if llm.name == "ollama" else 5
    assert completion.usage == fake_usage(MESSAGES, REPLY, cached_input_tokens=cached)
    if llm.name == "ollama":
        assert completion.response_id is None  # Ollama's API has no response ids
    else:
        assert completion.response_id
        assert completion.response_id.startswith("msg_" if llm.name == "anthropic" else "chatcmpl")
    received = upstream.requests[-1]
    assert (received.protocol, received.model, received.stream) == (
        PROTOCOLS[llm.name],
        model_of(llm),
        False,
    )


async def test_stream_yields_deltas_then_usage_finish_reason_and_id(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    upstream.reply(model_of(llm), REPLY, cached_input_tokens=3)

    stream = llm.stream(MESSAGES)
    deltas = [delta async for delta in stream]

    assert deltas == split_words(REPLY)
    assert "".join(deltas) == REPLY
    cached = 0 if llm.name == "ollama" else 3
    assert stream.usage == fake_usage(MESSAGES, REPLY, cached_input_tokens=cached)
    assert stream.finish_reason == "stop"
    assert stream.model == model_of(llm)
    assert stream.done
    if llm.name == "ollama":
        assert stream.response_id is None
    else:
        assert stream.response_id
    received = upstream.requests[-1]
    assert received.stream is True
    if llm.name in OPENAI_WIRE:
        assert received.body["stream_options"] == {"include_usage": True}
    if llm.name == "ollama":
        assert received.body["stream"] is True  # explicit, not Ollama's implicit default


async def test_nothing_is_sent_until_the_first_delta_is_awaited(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    stream = llm.stream(MESSAGES)
    await asyncio.sleep(0.05)
    assert upstream.count() == 0
    assert await stream.__anext__()
    assert upstream.count() == 1
    await stream.aclose()


async def test_seed_methods(llm: LLMService, upstream: FakeUpstream) -> None:
    upstream.reply(model_of(llm), REPLY)
    assert await llm.generate(MESSAGES, temperature=0.1, max_tokens=20) == REPLY
    assert [d async for d in llm.stream_generation(MESSAGES)] == split_words(REPLY)

    upstream.reply(model_of(llm), '{"answer": 42, "ok": true}')
    assert await llm.generate_json(MESSAGES) == {"answer": 42, "ok": True}

    upstream.reply(model_of(llm), "not json at all")
    with pytest.raises(ProviderError) as caught:
        await llm.generate_json(MESSAGES)
    assert caught.value.kind is ErrorKind.INVALID_RESPONSE

    assert await llm.get_token_usage("abcdefghij") == {"input_tokens": 3, "characters": 10}


async def test_json_mode_asks_each_upstream_in_its_own_way(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    if llm.name == "anthropic":
        upstream.reply(model_of(llm), '{"ok": true}')  # Anthropic has no JSON mode to detect

    completion = await llm.complete(MESSAGES, json_mode=True)

    assert isinstance(json.loads(completion.text), dict)
    body = upstream.requests[-1].body
    if llm.name in OPENAI_WIRE:
        assert body["response_format"] == {"type": "json_object"}
        # OpenAI refuses JSON mode unless the conversation mentions JSON: an instruction leads.
        assert body["messages"][0] == {"role": "system", "content": JSON_INSTRUCTION}
        assert body["messages"][1:] == MESSAGES
    elif llm.name == "anthropic":
        assert body["system"] == f"You are terse.\n\n{JSON_INSTRUCTION}"
    else:
        assert body["format"] == "json"


async def test_openai_json_mode_leaves_messages_that_mention_json_alone(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    messages = [{"role": "user", "content": "Reply in JSON with the totals."}]
    async with make("openai", upstream) as llm:
        await llm.complete(messages, json_mode=True)
    assert upstream.requests[-1].body["messages"] == messages


async def test_sampling_options_and_extra_params_reach_the_upstream(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    await llm.complete(MESSAGES, temperature=0.25, max_tokens=64, top_p=0.5, stop=["END"])

    body = upstream.requests[-1].body
    if llm.name in OPENAI_WIRE:
        assert (body["temperature"], body["max_tokens"], body["top_p"], body["stop"]) == (
            0.25,
            64,
            0.5,
            ["END"],
        )
        assert body["messages"] == MESSAGES
    elif llm.name == "anthropic":
        assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0.25, 64, 0.5)
        assert body["stop_sequences"] == ["END"]
    else:
        assert body["stream"] is False
        assert body["options"] == {
            "temperature": 0.25,
            "num_predict": 64,
            "top_p": 0.5,
            "stop": ["END"],
        }


@pytest.mark.parametrize(
    ("provider", "options"),
    [("openai", {}), ("openai", SDK), ("anthropic", {}), ("anthropic", SDK)],
    ids=["openai", "openai-sdk", "anthropic", "anthropic-sdk"],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_the_sdks_extra_keywords_and_vendor_fields_reach_the_wire(
    upstream: FakeUpstream,
    isolated_settings: object,
    streamed: bool,
    provider: str,
    options: dict[str, Any],
) -> None:
    # The SDK's typed methods' extra_* keywords mean what they mean there on every client (the
    # SDK path calls its low-level post()), and unknown fields still reach the wire.
    extras: dict[str, Any] = {
        "extra_headers": {"x-trace": "t-1"},
        "extra_query": {"tenant": "acme"},
        "extra_body": {"seed": 7},
        "repetition_penalty": 1.1,  # a vLLM extension the SDK has no keyword for
    }
    async with make(provider, upstream, **options) as llm:
        if streamed:
            async with llm.stream(MESSAGES, **extras) as stream:
                assert "".join([delta async for delta in stream])
        else:
            await llm.complete(MESSAGES, **extras)

    received = upstream.requests[-1]
    assert received.headers["x-trace"] == "t-1"
    assert received.query == {"tenant": "acme"}
    assert (received.body["seed"], received.body["repetition_penalty"]) == (7, 1.1)
    assert not {"extra_headers", "extra_query", "extra_body"} & received.body.keys()


@pytest.mark.parametrize("options", [{}, SDK], ids=["http", "sdk"])
async def test_azure_calls_the_deployment_url_with_the_api_version(
    upstream: FakeUpstream, isolated_settings: object, options: dict[str, Any]
) -> None:
    async with make("azure_openai", upstream, api_version="2024-06-01", **options) as llm:
        await llm.complete(MESSAGES)
    received = upstream.requests[-1]
    assert received.path == "/openai/deployments/deploy-test/chat/completions"
    assert received.query["api-version"] == "2024-06-01"
    assert received.headers["api-key"] == KEY


# --- message conversion ---------------------------------------------------------------------


async def test_anthropic_conversion_system_merge_and_tool_results(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "user", "content": [{"type": "text", "text": "And in Rome?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "system", "content": "Use Celsius."},
        {"role": "user", "content": "Thanks."},
    ]
    async with make("anthropic", upstream) as llm:
        await llm.complete(messages)

    body = upstream.requests[-1].body
    assert body["system"] == "Be brief.\n\nUse Celsius."
    assert body["max_tokens"] == 4096  # Anthropic requires it; the provider's default
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the weather in Paris?"},
                {"type": "text", "text": "And in Rome?"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ]


async def test_anthropic_conversion_images_and_tool_messages_without_an_id(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": "https://example.com/cat.jpg"},
            ],
        },
        {"role": "tool", "content": "42"},
    ]
    async with make("anthropic", upstream) as llm:
        await llm.complete(messages)
    assert upstream.requests[-1].body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "Tool result: 42"},
            ],
        }
    ]


async def test_anthropic_refuses_a_conversation_of_only_system_messages(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    async with make("anthropic", upstream) as llm:
        with pytest.raises(InvalidRequestError, match="no user or assistant message"):
            await llm.complete([{"role": "system", "content": "Be brief."}])
    assert upstream.count() == 0


async def test_ollama_conversion_joins_text_parts_and_inlines_images(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe "},
                {"type": "text", "text": "this."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    async with make("ollama", upstream) as llm:
        await llm.complete(messages)
        assert upstream.requests[-1].body["messages"] == [
            {"role": "user", "content": "Describe this.", "images": ["AAAA"]}
        ]
        remote = [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y"}]}]
        with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content\[0\]"):
            await llm.complete(remote)
    assert upstream.count() == 1


async def test_local_is_the_ollama_provider(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    async with LLMFactory.create(
        "local", model="llama-test", base_url=upstream.ollama_base_url
    ) as llm:
        assert type(llm).__name__ == "OllamaService"
        assert (await llm.complete(MESSAGES)).text.startswith("Hello from llama-test")
    assert upstream.requests[-1].protocol == "ollama"


# --- failures -------------------------------------------------------------------------------

# fault, kind, HTTP status (None: no response), provider-specific overrides of (kind, status).
FAULT_CASES: list[tuple[str, Fault, ErrorKind, int | None, dict[str, tuple[ErrorKind, Any]]]] = [
    ("rate_limit", Fault.rate_limit(retry_after=7), ErrorKind.RATE_LIMIT, 429, {}),
    ("server_error", Fault.server_error(), ErrorKind.SERVER_ERROR, 500, {}),
    ("unavailable", Fault.unavailable(), ErrorKind.OVERLOADED, 503, {}),
    (
        "overloaded",
        Fault.overloaded(),
        ErrorKind.OVERLOADED,
        503,
        {"anthropic": (ErrorKind.OVERLOADED, 529)},
    ),
    ("unauthorized", Fault.unauthorized(), ErrorKind.AUTH, 401, {}),
    ("not_found", Fault.not_found(), ErrorKind.NOT_FOUND, 404, {}),
    ("context_length", Fault.context_length(), ErrorKind.CONTEXT_LENGTH, 400, {}),
    ("content_filter", Fault.content_filter(), ErrorKind.CONTENT_FILTER, None, {}),
    ("reset", Fault.reset(), ErrorKind.CONNECTION, None, {}),
    ("hang", Fault.hang(), ErrorKind.TIMEOUT, None, {}),
    ("cut_stream", Fault.cut_stream(2), ErrorKind.CONNECTION, None, {}),
    ("malformed_json", Fault.malformed_json(), ErrorKind.INVALID_RESPONSE, None, {}),
]


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("fault", "kind", "status", "overrides"),
    [case[1:] for case in FAULT_CASES],
    ids=[case[0] for case in FAULT_CASES],
)
async def test_every_fault_maps_to_its_kind(
    llm: LLMService,
    upstream: FakeUpstream,
    fault: Fault,
    kind: ErrorKind,
    status: int | None,
    overrides: dict[str, tuple[ErrorKind, Any]],
    streaming: bool,
) -> None:
    kind, status = overrides.get(llm.name, (kind, status))
    upstream.script(model_of(llm), fault)
    if fault.kind == "content_filter" and llm.name == "ollama":
        # Ollama has no filtered ending; FakeUpstream answers it normally.
        text = "".join(await drain(llm)) if streaming else (await llm.complete(MESSAGES)).text
        assert text.startswith("Hello from")
        return

    # Only a hang needs a short timeout; the others must not hit one on a slow machine.
    timeout_s = 0.1 if kind is ErrorKind.TIMEOUT else 10.0
    with pytest.raises(ProviderError) as caught:
        if streaming:
            await drain(llm, timeout_s=timeout_s)
        else:
            await llm.complete(MESSAGES, timeout_s=timeout_s)

    error = caught.value
    assert (error.kind, error.status) == (kind, status), str(error)
    assert error.provider == llm.name
    assert error.retry_after_s == (7.0 if fault.kind == "rate_limit" else None)
    # A filtered answer is a reply, not an exception; every other failure chains the SDK's.
    assert (error.__cause__ is None) == (kind is ErrorKind.CONTENT_FILTER)
    assert KEY not in str(error) and PROMPT not in str(error)
    assert upstream.count() == 1


async def test_a_cut_stream_delivers_its_chunks_before_the_error(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    upstream.reply(model_of(llm), REPLY)
    upstream.script(model_of(llm), Fault.cut_stream(2))
    received: list[str] = []
    with pytest.raises(ProviderError) as caught:
        async for delta in llm.stream(MESSAGES):
            received.append(delta)
    assert caught.value.kind is ErrorKind.CONNECTION
    assert received == split_words(REPLY)[:2]


# Each protocol's in-stream error, after HTTP 200 and two chunks.
MIDSTREAM_KINDS = {
    "anthropic": ErrorKind.OVERLOADED,  # event: error, type overloaded_error
    "openai": ErrorKind.SERVER_ERROR,  # data: {"error": {"type": "server_error"}}
    "openai_http": ErrorKind.SERVER_ERROR,
    "azure_openai": ErrorKind.SERVER_ERROR,
    "ollama": ErrorKind.OVERLOADED,  # {"error": "server busy, please try again. ..."}
}


async def test_an_error_inside_a_stream_maps_by_its_own_type(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    upstream.script(model_of(llm), Fault.midstream_error(2, kind="overloaded"))
    received: list[str] = []
    with pytest.raises(ProviderError) as caught:
        async for delta in llm.stream(MESSAGES):
            received.append(delta)
    assert caught.value.kind is MIDSTREAM_KINDS[llm.name]
    assert caught.value.status is None  # HTTP said 200; the error came inside the body
    assert len(received) == 2


async def test_an_error_status_before_streaming_overloads(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    upstream.script(model_of(llm), Fault.midstream_error(2))
    with pytest.raises(ProviderError) as caught:
        await llm.complete(MESSAGES)
    assert caught.value.kind is ErrorKind.OVERLOADED


async def test_the_provider_timeout_applies_when_the_call_sets_none(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    for name, options in PROVIDER_CLIENTS:
        upstream.script(MODELS[name], Fault.hang())
        async with make(name, upstream, timeout_s=0.1, **options) as llm:
            with pytest.raises(ProviderError) as caught:
                await llm.complete(MESSAGES)
            assert caught.value.kind is ErrorKind.TIMEOUT, (name, options)


async def test_error_text_never_shows_the_key_or_the_prompt(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    echo = f"Bad request: key {KEY} is not allowed to say {PROMPT!r}"
    upstream.script(model_of(llm), Fault.status(400, message=echo))
    with pytest.raises(ProviderError) as caught:
        await llm.complete(MESSAGES)
    error = caught.value
    assert error.kind is ErrorKind.BAD_REQUEST
    for text in (str(error), repr(error), error.args[0]):
        assert KEY not in text and PROMPT not in text
    assert "Bad request" in str(error)  # the upstream's own words are kept
    assert KEY not in repr(llm)


# --- bad input ------------------------------------------------------------------------------

BAD_INPUTS = {
    "empty": [],
    "bad_role": [{"role": "wizard", "content": "hi"}],
    "content_type": [{"role": "user", "content": 42}],
    "not_a_list": "hello",
    "part_without_type": [{"role": "user", "content": [{"text": "hi"}]}],
}


@pytest.mark.parametrize("messages", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
async def test_bad_input_fails_before_any_request(
    llm: LLMService, upstream: FakeUpstream, messages: Any
) -> None:
    with pytest.raises(InvalidRequestError, match="messages"):
        await llm.complete(messages)
    with pytest.raises(InvalidRequestError, match="messages"):
        llm.stream(messages)
    assert upstream.count() == 0


@pytest.mark.parametrize("timeout_s", [-1, float("nan"), "5"])
async def test_a_bad_call_timeout_fails_before_any_request(
    llm: LLMService, upstream: FakeUpstream, timeout_s: Any
) -> None:
    with pytest.raises(InvalidRequestError, match=f"timeout_s is {timeout_s!r}"):
        await llm.complete(MESSAGES, timeout_s=timeout_s)
    with pytest.raises(InvalidRequestError, match=f"timeout_s is {timeout_s!r}"):
        llm.stream(MESSAGES, timeout_s=timeout_s)
    assert upstream.count() == 0


async def test_a_zero_call_timeout_times_out(llm: LLMService, upstream: FakeUpstream) -> None:
    # What a caller whose deadline has just run out passes: a timeout, not a bad request.
    with pytest.raises(ProviderError) as caught:
        await llm.complete(MESSAGES, timeout_s=0)
    assert caught.value.kind is ErrorKind.TIMEOUT
    with pytest.raises(ProviderError) as caught:
        await drain(llm, timeout_s=0)
    assert caught.value.kind is ErrorKind.TIMEOUT


async def test_bad_limits_are_refused_at_construction(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    for name, options in PROVIDER_CLIENTS:
        with pytest.raises(ConfigurationError, match=r"timeout_s is -1"):
            make(name, upstream, timeout_s=-1, **options)
        with pytest.raises(ConfigurationError, match=r"max_connections is 0"):
            make(name, upstream, max_connections=0, **options)


async def test_an_unknown_http_transport_is_refused_naming_the_choices(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    for name in ["openai", "azure_openai", "anthropic"]:
        with pytest.raises(
            ConfigurationError, match=r"http_transport is 'curl'.*'aiohttp'.*'httpx2'"
        ):
            make(name, upstream, client="sdk", http_transport="curl")


async def test_the_sdk_pool_is_the_aiohttp_adapter_unless_it_cannot_be_built() -> None:
    import httpx2
    import openai

    class AiohttpMissing(httpx2.AsyncClient):
        def __init__(self, **options: Any) -> None:
            # What the SDKs' DefaultAioHttpClient raises when aiohttp is not installed.
            raise RuntimeError("To use the aiohttp client you must have installed aiohttp")

    adapter = httpx2_client("p", 5, 10, aiohttp_client=openai.DefaultAioHttpClient)
    fallback = httpx2_client("p", 5, 10, aiohttp_client=AiohttpMissing)
    chosen = httpx2_client(
        "p", 5, 10, transport="httpx2", aiohttp_client=openai.DefaultAioHttpClient
    )
    try:
        assert isinstance(adapter, openai.DefaultAioHttpClient)
        for client in (fallback, chosen):
            assert type(client) is httpx2.AsyncClient
            assert not isinstance(client, openai.DefaultAioHttpClient)
    finally:
        for client in (adapter, fallback, chosen):
            await client.aclose()


# --- connections ----------------------------------------------------------------------------


async def test_closing_a_stream_early_closes_its_connection(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    upstream.reply(model_of(llm), " ".join(["word"] * 50), chunk_delay_s=0.02)
    stream = llm.stream(MESSAGES)
    assert await stream.__anext__() == "word"
    assert upstream.open_connections == 1

    await stream.aclose()

    assert await wait_for(lambda: upstream.open_connections == 0)


async def test_cancelling_a_stream_propagates_and_closes_its_connection(
    llm: LLMService, upstream: FakeUpstream
) -> None:
    upstream.reply(model_of(llm), " ".join(["word"] * 50), chunk_delay_s=0.02)
    first = asyncio.Event()

    async def consume() -> None:
        async with llm.stream(MESSAGES) as stream:
            async for _ in stream:
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(lambda: upstream.open_connections == 0)


async def test_max_connections_bounds_the_pool(
    upstream: FakeUpstream, isolated_settings: object
) -> None:
    for name, options in PROVIDER_CLIENTS:
        upstream.reply(MODELS[name], REPLY, latency_s=0.05)
        async with make(name, upstream, max_connections=2, **options) as llm:
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, upstream.open_connections)
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            results = await asyncio.gather(*(llm.complete(MESSAGES) for _ in range(6)))
            watcher.cancel()
            assert [r.text for r in results] == [REPLY] * 6
            assert peak == 2, (name, options)
        assert await wait_for(lambda: upstream.open_connections == 0)


async def test_aclose_closes_the_pool(llm: LLMService, upstream: FakeUpstream) -> None:
    await llm.complete(MESSAGES)
    assert upstream.open_connections == 1  # kept alive for the next call
    await llm.aclose()
    assert await wait_for(lambda: upstream.open_connections == 0)


# --- Retry-After ----------------------------------------------------------------------------


def test_retry_after_reads_seconds_dates_and_milliseconds() -> None:
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (retry_after_seconds({"retry-after": later}) or 0) <= 31
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds(None) is None


# --- LiteLLM (slow to import: a few tests only) ---------------------------------------------


@pytest.fixture
async def lite(upstream: FakeUpstream, isolated_settings: object) -> AsyncIterator[LLMService]:
    service = make("litellm", upstream)
    yield service
    await service.aclose()


async def test_litellm_complete_and_stream_over_its_openai_path(
    lite: LLMService, upstream: FakeUpstream
) -> None:
    upstream.reply("lite-test", REPLY, cached_input_tokens=2)

    completion = await lite.complete(MESSAGES, temperature=0.5)
    stream = lite.stream(MESSAGES)
    deltas = [d async for d in stream]

    expected = fake_usage(MESSAGES, REPLY, cached_input_tokens=2)
    assert (completion.text, completion.finish_reason, completion.usage) == (
        REPLY,
        "stop",
        expected,
    )
    assert completion.response_id and completion.response_id.startswith("chatcmpl")
    assert "".join(deltas) == REPLY
    assert (stream.usage, stream.finish_reason) == (expected, "stop")
    first, second = upstream.requests
    assert (first.protocol, first.model, first.stream, first.body["temperature"]) == (
        "openai",
        "lite-test",
        False,
        0.5,
    )
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert second.stream is True


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        (Fault.rate_limit(retry_after=4), ErrorKind.RATE_LIMIT, 429),
        (Fault.context_length(), ErrorKind.CONTEXT_LENGTH, 400),
        (Fault.reset(), ErrorKind.CONNECTION, None),
        (Fault.cut_stream(1), ErrorKind.CONNECTION, None),
        (Fault.malformed_json(), ErrorKind.INVALID_RESPONSE, None),
    ],
    ids=["rate_limit", "context_length", "reset", "cut_stream", "malformed_json"],
)
async def test_litellm_failures_map_by_what_really_happened(
    lite: LLMService, upstream: FakeUpstream, fault: Fault, kind: ErrorKind, status: int | None
) -> None:
    # LiteLLM relabels a reset as HTTP 500 and a cut stream as MidStreamFallbackError; the
    # exceptions it wrapped say what happened.
    for streaming in (False, True):
        upstream.script("lite-test", fault)
        with pytest.raises(ProviderError) as caught:
            if streaming:
                await drain(lite)
            else:
                await lite.complete(MESSAGES)
        assert (caught.value.kind, caught.value.status) == (kind, status), streaming
        assert caught.value.retry_after_s == (4.0 if status == 429 else None)
        assert KEY not in str(caught.value)
    assert upstream.count() == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_request_body_reaches_the_upstream_with_every_value_it_was_given(
    upstream: FakeUpstream, isolated_settings: object, provider: str
) -> None:
    # The default transport encodes with msgspec; what the caller sent must mean the same on
    # the wire as json.dumps has it: text beyond ASCII, integers past 64 bits, and NaN, which
    # msgspec alone would turn into null.
    sent = {"label": "café 東京 🚀", "big": 2**70, "weights": [0.5, float("nan")]}
    async with make(provider, upstream) as llm:
        await llm.complete(
            [{"role": "user", "content": "naïve question, 質問"}],
            extra_body={"metadata_echo": sent},
        )
    received = upstream.requests[-1].body
    echoed = received["metadata_echo"]
    assert (echoed["label"], echoed["big"], echoed["weights"][0]) == (sent["label"], 2**70, 0.5)
    assert math.isnan(echoed["weights"][1])
    assert "naïve question, 質問" in json.dumps(received, ensure_ascii=False)


@pytest.mark.parametrize(
    "body",
    [
        {"text": "plain", "n": 1, "nested": [{"a": True, "b": 1.25}]},
        {"text": "é 東京 🚀 \u2028", "n": -(2**80)},
        {"t": float("nan")},
        {"t": float("-inf"), "x": None},
        {"said": "null is a word too"},
        {1: "int keys become strings, as json.dumps makes them"},
    ],
)
def test_the_request_encoder_means_what_json_dumps_means(body: dict[Any, Any]) -> None:
    encoded = request_body(body)
    as_json = json.dumps(body)
    assert json.loads(encoded) == json.loads(as_json) or "NaN" in as_json
    if "NaN" in as_json or "Infinity" in as_json:
        assert encoded == as_json.encode()  # non-finite numbers stay as the caller sent them


def test_the_request_encoder_refuses_what_json_dumps_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        request_body({"when": object()})
