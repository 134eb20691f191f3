"""FakeUpstream's wire formats, fault scripting and lifecycle, checked over real HTTP with httpx.

(The SDKs' parsing of these bytes is covered by the provider tests.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.errors import ErrorKind, InvalidRequestError, ProviderError
from gateway.providers import LLMFactory
from gateway.testing import (
    ControlAPIError,
    FakeLLM,
    FakeUpstream,
    FakeUpstreamClient,
    Fault,
    fake_usage,
)
from gateway.types import Usage

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Summarise the plot of Hamlet in one line."},
]
DEFAULT_TEXT = "Hello from {model}. This is a fake reply."


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def http(up: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=up.url, timeout=5.0) as client:
        yield client


def openai_body(model: str = "gpt-test", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def anthropic_body(model: str = "claude-test", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 100,
        "system": MESSAGES[0]["content"],
        "messages": MESSAGES[1:],
        **extra,
    }


def ollama_body(model: str = "llama-test", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


# The same request in each protocol: (protocol, path, body builder, model).
PROTOCOLS = {
    "openai": ("/v1/chat/completions", openai_body, "gpt-test"),
    "azure": (
        "/openai/deployments/azure-dep/chat/completions?api-version=2024-10-21",
        lambda model="azure-dep", **extra: {"messages": MESSAGES, **extra},
        "azure-dep",
    ),
    "anthropic": ("/v1/messages", anthropic_body, "claude-test"),
    "ollama": ("/api/chat", ollama_body, "llama-test"),
}


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) for each event of an SSE body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
        events.append((name, "\n".join(data)))
    return events


async def post(
    http: httpx.AsyncClient, protocol: str, *, stream: bool, **extra: Any
) -> httpx.Response:
    path, body, _ = PROTOCOLS[protocol]
    return await http.post(path, json=body(stream=stream, **extra))


# --- healthy answers ------------------------------------------------------------------------


async def test_openai_json_answer_has_the_real_shape_and_deterministic_usage(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.reply("gpt-test", cached_input_tokens=3)
    response = await http.post("/v1/chat/completions", json=openai_body())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-test"
    assert isinstance(body["created"], int)
    text = DEFAULT_TEXT.format(model="gpt-test")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    expected = fake_usage(MESSAGES, text, cached_input_tokens=3)
    usage = body["usage"]
    assert usage["prompt_tokens"] == expected.input_tokens
    assert usage["completion_tokens"] == expected.output_tokens == len(text.split())
    assert usage["total_tokens"] == expected.input_tokens + expected.output_tokens
    assert usage["prompt_tokens_details"]["cached_tokens"] == 3


async def test_openai_stream_sends_role_deltas_finish_usage_then_done(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/v1/chat/completions",
        json=openai_body(stream=True, stream_options={"include_usage": True}),
    )
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    text = DEFAULT_TEXT.format(model="gpt-test")
    assert "".join(deltas) == text
    assert len(deltas) == len(text.split())
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(deltas)
    assert chunks[-1]["usage"]["prompt_tokens"] == fake_usage(MESSAGES, text).input_tokens


async def test_openai_stream_without_include_usage_has_no_usage_chunk(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/v1/chat/completions", json=openai_body(stream=True))
    chunks = [json.loads(data) for _, data in sse_events(response.text)[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)


async def test_json_mode_answers_a_json_object_unless_text_is_configured(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        "/v1/chat/completions", json=openai_body(response_format={"type": "json_object"})
    )
    assert isinstance(json.loads(response.json()["choices"][0]["message"]["content"]), dict)

    up.reply("gpt-test", text='{"a": 1}')
    response = await http.post(
        "/v1/chat/completions", json=openai_body(response_format={"type": "json_object"})
    )
    assert response.json()["choices"][0]["message"]["content"] == '{"a": 1}'

    response = await http.post("/api/chat", json=ollama_body(stream=False, format="json"))
    assert isinstance(json.loads(response.json()["message"]["content"]), dict)


async def test_azure_path_names_the_deployment_and_streams_open_with_filter_results(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    path = "/openai/deployments/my-dep/chat/completions?api-version=2024-10-21"
    response = await http.post(path, json={"messages": MESSAGES})
    assert response.json()["model"] == "my-dep"
    assert response.json()["choices"][0]["message"]["content"] == DEFAULT_TEXT.format(
        model="my-dep"
    )
    request = up.requests[-1]
    assert (request.protocol, request.model) == ("azure", "my-dep")
    assert request.query == {"api-version": "2024-10-21"}

    response = await http.post(path, json={"messages": MESSAGES, "stream": True})
    chunks = [json.loads(d) for _, d in sse_events(response.text)[:-1]]
    assert chunks[0]["choices"] == [] and "prompt_filter_results" in chunks[0]
    assert chunks[1]["choices"][0]["delta"]["role"] == "assistant"


async def test_anthropic_json_answer_counts_cache_reads_apart_from_input_tokens(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.reply("claude-test", cached_input_tokens=4)
    response = await http.post("/v1/messages", json=anthropic_body())
    body = response.json()
    text = DEFAULT_TEXT.format(model="claude-test")
    assert body["id"].startswith("msg_")
    assert (body["type"], body["role"], body["model"]) == ("message", "assistant", "claude-test")
    assert body["content"] == [{"type": "text", "text": text}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("end_turn", None)
    # The system prompt travels in `system` but counts like the system message it came from.
    expected = fake_usage(MESSAGES, text, cached_input_tokens=4)
    assert body["usage"] == {
        "input_tokens": expected.input_tokens - 4,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
        "output_tokens": expected.output_tokens,
    }


async def test_anthropic_stream_follows_the_real_event_sequence(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.reply("claude-test", text="one two three", cached_input_tokens=2)
    response = await http.post("/v1/messages", json=anthropic_body(stream=True))
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(data) for _, data in events]
    assert all(p["type"] == name for p, name in zip(payloads, names, strict=True))
    start_usage = payloads[0]["message"]["usage"]
    expected = fake_usage(MESSAGES, "one two three", cached_input_tokens=2)
    assert start_usage["input_tokens"] == expected.input_tokens - 2
    assert start_usage["cache_read_input_tokens"] == 2
    assert [p["delta"]["text"] for p in payloads[3:6]] == ["one", " two", " three"]
    assert payloads[3]["delta"]["type"] == "text_delta"
    assert payloads[7]["delta"]["stop_reason"] == "end_turn"
    assert payloads[7]["usage"]["output_tokens"] == 3


async def test_anthropic_rejects_a_request_without_max_tokens_like_the_real_api(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    body = anthropic_body()
    del body["max_tokens"]
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]
    assert up.count() == 0  # rejected before it counts as a received call


async def test_ollama_streams_ndjson_when_stream_is_absent(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/chat", json=ollama_body())
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    text = DEFAULT_TEXT.format(model="llama-test")
    assert all(line["done"] is False for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines[:-1]) == text
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    expected = fake_usage(MESSAGES, text)
    assert (final["prompt_eval_count"], final["eval_count"]) == (
        expected.input_tokens,
        expected.output_tokens,
    )
    assert final["model"] == "llama-test" and final["created_at"].endswith("Z")


async def test_ollama_non_stream_answer_has_the_native_shape(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/chat", json=ollama_body(stream=False))
    body = response.json()
    text = DEFAULT_TEXT.format(model="llama-test")
    assert body["message"] == {"role": "assistant", "content": text}
    assert body["done"] is True and body["done_reason"] == "stop"
    assert body["eval_count"] == len(text.split())
    assert body["total_duration"] > 0


async def test_reply_for_all_models_and_chunk_delay_keep_the_same_content(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.reply(None, text="shared answer")
    up.reply("paced", text="a b c", chunk_delay_s=0.01)
    response = await http.post("/v1/chat/completions", json=openai_body("any-model"))
    assert response.json()["choices"][0]["message"]["content"] == "shared answer"
    response = await http.post("/api/chat", json=ollama_body("paced"))
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["a", " b", " c", ""]


# --- errors in each protocol's shape --------------------------------------------------------

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@pytest.mark.parametrize("status", sorted(ANTHROPIC_TYPES))
async def test_anthropic_error_type_follows_the_status(
    up: FakeUpstream, http: httpx.AsyncClient, status: int
) -> None:
    up.script("claude-test", Fault.status(status, message="scripted"))
    response = await http.post("/v1/messages", json=anthropic_body())
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": ANTHROPIC_TYPES[status], "message": "scripted"}


@pytest.mark.parametrize("protocol", ["openai", "azure", "ollama"])
@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault.rate_limit(retry_after=2), 429),
        (Fault.server_error(), 500),
        (Fault.unavailable(), 503),
        (Fault.overloaded(), 503),
        (Fault.unauthorized(), 401),
        (Fault.not_found(), 404),
    ],
)
async def test_status_faults_use_each_protocols_error_body(
    up: FakeUpstream, http: httpx.AsyncClient, protocol: str, fault: Fault, status: int
) -> None:
    up.script_next(fault)
    response = await post(http, protocol, stream=False)
    assert response.status_code == status
    body = response.json()
    if protocol == "ollama":
        assert isinstance(body["error"], str) and body["error"]
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    if fault.kind == "rate_limit":
        assert response.headers["retry-after"] == "2"
        if protocol != "ollama":
            assert body["error"]["code"] == "rate_limit_exceeded"
    else:
        assert "retry-after" not in response.headers


async def test_overloaded_is_529_for_anthropic_and_503_elsewhere(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.fail_always("claude-test", Fault.overloaded(retry_after=0.5))
    response = await http.post("/v1/messages", json=anthropic_body())
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"
    assert response.headers["retry-after"] == "0.5"
    up.script_next(Fault.status(529))
    # An explicit status is sent as asked, even where the real API has no such code.
    assert (await http.post("/v1/chat/completions", json=openai_body())).status_code == 529


async def test_context_length_fault_uses_each_apis_own_wording(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(*[Fault.context_length()] * 3)
    openai_error = (await http.post("/v1/chat/completions", json=openai_body())).json()["error"]
    assert openai_error["code"] == "context_length_exceeded"
    assert openai_error["type"] == "invalid_request_error"
    anthropic = await http.post("/v1/messages", json=anthropic_body())
    assert anthropic.status_code == 400
    assert anthropic.json()["error"] == {
        "type": "invalid_request_error",
        "message": "prompt is too long: 210000 tokens > 200000 maximum",
    }
    ollama = await http.post("/api/chat", json=ollama_body(stream=False))
    assert ollama.status_code == 400
    assert "context length" in ollama.json()["error"]


async def test_content_filter_ends_openai_and_anthropic_answers_and_leaves_ollama_alone(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(*[Fault.content_filter()] * 5)
    openai = (await http.post("/v1/chat/completions", json=openai_body())).json()
    assert openai["choices"][0]["finish_reason"] == "content_filter"
    stream = await http.post("/v1/chat/completions", json=openai_body(stream=True))
    chunks = [json.loads(d) for _, d in sse_events(stream.text)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    anthropic = (await http.post("/v1/messages", json=anthropic_body())).json()
    assert anthropic["stop_reason"] == "refusal"
    stream = await http.post("/v1/messages", json=anthropic_body(stream=True))
    deltas = [json.loads(d) for name, d in sse_events(stream.text) if name == "message_delta"]
    assert deltas[0]["delta"]["stop_reason"] == "refusal"
    ollama = (await http.post("/api/chat", json=ollama_body(stream=False))).json()
    assert ollama["message"]["content"] == DEFAULT_TEXT.format(model="llama-test")


# --- scripting ------------------------------------------------------------------------------


async def test_script_applies_faults_in_order_then_answers_healthily(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script("gpt-test", Fault.rate_limit(), Fault.ok(), Fault.server_error())
    statuses = [
        (await http.post("/v1/chat/completions", json=openai_body())).status_code for _ in range(5)
    ]
    assert statuses == [429, 200, 500, 200, 200]
    assert up.injected == {"rate_limit": 1, "server_error": 1}


async def test_script_is_per_model_and_script_next_is_for_whatever_comes(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script("gpt-a", Fault.server_error())
    other = await http.post("/v1/chat/completions", json=openai_body("gpt-b"))
    assert other.status_code == 200
    up.script_next(Fault.unauthorized())
    assert (await http.post("/v1/chat/completions", json=openai_body("gpt-b"))).status_code == 401
    # script_next went first; gpt-a's own script is still waiting for gpt-a.
    assert (await http.post("/v1/chat/completions", json=openai_body("gpt-a"))).status_code == 500
    assert (await http.post("/v1/chat/completions", json=openai_body("gpt-a"))).status_code == 200


async def test_fail_always_lasts_until_heal(up: FakeUpstream, http: httpx.AsyncClient) -> None:
    up.fail_always("gpt-a", Fault.unavailable())
    up.fail_always("gpt-b", Fault.unavailable())
    for _ in range(3):
        assert (
            await http.post("/v1/chat/completions", json=openai_body("gpt-a"))
        ).status_code == 503
    up.heal("gpt-a")
    assert (await http.post("/v1/chat/completions", json=openai_body("gpt-a"))).status_code == 200
    assert (await http.post("/v1/chat/completions", json=openai_body("gpt-b"))).status_code == 503
    up.script("gpt-c", Fault.server_error())
    up.heal()
    assert (await http.post("/v1/chat/completions", json=openai_body("gpt-b"))).status_code == 200
    assert (await http.post("/v1/chat/completions", json=openai_body("gpt-c"))).status_code == 200


async def test_requests_are_recorded_before_their_fault_and_counted(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script("gpt-test", Fault.reset())
    with pytest.raises(httpx.TransportError):
        await http.post(
            "/v1/chat/completions",
            json=openai_body(stream=True),
            headers={"Authorization": "Bearer sk-secret-123", "X-Trace": "t1"},
        )
    await http.post("/v1/messages", json=anthropic_body())
    await http.post("/api/chat", json=ollama_body())
    assert up.count() == 3
    assert up.count("gpt-test") == 1
    assert up.count(protocol="anthropic") == 1
    assert up.count("gpt-test", protocol="ollama") == 0
    first = up.requests[0]
    assert (first.protocol, first.model, first.path, first.stream) == (
        "openai",
        "gpt-test",
        "/v1/chat/completions",
        True,
    )
    assert first.body["messages"] == MESSAGES
    assert first.headers["x-trace"] == "t1"
    assert first.headers["authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in repr(first)
    assert "sk-secret-123" not in json.dumps(first.to_dict())
    assert up.requests[2].stream is True  # Ollama's default
    up.reset_counts()
    assert up.count() == 0 and up.requests == [] and not up.injected


# --- connection-level faults ----------------------------------------------------------------


async def test_reset_drops_the_connection_without_a_response(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(Fault.reset())
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await http.post("/v1/chat/completions", json=openai_body())
    assert (await http.post("/v1/chat/completions", json=openai_body())).status_code == 200


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "ollama"])
async def test_cut_stream_sends_some_chunks_then_aborts(
    up: FakeUpstream, http: httpx.AsyncClient, protocol: str
) -> None:
    up.script_next(Fault.cut_stream(2))
    received = b""
    path, body, _ = PROTOCOLS[protocol]
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream("POST", path, json=body(stream=True)) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                received += chunk
    text = received.decode()
    assert "[DONE]" not in text and "message_stop" not in text and '"done":true' not in text
    if protocol == "openai":
        contents = [
            json.loads(d)["choices"][0]["delta"].get("content") for _, d in sse_events(text)
        ]
        assert contents == ["", "Hello", " from"]
    elif protocol == "anthropic":
        assert [n for n, _ in sse_events(text)].count("content_block_delta") == 2
    else:
        assert [json.loads(line)["message"]["content"] for line in text.splitlines()] == [
            "Hello",
            " from",
        ]


async def test_cut_stream_on_a_whole_body_request_stops_mid_body(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(Fault.cut_stream(0))
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/v1/messages", json=anthropic_body())


@pytest.mark.parametrize("protocol", ["openai", "azure", "anthropic", "ollama"])
async def test_midstream_error_sends_chunks_then_the_protocols_in_stream_error(
    up: FakeUpstream, http: httpx.AsyncClient, protocol: str
) -> None:
    up.script_next(Fault.midstream_error(1))
    response = await post(http, protocol, stream=True)
    assert response.status_code == 200
    if protocol == "ollama":
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines[0]["message"]["content"] == "Hello"
        assert lines[-1] == {"error": lines[-1]["error"]} and lines[-1]["error"]
        return
    events = sse_events(response.text)
    last_name, last_data = events[-1]
    if protocol == "anthropic":
        assert [n for n, _ in events].count("content_block_delta") == 1
        assert last_name == "error"
        assert json.loads(last_data)["error"]["type"] == "overloaded_error"
    else:
        assert last_name is None
        assert json.loads(last_data)["error"]["type"] == "server_error"
        assert "[DONE]" not in response.text


async def test_midstream_error_on_a_whole_body_request_is_the_matching_status(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(Fault.midstream_error(1, kind="rate_limit"), Fault.midstream_error(1))
    assert (await http.post("/v1/messages", json=anthropic_body())).status_code == 429
    assert (await http.post("/v1/messages", json=anthropic_body())).status_code == 529


@pytest.mark.parametrize("protocol", ["openai", "anthropic", "ollama"])
async def test_malformed_json_is_200_with_an_unparsable_body_or_event(
    up: FakeUpstream, http: httpx.AsyncClient, protocol: str
) -> None:
    up.script_next(Fault.malformed_json(), Fault.malformed_json())
    whole = await post(http, protocol, stream=False)
    assert whole.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(whole.text)
    streamed = await post(http, protocol, stream=True)
    assert streamed.status_code == 200
    if protocol == "ollama":
        payloads = streamed.text.splitlines()
    else:
        payloads = [data for _, data in sse_events(streamed.text)]
    bad = []
    for payload in payloads:
        try:
            json.loads(payload)
        except json.JSONDecodeError:
            bad.append(payload)
    assert len(bad) == 1


async def test_hang_holds_the_request_until_the_client_gives_up(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(Fault.hang())
    with pytest.raises(httpx.ReadTimeout):
        await http.post("/v1/chat/completions", json=openai_body(), timeout=0.3)
    assert up.count() == 1
    # The server notices the client hanging up and frees that connection.
    for _ in range(200):
        if up.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert up.open_connections == 0


async def test_hang_with_seconds_and_slow_first_byte_answer_after_the_wait(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(Fault.hang(0.2), Fault.slow_first_byte(0.2))
    for _ in range(2):
        started = time.monotonic()
        response = await http.post("/v1/chat/completions", json=openai_body(stream=True))
        assert time.monotonic() - started >= 0.19
        assert sse_events(response.text)[-1] == (None, "[DONE]")


async def test_stall_goes_silent_mid_stream_until_the_client_gives_up(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(Fault.stall(2))
    received = b""
    with pytest.raises(httpx.ReadTimeout):
        async with http.stream(
            "POST", "/api/chat", json=ollama_body(), timeout=httpx.Timeout(5.0, read=0.3)
        ) as response:
            async for chunk in response.aiter_bytes():
                received += chunk
    lines = [json.loads(line) for line in received.decode().splitlines()]
    assert [line["message"]["content"] for line in lines] == ["Hello", " from"]


async def test_stall_with_seconds_resumes_and_finishes_the_stream(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    up.script_next(Fault.stall(1, seconds=0.1))
    response = await http.post("/v1/messages", json=anthropic_body(stream=True))
    events = sse_events(response.text)
    text = "".join(
        json.loads(data)["delta"]["text"] for name, data in events if name == "content_block_delta"
    )
    assert text == DEFAULT_TEXT.format(model="claude-test")
    assert events[-1][0] == "message_stop"


async def test_closing_the_server_with_a_hung_request_is_prompt() -> None:
    upstream = FakeUpstream()
    await upstream.start()
    upstream.fail_always("gpt-test", Fault.hang())
    async with httpx.AsyncClient(base_url=upstream.url, timeout=30) as http:
        pending = asyncio.create_task(http.post("/v1/chat/completions", json=openai_body()))
        for _ in range(500):
            if upstream.count() == 1:
                break
            await asyncio.sleep(0.01)
        assert upstream.count() == 1
        started = time.monotonic()
        await upstream.close()
        assert time.monotonic() - started < 5.0
        with pytest.raises(httpx.TransportError):
            await asyncio.wait_for(pending, 5.0)
    assert upstream.open_connections == 0


# --- HTTP details ---------------------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    for _ in range(5):
        assert (await http.post("/v1/chat/completions", json=openai_body())).status_code == 200
    assert up.open_connections == 1


async def test_unknown_path_bad_json_and_models_list(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    missing = await http.post("/v1/audio/speech", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/audio/speech)"
    bad = await http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    no_model = await http.post("/v1/chat/completions", json={"messages": MESSAGES})
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    assert up.count() == 0
    up.reply("gpt-listed")
    models = (await http.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["gpt-listed"]


async def raw_exchange(up: FakeUpstream, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(up.url.rsplit(":", 1)[1]))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    return data


async def test_http10_streams_are_close_delimited_and_chunked_request_bodies_are_read(
    up: FakeUpstream,
) -> None:
    body = json.dumps(ollama_body()).encode()
    response = await raw_exchange(
        up,
        b"POST /api/chat HTTP/1.0\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    head, _, payload = response.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert json.loads(payload.splitlines()[-1])["done"] is True

    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    response = await raw_exchange(
        up,
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunked,
    )
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert up.count("llama-test") == 2


async def test_a_garbled_request_line_gets_400(up: FakeUpstream) -> None:
    response = await raw_exchange(up, b"NONSENSE\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400 ")


# --- control API, serialisation, chaos, subprocess ------------------------------------------


def all_faults() -> list[Fault]:
    return [
        Fault.ok(),
        Fault.status(418, retry_after=1.5, message="teapot"),
        Fault.rate_limit(retry_after=3),
        Fault.server_error(),
        Fault.unavailable(),
        Fault.overloaded(),
        Fault.unauthorized(),
        Fault.not_found(),
        Fault.context_length(),
        Fault.content_filter(),
        Fault.reset(),
        Fault.hang(),
        Fault.hang(2.5),
        Fault.slow_first_byte(1.0),
        Fault.cut_stream(3),
        Fault.stall(1),
        Fault.stall(0, seconds=0.5),
        Fault.malformed_json(),
        Fault.midstream_error(2, kind="server_error"),
    ]


@pytest.mark.parametrize("fault", all_faults(), ids=str)
def test_faults_round_trip_through_dicts(fault: Fault) -> None:
    data = fault.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Fault.from_dict(data) == fault


def test_bad_faults_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="fault kind is 'explode'"):
        Fault.from_dict({"kind": "explode"})
    with pytest.raises(ValueError, match="unknown field"):
        Fault.from_dict({"kind": "rate_limit", "retry_afer": 1})
    with pytest.raises(ValueError, match="after_chunks"):
        Fault.cut_stream(-1)
    with pytest.raises(ValueError, match="code is 200"):
        Fault.status(200)
    with pytest.raises(ValueError, match="retry_after"):
        Fault.rate_limit(retry_after=-1)
    with pytest.raises(ValueError, match="midstream_error: kind"):
        Fault.midstream_error(1, kind="meltdown")


async def test_control_api_scripts_and_reports_through_the_client(
    up: FakeUpstream, http: httpx.AsyncClient
) -> None:
    client = FakeUpstreamClient(up.url)
    assert await client.ahealth()
    await client.ascript("gpt-test", Fault.rate_limit(retry_after=1), {"kind": "server_error"})
    await client.areply("gpt-test", "scripted text")
    statuses = [
        (await http.post("/v1/chat/completions", json=openai_body())).status_code for _ in range(3)
    ]
    assert statuses == [429, 500, 200]
    last = await http.post("/v1/chat/completions", json=openai_body())
    assert last.json()["choices"][0]["message"]["content"] == "scripted text"
    await client.afail_always("claude-test", Fault.unavailable())
    assert (await http.post("/v1/messages", json=anthropic_body())).status_code == 503
    counts = await client.acounts()
    assert counts["total"] == 5
    assert counts["by_model"] == {"gpt-test": 4, "claude-test": 1}
    assert counts["injected"] == {"rate_limit": 1, "server_error": 1, "unavailable": 1}
    assert await client.acount("claude-test", "anthropic") == 1
    recorded = await client.arequests(limit=2)
    assert [r["model"] for r in recorded] == ["gpt-test", "claude-test"]
    await client.aheal("claude-test")
    assert (await http.post("/v1/messages", json=anthropic_body())).status_code == 200
    await client.areset_counts()
    assert await client.acount() == 0


async def test_control_api_explains_bad_calls(up: FakeUpstream, http: httpx.AsyncClient) -> None:
    bad_fault = await http.post(
        "/_fake/script", json={"model": "m", "faults": [{"kind": "rate_limit", "wait": 1}]}
    )
    assert bad_fault.status_code == 400
    assert "faults[0]" in bad_fault.json()["error"] and "wait" in bad_fault.json()["error"]
    no_model = await http.post("/_fake/script", json={"faults": []})
    assert no_model.status_code == 400 and "model" in no_model.json()["error"]
    unknown = await http.get("/_fake/nothing")
    assert unknown.status_code == 404 and "/_fake/script" in unknown.json()["error"]
    with pytest.raises(ControlAPIError, match="rates"):
        await FakeUpstreamClient(up.url).achaos(1, {"volcano": 0.5})
    assert up.count() == 0  # control calls are not API requests


async def injected_sequence(seed: int, requests: int) -> list[str]:
    async with FakeUpstream() as upstream:
        upstream.chaos(seed, {"rate_limit": 0.3, "server_error": 0.3}, retry_after=None)
        async with httpx.AsyncClient(base_url=upstream.url) as client:
            statuses = [
                (await client.post("/v1/chat/completions", json=openai_body())).status_code
                for _ in range(requests)
            ]
        assert sum(upstream.injected.values()) == sum(s != 200 for s in statuses)
        return [str(s) for s in statuses]


async def test_chaos_is_reproducible_from_its_seed() -> None:
    first = await injected_sequence(7, 40)
    assert first == await injected_sequence(7, 40)
    assert {"200", "429", "500"} <= set(first)


def test_chaos_rates_are_validated() -> None:
    upstream = FakeUpstream()
    with pytest.raises(ValueError, match="add up to"):
        upstream.chaos(1, {"rate_limit": 0.7, "reset": 0.7})
    with pytest.raises(ValueError, match="unknown fault kind 'volcano'"):
        upstream.chaos(1, {"volcano": 0.1})


def test_spawned_subprocess_answers_is_scriptable_and_terminates() -> None:
    with FakeUpstream.spawn() as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        proc.client.script("gpt-test", Fault.not_found())
        with httpx.Client(base_url=proc.url, timeout=5) as http:
            assert http.post("/v1/chat/completions", json=openai_body()).status_code == 404
            ok = http.post("/v1/chat/completions", json=openai_body())
            assert ok.json()["choices"][0]["message"]["content"] == DEFAULT_TEXT.format(
                model="gpt-test"
            )
        assert proc.client.count("gpt-test") == 2
        assert proc.terminate() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(proc.url + "/_fake/health", timeout=2)


# --- FakeLLM --------------------------------------------------------------------------------


async def test_fake_llm_returns_scripted_replies_and_errors_in_order() -> None:
    error = ProviderError("busy", kind=ErrorKind.OVERLOADED, provider="fake", status=529)
    llm = FakeLLM(replies=["first", "second"], errors=[None, error])
    assert (await llm.complete(MESSAGES)).text == "first"
    with pytest.raises(ProviderError) as raised:
        await llm.complete(MESSAGES)
    assert raised.value is error
    completion = await llm.complete(MESSAGES)
    assert completion.text == "second"
    assert completion.usage == fake_usage(MESSAGES, "second")
    assert (await llm.complete(MESSAGES)).text == "second"  # the last reply repeats
    assert len(llm.calls) == 4 and llm.calls[0] == MESSAGES


async def test_fake_llm_streams_words_and_reports_usage_at_the_end() -> None:
    usage = Usage(input_tokens=10, output_tokens=3)
    llm = FakeLLM(replies=lambda messages: f"echo {len(messages)} messages", usage=usage)
    stream = llm.stream(MESSAGES)
    assert llm.calls == []  # nothing happens until iteration starts
    deltas = [delta async for delta in stream]
    assert deltas == ["echo", " 2", " messages"]
    assert stream.usage == usage and stream.finish_reason == "stop" and stream.done


async def test_fake_llm_validates_messages_and_works_through_the_factory() -> None:
    LLMFactory.register("fake", FakeLLM)
    try:
        llm = LLMFactory.create(
            "fake", model="fake-2", api_key="sk-hidden", base_url="http://x", timeout_s=3
        )
        assert isinstance(llm, FakeLLM)
        assert "sk-hidden" not in repr(llm)
        assert await llm.generate_json(MESSAGES) == {"ok": True}
        assert (await llm.complete(MESSAGES)).text == "Hello from fake-2. This is a fake reply."
        with pytest.raises(InvalidRequestError):
            await llm.complete([{"role": "robot", "content": "hi"}])
    finally:
        LLMFactory.unregister("fake")


def test_fake_usage_rule() -> None:
    assert fake_usage([{"role": "user", "content": "hi"}], "") == Usage(1, 0, 0)
    assert fake_usage([{"role": "user", "content": "x" * 40}], "a b  c\n") == Usage(10, 3, 0)
    parts = [{"role": "user", "content": [{"type": "text", "text": "y" * 8}]}]
    assert fake_usage(parts, "z", cached_input_tokens=5) == Usage(2, 1, 2)
