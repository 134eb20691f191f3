"""Anthropic's Messages API on `gateway serve`, driven by the real anthropic SDK.

One `python -m gateway.server` serves the module; its policy has one task per provider type
(`openai`, `anthropic`, `ollama`), each with a single provider on a FakeUpstream in a
background thread, and a few tasks for failures. Every routed test runs on every provider type
with the sync and the async client, and checks what the SDK got and what the upstream
received in its own protocol.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from client_harness import ThreadedFakeUpstream, loopback_only
from server_harness import ServerProcess

from gateway.providers import estimate_tokens
from gateway.testing import Fault

TASKS = ("openai", "anthropic", "ollama")
"""One task per provider type; each task's name is also its provider's protocol."""
UPSTREAM_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "ollama": "llama3.2"}
CLIENT_KEY = "messages-client-key-7c1e"
TIMEOUT_S = 30.0

FIRST_FAILS = "first-fails"
"""The model of the first provider of the `fallthrough` task (scripted to fail)."""
DOOMED = "doomed-model"
"""The model of the only provider of the `doomed` task (always fails)."""
FLAKY = "flaky-model"
"""The model of the only provider of the `flaky` task (scripted to fail mid-stream)."""
SLOW = "slow-model"
"""The model of the only provider of the `slow` task (scripted to hang past its deadline)."""

USER_ASKS = "What is the weather in Paris?"
TOOL_RESULT = "sunny and 21 degrees"
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city's name."},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def fake_reply(model: str) -> str:
    return f"Hello from {model}. This is a fake reply."


def policy_yaml(fake_url: str) -> str:
    return f"""\
version: 1
defaults:
  timeout_s: 10
  retry: {{attempts: 1}}
  breaker: {{fail_max: 1000, reset_timeout_s: 1}}
providers:
  gpt:    {{type: openai, model: {UPSTREAM_MODELS["openai"]}, base_url: "{fake_url}/v1",
            api_key: dummy-upstream-key}}
  claude: {{type: anthropic, model: {UPSTREAM_MODELS["anthropic"]}, base_url: "{fake_url}",
            api_key: dummy-upstream-key}}
  llama:  {{type: ollama, model: {UPSTREAM_MODELS["ollama"]}, base_url: "{fake_url}"}}
  first:  {{type: openai, model: {FIRST_FAILS}, base_url: "{fake_url}/v1", api_key: k}}
  doomed: {{type: openai, model: {DOOMED}, base_url: "{fake_url}/v1", api_key: k}}
  flaky:  {{type: openai, model: {FLAKY}, base_url: "{fake_url}/v1", api_key: k}}
  slow:   {{type: openai, model: {SLOW}, base_url: "{fake_url}/v1", api_key: k}}
prices:
  {UPSTREAM_MODELS["ollama"]}: {{input: 0, output: 0}}
  {FIRST_FAILS}: {{input: 0, output: 0}}
  {DOOMED}: {{input: 0, output: 0}}
  {FLAKY}: {{input: 0, output: 0}}
  {SLOW}: {{input: 0, output: 0}}
tasks:
  openai:      {{chain: [gpt]}}
  anthropic:   {{chain: [claude]}}
  ollama:      {{chain: [llama]}}
  fallthrough: {{chain: [first, claude]}}
  doomed:      {{chain: [doomed]}}
  flaky:       {{chain: [flaky]}}
  slow:        {{chain: [slow], deadline_s: 0.3}}
"""


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    with loopback_only():
        yield


@pytest.fixture(scope="module")
def fake() -> Iterator[ThreadedFakeUpstream]:
    with ThreadedFakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gateway(fake: ThreadedFakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway's base URL (the anthropic SDK adds `/v1/messages`)."""
    directory = tmp_path_factory.mktemp("messages")
    policy = directory / "routing.yaml"
    policy.write_text(policy_yaml(fake.url))
    env = {
        "GATEWAY_POLICY_WATCH_S": "0",
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_KEYS": "",
    }
    with ServerProcess(policy, log_path=directory / "server.log", env=env) as server:
        server.wait_ready()
        yield server.url


@pytest.fixture(autouse=True)
def fresh_upstream(fake: ThreadedFakeUpstream) -> None:
    fake.reset()


@pytest.fixture(params=TASKS)
def task(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sent(fake: ThreadedFakeUpstream, protocol: str) -> list[dict[str, Any]]:
    """The JSON bodies the protocol's upstream received during this test, oldest first."""
    return [r.body for r in fake.requests() if r.protocol == protocol]


# --- the anthropic SDK, sync and async through one interface ----------------------------------


class Messages:
    """`messages` of the sync or async anthropic client, called the same way."""

    def __init__(self, base_url: str, *, is_async: bool, **options: Any) -> None:
        options = {"api_key": CLIENT_KEY, **options}
        self.is_async = is_async
        self.runner = asyncio.Runner() if is_async else None
        kwargs = {"base_url": base_url, "max_retries": 0, "timeout": TIMEOUT_S, **options}
        self.sync = None if is_async else anthropic.Anthropic(**kwargs)
        self.aio = anthropic.AsyncAnthropic(**kwargs) if is_async else None

    def _run(self, coro: Any) -> Any:
        assert self.runner is not None
        return self.runner.run(coro)

    def create(self, **kwargs: Any) -> Message:
        if self.sync is not None:
            return self.sync.messages.create(**kwargs)
        assert self.aio is not None
        return self._run(self.aio.messages.create(**kwargs))  # type: ignore[no-any-return]

    def raw(self, **kwargs: Any) -> tuple[Message, httpx.Headers]:
        """The message and the response's headers."""
        if self.sync is not None:
            response = self.sync.messages.with_raw_response.create(**kwargs)
            return response.parse(), response.headers
        assert self.aio is not None
        aio = self.aio

        async def call() -> tuple[Message, httpx.Headers]:
            response = await aio.messages.with_raw_response.create(**kwargs)
            return await response.parse(), response.headers

        return self._run(call())  # type: ignore[no-any-return]

    def events(self, **kwargs: Any) -> list[RawMessageStreamEvent]:
        """`messages.create(stream=True)`: the raw events."""
        if self.sync is not None:
            return list(self.sync.messages.create(stream=True, **kwargs))
        assert self.aio is not None
        aio = self.aio

        async def collect() -> list[RawMessageStreamEvent]:
            stream = await aio.messages.create(stream=True, **kwargs)
            return [event async for event in stream]

        return self._run(collect())  # type: ignore[no-any-return]

    def final(self, **kwargs: Any) -> tuple[Message, str, httpx.Headers]:
        """`messages.stream(...)`: the final message, the text as it streamed, the headers."""
        if self.sync is not None:
            with self.sync.messages.stream(**kwargs) as stream:
                text = "".join(stream.text_stream)
                return stream.get_final_message(), text, stream.response.headers
        assert self.aio is not None
        aio = self.aio

        async def collect() -> tuple[Message, str, httpx.Headers]:
            async with aio.messages.stream(**kwargs) as stream:
                text = "".join([piece async for piece in stream.text_stream])
                return await stream.get_final_message(), text, stream.response.headers

        return self._run(collect())  # type: ignore[no-any-return]

    def count(self, **kwargs: Any) -> int:
        if self.sync is not None:
            return self.sync.messages.count_tokens(**kwargs).input_tokens
        assert self.aio is not None
        return self._run(self.aio.messages.count_tokens(**kwargs)).input_tokens  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        else:
            assert self.aio is not None and self.runner is not None
            self._run(self.aio.close())
            self.runner.close()


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest, gateway: str) -> Iterator[Messages]:
    messages = Messages(gateway, is_async=request.param == "async")
    yield messages
    messages.close()


def ask(task: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": task,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": USER_ASKS}],
        **extra,
    }


# --- reading upstream bodies, protocol by protocol --------------------------------------------


def upstream_system(protocol: str, body: dict[str, Any]) -> str:
    if protocol == "anthropic":
        system = body.get("system", "")
        return system if isinstance(system, str) else "".join(b["text"] for b in system)
    first = body["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


def upstream_stop(protocol: str, body: dict[str, Any]) -> Any:
    if protocol == "anthropic":
        return body.get("stop_sequences")
    if protocol == "ollama":
        return body.get("options", {}).get("stop")
    return body.get("stop")


def upstream_sampling(protocol: str, body: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(max_tokens, temperature, top_p) as the upstream received them."""
    if protocol == "ollama":
        options = body.get("options", {})
        return options.get("num_predict"), options.get("temperature"), options.get("top_p")
    return body.get("max_tokens"), body.get("temperature"), body.get("top_p")


def upstream_tool_names(protocol: str, body: dict[str, Any]) -> list[str]:
    tools = body.get("tools") or []
    if protocol == "anthropic":
        return [t["name"] for t in tools]
    return [t["function"]["name"] for t in tools]


def upstream_tool_result(protocol: str, body: dict[str, Any]) -> tuple[str | None, str]:
    """(the id the last tool result answers, its text); Ollama's results carry no id."""
    last = body["messages"][-1]
    if protocol == "anthropic":
        block = last["content"][0] if isinstance(last["content"], list) else {}
        assert block.get("type") == "tool_result", last
        return block["tool_use_id"], str(block["content"])
    assert last["role"] == "tool", last
    return last.get("tool_call_id"), str(last["content"])


# --- whole answers ----------------------------------------------------------------------------


def test_create_answers_in_anthropic_shape_and_fields_reach_upstream(
    client: Messages, task: str, fake: ThreadedFakeUpstream
) -> None:
    message, headers = client.raw(
        **ask(
            task,
            system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            stop_sequences=["END", "STOP"],
            metadata={"user_id": "user-42"},
            # This SDK version has no temperature or top_p parameters: sent as the body's own.
            extra_body={"temperature": 0.5, "top_p": 0.9},
        )
    )
    model = UPSTREAM_MODELS[task]
    assert message.id.startswith("msg_")
    assert message.model == model
    assert message.role == "assistant" and message.type == "message"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == fake_reply(model)  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == len(fake_reply(model).split())
    assert headers["x-gateway-task"] == task
    assert headers["x-gateway-attempts-detail"].endswith(":success")

    (body,) = sent(fake, task)
    assert upstream_system(task, body) == "Be brief.\n\nBe kind."
    assert upstream_stop(task, body) == ["END", "STOP"]
    assert upstream_sampling(task, body) == (200, 0.5, 0.9)
    if task == "anthropic":
        assert body["metadata"] == {"user_id": "user-42"}
    elif task == "openai":
        assert body["user"] == "user-42"


def test_x_gateway_task_header_routes(client: Messages, fake: ThreadedFakeUpstream) -> None:
    message = client.create(**ask("not-a-task"), extra_headers={"x-gateway-task": "anthropic"})
    assert message.model == UPSTREAM_MODELS["anthropic"]
    assert len(sent(fake, "anthropic")) == 1


def test_images_base64_and_url_reach_upstream(
    client: Messages, task: str, fake: ThreadedFakeUpstream
) -> None:
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]
    client.create(**ask(task, messages=[{"role": "user", "content": content}]))
    (body,) = sent(fake, task)
    last = body["messages"][-1]
    if task == "openai":
        assert last["content"][1] == {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{PNG}"},
        }
    elif task == "anthropic":
        assert last["content"][1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
        }
    else:
        assert last["images"] == [PNG]
        assert last["content"] == "What is in this picture?"

    fake.reset()
    url = "https://example.com/cat.png"
    by_url = [{"type": "image", "source": {"type": "url", "url": url}}, content[0]]
    request = ask(task, messages=[{"role": "user", "content": by_url}])
    if task == "ollama":
        # Ollama takes images inline only: the one candidate is skipped, the request refused.
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.create(**request)
        assert "inline" in refused.value.message
        assert sent(fake, task) == []
        return
    client.create(**request)
    (body,) = sent(fake, task)
    first = body["messages"][-1]["content"][0]
    if task == "openai":
        assert first == {"type": "image_url", "image_url": {"url": url}}
    else:
        assert first == {"type": "image", "source": {"type": "url", "url": url}}


def test_a_prefill_is_continued_by_anthropic_and_refused_where_it_would_not_be(
    client: Messages, task: str, fake: ThreadedFakeUpstream
) -> None:
    history = [
        {"role": "user", "content": USER_ASKS},
        {"role": "assistant", "content": "The weather in Paris is"},
    ]
    if task != "anthropic":
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.create(**ask(task, messages=history))
        assert "assistant turn" in refused.value.message
        assert sent(fake, task) == []
        return
    client.create(**ask(task, messages=history))
    (body,) = sent(fake, task)
    assert body["messages"][-1] == {"role": "assistant", "content": "The weather in Paris is"}


def test_top_k_reaches_anthropic_and_ollama_and_is_refused_elsewhere(
    client: Messages, task: str, fake: ThreadedFakeUpstream
) -> None:
    # This SDK version has no top_k parameter: sent as the body's own.
    request = ask(task, extra_body={"top_k": 5})
    if task == "openai":
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.create(**request)
        assert "top_k" in refused.value.message and "gpt (openai)" in refused.value.message
        assert sent(fake, task) == []
        return
    client.create(**request)
    (body,) = sent(fake, task)
    assert (body["options"] if task == "ollama" else body)["top_k"] == 5


# --- streams ----------------------------------------------------------------------------------


def test_stream_events_follow_anthropic_sequence(
    client: Messages, task: str, fake: ThreadedFakeUpstream
) -> None:
    events = client.events(**ask(task, system="Be brief.", stop_sequences=["END"]))
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0]
    assert start.type == "message_start"
    assert start.message.id.startswith("msg_")
    assert start.message.model == UPSTREAM_MODELS[task]
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == fake_reply(UPSTREAM_MODELS[task])
    delta = events[-2]
    assert delta.type == "message_delta"
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == len(text.split())
    (body,) = sent(fake, task)
    assert body.get("stream", True) is True  # Ollama streams unless told not to
    assert upstream_stop(task, body) == ["END"]


def test_stream_helper_final_message(
    client: Messages, task: str, fake: ThreadedFakeUpstream
) -> None:
    message, streamed, headers = client.final(**ask(task))
    expected = fake_reply(UPSTREAM_MODELS[task])
    assert streamed == expected
    assert message.content[0].text == expected  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == len(expected.split())
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-gateway-task"] == task


# --- tools ------------------------------------------------------------------------------------


def tool_turns(first: Message, *, dumped: bool = False) -> list[dict[str, Any]]:
    """The history after a tool_use answer: the question, the answer (the SDK's blocks as
    they came, or `dumped` as dicts, null fields included), the tool's result."""
    (use,) = [block for block in first.content if block.type == "tool_use"]
    answer: list[Any] = [b.model_dump() for b in first.content] if dumped else list(first.content)
    return [
        {"role": "user", "content": USER_ASKS},
        {"role": "assistant", "content": answer},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": TOOL_RESULT}],
        },
    ]


def check_tool_use(message: Message) -> Any:
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather"
    assert isinstance(use.input, dict) and set(use.input) == {"city", "unit"}
    assert use.input["unit"] in {"celsius", "fahrenheit"}
    assert use.id
    return use


def check_tool_round_trip(task: str, fake: ThreadedFakeUpstream, use_id: str) -> None:
    first, second = sent(fake, task)
    assert upstream_tool_names(task, first) == ["get_weather"]
    answered, text = upstream_tool_result(task, second)
    assert text == TOOL_RESULT
    if task != "ollama":
        assert answered == use_id


def test_tool_use_then_tool_result(client: Messages, task: str, fake: ThreadedFakeUpstream) -> None:
    first = client.create(**ask(task, tools=[WEATHER_TOOL]))
    use = check_tool_use(first)
    second = client.create(**ask(task, tools=[WEATHER_TOOL], messages=tool_turns(first)))
    assert second.stop_reason == "end_turn"
    assert TOOL_RESULT in second.content[0].text  # type: ignore[union-attr]
    check_tool_round_trip(task, fake, use.id)


def test_streamed_tool_use_then_tool_result(
    client: Messages, task: str, fake: ThreadedFakeUpstream
) -> None:
    first, _, _ = client.final(**ask(task, tools=[WEATHER_TOOL]))
    use = check_tool_use(first)
    second, streamed, _ = client.final(
        **ask(task, tools=[WEATHER_TOOL], messages=tool_turns(first, dumped=True))
    )
    assert TOOL_RESULT in streamed
    assert second.stop_reason == "end_turn"
    check_tool_round_trip(task, fake, use.id)


def test_streamed_tool_use_events(client: Messages, fake: ThreadedFakeUpstream) -> None:
    events = client.events(**ask("openai", tools=[WEATHER_TOOL]))
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["tool_use"]
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(pieces) > 1  # streamed as it came, not whole
    assert set(json.loads("".join(pieces))) == {"city", "unit"}
    assert events[-2].type == "message_delta" and events[-2].delta.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "any"}, {"openai": "required", "anthropic": {"type": "any"}}),
        (
            {"type": "tool", "name": "get_weather"},
            {
                "openai": {"type": "function", "function": {"name": "get_weather"}},
                "anthropic": {"type": "tool", "name": "get_weather"},
            },
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"openai": "auto", "anthropic": {"type": "auto", "disable_parallel_tool_use": True}},
        ),
    ],
)
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_tool_choice_reaches_upstream(
    client: Messages,
    fake: ThreadedFakeUpstream,
    protocol: str,
    choice: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    message = client.create(**ask(protocol, tools=[WEATHER_TOOL], tool_choice=choice))
    check_tool_use(message)
    (body,) = sent(fake, protocol)
    assert body.get("tool_choice", "auto" if protocol == "openai" else None) == expected[protocol]
    if protocol == "openai" and choice.get("disable_parallel_tool_use"):
        assert body["parallel_tool_calls"] is False


def test_tool_choice_none_reaches_upstream(client: Messages, fake: ThreadedFakeUpstream) -> None:
    message = client.create(**ask("openai", tools=[WEATHER_TOOL], tool_choice={"type": "none"}))
    assert message.stop_reason == "end_turn"
    (body,) = sent(fake, "openai")
    assert body["tool_choice"] == "none"


@pytest.mark.parametrize("streamed", [False, True])
def test_a_refusal_is_stop_reason_refusal(
    client: Messages, fake: ThreadedFakeUpstream, streamed: bool
) -> None:
    model = UPSTREAM_MODELS["openai"]
    fake.call(lambda: fake.fake.reply(model, refusal="I can't help with that."))
    try:
        message = client.final(**ask("openai"))[0] if streamed else client.create(**ask("openai"))
    finally:
        fake.call(lambda: fake.fake.reply(model))
    assert message.stop_reason == "refusal"
    assert [b.text for b in message.content if b.type == "text"] == ["I can't help with that."]


# --- count_tokens -----------------------------------------------------------------------------


def test_count_tokens_is_the_gateways_estimate(client: Messages, task: str) -> None:
    counted = client.count(
        model=task, system="Be brief.", messages=[{"role": "user", "content": USER_ASKS}]
    )
    assert counted == estimate_tokens("Be brief." + USER_ASKS)
    with_tools = client.count(
        model=task, messages=[{"role": "user", "content": USER_ASKS}], tools=[WEATHER_TOOL]
    )
    assert with_tools > estimate_tokens(USER_ASKS)


# --- failures ---------------------------------------------------------------------------------


def test_fall_through_before_the_first_event_keeps_the_stream_whole(
    client: Messages, fake: ThreadedFakeUpstream
) -> None:
    fake.call(lambda: fake.fake.script(FIRST_FAILS, Fault.server_error()))
    message, streamed, headers = client.final(**ask("fallthrough"))
    expected = fake_reply(UPSTREAM_MODELS["anthropic"])
    assert streamed == expected
    assert message.content[0].text == expected  # type: ignore[union-attr]
    assert message.model == UPSTREAM_MODELS["anthropic"]
    assert headers["x-gateway-attempts-detail"] == "first:server_error,claude:streaming"
    assert len(sent(fake, "openai")) == 1 and len(sent(fake, "anthropic")) == 1


def test_mid_stream_failure_is_an_error_event(client: Messages, fake: ThreadedFakeUpstream) -> None:
    fake.call(lambda: fake.fake.script(FLAKY, Fault.midstream_error(after_chunks=2)))
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.events(**ask("flaky"))
    body = failed.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    assert "interrupted" in body["error"]["message"] or "stream" in body["error"]["message"]


def test_every_provider_failing_is_an_sdk_status_error(
    client: Messages, fake: ThreadedFakeUpstream
) -> None:
    fake.call(lambda: fake.fake.fail_always(DOOMED, Fault.server_error()))
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.create(**ask("doomed"))
    assert failed.value.status_code == 502
    body = failed.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    assert [a["provider"] for a in body["error"]["attempts"]] == ["doomed"]
    with pytest.raises(anthropic.InternalServerError) as streamed:
        client.final(**ask("doomed"))
    assert streamed.value.status_code == 502


def test_a_deadline_running_out_is_a_gateway_timeout(
    client: Messages, fake: ThreadedFakeUpstream
) -> None:
    fake.call(lambda: fake.fake.fail_always(SLOW, Fault.hang()))
    with pytest.raises(anthropic.GatewayTimeoutError) as late:
        client.create(**ask("slow"))
    body = late.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    assert "deadline_s" in body["error"]["message"]


def test_unknown_task_is_not_found(client: Messages) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.create(**ask("no-such-task"))
    body = missing.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "not_found_error"
    assert "no-such-task" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.count(model="no-such-task", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"cache_control": {"type": "ephemeral"}}, "cache_control"),
        ({"speed": "fast"}, "speed"),
        ({"extra_body": {"temperature": 1.5}}, "temperature"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}
                        ],
                    }
                ]
            },
            "cache_control",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}]},
            "tools[0]",
        ),
    ],
)
def test_what_has_no_translation_is_a_bad_request_naming_it(
    client: Messages, fake: ThreadedFakeUpstream, extra: dict[str, Any], named: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.create(**ask("openai", **extra))
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert named in body["error"]["message"]
    assert sent(fake, "openai") == []


def test_missing_max_tokens_is_refused_as_anthropic_does(gateway: str) -> None:
    response = httpx.post(
        gateway + "/v1/messages",
        headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
        json={"model": "openai", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


# --- keys -------------------------------------------------------------------------------------


def test_a_wrong_key_is_an_authentication_error(gateway: str) -> None:
    wrong = Messages(gateway, is_async=False, api_key="not-a-key")
    try:
        with pytest.raises(anthropic.AuthenticationError) as denied:
            wrong.create(**ask("openai"))
    finally:
        wrong.close()
    body = denied.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "authentication_error"


def test_a_missing_key_is_an_authentication_error(gateway: str) -> None:
    response = httpx.post(gateway + "/v1/messages", json=ask("openai"))
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert "x-api-key" in error["message"]  # says how Anthropic's clients send a key
    assert response.headers["www-authenticate"] == "Bearer"


def test_x_api_key_is_harmless_on_other_routes(gateway: str) -> None:
    response = httpx.get(
        gateway + "/v1/models",
        headers={"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": "something-else"},
    )
    assert response.status_code == 200
    assert "openai" in [card["id"] for card in response.json()["data"]]


def test_a_bearer_key_works_too(gateway: str, fake: ThreadedFakeUpstream) -> None:
    bearer = Messages(gateway, is_async=False, api_key=None, auth_token=CLIENT_KEY)
    try:
        message = bearer.create(**ask("openai"))
    finally:
        bearer.close()
    assert message.content[0].text == fake_reply(UPSTREAM_MODELS["openai"])  # type: ignore[union-attr]
