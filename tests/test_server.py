"""The HTTP gateway end to end: a real `python -m gateway.server` process, driven by the real
openai SDK and httpx, whose providers are a FakeUpstream in this process (scripted directly).

One server serves the whole module; tests that change the policy restore it afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from server_harness import GATEWAY_SERVE, ServerProcess, free_port

from gateway.demo import demo_policy_text
from gateway.errors import ConfigurationError
from gateway.server import ServerSettings
from gateway.server._auth import Access, KeyChecker, denial, is_loopback
from gateway.server._chat import unless_disconnected
from gateway.server._disconnect import CONNECTION_LOSS, ClientGone, LossNotice
from gateway.server._openai_compat import ChatCompletion, ChunkWriter, completion_body
from gateway.server._sse import event
from gateway.testing import FakeUpstream, Fault, fake_usage
from gateway.types import Choice, ToolCall, Usage

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENT_KEY = "gw-client-key-7f3a91c2"
ADMIN_KEY = "gw-admin-key-0be44d51"
MINI_KEY = "sk-test-mini-SECRET-5c1e2d"
SONNET_KEY = "sk-ant-test-sonnet-SECRET-9a8b7c"
SECRETS = (CLIENT_KEY, ADMIN_KEY, MINI_KEY, SONNET_KEY)
PROMPT_MARKER = "purple-elephant-prompt-marker"
MAX_MESSAGES = 50
MAX_BODY_BYTES = 200_000

MINI_TEXT = "Hello from gpt-4o-mini. This is a fake reply."
SONNET_TEXT = "Hello from claude-sonnet-4-5. This is a fake reply."


def policy_yaml(fake_url: str, *, extra_tasks: str = "") -> str:
    return f"""\
version: 1
defaults:
  timeout_s: 10
  retry: {{attempts: 1}}
  breaker: {{fail_max: 100, reset_timeout_s: 30}}
providers:
  mini:   {{type: openai, model: gpt-4o-mini, base_url: "{fake_url}/v1", api_key: "{MINI_KEY}"}}
  sonnet: {{type: anthropic, model: claude-sonnet-4-5, base_url: "{fake_url}",
            api_key: "{SONNET_KEY}"}}
  flaky:  {{type: openai, model: flaky-1, base_url: "{fake_url}/v1", api_key: "{MINI_KEY}",
            breaker: {{fail_max: 2, reset_timeout_s: 60}}}}
  slow:   {{type: openai, model: slow-1, base_url: "{fake_url}/v1", api_key: "{MINI_KEY}",
            timeout_s: 30}}
  talker: {{type: openai, model: talker-1, base_url: "{fake_url}/v1", api_key: "{MINI_KEY}"}}
  ghost:  {{type: openai, model: gpt-4o, api_key: "${{GATEWAY_TEST_UNSET_KEY}}"}}
tasks:
  chat:      {{chain: [mini, sonnet]}}
  summarize: {{chain: [sonnet, mini]}}
  fragile:   {{chain: [flaky, mini]}}
  deadline:  {{chain: [slow], deadline_s: 0.5}}
  talk:      {{chain: [talker]}}
  haunted:   {{chain: [ghost, mini]}}
  patient:   {{chain: [slow]}}
{extra_tasks}"""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def eventually(check: Callable[[], Any], *, timeout_s: float = 10.0) -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:g}s")
        await asyncio.sleep(0.05)


# --- fixtures ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def policy_file(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "routing.yaml"
    path.write_text(policy_yaml(upstream.url))
    return path


@pytest.fixture(scope="module")
def server(policy_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "GATEWAY_API_KEYS": f"other-key, {CLIENT_KEY}",
        "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
        "GATEWAY_MAX_MESSAGES": str(MAX_MESSAGES),
        "GATEWAY_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "GATEWAY_POLICY_WATCH_S": "0",  # reloads happen only by HTTP or SIGHUP here
        "GATEWAY_TEST_UNSET_KEY": "",  # empty counts as unset: `ghost` is unavailable
    }
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(policy_file, log_path=log, env=env) as process:
        process.wait_ready()
        yield process


@pytest.fixture(autouse=True)
def healthy_upstream(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").heal()


@pytest_asyncio.fixture(loop_scope="module")
async def client(server: ServerProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20
    ) as sdk:
        yield sdk


@pytest_asyncio.fixture(loop_scope="module")
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20) as c:
        yield c


@pytest.fixture
def restore_policy(policy_file: Path, server: ServerProcess) -> Iterator[str]:
    original = policy_file.read_text()
    yield original
    policy_file.write_text(original)
    response = httpx.post(
        server.url + "/api/v1/policy/reload",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert response.status_code == 200, response.text


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


# --- completions ------------------------------------------------------------------------------


async def test_plain_completion_passes_sampling_params_and_reports_route(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    messages = user(f"Say hello ({PROMPT_MARKER})")
    raw = await client.chat.completions.with_raw_response.create(
        model="chat", messages=messages, temperature=0.3, top_p=0.9, stop=["END"], max_tokens=50
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == MINI_TEXT
    assert completion.model == "gpt-4o-mini"
    expected = fake_usage(messages, MINI_TEXT)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == expected.input_tokens
    assert completion.usage.completion_tokens == expected.output_tokens
    assert raw.headers["x-gateway-provider"] == "mini"
    assert raw.headers["x-gateway-task"] == "chat"
    assert raw.headers["x-gateway-attempts"] == "1"
    assert raw.headers["x-gateway-attempts-detail"] == "mini:success"
    assert float(raw.headers["x-gateway-cost-usd"]) > 0
    sent = upstream.requests[-1].body
    assert (sent["temperature"], sent["top_p"], sent["stop"], sent["max_tokens"]) == (
        0.3,
        0.9,
        ["END"],
        50,
    )


async def test_max_completion_tokens_reaches_openai_by_its_own_name(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    # OpenAI's reasoning models refuse max_tokens: renaming it would make them fail.
    await client.chat.completions.create(
        model="chat", messages=user("hi"), max_completion_tokens=17
    )
    sent = upstream.requests[-1].body
    assert sent["max_completion_tokens"] == 17
    assert "max_tokens" not in sent


async def test_task_header_routes_and_model_is_ignored(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=user("hi"),
        extra_headers={"x-gateway-task": "summarize"},
    )
    assert raw.headers["x-gateway-task"] == "summarize"
    assert raw.headers["x-gateway-provider"] == "sonnet"
    assert raw.parse().choices[0].message.content == SONNET_TEXT


async def test_fall_through_is_visible_in_the_headers(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.script("gpt-4o-mini", Fault.server_error())
    raw = await client.chat.completions.with_raw_response.create(model="chat", messages=user("x"))
    assert raw.parse().choices[0].message.content == SONNET_TEXT
    assert raw.headers["x-gateway-provider"] == "sonnet"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert raw.headers["x-gateway-attempts-detail"] == "mini:server_error,sonnet:success"


async def test_developer_messages_reach_openai_by_that_name(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    messages = [
        {"role": "developer", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]
    response = await http.post("/v1/chat/completions", json={"model": "chat", "messages": messages})
    assert response.status_code == 200, response.text
    assert upstream.requests[-1].body["messages"] == [
        {"role": "developer", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": "Hello"},
        {"role": "assistant"},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]


async def test_a_lone_surrogate_from_the_upstream_is_passed_on_escaped(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    # "\ud800" is valid JSON but has no UTF-8 form: it was a 500 before.
    text = "half \ud800 a pair"
    upstream.reply("gpt-4o-mini", text)
    try:
        whole = await client.chat.completions.create(model="chat", messages=user("x"))
        stream = await client.chat.completions.create(model="chat", messages=user("x"), stream=True)
        deltas = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    finally:
        upstream.reply("gpt-4o-mini", None)
    assert whole.choices[0].message.content == text
    assert "".join(deltas) == text


async def test_json_mode_answers_a_json_object(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.reply("gpt-4o-mini", '{"city": "Paris", "n": 2}')
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat",
            messages=user("Give me JSON"),
            response_format={"type": "json_object"},
        )
    finally:
        upstream.reply("gpt-4o-mini", None)
    content = raw.parse().choices[0].message.content
    assert content is not None
    assert json.loads(content) == {"city": "Paris", "n": 2}
    assert upstream.requests[-1].body["response_format"] == {"type": "json_object"}
    assert raw.headers["x-gateway-provider"] == "mini"
    assert raw.headers["x-gateway-attempts-detail"] == "mini:success"


async def test_json_mode_falls_through_a_reply_that_is_not_json_and_bills_both(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.reply("gpt-4o-mini", "Sure! Here is your JSON: {oops")
    upstream.reply("claude-sonnet-4-5", '{"ok": true}')
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=user("JSON please"), response_format={"type": "json_object"}
        )
        plain = await client.chat.completions.with_raw_response.create(
            model="summarize", messages=user("JSON please"), response_format={"type": "json_object"}
        )
    finally:
        upstream.reply("gpt-4o-mini", None)
        upstream.reply("claude-sonnet-4-5", None)
    assert json.loads(raw.parse().choices[0].message.content or "") == {"ok": True}
    assert raw.headers["x-gateway-provider"] == "sonnet"
    assert raw.headers["x-gateway-attempts-detail"] == "mini:invalid_response,sonnet:success"
    # The reply mini was billed for counts too: more than sonnet's answer alone costs.
    assert float(raw.headers["x-gateway-cost-usd"]) > float(plain.headers["x-gateway-cost-usd"])
    assert plain.headers["x-gateway-attempts-detail"] == "sonnet:success"


async def test_a_provider_that_cannot_take_the_messages_is_passed_over(
    client: openai.AsyncOpenAI,
) -> None:
    # Anthropic needs a user turn; the OpenAI protocol does not.
    raw = await client.chat.completions.with_raw_response.create(
        model="summarize", messages=[{"role": "system", "content": "Be brief."}]
    )
    assert raw.parse().choices[0].message.content == MINI_TEXT
    assert raw.headers["x-gateway-attempts-detail"] == "sonnet:unsupported,mini:success"


async def test_streamed_completion_with_usage_chunk(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    messages = user("Stream please")
    raw = await client.chat.completions.with_raw_response.create(
        model="chat", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-gateway-provider"] == "mini"
    assert raw.headers["x-gateway-attempts-detail"] == "mini:streaming"
    stream = raw.parse()
    assert isinstance(stream, openai.AsyncStream)
    chunks: list[ChatCompletionChunk] = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MINI_TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == fake_usage(messages, MINI_TEXT).output_tokens
    assert len({c.id for c in chunks}) == 1


async def test_stream_ends_with_done_and_falls_through_before_the_first_token(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.script("gpt-4o-mini", Fault.rate_limit())
    body = {"model": "chat", "stream": True, "messages": user("hi")}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-gateway-attempts-detail"] == "mini:rate_limit,sonnet:streaming"
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all("usage" not in c for c in chunks)  # include_usage was not asked for
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == SONNET_TEXT


async def test_a_stream_is_logged_with_its_attempts_and_cost(
    server: ServerProcess, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.script("gpt-4o-mini", Fault.server_error())
    body = {"model": "chat", "stream": True, "messages": user("log my stream")}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["x-gateway-attempts"] == "2"
        [line async for line in response.aiter_lines()]
    pattern = (
        r'"POST /v1/chat/completions" 200 [\d.]+ms task=chat provider=sonnet '
        r"attempts=mini:server_error,sonnet:success cost_usd=([\d.]+) outcome=success"
    )
    found = await eventually(lambda: re.search(pattern, server.log()), timeout_s=5)
    assert float(found.group(1)) > 0


async def test_an_empty_stream_shows_its_finished_attempt_once(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.reply("gpt-4o-mini", "")
    try:
        body = {"model": "chat", "stream": True, "messages": user("say nothing")}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line]
    finally:
        upstream.reply("gpt-4o-mini", None)
    assert response.headers["x-gateway-provider"] == "mini"
    # Nothing is streaming any more when the headers go out: the answer is already complete.
    assert response.headers["x-gateway-attempts-detail"] == "mini:success"
    assert lines[-1] == "data: [DONE]"


async def test_failure_after_streaming_began_ends_with_an_error_event(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.script("gpt-4o-mini", Fault.midstream_error(after_chunks=2, kind="server_error"))
    body = {"model": "chat", "stream": True, "messages": user("hi")}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line]
    assert "data: [DONE]" not in lines
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "stream_interrupted"
    assert error["attempts"][0]["provider"] == "mini"
    content = [json.loads(x[6:])["choices"][0]["delta"].get("content") for x in lines[1:-1]]
    assert "".join(c or "" for c in content) == "Hello from"

    upstream.script("gpt-4o-mini", Fault.midstream_error(after_chunks=1))
    stream = await client.chat.completions.create(model="chat", messages=user("x"), stream=True)
    with pytest.raises(openai.APIError, match="stream for task 'chat' failed"):
        async for _ in stream:
            pass


async def test_client_disconnect_mid_stream_cancels_the_upstream_call(
    server: ServerProcess, upstream: FakeUpstream
) -> None:
    # 400 words at 50 ms each: the upstream would stream for 20 s if nobody stopped it.
    upstream.reply("talker-1", " ".join(["word"] * 400), chunk_delay_s=0.05)
    baseline = upstream.open_connections
    body = {"model": "talk", "stream": True, "messages": user("talk to me")}
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as c:
        headers = {"authorization": f"Bearer {CLIENT_KEY}"}
        async with c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            received = [await anext(lines) for _ in range(6)]
            assert any("word" in line for line in received)
            assert upstream.open_connections > baseline
    # Leaving the block closed our connection mid-stream.
    await eventually(lambda: upstream.open_connections <= baseline, timeout_s=5)
    assert upstream.count("talker-1") == 1
    line = r"499 .*task=talk provider=talker attempts=talker:cancelled .*outcome=client_closed"
    await eventually(lambda: re.search(line, server.log()), timeout_s=5)


async def test_client_giving_up_on_a_whole_answer_cancels_the_upstream_call(
    server: ServerProcess, upstream: FakeUpstream
) -> None:
    upstream.fail_always("slow-1", Fault.hang())  # held until the caller hangs up
    baseline = upstream.open_connections
    body = {"model": "patient", "messages": user("take your time")}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(20, read=1)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post("/v1/chat/completions", json=body, headers=headers)
        assert upstream.count("slow-1") >= 1
    # The provider's timeout_s is 30 s: only our disconnect can have ended its call this soon.
    await eventually(lambda: upstream.open_connections <= baseline, timeout_s=5)
    await eventually(
        lambda: re.search(r"499 .*task=patient .*outcome=client_closed", server.log()), timeout_s=5
    )


# --- errors -----------------------------------------------------------------------------------


ONE_MESSAGE = '"messages": [{"role": "user", "content": "x"}]'


@pytest.mark.parametrize(
    ("content", "param", "says"),
    [
        ('{"model": "chat", "messages": [', None, "not valid JSON"),
        ("[1, 2]", None, "the request body"),
        ('{"model": "chat", "messages": []}', "messages", "at least 1 item"),
        (
            '{"model": "chat", "messages": [{"role": "robot", "content": "x"}]}',
            "messages[0]",
            "'robot'",
        ),
        (f'{{"model": "chat", {ONE_MESSAGE}, "api_key": "k"}}', "api_key", "remove it"),
        (f'{{"model": "chat", {ONE_MESSAGE}, "base_url": "http://evil"}}', "base_url", "remove it"),
        (
            '{"model": "chat", "messages": [{"role": "user", "content": "x", "tool_calls": []}]}',
            "messages[0].tool_calls",
            "remove it",
        ),
        (f'{{"model": "chat", {ONE_MESSAGE}, "temperature": 7}}', "temperature", "(got 7)"),
        (f'{{"model": "chat", {ONE_MESSAGE}, "max_tokens": "9"}}', "max_tokens", "integer"),
        (f'{{"model": "chat", {ONE_MESSAGE}, "stream": 1}}', "stream", "boolean"),
        (f'{{"model": "chat", {ONE_MESSAGE}, "n": 0}}', "n", "(got 0)"),
    ],
)
async def test_bad_requests_are_400_in_openai_shape(
    http: httpx.AsyncClient, content: str, param: str | None, says: str
) -> None:
    response = await http.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]
    if param is not None:
        assert error["message"].startswith(param)


async def test_an_overlong_task_header_is_named(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": user("hi")},
        headers={"x-gateway-task": "t" * 300},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-gateway-task"
    assert response.json()["error"]["message"].startswith("x-gateway-task: String should have")


async def test_a_body_not_sent_as_json_says_which_header_to_send(http: httpx.AsyncClient) -> None:
    body = json.dumps({"model": "chat", "messages": user("hi")})
    response = await http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "text/plain"}
    )
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "text/plain" in message and "content-type: application/json" in message


async def test_unsupported_field_is_named_by_the_sdk_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="chat", messages=user("x"), extra_body={"api_key": "sk-other"}
        )
    assert caught.value.status_code == 400
    assert "api_key" in str(caught.value)


def invalid(
    message: str, param: str | None = None, code: str = "invalid_request"
) -> dict[str, Any]:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return {"error": error}


NOT_JSON = "; send a JSON object with the header 'content-type: application/json'"


@pytest.mark.parametrize(
    ("content", "headers", "expected"),
    [
        # The chat route reads its body itself (not through FastAPI): these are the exact
        # answers FastAPI gave, kept so that clients see no difference.
        (
            b'{"model": "chat", "messages": [',
            {"content-type": "application/json"},
            invalid("the request body is not valid JSON (Expecting value); send a JSON object"),
        ),
        (
            b"null",
            {"content-type": "application/json; charset=utf-8"},
            invalid(
                "the request body: Input should be a valid dictionary or object to extract "
                "fields from (got None)"
            ),
        ),
        (
            b"",
            {"content-type": "application/json"},
            invalid("the request body is missing; send a JSON object"),
        ),
        (
            b'{"model": "chat"}',
            {"content-type": "text/plain"},
            invalid("the request body was sent as text/plain" + NOT_JSON),
        ),
        (
            b'{"model": "chat"}',
            {"content-type": "json"},  # not a media type: not JSON
            invalid("the request body was sent as json" + NOT_JSON),
        ),
        (
            b'{"model": "chat"}',
            {},
            invalid("the request body was sent as no content type" + NOT_JSON),
        ),
        (
            b'{"model": "d\xe9fault", "messages": []}',  # Latin-1, not UTF-8
            {"content-type": "application/json"},
            invalid("There was an error parsing the body", code="http_error"),
        ),
        (
            '{"model": "chat", "messages": [], "n": 0}'.encode("utf-16"),
            {"content-type": "application/vnd.example+json"},
            invalid(
                "messages: List should have at least 1 item after validation, not 0 (got []); "
                "and 1 more problem",
                "messages",
            ),
        ),
        (
            b'{"model": "", "messages": [], "n": 0, "top_p": 3}',
            {"content-type": "application/json"},
            invalid(
                "model: String should have at least 1 character (got ''); and 3 more problems",
                "model",
            ),
        ),
        (
            b'{"model": "chat", "messages": [{"content": "x"}]}',
            {"content-type": "application/json"},
            invalid(
                "messages[0]: Unable to extract tag using discriminator 'role' "
                "(got {'content': 'x'})",
                "messages[0]",
            ),
        ),
        (
            b'{"model": "chat", "messages": []}',
            {"content-type": "application/json", "x-gateway-task": "t" * 257},
            invalid(
                "x-gateway-task: String should have at most 256 characters (got '"
                + "t" * 76
                + "...); and 1 more problem",
                "x-gateway-task",
            ),
        ),
    ],
)
async def test_bad_bodies_get_exactly_fastapis_answers(
    http: httpx.AsyncClient, content: bytes, headers: dict[str, str], expected: dict[str, Any]
) -> None:
    response = await http.post("/v1/chat/completions", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected


async def test_the_key_is_checked_before_the_body_is_read(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url) as c:
        response = await c.post(
            "/v1/chat/completions",
            content=b'{"model": "chat", "messages": [',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "missing_api_key"


async def test_a_client_that_leaves_while_sending_its_body_is_logged_as_gone(
    server: ServerProcess,
) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (
        f"POST /v1/chat/completions?leaving-early HTTP/1.1\r\nhost: {server.host}\r\n"
        f"authorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\n"
        "content-length: 1000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"model": "chat", ')
    await writer.drain()
    await asyncio.sleep(0.2)  # the server has the head and part of the body
    writer.close()
    await writer.wait_closed()
    assert await reader.read() == b""  # nothing was answered
    line = r'"POST /v1/chat/completions" 499 [\d.]+ms outcome=client_closed'
    await eventually(lambda: re.search(line, server.log()), timeout_s=5)


async def test_message_count_and_body_size_are_capped(http: httpx.AsyncClient) -> None:
    too_many = [{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)
    response = await http.post("/v1/chat/completions", json={"model": "chat", "messages": too_many})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert str(MAX_MESSAGES) in response.json()["error"]["message"]

    huge = user("y" * (MAX_BODY_BYTES + 10))
    response = await http.post("/v1/chat/completions", json={"model": "chat", "messages": huge})
    assert response.status_code == 413
    assert "GATEWAY_MAX_BODY_BYTES" in response.json()["error"]["message"]


async def test_unknown_or_missing_key_is_401(server: ServerProcess) -> None:
    body = {"model": "chat", "messages": user("hi")}
    async with httpx.AsyncClient(base_url=server.url) as c:
        missing = await c.post("/v1/chat/completions", json=body)
        wrong = await c.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Bearer nope"}
        )
        admin = await c.get("/v1/models", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "GATEWAY_API_KEYS" in missing.json()["error"]["message"]
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert admin.status_code == 200  # an admin key opens client routes too

    async with openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model="chat", messages=user("hi"))


async def test_unknown_task_without_default_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="no-such-task", messages=user("hi"))
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert body["param"] == "model"
    assert "chat" in body["message"]  # it lists the tasks that exist


async def test_every_provider_failing_is_502_listing_attempts_without_secrets(
    server: ServerProcess, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.fail_always("gpt-4o-mini", Fault.server_error())
    upstream.fail_always("claude-sonnet-4-5", Fault.unauthorized())
    response = await http.post(
        "/v1/chat/completions", json={"model": "chat", "messages": user(PROMPT_MARKER)}
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert error["code"] == "all_providers_failed"
    outcomes = [(a["provider"], a["outcome"]) for a in error["attempts"]]
    assert outcomes == [("mini", "server_error"), ("sonnet", "auth")]
    for secret in SECRETS:
        assert secret not in response.text
    logged = r"502 [\d.]+ms task=chat attempts=mini:server_error,sonnet:auth outcome=all_prov"
    await eventually(lambda: re.search(logged, server.log()), timeout_s=5)


async def test_deadline_is_504(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.reply("slow-1", latency_s=5)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="deadline", messages=user("hi"))
    assert caught.value.status_code == 504
    assert time.monotonic() - started < 4  # the 5 s upstream was not waited for
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "deadline_exceeded"
    assert [a["provider"] for a in body["attempts"]] == ["slow"]


async def test_unknown_route_and_method_use_the_error_shape(http: httpx.AsyncClient) -> None:
    missing = await http.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong_method = await http.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert "POST" in wrong_method.headers["allow"]


# --- models, monitoring, policy -----------------------------------------------------------------


async def test_models_lists_the_tasks(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert models == ["chat", "summarize", "fragile", "deadline", "talk", "haunted", "patient"]


async def test_providers_endpoint_keeps_the_seed_shape(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/monitoring/providers")
    assert response.status_code == 200
    body = response.json()
    assert {"openai", "anthropic", "ollama"} <= set(body["available_providers"])
    assert body["current_provider"] == "mini"  # first available of the first task's chain
    assert body["providers"]["sonnet"] == {
        "type": "anthropic",
        "model": "claude-sonnet-4-5",
        "available": True,
        "reason": None,
    }
    ghost = body["providers"]["ghost"]
    assert ghost["available"] is False
    assert "GATEWAY_TEST_UNSET_KEY" in ghost["reason"]


async def test_unavailable_provider_is_skipped(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="haunted", messages=user("x")
    )
    assert raw.headers["x-gateway-attempts-detail"] == "ghost:unavailable,mini:success"


async def test_breakers_endpoint_shows_an_open_breaker(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    upstream.fail_always("flaky-1", Fault.server_error())
    for _ in range(2):
        response = await http.post(
            "/v1/chat/completions", json={"model": "fragile", "messages": user("x")}
        )
        assert response.headers["x-gateway-provider"] == "mini"
    third = await http.post(
        "/v1/chat/completions", json={"model": "fragile", "messages": user("x")}
    )
    assert third.headers["x-gateway-attempts-detail"] == "flaky:breaker_open,mini:success"
    assert upstream.count("flaky-1") == 2  # the open breaker kept the third call away

    breakers = (await http.get("/api/v1/monitoring/breakers")).json()["breakers"]
    assert breakers["flaky"]["state"] == "open"
    assert 0 < breakers["flaky"]["seconds_until_probe"] <= 60
    assert breakers["mini"] == {"state": "closed", "failure_count": 0, "seconds_until_probe": None}


async def test_policy_endpoint_masks_secrets(http: httpx.AsyncClient, policy_file: Path) -> None:
    response = await http.get("/api/v1/policy")
    assert response.status_code == 200
    body = response.json()
    assert body["sha256"] == sha256_of(policy_file)
    assert body["loaded_at"] <= time.time()
    assert body["policy"]["providers"]["mini"]["api_key"] == "***"
    assert body["policy"]["providers"]["ghost"]["api_key"] is None
    for secret in SECRETS:
        assert secret not in response.text


async def test_reload_by_http_needs_an_admin_key_and_rejects_bad_files(
    server: ServerProcess,
    http: httpx.AsyncClient,
    policy_file: Path,
    upstream: FakeUpstream,
    restore_policy: str,
) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert (await http.post("/api/v1/policy/reload")).status_code == 403  # a client key
    unchanged = await http.post("/api/v1/policy/reload", headers=admin)
    assert unchanged.json() == {
        "applied": False,
        "sha256": sha256_of(policy_file),
        "loaded_at": unchanged.json()["loaded_at"],
    }

    policy_file.write_text(policy_yaml(upstream.url, extra_tasks="  extra: {chain: [mini]}\n"))
    applied = await http.post("/api/v1/policy/reload", headers=admin)
    assert applied.status_code == 200
    assert applied.json()["applied"] is True
    assert applied.json()["sha256"] == sha256_of(policy_file)
    models = (await http.get("/v1/models")).json()["data"]
    assert "extra" in [m["id"] for m in models]

    serving = sha256_of(policy_file)
    policy_file.write_text(restore_policy.replace("chain: [mini, sonnet]", "chain: [nobody]"))
    rejected = await http.post("/api/v1/policy/reload", headers=admin)
    assert rejected.status_code == 422
    assert "nobody" in rejected.json()["error"]["message"]
    assert (await http.get("/api/v1/policy")).json()["sha256"] == serving


async def test_reload_by_sighup(
    server: ServerProcess,
    http: httpx.AsyncClient,
    policy_file: Path,
    upstream: FakeUpstream,
    restore_policy: str,
) -> None:
    before = (await http.get("/api/v1/policy")).json()["sha256"]
    policy_file.write_text(policy_yaml(upstream.url, extra_tasks="  hup: {chain: [sonnet]}\n"))
    expected = sha256_of(policy_file)
    assert expected != before
    await asyncio.sleep(0.3)
    # The file watcher is off in this server: only the signal can make it re-read the file.
    assert (await http.get("/api/v1/policy")).json()["sha256"] == before
    server.signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return (await http.get("/api/v1/policy")).json()["sha256"] == expected

    await eventually(reloaded, timeout_s=5)
    assert server.process.poll() is None


async def test_readyz_reports_tasks_without_providers(
    server: ServerProcess,
    http: httpx.AsyncClient,
    policy_file: Path,
    upstream: FakeUpstream,
    restore_policy: str,
) -> None:
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True

    policy_file.write_text(policy_yaml(upstream.url, extra_tasks="  lonely: {chain: [ghost]}\n"))
    reload = await http.post(
        "/api/v1/policy/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert reload.json()["applied"] is True
    unready = await http.get("/readyz")
    assert unready.status_code == 503
    [reason] = unready.json()["reasons"]
    assert "lonely" in reason and "GATEWAY_TEST_UNSET_KEY" in reason


async def test_health_needs_no_key(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "pid": server.pid}


async def test_metrics_exposition(server: ServerProcess, client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="summarize", messages=user("count me"))
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = re.findall(
        r'^gateway_requests_total\{outcome="success",task="summarize"\} (\S+)$',
        response.text,
        re.MULTILINE,
    )
    assert samples and float(samples[0]) >= 1
    assert "gateway_policy_info{" in response.text


async def test_access_log_has_one_line_per_request_without_prompts_or_keys(
    server: ServerProcess, client: openai.AsyncOpenAI
) -> None:
    await client.chat.completions.create(model="chat", messages=user(f"log test {PROMPT_MARKER}"))

    def logged() -> str | None:
        text = server.log()
        return text if "task=chat provider=mini" in text else None

    log = await eventually(logged)
    assert re.search(r'"POST /v1/chat/completions" 200 [\d.]+ms task=chat provider=mini', log)
    assert PROMPT_MARKER not in log
    for secret in SECRETS:
        assert secret not in log


# --- process ----------------------------------------------------------------------------------


async def test_serves_on_uvloop_and_httptools_and_without_them(
    server: ServerProcess, upstream: FakeUpstream, policy_file: Path, tmp_path: Path
) -> None:
    assert "event loop: uvloop; HTTP parser: httptools" in server.log()
    # Where they cannot be imported, uvicorn's own asyncio loop and h11 parser serve instead.
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for name in ("uvloop", "httptools"):
        (hidden / f"{name}.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    path = os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])
    env = {"GATEWAY_API_KEYS": CLIENT_KEY, "GATEWAY_POLICY_WATCH_S": "0", "PYTHONPATH": path}
    with ServerProcess(policy_file, log_path=tmp_path / "plain.log", env=env) as plain:
        await asyncio.to_thread(plain.wait_ready)
        assert "event loop: asyncio; HTTP parser: h11" in plain.log()
        async with openai.AsyncOpenAI(
            base_url=plain.url + "/v1", api_key=CLIENT_KEY, max_retries=0
        ) as sdk:
            reply = await sdk.chat.completions.create(model="chat", messages=user("hi"))
            assert reply.choices[0].message.content == MINI_TEXT
            stream = await sdk.chat.completions.create(
                model="chat", messages=user("hi"), stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == MINI_TEXT


async def test_refuses_a_non_loopback_host_without_keys(policy_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway.server",
            "--policy",
            str(policy_file),
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "GATEWAY_API_KEYS" in result.stderr
    assert "0.0.0.0" in result.stderr


async def test_invalid_policy_refuses_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nproviders: {p: {type: openai}}\ntasks: {t: {chain: [missing]}}\n")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.server", "--policy", str(bad), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "missing" in result.stderr and "bad.yaml" in result.stderr


async def test_simulate_mode_serves_without_keys(tmp_path: Path) -> None:
    env = {k: "" for k in ("GATEWAY_API_KEYS", "GATEWAY_ADMIN_KEYS")}
    with ServerProcess(
        None,
        log_path=tmp_path / "sim.log",
        env=env,
        extra_args=["--simulate"],
        command=GATEWAY_SERVE,
    ) as sim:
        sim.wait_ready()
        response = httpx.post(
            sim.url + "/v1/chat/completions",
            json={"model": "default", "messages": user("hello")},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-gateway-provider"] == "mini"
        assert response.json()["choices"][0]["message"]["content"] == MINI_TEXT
        # The same file as `gateway demo`, its ${FAKE_UPSTREAM_URL} resolved on every load.
        served = httpx.get(sim.url + "/api/v1/policy").json()
        assert served["sha256"] == hashlib.sha256(demo_policy_text().encode()).hexdigest()
        reload = httpx.post(sim.url + "/api/v1/policy/reload")  # loopback, no keys: allowed
        assert reload.status_code == 200, reload.text
        streamed = httpx.post(
            sim.url + "/v1/chat/completions",
            json={"model": "summarize", "stream": True, "messages": user("hi")},
        )
        assert streamed.headers["x-gateway-attempts-detail"] == "sonnet:streaming"
        assert streamed.text.endswith("data: [DONE]\n\n")
        assert f"curl -s {sim.url}/v1/chat/completions" in sim.log()
        fake_url = re.search(r"providers are a FakeUpstream at (\S+);", sim.log())
        assert fake_url is not None
        assert httpx.get(fake_url.group(1) + "/_fake/health").status_code == 200
        # SIGTERM is a clean stop: exit code 0, and the simulation's FakeUpstream goes with it.
        sim.signal(signal.SIGTERM)
        assert await asyncio.to_thread(sim.wait, 20) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(fake_url.group(1) + "/_fake/health", timeout=5)


async def test_workers_share_metrics_and_each_reloads_on_sighup(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    # One OpenAI provider only: each worker imports the SDKs its providers need at startup.
    policy = tmp_path / "routing.yaml"
    small = f"""\
version: 1
providers:
  mini: {{type: openai, model: gpt-4o-mini, base_url: "{upstream.url}/v1", api_key: "{MINI_KEY}"}}
tasks:
  chat: {{chain: [mini]}}
"""
    policy.write_text(small)
    metric_dirs_before = set(Path(tempfile.gettempdir()).glob("gateway-metrics-*"))
    env = {
        "GATEWAY_API_KEYS": "",
        "GATEWAY_ADMIN_KEYS": "",
        "GATEWAY_POLICY_WATCH_S": "0",
        "PROMETHEUS_MULTIPROC_DIR": "",  # serve() makes a temporary one for its workers
    }
    workers = ServerProcess(
        policy, log_path=tmp_path / "workers.log", env=env, extra_args=["--workers", "2"]
    )
    with workers:
        await asyncio.to_thread(workers.wait_ready)

        async def policy_pids(sha: str) -> set[str] | None:
            async with httpx.AsyncClient(base_url=workers.url) as c:
                text = (await c.get("/metrics")).text
            found = re.findall(r"^gateway_policy_info\{(.*)\} 1\.0$", text, re.MULTILINE)
            pids = {re.search(r'pid="(\d+)"', s).group(1) for s in found if sha in s}  # type: ignore[union-attr]
            others = [s for s in found if sha not in s]
            return pids if len(pids) == 2 and not others else None

        first = sha256_of(policy)
        # Every worker's series is in the exposition, whichever worker answers the scrape.
        pids = await eventually(lambda: policy_pids(first), timeout_s=15)
        async with httpx.AsyncClient(base_url=workers.url) as c:
            response = await c.post(
                "/v1/chat/completions", json={"model": "chat", "messages": user("hi")}
            )
            assert response.status_code == 200

        policy.write_text(small + "  more: {chain: [mini]}\n")
        workers.signal(signal.SIGHUP)
        assert await eventually(lambda: policy_pids(sha256_of(policy)), timeout_s=15) == pids
        assert workers.process.poll() is None

        workers.signal(signal.SIGTERM)
        assert await asyncio.to_thread(workers.wait, 20) == 0
    assert set(Path(tempfile.gettempdir()).glob("gateway-metrics-*")) == metric_dirs_before


# --- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("", False),
    ],
)
async def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_answers_built_by_hand_match_the_documented_models() -> None:
    usage = Usage(input_tokens=12, output_tokens=5, cached_input_tokens=4)
    body = completion_body(
        response_id="chatcmpl-1",
        model="gpt-4o-mini",
        choices=[
            Choice(0, "hé \n", "length"),
            Choice(
                1,
                "",
                "tool_calls",
                (ToolCall("call_1", "weather", '{"city": "Paris"}'),),
                extra={"annotations": [], "logprobs": {"content": []}},
            ),
        ],
        usage=usage,
    )
    # Optional reply fields (tool_calls, annotations...) appear only when the answer has them.
    assert body == ChatCompletion.model_validate(body).model_dump(mode="json", exclude_unset=True)
    assert list(body) == list(ChatCompletion.model_fields)
    assert body["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][1]["message"]["content"] is None  # tool calls alone: null content
    assert body["choices"][1]["message"]["tool_calls"][0]["function"]["name"] == "weather"
    assert body["choices"][1]["logprobs"] == {"content": []}
    chunk = ChunkWriter(response_id="chatcmpl-1", model="m", include_usage=True).usage(usage)
    assert chunk is not None and chunk["usage"] == body["usage"]
    assert json.loads(event(body)[len(b"data: ") : -2]) == body


async def test_a_disconnect_cancels_the_work_and_nothing_else() -> None:
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def work(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    task = asyncio.current_task()
    assert task is not None
    # No disconnect: the answer comes back and the watcher is gone.
    before = len(asyncio.all_tasks())
    assert await unless_disconnected(receive, work(0)) == "done"
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
    # A disconnect cancels the work where it waits, and is reported as ClientGone; the task
    # can go on awaiting afterwards (the cancellation was taken back).
    asyncio.get_running_loop().call_later(0.05, disconnect.set)
    started = time.monotonic()
    with pytest.raises(ClientGone):
        await unless_disconnected(receive, work(10))
    assert time.monotonic() - started < 5
    assert task.cancelling() == 0
    await asyncio.sleep(0)
    disconnect.clear()

    # A cancellation from elsewhere (shutdown) stays a cancellation.
    async def cancelled_from_outside() -> None:
        await unless_disconnected(receive, work(10))

    outside = asyncio.create_task(cancelled_from_outside())
    await asyncio.sleep(0.01)
    outside.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outside


async def test_under_a_connection_loss_notice_a_disconnect_cancels_the_work_with_no_task() -> None:
    """What `gateway serve`'s connections give each request: the connection's own loss ends
    the work (no watcher task per request), and a connection lost before the work began ends
    it at its first wait."""

    async def receive() -> dict[str, Any]:
        raise AssertionError("with a loss notice, nothing waits on receive")

    async def work(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    notice = LossNotice()
    token = CONNECTION_LOSS.set(notice)
    try:
        tasks = len(asyncio.all_tasks())

        async def counted() -> str:
            assert len(asyncio.all_tasks()) == tasks, "no task made for the request"
            return await work(0)

        assert await unless_disconnected(receive, counted()) == "done"
        assert notice.waiter is None, "the block took its waiter away"
        asyncio.get_running_loop().call_later(0.05, notice.lost)
        started = time.monotonic()
        with pytest.raises(ClientGone):
            await unless_disconnected(receive, work(10))
        assert time.monotonic() - started < 5
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        # Lost already: the next block ends at its first wait.
        with pytest.raises(ClientGone):
            await unless_disconnected(receive, work(10))
    finally:
        CONNECTION_LOSS.reset(token)


async def test_key_checker_decisions() -> None:
    keys = KeyChecker(ServerSettings(api_keys=("c1", "c2"), admin_keys=("a1",)))
    assert keys.client("c2", "10.0.0.1") is Access.GRANTED
    assert keys.client("a1", "10.0.0.1") is Access.GRANTED
    assert keys.client(None, "127.0.0.1") is Access.MISSING
    assert keys.client("c3", "127.0.0.1") is Access.UNKNOWN
    assert keys.admin("c1", "127.0.0.1") is Access.FORBIDDEN
    assert keys.admin("a1", "10.0.0.1") is Access.GRANTED

    no_admin = KeyChecker(ServerSettings(api_keys=("c1",)))
    assert no_admin.admin("c1", "127.0.0.1") is Access.ADMIN_DISABLED
    assert "GATEWAY_ADMIN_KEYS" in denial(Access.ADMIN_DISABLED).message

    open_mode = KeyChecker(ServerSettings())
    assert open_mode.client(None, "127.0.0.1") is Access.GRANTED
    assert open_mode.admin(None, "::1") is Access.GRANTED
    assert open_mode.client(None, "192.168.1.20") is Access.MISSING  # loopback clients only
    assert "c1" not in repr(keys) and "a1" not in repr(keys)


async def test_settings_name_the_variable_and_never_show_keys() -> None:
    env = {"GATEWAY_API_KEYS": " k-1 ,, k-2 ", "GATEWAY_ADMIN_KEYS": ""}
    settings = ServerSettings.from_env(env)
    assert settings.api_keys == ("k-1", "k-2")
    assert settings.admin_keys == ()
    assert "k-1" not in repr(settings)
    assert ServerSettings.from_env({"GATEWAY_POLICY_WATCH_S": "0"}).policy_watch_s is None
    for name, value in [
        ("GATEWAY_MAX_BODY_BYTES", "lots"),
        ("GATEWAY_MAX_MESSAGES", "0"),
        ("GATEWAY_POLICY_WATCH_S", "-1"),
        ("GATEWAY_SHUTDOWN_GRACE_S", "inf"),
    ]:
        with pytest.raises(ConfigurationError, match=f"{name} is '{value}'"):
            ServerSettings.from_env({name: value})


async def test_an_idle_kept_alive_connection_stays_open_past_client_pool_lifetimes(
    server: ServerProcess,
) -> None:
    # The OpenAI SDK keeps idle connections for 5 s; a server that also closed them at 5 s
    # raced it, and the client's next request failed with a connection error (found by the
    # bench). The server must keep an idle connection open well past that.
    reader, writer = await asyncio.open_connection(server.host, server.port)
    request = f"GET /healthz HTTP/1.1\r\nhost: {server.host}\r\n\r\n".encode()
    try:
        for pause_s in (6, 0):
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            await asyncio.sleep(pause_s)
    finally:
        writer.close()


def first_banner_curl(log: str) -> str:
    """The banner's first curl command, its continuation lines joined, as a shell runs it."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl -s "))
    command = lines[start]
    while command.endswith("\\"):
        start += 1
        command = command[:-1] + lines[start]
    return command.strip()


@pytest.mark.parametrize("keys", ["", "banner-key"], ids=["open", "with-client-keys"])
async def test_the_simulate_banners_first_curl_works_as_printed(tmp_path: Path, keys: str) -> None:
    env = {"GATEWAY_API_KEYS": keys, "GATEWAY_ADMIN_KEYS": ""}
    with ServerProcess(
        None,
        log_path=tmp_path / "sim.log",
        env=env,
        extra_args=["--simulate"],
        command=GATEWAY_SERVE,
    ) as sim:
        sim.wait_ready()
        command = first_banner_curl(sim.log())
        result = subprocess.run(
            ["bash", "-c", command + " -o /dev/null -w '%{http_code}'"],
            capture_output=True,
            text=True,
            env={**os.environ, "GATEWAY_KEY": keys},
            timeout=60,
        )
    assert result.stdout == "200", (command, result.stdout, result.stderr)
    assert ("GATEWAY_API_KEYS is set" in sim.log()) == bool(keys)


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        (Fault.status(400), 400, openai.BadRequestError),
        (Fault.not_found(), 404, openai.NotFoundError),
        (Fault.status(422), 422, openai.UnprocessableEntityError),
    ],
    ids=["400", "404", "422"],
)
async def test_a_request_the_upstream_refuses_is_its_4xx_and_is_not_retried(
    server: ServerProcess,
    upstream: FakeUpstream,
    fault: Fault,
    status: int,
    error: type[openai.APIStatusError],
) -> None:
    # An SDK with its default retries: a 502 would have been sent three times.
    upstream.script("talker-1", fault)
    before = upstream.count("talker-1")
    async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=CLIENT_KEY) as sdk:
        with pytest.raises(error) as refused:
            await sdk.chat.completions.create(model="talk", messages=user("hi"))
    assert upstream.count("talker-1") == before + 1
    assert refused.value.status_code == status
    assert refused.value.response.headers["x-should-retry"] == "false"
    body = refused.value.response.json()["error"]
    assert body["code"] == "request_refused"
    assert body["attempts"][0]["outcome"] in {"bad_request", "not_found"}


async def test_each_task_answers_as_a_model(http: httpx.AsyncClient) -> None:
    found = await http.get("/v1/models/summarize")
    assert found.status_code == 200
    assert (found.json()["id"], found.json()["object"]) == ("summarize", "model")
    missing = await http.get("/v1/models/no-such-task")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_a_tasks_order_names_the_path_when_the_task_is_unknown(
    http: httpx.AsyncClient,
) -> None:
    order = await http.get("/api/v1/monitoring/tasks/summarize")
    assert order.status_code == 200
    body = order.json()
    assert (body["task"], body["stop_on"], body["redirect"]) == ("summarize", [], {})
    assert [row["provider"] for row in body["order"]] == ["sonnet", "mini"]
    missing = await http.get("/api/v1/monitoring/tasks/no-such-task")
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "task")
