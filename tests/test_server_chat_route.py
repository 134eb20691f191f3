"""`POST /v1/chat/completions` inside the FastAPI app, as any embedding application sees it.

test_server.py drives every behaviour of the route through `python -m gateway.server`. Here:
what an application that takes `create_app()` and changes it still gets on this route, and the
body limit's edges. Servers run in this process (uvicorn on 127.0.0.1), so that a test can
add middleware to the app or serve it under a root path; bodies that must stop being read part
way go through httpx's in-process transport, because over TCP a server that answers before the
client has sent everything and closes may reset the connection before the client reads the
answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from server_harness import ServerProcess, free_port
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from traced_server import SPANS_ENV

from gateway.server import ServerSettings, create_app
from gateway.testing import FakeUpstream

CHAT_PATH = "/v1/chat/completions"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}
KEY = "chat-route-client-key"
REPLY = "Hello from gpt-4o-mini. This is a fake reply."
TRACED_SERVER = Path(__file__).with_name("traced_server.py")


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def policy(upstream: FakeUpstream, tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "version: 1\n"
        "providers:\n"
        f"  mini: {{type: openai_http, model: gpt-4o-mini, base_url: '{upstream.url}/v1',"
        " api_key: sk-test}\n"
        "tasks:\n"
        "  chat: {chain: [mini]}\n"  # no `default`: an unknown task is a 404
    )
    return path


@asynccontextmanager
async def serving(app: ASGIApp, *, root_path: str = "") -> AsyncIterator[str]:
    """`app` under uvicorn on 127.0.0.1, in this process; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", root_path=root_path
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def in_process(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` through httpx's ASGI transport, with the app's lifespan run."""
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


def sdk(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)


class Chunks:
    """A request body sent in `count` chunks of 100 bytes, without a Content-Length."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
        for _ in range(self.count):
            self.sent += 1
            yield b"z" * 100
        yield b'"}]}'


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.access"]


async def test_middleware_added_after_create_app_sees_every_chat_answer(
    policy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = create_app(policy, settings=ServerSettings(api_keys=(KEY,), max_body_bytes=1_000))
    app.add_middleware(Stamp)
    async with serving(app) as url:
        client = sdk(url)
        answered = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hello there"}]
        )
        async with client.chat.completions.with_streaming_response.create(
            model="chat", messages=[{"role": "user", "content": "hello there"}], stream=True
        ) as streamed:
            chunks = [chunk async for chunk in await streamed.parse()]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        await client.close()
        headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
        async with httpx.AsyncClient(base_url=url) as http:
            malformed = await http.post(CHAT_PATH, content=b"{", headers=headers)
            keyless = await http.post(CHAT_PATH, json=BODY)
            too_large = await http.post(CHAT_PATH, content=b"x" * 2_000, headers=headers)
    assert answered.headers["x-stamp"] == "1"
    assert answered.headers["x-gateway-provider"] == "mini"
    assert answered.parse().choices[0].message.content == REPLY
    assert streamed.headers["x-stamp"] == "1"
    assert streamed.headers["x-gateway-attempts-detail"] == "mini:streaming"
    assert text == REPLY
    for response, status, code in (
        (malformed, 400, "invalid_request"),
        (keyless, 401, "missing_api_key"),
        (too_large, 413, "request_too_large"),
    ):
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert response.headers["x-stamp"] == "1"
    lines = access_lines(caplog)
    assert sorted(line.split()[3] for line in lines) == ["200", "200", "400", "401", "413"]
    answers = [line for line in lines if line.split()[3] == "200"]
    for line in answers:
        assert re.search(
            r'"POST /v1/chat/completions" 200 [\d.]+ms task=chat provider=mini '
            r"attempts=mini:success cost_usd=",
            line,
        ), line


async def test_errors_on_the_chat_route_use_the_apps_handlers(policy: Path) -> None:
    app = create_app(policy, settings=ServerSettings())
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        malformed = await http.post(
            CHAT_PATH, content=b"{", headers={"content-type": "application/json"}
        )
        unknown = await http.post(CHAT_PATH, json={**BODY, "model": "nope"})
        wrong_method = await http.get(CHAT_PATH)
    assert malformed.status_code == 400
    assert malformed.json()["error"] == {
        "message": "the request body is not valid JSON (Expecting property name enclosed in "
        "double quotes); send a JSON object",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request",
    }
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


class BrokenRouter:
    """Stands in for the server's router: fails as no router should."""

    @property
    def policy(self) -> Any:
        raise RuntimeError("the router broke")


async def test_an_unexpected_error_on_the_chat_route_is_a_500_in_openai_shape(
    policy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = create_app(policy, settings=ServerSettings())
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        state = app.state.gateway
        router, state.router = state.router, BrokenRouter()
        try:
            response = await http.post(CHAT_PATH, json=BODY)
        finally:
            state.router = router
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "the router broke" not in response.text
    assert any(r.name == "gateway.server" and r.exc_info for r in caplog.records)
    assert [line.split()[3] for line in access_lines(caplog)] == ["500"]


def mounted(app: FastAPI, prefix: str) -> Starlette:
    """`app` mounted under `prefix` in another application, which runs its lifespan."""
    return Starlette(
        routes=[Mount(prefix, app=app)], lifespan=lambda _: app.router.lifespan_context(app)
    )


async def test_served_mounted_under_a_root_path(policy: Path) -> None:
    settings = ServerSettings(api_keys=(KEY,), max_body_bytes=1_000)
    app = create_app(policy, settings=settings)
    async with serving(mounted(app, "/gateway")) as url:
        client = sdk(url + "/gateway")
        answer = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hello there"}]
        )
        await client.close()
        async with httpx.AsyncClient(base_url=url) as http:
            too_large = await http.post(
                "/gateway" + CHAT_PATH,
                content=b"x" * 2_000,
                headers={"authorization": f"Bearer {KEY}"},
            )
    assert answer.headers["x-gateway-task"] == "chat"
    assert answer.parse().choices[0].message.content == REPLY
    assert too_large.status_code == 413
    # The route is found under the prefix: its key is checked before its body is read.
    body = Chunks(100)
    async with in_process(mounted(create_app(policy, settings=settings), "/gateway")) as client:
        keyless = await client.post("/gateway" + CHAT_PATH, content=body)
    assert keyless.status_code == 401
    assert body.sent == 0


async def test_a_body_sent_without_a_length_is_read_up_to_the_limit_and_refused(
    policy: Path,
) -> None:
    body = Chunks(100)
    app = create_app(policy, settings=ServerSettings(max_body_bytes=1_000))
    async with in_process(app) as client:
        response = await client.post(
            CHAT_PATH, content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert "GATEWAY_MAX_BODY_BYTES" in error["message"]
    assert body.sent < 100  # the rest was never read


async def test_the_key_is_checked_before_any_of_the_body_is_read(policy: Path) -> None:
    body = Chunks(100)
    app = create_app(policy, settings=ServerSettings(api_keys=(KEY,), max_body_bytes=1_000))
    async with in_process(app) as client:
        response = await client.post(
            CHAT_PATH, content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert body.sent == 0


@pytest.mark.parametrize("path", ["/api/v1/policy/reload", "/no/such/route"])
async def test_other_routes_refuse_a_body_over_the_limit_before_anything_else(
    policy: Path, path: str
) -> None:
    body = Chunks(100)
    app = create_app(policy, settings=ServerSettings(max_body_bytes=1_000))
    async with in_process(app) as client:
        response = await client.post(path, content=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert body.sent < 100


async def test_opentelemetry_traces_chat_requests(policy: Path, tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    with ServerProcess(
        policy,
        log_path=tmp_path / "server.log",
        env={SPANS_ENV: str(spans), "GATEWAY_API_KEYS": ""},
        command=(str(TRACED_SERVER),),
    ) as server:
        await asyncio.to_thread(server.wait_ready)
        client = sdk(server.url)
        reply = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hello there"}]
        )
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hello there"}]
            )
        await client.close()
    assert reply.choices[0].message.content == REPLY
    recorded: list[dict[str, Any]] = [json.loads(line) for line in spans.read_text().splitlines()]
    chat = [span for span in recorded if span["attributes"].get("url.path") == CHAT_PATH]
    assert [span["name"] for span in chat] == [f"POST {CHAT_PATH}"] * 2
    assert [span["kind"] for span in chat] == ["SERVER"] * 2
    assert [span["attributes"]["http.route"] for span in chat] == [CHAT_PATH] * 2
    assert [span["attributes"]["http.response.status_code"] for span in chat] == [200, 404]
