"""Codecs through an in-memory `MockTransport` (no sockets), and a vendor added as README shows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigurationError, ErrorKind, ProviderError
from gateway.providers import (
    AnthropicService,
    AzureOpenAIService,
    LLMFactory,
    MockRequest,
    MockResponse,
    MockTransport,
    OllamaService,
    OpenAIService,
    WireEvent,
)
from gateway.providers._errors import parse_untrusted_json
from gateway.providers._transport import SSEDecoder
from gateway.testing import FakeUpstream
from gateway.types import Usage

KEY = "sk-mock-secret-0123456789"
PROMPT = "Tell me about the quarterly figures, briefly."
MESSAGES = [{"role": "user", "content": PROMPT}]


def chat_completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "model": "gpt-mock",
        "choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }


async def test_the_openai_codec_builds_the_request_and_reads_the_answer() -> None:
    transport = MockTransport(lambda request: MockResponse(json=chat_completion("Fine.")))
    llm = OpenAIService(
        api_key=KEY, base_url="https://vendor.test/v1", model="gpt-mock", transport=transport
    )

    completion = await llm.complete(MESSAGES, temperature=0.5, extra_query={"tenant": "a"})

    assert (completion.text, completion.model, completion.finish_reason) == (
        "Fine.",
        "gpt-mock",
        "stop",
    )
    assert completion.usage == Usage(input_tokens=7, output_tokens=3)
    (sent,) = transport.requests
    assert sent.url == "https://vendor.test/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.query == {"tenant": "a"}
    assert sent.body == {"model": "gpt-mock", "messages": MESSAGES, "temperature": 0.5}
    assert (sent.stream, sent.timeout_s) == (False, 30.0)


async def test_organization_default_headers_and_azure_auth_reach_the_wire() -> None:
    transport = MockTransport(lambda request: MockResponse(json=chat_completion("Ok.")))
    openai = OpenAIService(
        api_key=KEY,
        organization="org-1",
        default_headers={"X-Team": "search"},
        transport=transport,
    )
    azure = AzureOpenAIService(
        api_key=KEY,
        base_url="https://res.openai.azure.com/",
        deployment="prod-mini",
        api_version="2024-10-21",
        transport=transport,
    )
    await openai.complete(MESSAGES, extra_headers={"x-trace": "t"})
    await azure.complete(MESSAGES)

    to_openai, to_azure = transport.requests
    assert (to_openai.headers["openai-organization"], to_openai.headers["x-team"]) == (
        "org-1",
        "search",
    )
    assert to_openai.headers["x-trace"] == "t"
    assert (
        to_azure.url == "https://res.openai.azure.com/openai/deployments/prod-mini/chat/completions"
    )
    assert to_azure.query == {"api-version": "2024-10-21"}
    assert to_azure.headers["api-key"] == KEY and "authorization" not in to_azure.headers
    assert to_azure.body["model"] == "prod-mini"


async def test_an_async_handler_serves_an_openai_stream() -> None:
    chunks = [
        {"id": "c1", "model": "gpt-mock", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
    ]
    sse = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"

    async def handler(request: MockRequest) -> MockResponse:
        return MockResponse(content=sse)

    llm = OpenAIService(api_key=KEY, model="gpt-mock", transport=MockTransport(handler))
    stream = llm.stream(MESSAGES)
    assert [delta async for delta in stream] == ["Hi", " there"]
    assert (stream.usage, stream.finish_reason, stream.response_id) == (
        Usage(input_tokens=4, output_tokens=2),
        "stop",
        "c1",
    )


@pytest.mark.parametrize(
    "bad_event",
    ["data: {not json\n\n", "data: " + json.dumps({"error": {"message": "overloaded"}}) + "\n\n"],
    ids=["malformed", "in-stream-error"],
)
async def test_a_bad_event_in_a_read_comes_after_the_pieces_before_it(bad_event: str) -> None:
    """Events of one read travel as a group; one that fails (bad JSON, an in-stream error)
    must not take the pieces before it down with it: they reach the caller, then the error."""
    chunks = [
        {"id": "c1", "model": "gpt-mock", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"choices": [{"index": 0, "delta": {"content": " there"}}]},
    ]
    sse = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + bad_event
    sse += "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "!"}}]}) + "\n\n"
    llm = OpenAIService(
        api_key=KEY,
        model="gpt-mock",
        transport=MockTransport(lambda request: MockResponse(content=sse)),
    )
    received: list[str] = []
    with pytest.raises(ProviderError):
        async for delta in llm.stream(MESSAGES):
            received.append(delta)
    assert received == ["Hi", " there"]


async def test_sse_event_names_multi_line_data_comments_and_crlf() -> None:
    # Anthropic names its events; the spec lets data span lines (joined with a newline) and
    # lets a server end lines in CRLF and send comments as keep-alives.
    sse = (
        ": keep-alive\r\n"
        "event: message_start\r\n"
        'data: {"type": "message_start", "message": {"id": "msg_1", "model": "claude-m",\r\n'
        'data:  "usage": {"input_tokens": 9, "output_tokens": 0}}}\r\n'
        "\r\n"
        "event: content_block_delta\n"
        'data: {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Yes"}}\n'
        "\n"
        "event: message_delta\n"
        'data: {"type": "message_delta", "delta": {"stop_reason": "end_turn"},'
        ' "usage": {"output_tokens": 1}}\n'
        "\n"
        "event: message_stop\n"
        'data: {"type": "message_stop"}\n'
        "\n"
    )
    transport = MockTransport(lambda request: MockResponse(content=sse))
    llm = AnthropicService(api_key=KEY, model="claude-m", transport=transport)

    stream = llm.stream(MESSAGES, max_tokens=50)
    assert [delta async for delta in stream] == ["Yes"]
    assert (stream.usage, stream.finish_reason, stream.model, stream.response_id) == (
        Usage(input_tokens=9, output_tokens=1),
        "stop",
        "claude-m",
        "msg_1",
    )
    (sent,) = transport.requests
    assert sent.url == "https://api.anthropic.com/v1/messages"
    assert (sent.headers["x-api-key"], sent.headers["anthropic-version"]) == (KEY, "2023-06-01")
    assert sent.body["stream"] is True and sent.body["max_tokens"] == 50


async def test_an_anthropic_error_event_maps_by_its_type() -> None:
    sse = (
        "event: error\n"
        'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n'
        "\n"
    )
    llm = AnthropicService(
        api_key=KEY, transport=MockTransport(lambda request: MockResponse(content=sse))
    )
    with pytest.raises(ProviderError) as caught:
        [delta async for delta in llm.stream(MESSAGES)]
    assert (caught.value.kind, caught.value.status) == (ErrorKind.OVERLOADED, None)


async def test_an_error_status_is_mapped_by_the_codec_and_redacted() -> None:
    body = {
        "error": {"message": f"Key {KEY} may not ask {PROMPT!r}", "code": "rate_limit_exceeded"}
    }
    transport = MockTransport(
        lambda request: MockResponse(status=429, json=body, headers={"Retry-After": "2"})
    )
    llm = OpenAIService(api_key=KEY, transport=transport)

    with pytest.raises(ProviderError) as caught:
        await llm.complete(MESSAGES)

    error = caught.value
    assert (error.kind, error.status, error.retry_after_s) == (ErrorKind.RATE_LIMIT, 429, 2.0)
    assert KEY not in str(error) and PROMPT not in str(error)
    assert "[redacted]" in str(error)


@pytest.mark.parametrize(
    ("raised", "kind"),
    [(TimeoutError(), ErrorKind.TIMEOUT), (ConnectionResetError(), ErrorKind.CONNECTION)],
    ids=["timeout", "reset"],
)
async def test_a_failed_exchange_maps_to_its_kind(raised: Exception, kind: ErrorKind) -> None:
    def handler(request: MockRequest) -> MockResponse:
        raise raised

    llm = OllamaService(transport=MockTransport(handler))
    with pytest.raises(ProviderError) as caught:
        await llm.complete(MESSAGES)
    assert caught.value.kind is kind
    assert caught.value.__cause__ is raised


async def test_an_ollama_stream_is_json_lines() -> None:
    lines = [
        {"model": "llama-m", "message": {"content": "One"}, "done": False},
        {"model": "llama-m", "message": {"content": " two"}, "done": False},
        {
            "model": "llama-m",
            "message": {"content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 5,
            "eval_count": 2,
        },
    ]
    ndjson = "".join(json.dumps(line) + "\n" for line in lines)
    transport = MockTransport(lambda request: MockResponse(content=ndjson))
    llm = OllamaService(model="llama-m", base_url="http://ollama.test", transport=transport)

    stream = llm.stream(MESSAGES, temperature=0)
    assert [delta async for delta in stream] == ["One", " two"]
    assert (stream.usage, stream.finish_reason) == (Usage(5, 2), "stop")
    (sent,) = transport.requests
    assert sent.url == "http://ollama.test/api/chat"
    assert sent.body["stream"] is True and sent.body["options"] == {"temperature": 0}
    assert "authorization" not in sent.headers  # no key, no header


def test_the_client_option_is_checked_with_the_options_it_governs() -> None:
    transport = MockTransport(lambda request: MockResponse())
    with pytest.raises(ConfigurationError, match=r"client is 'grpc'; use 'http'.*or 'sdk'"):
        OpenAIService(api_key=KEY, client="grpc")
    with pytest.raises(ConfigurationError, match="http_transport applies to the SDK's pool"):
        AnthropicService(api_key=KEY, http_transport="httpx2")
    with pytest.raises(ConfigurationError, match="transport= needs client: http"):
        OpenAIService(api_key=KEY, client="sdk", transport=transport)


# --- README: "Adding a provider" -------------------------------------------------------------


def readme_snippet() -> str:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    heading = re.search(r"^#+ Adding a provider\n", readme, re.MULTILINE)
    assert heading, "README has no 'Adding a provider' heading"
    match = re.search(r"```python\n(.*?)```", readme[heading.end() :], re.DOTALL)
    assert match, "README's 'Adding a provider' section has no python block"
    return match.group(1)


async def test_the_readmes_openai_compatible_vendor_works_as_written(
    upstream: FakeUpstream, isolated_settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", KEY)
    namespace: dict[str, Any] = {}
    exec(readme_snippet(), namespace)  # the README's own code, as a reader runs it
    try:
        # Everything but the address (FakeUpstream instead of Groq) comes from the class.
        async with LLMFactory.create("groq", base_url=upstream.openai_base_url) as llm:
            assert llm.name == "groq" and llm.model == "llama-3.3-70b-versatile"
            assert (await llm.complete(MESSAGES)).text.startswith("Hello from llama-3.3")
        assert namespace["GroqService"].default_base_url == "https://api.groq.com/openai/v1"
        received = upstream.requests[-1]
        assert (received.protocol, received.model) == ("openai", "llama-3.3-70b-versatile")
        assert received.headers["authorization"] == f"Bearer {KEY}"
    finally:
        LLMFactory.unregister("groq")


def test_the_sse_decoder_dispatches_on_blank_lines_only() -> None:
    decoder = SSEDecoder()
    fed = [
        decoder.feed([line])
        for line in [b": comment", b"event: ping", b'data: {"a":', b"data: 1}\r", b""]
    ]
    assert fed == [([], None)] * 4 + [([WireEvent("ping", {"a": 1})], None)]
    # A blank line with no data dispatches nothing; an event cut before its blank line neither.
    assert decoder.feed([b""]) == ([], None)
    assert decoder.feed([b'data: {"cut": true}']) == ([], None)
    assert not decoder.done
    # OpenAI's end marker ends the stream, whatever follows it.
    assert decoder.feed([b"\r"]) == ([WireEvent(None, {"cut": True})], None)
    assert decoder.feed([b"data: [DONE]", b"", b"data: 1", b""]) == ([], None)
    assert decoder.done


def test_the_sse_decoder_reads_the_lines_of_one_read_together() -> None:
    """Lines as one read brings them (without their LF): every event they complete, in order,
    an event split across two reads once its blank line comes, nothing past the end marker."""
    decoder = SSEDecoder()
    first, _ = decoder.feed([b"data: 1", b"", b"event: named", b"data: 2\r", b"\r", b"data: [3,"])
    assert first == [WireEvent(None, 1), WireEvent("named", 2)]
    rest, _ = decoder.feed([b"data: 4]", b"", b"data: [DONE]", b"", b"data: 5", b""])
    assert (rest, decoder.done) == ([WireEvent(None, [3, 4])], True)


def test_the_sse_decoder_gives_the_events_before_one_it_cannot_read() -> None:
    events, failure = SSEDecoder().feed([b"data: 1", b"", b"data: {bad", b"", b"data: 2", b""])
    assert events == [WireEvent(None, 1)]
    assert isinstance(failure, ValueError)


@pytest.mark.parametrize(
    "text",
    [
        '{"usage": {"prompt_tokens": 1000000000000000000000000000000}}',
        "-9223372036854775809",
        "123456789012345678901234567890.5",
        '{"a": 1, "a": 2}',
        "NaN",
        "[Infinity, -Infinity, 1e400]",
        '"\\ud83d"',
        '"\\ud83d\\ude00 \u00e9"',
        "-0.0",
        " [1] ",
    ],
)
def test_untrusted_json_reads_as_the_standard_library_reads_it(text: str) -> None:
    """The fast parser first, the standard library for what it refuses: the same values
    either way (an integer past 64 bits stays an integer, NaN and a lone surrogate pass)."""
    expected = json.loads(text)
    for data in (text, text.encode()):
        parsed = parse_untrusted_json(data)
        assert repr(parsed) == repr(expected)
        assert type(parsed) is type(expected)


@pytest.mark.parametrize("text", ["[1,]", "'a'", '"a\tb"', "[1] x", "[" * 5000 + "]" * 5000, ""])
def test_untrusted_json_refuses_with_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_untrusted_json(text)
