"""The clients being compared, each behind the same three calls: start, call, first_token.

Every scenario asks the same FakeUpstream the same question and must get back `REPLY_TEXT`
(whole, and joined from the stream's deltas); a scenario that answers anything else fails the
run rather than producing a fast but wrong number. Libraries are imported in `start`, so a
client process loads only the library it measures.
"""

from __future__ import annotations

import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

MODEL = "gpt-4o-mini"
"""What every scenario ends up asking the upstream for (the gateway's `primary` provider)."""
BACKUP_MODEL = "gpt-4o"
DEAD_MODEL = "dead-model"
"""The model the upstream always fails: the first provider of the failover chain."""
TASK = "default"
LEAN_TASK = "lean"
"""The same chain on the `openai_http` provider (no SDK on the gateway's side)."""
FAILOVER_TASK = "failover"
SINGLE_TASK = "single"
BENCH_KEY = "bench-key"
UPSTREAM_ENV = "BENCH_UPSTREAM_URL"
SERVE_KEEPALIVE_S = 2.0
"""How long the serve client keeps an idle connection (below the server's 5 s keep-alive)."""
POLICY_PATH = Path(__file__).with_name("routing.yaml")
LONG_TASK = "long"
"""The streaming measurements' chain: [long_primary, long_backup], answering LONG_TEXT."""
IDLE_TASK = "idle"
"""The open-stream memory measurement's chain, whose upstream sends one chunk and holds."""
LONG_MODEL = "long-model"
LONG_BACKUP_MODEL = "long-backup"
IDLE_MODEL = "idle-model"
LONG_CHUNKS = 500
LONG_TEXT = " ".join(f"tok{i}" for i in range(LONG_CHUNKS))
"""The streaming measurements' answer: the upstream streams it as one chunk a word."""
TENSORZERO_CONFIG_ENV = "BENCH_TENSORZERO_CONFIG"
TENSORZERO_MODEL = "bench"
"""TensorZero's model of two providers, [primary, backup], in the config the runner writes."""
TENSORZERO_LONG_MODEL = "bench_long"
TENSORZERO_FAILOVER_MODEL = "bench_failover"
"""TensorZero's model [dead, primary]: the first provider answers 500 every time."""

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello to the benchmark in one sentence."},
]
REPLY_TEXT = (
    "Hello, benchmark: every client gets this same reply, word for word, "
    "so that each one parses and streams exactly the same payload."
)
"""Every model's healthy answer, set on the upstream before any client starts."""

# The same list, as the OpenAI SDK's types name it (a cast only: the SDK is not imported here).
SDK_MESSAGES = cast("list[ChatCompletionMessageParam]", MESSAGES)


class WrongAnswer(AssertionError):
    """A scenario's reply is not the one the upstream was told to give."""


def check_text(scenario: str, text: str | None) -> None:
    if text != REPLY_TEXT:
        raise WrongAnswer(f"{scenario}: expected the upstream's fixed reply, got {text!r}")


class Scenario(ABC):
    """One client under test. `call` and `first_token` raise on any failure."""

    name: ClassVar[str]
    label: ClassVar[str]
    streams: ClassVar[bool] = True

    def __init__(self, upstream_url: str, server_url: str | None = None) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.server_url = server_url.rstrip("/") if server_url else None

    @abstractmethod
    async def start(self) -> None:
        """Import the library and build the client (not timed)."""

    @abstractmethod
    async def call(self) -> None:
        """One whole completion, checked."""

    async def first_token(self) -> float:
        """Seconds from the call to the first text delta; the rest is read and checked."""
        began = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        async for delta in self._deltas():
            if first is None:
                first = time.perf_counter() - began
            parts.append(delta)
        if first is None:
            raise WrongAnswer(f"{self.name}: the stream ended without any text")
        check_text(self.name, "".join(parts))
        return first

    async def _deltas(self) -> AsyncIterator[str]:
        raise NotImplementedError(f"{self.name} does not stream")
        yield ""  # pragma: no cover - makes this an async generator

    async def long_stream(self) -> tuple[float, int]:
        """Seconds to the first delta of LONG_TEXT streamed, and its deltas (checked)."""
        began = time.perf_counter()
        first: float | None = None
        chunks = 0
        async for _ in self._long_deltas():
            chunks += 1
            if first is None:
                first = time.perf_counter() - began
        if first is None or chunks != LONG_CHUNKS:
            raise WrongAnswer(f"{self.name}: the long stream gave {chunks} deltas")
        return first, chunks

    async def _long_deltas(self) -> AsyncIterator[str]:
        raise NotImplementedError(f"{self.name} does not stream the long answer")
        yield ""  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        return None


def _chunk_text(chunk: Any) -> str:
    """The text delta of an OpenAI-shaped stream chunk (`choices[0].delta.content`)."""
    if not chunk.choices:
        return ""
    delta = chunk.choices[0].delta
    return (delta.content if delta is not None else None) or ""


class DirectSDK(Scenario):
    """(a) The OpenAI SDK alone, straight at the upstream: the baseline."""

    name = "direct"
    label = "OpenAI SDK, direct"

    async def start(self) -> None:
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=self.upstream_url + "/v1", api_key=BENCH_KEY, max_retries=0
        )

    async def call(self) -> None:
        reply = await self._client.chat.completions.create(model=MODEL, messages=SDK_MESSAGES)
        check_text(self.name, reply.choices[0].message.content)

    async def _deltas(self) -> AsyncIterator[str]:
        stream = await self._client.chat.completions.create(
            model=MODEL, messages=SDK_MESSAGES, stream=True
        )
        async with stream:
            async for chunk in stream:
                if text := _chunk_text(chunk):
                    yield text

    async def aclose(self) -> None:
        await self._client.close()


class GatewayProvider(Scenario):
    """The gateway's OpenAI provider alone (no router): what the adapter adds to the SDK."""

    name = "provider"
    label = "gateway OpenAIService, no router"

    async def start(self) -> None:
        from gateway.providers import LLMFactory

        self._llm = LLMFactory.create(
            "openai", model=MODEL, base_url=self.upstream_url + "/v1", api_key=BENCH_KEY
        )

    async def call(self) -> None:
        completion = await self._llm.complete(MESSAGES)
        check_text(self.name, completion.text)

    async def _deltas(self) -> AsyncIterator[str]:
        async with self._llm.stream(MESSAGES) as stream:
            async for delta in stream:
                yield delta

    async def aclose(self) -> None:
        await self._llm.aclose()


class _GatewayScenario(Scenario):
    """A `gateway.Router` built from bench/routing.yaml, metrics on a private registry."""

    async def start(self) -> None:
        from prometheus_client import CollectorRegistry

        from gateway import Router
        from gateway.metrics import GatewayMetrics

        os.environ[UPSTREAM_ENV] = self.upstream_url
        # from_yaml, as an application would: the file watcher runs, as it does in production.
        self._router = Router.from_yaml(POLICY_PATH, hooks=[GatewayMetrics(CollectorRegistry())])
        await self._router.__aenter__()

    async def _generate(self, task: str, provider: str) -> Any:
        routed = await self._router.generate(MESSAGES, task=task)
        check_text(self.name, routed.text)
        if routed.provider != provider:
            raise WrongAnswer(f"{self.name}: answered by {routed.provider}, expected {provider}")
        return routed

    async def aclose(self) -> None:
        await self._router.aclose()


class GatewayRouter(_GatewayScenario):
    """(b) `gateway.Router`: two-provider chain, retries, breakers and metrics all on."""

    name = "router"
    label = "gateway Router"

    async def call(self) -> None:
        await self._generate(TASK, "primary")

    async def _deltas(self) -> AsyncIterator[str]:
        async with self._router.stream(MESSAGES, task=TASK) as stream:
            async for delta in stream:
                yield delta
        if stream.provider != "primary":
            raise WrongAnswer(f"{self.name}: streamed by {stream.provider}, expected primary")

    async def _long_deltas(self) -> AsyncIterator[str]:
        async with self._router.stream(MESSAGES, task=LONG_TASK) as stream:
            async for delta in stream:
                yield delta


class GatewayRouterHTTP(_GatewayScenario):
    """`gateway.Router` as in (b), its chain on the `openai_http` provider instead."""

    name = "router_http"
    label = "gateway Router, openai_http provider"

    async def call(self) -> None:
        await self._generate(LEAN_TASK, "primary_http")

    async def _deltas(self) -> AsyncIterator[str]:
        async with self._router.stream(MESSAGES, task=LEAN_TASK) as stream:
            async for delta in stream:
                yield delta
        if stream.provider != "primary_http":
            raise WrongAnswer(f"{self.name}: streamed by {stream.provider}, expected primary_http")


class FailoverOpenBreaker(_GatewayScenario):
    """The chain [dead, primary] once dead's breaker is open: every request skips dead."""

    name = "failover_open"
    label = "Router, chain [dead (breaker open), primary]"
    streams = False

    async def start(self) -> None:
        await super().start()
        breaker = self._router.candidates["dead"].breaker
        for _ in range(50):
            if breaker.state == "open":
                return
            await self._generate(FAILOVER_TASK, "primary")
        raise RuntimeError(
            f"{self.name}: the dead provider's breaker is {breaker.state!r} after 50 requests "
            "to a provider the upstream always fails; check bench/routing.yaml's breaker"
        )

    async def call(self) -> None:
        routed = await self._generate(FAILOVER_TASK, "primary")
        if routed.attempts[0].outcome != "breaker_open":
            raise WrongAnswer(
                f"{self.name}: the dead provider was {routed.attempts[0].outcome}, "
                "not skipped as breaker_open"
            )


class FailoverWithout(_GatewayScenario):
    """The same chain without the dead provider: [primary]."""

    name = "failover_without"
    label = "Router, chain [primary]"
    streams = False

    async def call(self) -> None:
        await self._generate(SINGLE_TASK, "primary")


class LiteLLMRouter(Scenario):
    """(c) LiteLLM's Router with the same fallback, retries and cooldown (its breaker)."""

    name = "litellm"
    label = "LiteLLM Router"

    async def start(self) -> None:
        # Without this LiteLLM fetches its price map from GitHub at import time.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        for logger in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
            logging.getLogger(logger).setLevel(logging.CRITICAL)

        def deployment(name: str, model: str) -> dict[str, Any]:
            return {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": self.upstream_url + "/v1",
                    "api_key": BENCH_KEY,
                },
            }

        # The gateway policy's equivalents: 3 attempts (2 retries), breaker fail_max 5 with a
        # 30 s reset (LiteLLM's cooldown), 30 s timeout, fallback primary -> backup.
        self._router = litellm.Router(
            model_list=[deployment("primary", MODEL), deployment("backup", BACKUP_MODEL)],
            fallbacks=[{"primary": ["backup"]}],
            num_retries=2,
            allowed_fails=5,
            cooldown_time=30,
            timeout=30,
        )

    async def call(self) -> None:
        reply = await self._router.acompletion(model="primary", messages=MESSAGES)
        check_text(self.name, reply.choices[0].message.content)

    async def _deltas(self) -> AsyncIterator[str]:
        stream = await self._router.acompletion(model="primary", messages=MESSAGES, stream=True)
        async for chunk in stream:
            if text := _chunk_text(chunk):
                yield text


class TensorZeroEmbedded(Scenario):
    """TensorZero's Rust gateway embedded in-process (its Python client's `build_embedded`),
    on a model of two providers [primary, backup] at the same upstream: the Router's chain."""

    name = "tensorzero"
    label = "TensorZero embedded gateway (Rust, in-process)"

    async def start(self) -> None:
        from tensorzero import AsyncTensorZeroGateway

        built = AsyncTensorZeroGateway.build_embedded(
            config_file=os.environ[TENSORZERO_CONFIG_ENV], async_setup=True
        )
        self._gateway = await built  # type: ignore[misc]
        system, user = MESSAGES[0]["content"], MESSAGES[1]["content"]
        self._input = {"system": system, "messages": [{"role": "user", "content": user}]}

    async def call(self) -> None:
        reply = await self._gateway.inference(model_name=TENSORZERO_MODEL, input=self._input)
        check_text(self.name, "".join(getattr(block, "text", "") for block in reply.content))

    async def _stream(self, model: str) -> AsyncIterator[str]:
        stream = await self._gateway.inference(model_name=model, input=self._input, stream=True)
        async for chunk in stream:
            for block in chunk.content:
                if text := getattr(block, "text", None):
                    yield text

    def _deltas(self) -> AsyncIterator[str]:
        return self._stream(TENSORZERO_MODEL)

    def _long_deltas(self) -> AsyncIterator[str]:
        return self._stream(TENSORZERO_LONG_MODEL)


class TensorZeroFailover(TensorZeroEmbedded):
    """TensorZero with a first provider the upstream fails (500) on every request, then the
    one that answers: it has no breaker, so every request tries the failing one first."""

    name = "tensorzero_failover"
    label = "TensorZero embedded, chain [dead (500 every time), primary]"
    streams = False

    async def call(self) -> None:
        reply = await self._gateway.inference(
            model_name=TENSORZERO_FAILOVER_MODEL, input=self._input
        )
        check_text(self.name, "".join(getattr(block, "text", "") for block in reply.content))


class GatewayServe(DirectSDK):
    """(d) `gateway serve` in its own process, reached by the OpenAI SDK over HTTP."""

    name = "serve"
    label = "gateway serve (via OpenAI SDK)"
    task = TASK
    """What the client names as `model`: the server routes by task."""

    async def start(self) -> None:
        import httpx2
        import openai

        if self.server_url is None:
            raise RuntimeError("the serve scenario needs --server URL")
        # The SDK's defaults, except that idle connections are dropped after 2 s rather than
        # 5 s. gateway serve (uvicorn) closes a connection idle for 5 s, and a client whose
        # pool keeps it as long races that close: after a pause of ~5 s (this client's turn
        # waiting on the others), a request on such a connection fails with
        # APIConnectionError (the SDK's own retries, off here, would hide it). Connections
        # are reused within a round either way, so this changes no measured figure.
        limits = httpx2.Limits(
            max_connections=1000, max_keepalive_connections=100, keepalive_expiry=SERVE_KEEPALIVE_S
        )
        self._client = openai.AsyncOpenAI(
            base_url=self.server_url + "/v1",
            api_key=BENCH_KEY,
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits),
        )

    async def call(self) -> None:
        # The server routes by task: `model` names it.
        reply = await self._client.chat.completions.create(model=self.task, messages=SDK_MESSAGES)
        check_text(self.name, reply.choices[0].message.content)

    async def _deltas(self) -> AsyncIterator[str]:
        stream = await self._client.chat.completions.create(
            model=self.task, messages=SDK_MESSAGES, stream=True
        )
        async with stream:
            async for chunk in stream:
                if text := _chunk_text(chunk):
                    yield text


class GatewayServeHTTP(GatewayServe):
    """(d) as above, the server's chain on the `openai_http` provider."""

    name = "serve_http"
    label = "gateway serve, openai_http provider (via OpenAI SDK)"
    task = LEAN_TASK


class ServeFloor(GatewayServe):
    """The OpenAI SDK through `bench.floor_server`: a bare forwarder on the same uvicorn.

    Not a contender; the floor under `gateway serve`, showing how much of its added latency any
    Python server on this stack adds on this machine.
    """

    name = "serve_floor"
    label = "serve's floor: bare uvicorn + aiohttp forwarder (via OpenAI SDK)"


class RawHTTP(Scenario):
    """No SDK: httpx2 (the SDKs' transport) posting JSON and reading the SSE lines itself.

    Not a contender; the floor under the SDK, showing how much of a call the SDK costs.
    """

    name = "raw_http"
    label = "httpx2, no SDK (floor)"

    async def start(self) -> None:
        import httpx2

        self._client = httpx2.AsyncClient(base_url=self.upstream_url + "/v1", timeout=30)
        self._headers = {"authorization": f"Bearer {BENCH_KEY}"}

    async def call(self) -> None:
        response = await self._client.post(
            "/chat/completions",
            json={"model": MODEL, "messages": MESSAGES},
            headers=self._headers,
        )
        response.raise_for_status()
        check_text(self.name, response.json()["choices"][0]["message"]["content"])

    async def _deltas(self) -> AsyncIterator[str]:
        body = {"model": MODEL, "messages": MESSAGES, "stream": True}
        async with self._client.stream(
            "POST", "/chat/completions", json=body, headers=self._headers
        ) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or []
                if choices and (text := (choices[0].get("delta") or {}).get("content")):
                    yield text

    async def aclose(self) -> None:
        await self._client.aclose()


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        DirectSDK,
        GatewayProvider,
        GatewayRouter,
        GatewayRouterHTTP,
        LiteLLMRouter,
        GatewayServe,
        GatewayServeHTTP,
        ServeFloor,
        RawHTTP,
        FailoverOpenBreaker,
        FailoverWithout,
        TensorZeroEmbedded,
        TensorZeroFailover,
    )
}
