"""The chat route's short way in (`GatewayApp`'s lane) and when it steps aside.

The lane skips Starlette's and FastAPI's own layers for `POST /v1/chat/completions`; every
behaviour of the route is tested over a real server in test_server.py, which runs through it.
Here: that the lane is really taken, and that it is not taken when skipping those layers
would change what the app does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.server._app import CHAT_PATH, GatewayApp, create_app
from gateway.server._config import ServerSettings
from gateway.testing import FakeUpstream

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}


def chat_scope(**extra: Any) -> Scope:
    return {"type": "http", "method": "POST", "path": CHAT_PATH, "root_path": "", **extra}


@asynccontextmanager
async def started(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run (httpx's ASGI transport does not run it)."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()

    async def send(message: Message) -> None:
        await outbox.put(message)

    lifespan = asyncio.create_task(app({"type": "lifespan", "state": {}}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await lifespan


class Stamp:
    """Middleware an embedding application adds: marks every response it sees."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-stamp", b"1")]}
            await send(message)

        await self.app(scope, receive, stamped)


@pytest.fixture
async def policy(tmp_path: Path) -> AsyncIterator[Path]:
    async with FakeUpstream() as upstream:
        path = tmp_path / "routing.yaml"
        path.write_text(
            "version: 1\n"
            "providers:\n"
            f"  mini: {{type: openai_http, model: gpt-4o-mini, base_url: '{upstream.url}/v1',"
            " api_key: sk-test}\n"
            "tasks:\n"
            "  chat: {chain: [mini]}\n"  # no `default`: an unknown task is a 404
        )
        yield path


async def test_the_chat_route_takes_the_lane(policy: Path) -> None:
    app = create_app(policy, settings=ServerSettings())
    # Also pins FastAPI's telemetry switch the lane reads: if a FastAPI upgrade moves it, the
    # lane closes (safe, but slower) and this test says so.
    assert app.chat_lane_open(chat_scope())
    async with started(app) as client:
        response = await client.post(CHAT_PATH, json=BODY)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert response.headers["x-gateway-provider"] == "mini"


async def test_middleware_added_after_create_app_sees_chat_requests(policy: Path) -> None:
    app = create_app(policy, settings=ServerSettings(max_body_bytes=1_000))
    app.add_middleware(Stamp)
    assert not app.chat_lane_open(chat_scope())
    async with started(app) as client:
        answered = await client.post(CHAT_PATH, json=BODY)
        refused = await client.post(
            CHAT_PATH, content=b"{", headers={"content-type": "application/json"}
        )
        too_large = await client.post(CHAT_PATH, content=b"x" * 2_000)
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-stamp"] == "1"
    assert refused.status_code == 400
    assert refused.headers["x-stamp"] == "1"
    # Off the lane, the body-limit middleware refuses it.
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "request_too_large"


async def test_errors_on_the_lane_use_the_apps_handlers(policy: Path) -> None:
    app = create_app(policy, settings=ServerSettings())
    async with started(app) as client:
        malformed = await client.post(
            CHAT_PATH, content=b"{", headers={"content-type": "application/json"}
        )
        unknown = await client.post(CHAT_PATH, json={**BODY, "model": "nope"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_request"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


async def test_a_body_sent_without_a_length_is_read_up_to_the_limit_and_refused(
    policy: Path,
) -> None:
    # In-process: over TCP, a server that answers before the client has sent everything and
    # closes may reset the connection before the client reads the answer.
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            sent += 1
            yield b"z" * 100
        yield b'"}]}'

    app = create_app(policy, settings=ServerSettings(max_body_bytes=1_000))
    async with started(app) as client:
        response = await client.post(
            CHAT_PATH, content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "GATEWAY_MAX_BODY_BYTES" in response.json()["error"]["message"]
    assert sent < 100  # the rest was never read


def test_the_lane_steps_aside_under_a_root_path(tmp_path: Path) -> None:
    app = create_app(tmp_path / "unused.yaml", settings=ServerSettings())
    assert app.chat_lane_open(chat_scope())
    assert not app.chat_lane_open(chat_scope(root_path="/gateway"))


def test_the_lane_steps_aside_while_fastapi_telemetry_is_on() -> None:
    # A tracer provider given to FastAPI turns its native OpenTelemetry instrumentation on.
    app = GatewayApp(telemetry={"tracer_provider": trace.NoOpTracerProvider()})

    async def lane(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not to be called")

    app.open_chat_lane(lane)
    assert not app.chat_lane_open(chat_scope())
    assert GatewayApp().chat_lane_open(chat_scope()) is False  # no lane opened at all
