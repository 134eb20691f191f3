"""The real client libraries against `gateway serve` over HTTP, on every provider type.

Tools, structured output, multi-turn histories and the common request fields, driven the way
users drive them: the openai SDK (sync and async), LangChain's `ChatOpenAI`, pydantic-ai,
instructor and litellm as a client. One `python -m gateway.server` serves the module; its
policy has one task per provider type (`openai`, `anthropic`, `ollama`), each with a single
provider on a FakeUpstream running in a background thread (the clients here block). Every test
runs on every task, and checks what the upstream received in its own protocol as well as what
the client got back.

The FakeUpstream answers a request that has tools by calling the first tool not yet called in
the history (arguments generated from its JSON schema: a word for a string, `enum[0]`, 1 for
an integer), a named `tool_choice` with that tool, a tool result with text that quotes it, and a
`json_schema` response format (or its Anthropic/Ollama translation) with an object of that
shape. The pydantic models below are shaped so that such generated values validate.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import instructor
import openai
import pytest
from client_harness import ThreadedFakeUpstream, loopback_only
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool as langchain_tool
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion
from pydantic import BaseModel, SecretStr
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from server_harness import ServerProcess

# litellm fetches its model price map from GitHub when it is imported, unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TASKS = ("openai", "anthropic", "ollama")
"""One task per provider type; each task's name is also its provider's protocol."""
UPSTREAM_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "ollama": "llama3.2"}
DUMMY_KEY = "dummy-client-key"
TIMEOUT_S = 30.0

USER_ASKS = "What is the weather in Paris?"
TOOL_RESULT = "sunny and 21 degrees"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


class City(BaseModel):
    """A city and how many people live there."""

    name: str
    population: int


CITY_FIELDS = frozenset(City.model_fields)


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
prices:
  {UPSTREAM_MODELS["ollama"]}: {{input: 0, output: 0}}
tasks:
  openai:    {{chain: [gpt]}}
  anthropic: {{chain: [claude]}}
  ollama:    {{chain: [llama]}}
"""


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    """Nothing leaves the machine: no telemetry, no price maps, only loopback connections."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LANGSMITH_TRACING", "false")
        env.setenv("LANGCHAIN_TRACING_V2", "false")
        env.setenv("LOGFIRE_IGNORE_NO_CONFIG", "1")
        env.setenv("OTEL_SDK_DISABLED", "true")
        env.delenv("OPENAI_API_KEY", raising=False)
        env.delenv("OPENAI_BASE_URL", raising=False)
        with loopback_only():
            yield


@pytest.fixture(scope="module")
def fake() -> Iterator[ThreadedFakeUpstream]:
    with ThreadedFakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gateway(fake: ThreadedFakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway's OpenAI base URL (`http://127.0.0.1:PORT/v1`)."""
    directory = tmp_path_factory.mktemp("client-libraries")
    policy = directory / "routing.yaml"
    policy.write_text(policy_yaml(fake.url))
    env = {"GATEWAY_POLICY_WATCH_S": "0", "GATEWAY_API_KEYS": "", "GATEWAY_ADMIN_KEYS": ""}
    with ServerProcess(policy, log_path=directory / "server.log", env=env) as server:
        server.wait_ready()
        yield server.url + "/v1"


@pytest.fixture(autouse=True)
def fresh_upstream(fake: ThreadedFakeUpstream) -> None:
    """Each test sees only its own upstream requests."""
    fake.reset()


@pytest.fixture(params=TASKS)
def task(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sent(fake: ThreadedFakeUpstream, task: str) -> list[dict[str, Any]]:
    """The JSON bodies the task's upstream received during this test, oldest first."""
    return [r.body for r in fake.requests() if r.protocol == task]


# --- reading upstream bodies, protocol by protocol --------------------------------------------


def _text(content: Any) -> str:
    """A message's text: a string, or the text of a list of parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            _text(part.get("text", part.get("content", "")))
            for part in content
            if isinstance(part, dict) and part.get("type") in {"text", "tool_result", None}
        )
    return ""


def conversation(task: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of each message the upstream received, system prompts left out."""
    return [
        (m["role"], _text(m.get("content")))
        for m in body["messages"]
        if m["role"] not in {"system", "developer"}
    ]


def tool_schemas(task: str, body: dict[str, Any]) -> dict[str, Any]:
    """The tools offered upstream, name -> parameters schema, in each protocol's own shape."""
    tools = body.get("tools") or []
    if task == "anthropic":
        return {t["name"]: t["input_schema"] for t in tools}
    return {t["function"]["name"]: t["function"].get("parameters") for t in tools}


def tool_names(task: str, body: dict[str, Any]) -> list[str]:
    return list(tool_schemas(task, body))


def assert_tool_forced(task: str, body: dict[str, Any], name: str) -> None:
    """The upstream was told to call tool `name`, in its protocol's words."""
    assert task == "ollama" or name in tool_names(task, body)
    choice = body.get("tool_choice")
    if task == "openai":
        assert choice == {"type": "function", "function": {"name": name}}, choice
    elif task == "anthropic":
        assert isinstance(choice, dict), choice
        assert (choice["type"], choice["name"]) == ("tool", name), choice
    else:  # Ollama has no tool_choice: no tools offered, the tool's parameters as the format
        assert tool_names(task, body) == [], body
        assert isinstance(body.get("format"), dict), body


@dataclass
class ToolExchange:
    calls: list[tuple[str | None, str]] = field(default_factory=list)
    """(id, name) of each tool call in the history's assistant turns."""
    results: list[tuple[str | None, str]] = field(default_factory=list)
    """(the call id it answers, text) of each tool result."""


def tool_exchange(task: str, body: dict[str, Any]) -> ToolExchange:
    """The tool calls and results of a history, as the upstream received it."""
    exchange = ToolExchange()
    for message in body["messages"]:
        if task == "anthropic":
            blocks = message["content"] if isinstance(message["content"], list) else []
            for block in blocks:
                if block.get("type") == "tool_use":
                    exchange.calls.append((block["id"], block["name"]))
                elif block.get("type") == "tool_result":
                    exchange.results.append((block["tool_use_id"], _text(block.get("content"))))
            continue
        for call in message.get("tool_calls") or []:
            exchange.calls.append((call.get("id"), call["function"]["name"]))
        if message["role"] == "tool":
            exchange.results.append((message.get("tool_call_id"), _text(message["content"])))
    return exchange


def assert_tool_round_trip_reached_upstream(task: str, bodies: list[dict[str, Any]]) -> None:
    """Two upstream calls: tools offered, then the history with the call and its result."""
    assert len(bodies) == 2, f"expected 2 upstream calls, got {len(bodies)}"
    assert tool_names(task, bodies[0]) == ["get_weather"]
    exchange = tool_exchange(task, bodies[1])
    assert [name for _, name in exchange.calls] == ["get_weather"]
    assert [text for _, text in exchange.results] == [TOOL_RESULT]
    if task != "ollama":  # Ollama's tool messages carry no call id
        assert exchange.results[0][0] == exchange.calls[0][0] is not None


def is_city_schema(value: Any) -> bool:
    """Whether `value` is a JSON schema whose properties are City's fields."""
    properties = value.get("properties") if isinstance(value, dict) else None
    return isinstance(properties, dict) and set(properties) == CITY_FIELDS


def has_city_schema(value: Any) -> bool:
    """Whether City's JSON schema is anywhere in `value`."""
    if is_city_schema(value):
        return True
    if isinstance(value, dict):
        return any(has_city_schema(v) for v in value.values())
    if isinstance(value, list):
        return any(has_city_schema(v) for v in value)
    return False


def assert_schema_reached_upstream(
    task: str, body: dict[str, Any], *, via: Literal["response_format", "tool"]
) -> None:
    """City's schema reached the upstream, where its protocol wants it."""
    if via == "tool" and task == "ollama":
        # Ollama cannot force a tool: the forced tool's parameters are the answer's format.
        assert is_city_schema(body.get("format")), body
    elif via == "tool":
        assert any(is_city_schema(s) for s in tool_schemas(task, body).values()), body
    elif task == "openai":  # passed as is
        response_format = body["response_format"]
        assert response_format["type"] == "json_schema", response_format
        assert is_city_schema(response_format["json_schema"]["schema"]), response_format
    elif task == "ollama":
        assert is_city_schema(body.get("format")), body.get("format")
    else:  # Anthropic: its native structured output, or a tool forced to carry the schema
        assert has_city_schema(body), body


def check_weather_arguments(arguments: str | dict[str, Any]) -> dict[str, Any]:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert set(args) == {"city", "unit"}, args
    assert isinstance(args["city"], str) and args["city"], args
    assert args["unit"] == "celsius", args  # the enum's first value: the schema arrived whole
    return args


def names_field(error: openai.APIStatusError, name: str) -> bool:
    """Whether an error body names the request field `name` (its `param`, or its message)."""
    body = error.body if isinstance(error.body, dict) else {}
    detail = body.get("error", body) if isinstance(body.get("error", body), dict) else body
    if detail.get("param") == name:
        return True
    message = str(detail.get("message", ""))
    return re.search(rf"(^|[\s`'\"(]){re.escape(name)}([\s`'\":=),]|$)", message) is not None


# --- the openai SDK, sync and async through one interface -------------------------------------


class Chat:
    """`chat.completions` of the sync or async openai client, called the same way."""

    def create(self, **kwargs: Any) -> ChatCompletion:
        raise NotImplementedError

    def stream(self, **kwargs: Any) -> list[ChatCompletionChunk]:
        raise NotImplementedError

    def parse(self, **kwargs: Any) -> ParsedChatCompletion[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SyncChat(Chat):
    def __init__(self, base_url: str) -> None:
        self.client = openai.OpenAI(
            base_url=base_url, api_key=DUMMY_KEY, max_retries=0, timeout=TIMEOUT_S
        )

    def create(self, **kwargs: Any) -> ChatCompletion:
        return self.client.chat.completions.create(**kwargs)

    def stream(self, **kwargs: Any) -> list[ChatCompletionChunk]:
        return list(self.client.chat.completions.create(stream=True, **kwargs))

    def parse(self, **kwargs: Any) -> ParsedChatCompletion[Any]:
        return self.client.chat.completions.parse(**kwargs)

    def close(self) -> None:
        self.client.close()


class AsyncChat(Chat):
    """The async client, on one event loop of its own for the test."""

    def __init__(self, base_url: str) -> None:
        self.runner = asyncio.Runner()
        self.client = openai.AsyncOpenAI(
            base_url=base_url, api_key=DUMMY_KEY, max_retries=0, timeout=TIMEOUT_S
        )

    def create(self, **kwargs: Any) -> ChatCompletion:
        return self.runner.run(self.client.chat.completions.create(**kwargs))

    def stream(self, **kwargs: Any) -> list[ChatCompletionChunk]:
        async def collect() -> list[ChatCompletionChunk]:
            stream = await self.client.chat.completions.create(stream=True, **kwargs)
            return [chunk async for chunk in stream]

        return self.runner.run(collect())

    def parse(self, **kwargs: Any) -> ParsedChatCompletion[Any]:
        return self.runner.run(self.client.chat.completions.parse(**kwargs))

    def close(self) -> None:
        self.runner.run(self.client.close())
        self.runner.close()


@pytest.fixture(params=["sync", "async"])
def chat(request: pytest.FixtureRequest, gateway: str) -> Iterator[Chat]:
    client: Chat = SyncChat(gateway) if request.param == "sync" else AsyncChat(gateway)
    yield client
    client.close()


@dataclass
class Streamed:
    """A stream of chunks put together the way clients do it."""

    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str | None
    usage: Any


def assemble(chunks: list[ChatCompletionChunk]) -> Streamed:
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish_reason = None
    usage = None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            assert choice.index == 0
            delta = choice.delta
            if delta.content:
                text.append(delta.content)
            for call in delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                if call.id:
                    slot["id"] = call.id
                if call.function is not None:
                    slot["name"] += call.function.name or ""  # as LangChain merges chunks
                    slot["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    return Streamed("".join(text), [calls[i] for i in sorted(calls)], finish_reason, usage)


# --- the openai SDK ---------------------------------------------------------------------------


def test_openai_tools_round_trip(chat: Chat, task: str, fake: ThreadedFakeUpstream) -> None:
    messages: list[Any] = [{"role": "user", "content": USER_ASKS}]
    first = chat.create(model=task, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    check_weather_arguments(call.function.arguments)

    messages.append(choice.message)  # the SDK's own message object, as users append it
    messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT})
    final = chat.create(model=task, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert not final.choices[0].message.tool_calls
    assert TOOL_RESULT in (final.choices[0].message.content or "")
    assert_tool_round_trip_reached_upstream(task, sent(fake, task))


def test_openai_streamed_tools_round_trip(
    chat: Chat, task: str, fake: ThreadedFakeUpstream
) -> None:
    messages: list[Any] = [{"role": "user", "content": USER_ASKS}]
    options = {"include_usage": True}
    first = assemble(
        chat.stream(model=task, messages=messages, tools=[WEATHER_TOOL], stream_options=options)
    )
    assert first.finish_reason == "tool_calls"
    assert len(first.tool_calls) == 1
    call = first.tool_calls[0]
    assert call["id"] and call["name"] == "get_weather"
    check_weather_arguments(call["arguments"])
    assert first.usage is not None and first.usage.completion_tokens > 0

    messages.append(
        {
            "role": "assistant",
            "content": first.text or None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT})
    final = assemble(
        chat.stream(model=task, messages=messages, tools=[WEATHER_TOOL], stream_options=options)
    )
    assert final.finish_reason == "stop"
    assert final.tool_calls == []
    assert TOOL_RESULT in final.text
    assert final.usage is not None
    assert_tool_round_trip_reached_upstream(task, sent(fake, task))


def test_openai_parse_returns_the_pydantic_model(
    chat: Chat, task: str, fake: ThreadedFakeUpstream
) -> None:
    completion = chat.parse(
        model=task,
        messages=[{"role": "user", "content": "Name a city and its population."}],
        response_format=City,
    )
    message = completion.choices[0].message
    assert message.refusal is None
    assert isinstance(message.parsed, City)
    assert message.parsed.name
    assert City.model_validate_json(message.content or "") == message.parsed
    (body,) = sent(fake, task)
    assert_schema_reached_upstream(task, body, via="response_format")
    if task == "openai":
        json_schema = body["response_format"]["json_schema"]
        assert (json_schema["name"], json_schema["strict"]) == ("City", True)


def test_openai_five_turn_history_of_sdk_message_objects(
    chat: Chat, task: str, fake: ThreadedFakeUpstream
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Turn 1"}]
    expected: list[tuple[str, str]] = [("user", "Turn 1")]
    for turn in range(1, 6):
        completion = chat.create(model=task, messages=messages)
        message = completion.choices[0].message
        assert message.role == "assistant" and message.content
        # The SDK's own object: it sends back every field the reply had (refusal: null...).
        messages.append(message)
        expected.append(("assistant", message.content))
        if turn < 5:
            messages.append({"role": "user", "content": f"Turn {turn + 1}"})
            expected.append(("user", f"Turn {turn + 1}"))
    bodies = sent(fake, task)
    assert len(bodies) == 5
    assert conversation(task, bodies[-1]) == expected[:-1]  # the 5th call: 9 messages


def test_openai_n_2(chat: Chat, task: str, fake: ThreadedFakeUpstream) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    if task == "openai":
        completion = chat.create(model=task, messages=messages, n=2)
        assert [c.index for c in completion.choices] == [0, 1]
        assert all(c.message.content for c in completion.choices)
        (body,) = sent(fake, task)  # one upstream call, billed once
        assert body["n"] == 2
    else:  # a provider that cannot give n choices: a clear 400 naming `n`, nothing sent
        with pytest.raises(openai.BadRequestError) as refused:
            chat.create(model=task, messages=messages, n=2)
        assert refused.value.status_code == 400
        assert names_field(refused.value, "n"), refused.value.body
        assert sent(fake, task) == []


def test_openai_seed(chat: Chat, task: str, fake: ThreadedFakeUpstream) -> None:
    completion = chat.create(
        model=task, messages=[{"role": "user", "content": "Say hello."}], seed=7
    )
    assert completion.choices[0].message.content
    (body,) = sent(fake, task)
    if task == "openai":
        assert body["seed"] == 7
    elif task == "ollama":
        assert body["options"]["seed"] == 7
    else:  # the Messages API has no seed, and refuses unknown fields
        assert "seed" not in body


def test_openai_max_completion_tokens_reaches_upstream_by_its_name(
    chat: Chat, task: str, fake: ThreadedFakeUpstream
) -> None:
    completion = chat.create(
        model=task,
        messages=[{"role": "user", "content": "Say hello."}],
        max_completion_tokens=50,
    )
    assert completion.choices[0].message.content
    (body,) = sent(fake, task)
    if task == "openai":  # reasoning models refuse max_tokens
        assert body["max_completion_tokens"] == 50
        assert "max_tokens" not in body
    elif task == "anthropic":
        assert body["max_tokens"] == 50
    else:
        assert body["options"]["num_predict"] == 50


# --- LangChain --------------------------------------------------------------------------------


def chat_openai(gateway: str, task: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=gateway, api_key=SecretStr(DUMMY_KEY), model=task, max_retries=0, timeout=TIMEOUT_S
    )


@pytest.mark.parametrize("how", ["invoke", "stream"])
def test_langchain_bind_tools_round_trip(
    gateway: str, task: str, how: str, fake: ThreadedFakeUpstream
) -> None:
    calls: list[tuple[str, str]] = []

    @langchain_tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """The current weather in a city."""
        calls.append((city, unit))
        return TOOL_RESULT

    llm = chat_openai(gateway, task).bind_tools([get_weather])

    def ask(messages: list[BaseMessage]) -> BaseMessage:
        if how == "invoke":
            return llm.invoke(messages)
        merged: AIMessageChunk | None = None
        for chunk in llm.stream(messages):
            assert isinstance(chunk, AIMessageChunk)
            merged = chunk if merged is None else merged + chunk
        assert merged is not None
        return merged

    messages: list[BaseMessage] = [HumanMessage(USER_ASKS)]
    asked = ask(messages)
    tool_calls = getattr(asked, "tool_calls", [])
    assert [c["name"] for c in tool_calls] == ["get_weather"], asked
    check_weather_arguments(tool_calls[0]["args"])
    messages.append(asked)
    messages.append(get_weather.invoke(tool_calls[0]))  # a ToolMessage
    assert len(calls) == 1 and calls[0][1] == "celsius"

    final = ask(messages)
    assert not getattr(final, "tool_calls", [])
    assert TOOL_RESULT in str(final.content)
    assert_tool_round_trip_reached_upstream(task, sent(fake, task))


@pytest.mark.parametrize("method", ["default", "json_schema", "function_calling"])
def test_langchain_with_structured_output(
    gateway: str, task: str, method: str, fake: ThreadedFakeUpstream
) -> None:
    llm = chat_openai(gateway, task)
    structured = (
        llm.with_structured_output(City)
        if method == "default"
        else llm.with_structured_output(City, method=method)  # type: ignore[arg-type]
    )
    city = structured.invoke("Name a city and its population.")
    assert isinstance(city, City)
    assert city.name
    (body,) = sent(fake, task)
    if method == "function_calling":
        assert_schema_reached_upstream(task, body, via="tool")
        assert_tool_forced(task, body, "City")
    else:  # the default is json_schema
        assert_schema_reached_upstream(task, body, via="response_format")


# --- pydantic-ai ------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_stream"])
async def test_pydantic_ai_agent_with_a_tool_and_output_type(
    gateway: str, task: str, streamed: bool, fake: ThreadedFakeUpstream
) -> None:
    client = openai.AsyncOpenAI(
        base_url=gateway, api_key=DUMMY_KEY, max_retries=0, timeout=TIMEOUT_S
    )
    model = OpenAIChatModel(task, provider=OpenAIProvider(openai_client=client))
    agent = Agent(model, output_type=City, instructions="Answer with a city.")
    calls: list[str] = []

    @agent.tool_plain
    def population_of(city: str) -> int:
        """How many people live in a city."""
        calls.append(city)
        return 2_100_000

    prompt = "Which city is that, and how many people live there? Look it up."
    try:
        if streamed:
            async with agent.run_stream(prompt) as result:
                city = await result.get_output()
        else:
            city = (await agent.run(prompt)).output
    finally:
        await client.close()
    assert isinstance(city, City)
    assert len(calls) == 1 and calls[0]
    bodies = sent(fake, task)
    assert len(bodies) >= 2
    # Its output is a tool too (`final_result`), which the model is required to call.
    assert tool_names(task, bodies[0]) == ["population_of", "final_result"]
    if task == "openai":
        assert bodies[0]["tool_choice"] == "required"
    elif task == "anthropic":
        assert bodies[0]["tool_choice"]["type"] == "any"
    assert [text for _, text in tool_exchange(task, bodies[1]).results] == ["2100000"]


# --- instructor -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA], ids=str)
def test_instructor_response_model(
    gateway: str, task: str, mode: instructor.Mode, fake: ThreadedFakeUpstream
) -> None:
    base = openai.OpenAI(base_url=gateway, api_key=DUMMY_KEY, max_retries=0, timeout=TIMEOUT_S)
    client = instructor.from_openai(base, mode=mode)
    try:
        city = client.chat.completions.create(
            model=task,
            messages=[{"role": "user", "content": "Name a city and its population."}],
            response_model=City,
            max_retries=0,
        )
    finally:
        base.close()
    assert isinstance(city, City)
    assert city.name
    (body,) = sent(fake, task)  # valid at the first try
    if mode == instructor.Mode.TOOLS:
        assert_schema_reached_upstream(task, body, via="tool")
        assert_tool_forced(task, body, "City")
    else:
        assert_schema_reached_upstream(task, body, via="response_format")


# --- litellm as a client ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm_client() -> Any:
    import litellm

    litellm.telemetry = False
    return litellm


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_litellm_tools(
    litellm_client: Any, gateway: str, task: str, stream: bool, fake: ThreadedFakeUpstream
) -> None:
    response = litellm_client.completion(
        model=f"openai/{task}",
        api_base=gateway,
        api_key=DUMMY_KEY,
        messages=[{"role": "user", "content": USER_ASKS}],
        tools=[WEATHER_TOOL],
        stream=stream,
        num_retries=0,
        timeout=TIMEOUT_S,
    )
    if stream:
        response = litellm_client.stream_chunk_builder(list(response))
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id and call.function.name == "get_weather"
    check_weather_arguments(call.function.arguments)
    (body,) = sent(fake, task)
    assert tool_names(task, body) == ["get_weather"]
