"""Connection hygiene and the shutdown grace of `gateway serve`, over raw sockets against a real
server on 127.0.0.1: idle connections and clients trickling a request head or body are closed
within their bounds while other clients are served; connections beyond the cap are refused with
a 503; when the SIGTERM grace runs out, an open stream ends with an error event naming it.

The server's timeouts are set short by environment (1 s); each wait for the server to act has a
generous upper bound (`CLOSED_WITHIN_S`), never a speed bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from server_harness import ServerProcess
from starlette.types import Message

from gateway.errors import ConfigurationError
from gateway.server import ServerSettings
from gateway.server._disconnect import SHUTDOWN, CancelOnDisconnect, ServerShutdown
from gateway.testing import FakeUpstream

ASYNC = pytest.mark.asyncio(loop_scope="module")

CLOSED_WITHIN_S = 20.0
"""How long a test waits for the server to close a connection whose bound is 1 s."""
TRICKLE_EVERY_S = 0.2
OPEN_ENV = {"GATEWAY_API_KEYS": "", "GATEWAY_ADMIN_KEYS": "", "GATEWAY_POLICY_WATCH_S": "0"}
SHORT = {
    **OPEN_ENV,
    "GATEWAY_HEADER_TIMEOUT_S": "1",
    "GATEWAY_BODY_TIMEOUT_S": "1",
    "GATEWAY_KEEP_ALIVE_S": "1",
}


def policy_yaml(fake_url: str) -> str:
    return f"""\
version: 1
defaults:
  timeout_s: 30
  retry: {{attempts: 1}}
providers:
  talker: {{type: openai_http, model: talker-1, base_url: "{fake_url}/v1", api_key: "sk-test"}}
  sleepy: {{type: openai_http, model: sleepy-1, base_url: "{fake_url}/v1", api_key: "sk-test"}}
tasks:
  default: {{chain: [talker]}}
  slow: {{chain: [sleepy]}}
"""


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
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(policy_file, log_path=log, env=SHORT) as process:
        process.wait_ready()
        yield process


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset); fails if
    it has not closed it within CLOSED_WITHIN_S."""
    received = b""

    async def drain() -> None:
        nonlocal received
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionError:
            pass

    await asyncio.wait_for(drain(), CLOSED_WITHIN_S)
    return received


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data` one byte at a time, TRICKLE_EVERY_S apart, until it is sent or the server
    has closed the connection."""
    for i in range(len(data)):
        try:
            writer.write(data[i : i + 1])
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(TRICKLE_EVERY_S)


async def serve_healthz_until(done: asyncio.Event, url: str) -> int:
    """GET /healthz on a fresh connection again and again until `done`; each must be 200.
    Returns how many were answered."""
    answered = 0
    while not done.is_set():
        async with httpx.AsyncClient(timeout=10) as fresh:
            response = await fresh.get(url + "/healthz")
        assert response.status_code == 200
        answered += 1
        await asyncio.sleep(0.1)
    return answered


@ASYNC
async def test_idle_and_trickling_connections_are_closed_while_others_are_served(
    server: ServerProcess,
) -> None:
    host, port = server.host, server.port
    done = asyncio.Event()
    others = asyncio.create_task(serve_healthz_until(done, server.url))
    # A long head, trickled a byte at a time: 200 bytes at 0.2 s would take 40 s.
    slow_head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 160 + b"\r\n\r\n"

    def body_head(path: str) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            "content-length: 500\r\n\r\n"
        ).encode()

    async def idle() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return await until_closed(reader)
        finally:
            writer.close()

    async def trickled(head: bytes, body: bytes = b"") -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head)
        sending = asyncio.create_task(trickle(writer, body) if body else trickle(writer, slow_head))
        try:
            return await until_closed(reader)
        finally:
            sending.cancel()
            writer.close()

    async def kept_alive_then_idle() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            return await until_closed(reader)  # the answer, then the keep-alive bound
        finally:
            writer.close()

    async def kept_alive_then_trickling_blank_lines() -> bytes:
        # Blank lines between requests start no request in the parser; they must not hold
        # the connection open past the header bound either.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        sending = asyncio.create_task(trickle(writer, b"\r\n" * 200))
        try:
            return await until_closed(reader)
        finally:
            sending.cancel()
            writer.close()

    chat_body = b'{"model": "default", "messages": [' + b" " * 600
    results = await asyncio.gather(
        idle(),
        idle(),
        trickled(b""),  # the head itself, trickled
        trickled(body_head("/v1/chat/completions"), chat_body),
        trickled(body_head("/api/v1/policy/reload"), b"x" * 600),
        kept_alive_then_idle(),
        kept_alive_then_trickling_blank_lines(),
    )
    done.set()
    assert await others > 0
    idle_a, idle_b, head, chat, reload, kept_alive, blank_lines = results
    assert idle_a == idle_b == head == b""  # closed without an answer: no request was made
    for answer in (chat, reload):
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in answer.lower()
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout"
        assert "GATEWAY_BODY_TIMEOUT_S" in body["error"]["message"]
    assert kept_alive.startswith(b"HTTP/1.1 200 ")
    assert json.loads(blank_lines)["status"] == "ok"  # the answer's body; its head was read
    # The body timeouts are logged as such, and the server is still answering.
    log = server.log()
    assert re.search(r'"POST /v1/chat/completions" 408 .*outcome=body_timeout', log), log
    assert "Traceback" not in log
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


@ASYNC
async def test_connections_beyond_the_cap_are_refused_with_503(
    policy_file: Path, tmp_path: Path
) -> None:
    env = {
        **OPEN_ENV,
        "GATEWAY_MAX_CONNECTIONS": "4",
        "GATEWAY_HEADER_TIMEOUT_S": "30",
        "GATEWAY_KEEP_ALIVE_S": "30",
    }
    request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    with ServerProcess(policy_file, log_path=tmp_path / "cap.log", env=env) as capped:
        capped.wait_ready()

        async def answered(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> tuple[bytes, bytes]:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN_S)
            length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
            return head, await reader.readexactly(length)

        async def admitted() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            # A connection the server has just seen closed (wait_ready's) may still count
            # for a moment: retry until this one is served.
            deadline = time.monotonic() + CLOSED_WITHIN_S
            while True:
                reader, writer = await asyncio.open_connection(capped.host, capped.port)
                head, _ = await answered(reader, writer)
                if head.startswith(b"HTTP/1.1 200 "):
                    return reader, writer
                writer.close()
                assert time.monotonic() < deadline, "never admitted"
                await asyncio.sleep(0.1)

        held = []
        try:
            for _ in range(4):
                held.append(await admitted())
            # The fifth connection at once: refused with a clear answer, then closed.
            reader, writer = await asyncio.open_connection(capped.host, capped.port)
            writer.write(request)
            refusal = await until_closed(reader)
            writer.close()
            assert refusal.startswith(b"HTTP/1.1 503 "), refusal
            assert b"connection: close" in refusal.lower()
            error = json.loads(refusal.split(b"\r\n\r\n", 1)[1])["error"]
            assert error["code"] == "too_many_connections"
            assert "GATEWAY_MAX_CONNECTIONS" in error["message"]
            # One beyond the cap that sends nothing is closed well before the (here 30 s)
            # head timeout, so that a flood of them holds few descriptors.
            reader, writer = await asyncio.open_connection(capped.host, capped.port)
            assert await until_closed(reader) == b""
            writer.close()
            # The connections that were admitted are still served.
            for reader, writer in held:
                head, _ = await answered(reader, writer)
                assert head.startswith(b"HTTP/1.1 200 ")
        finally:
            for _, writer in held:
                writer.close()
        # Once they have gone, new connections are admitted again.
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while True:
            response = httpx.get(capped.url + "/healthz", timeout=10)
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, "never admitted again"
            await asyncio.sleep(0.2)
        assert "too many connections" in capped.log()

        # A head far over any real one, sent at once, is not buffered until the (here 30 s)
        # head timeout: the connection is closed once it passes the bound.
        reader, writer = await asyncio.open_connection(capped.host, capped.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nx-pad: " + b"a" * (4 * 1024 * 1024))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            assert await until_closed(reader) == b""
        finally:
            writer.close()
        assert httpx.get(capped.url + "/healthz", timeout=10).status_code == 200


@ASYNC
async def test_sigterm_grace_ends_open_streams_with_an_error_event(
    policy_file: Path, upstream: FakeUpstream, tmp_path: Path
) -> None:
    # 400 words at 50 ms each: 20 s of stream, far past the 1 s grace; and a whole answer
    # that takes 30 s.
    upstream.reply("talker-1", " ".join(["word"] * 400), chunk_delay_s=0.05)
    upstream.reply("sleepy-1", "late", latency_s=30)
    env = {**OPEN_ENV, "GATEWAY_SHUTDOWN_GRACE_S": "1"}
    messages = [{"role": "user", "content": "hi"}]
    stream_body = {"model": "default", "stream": True, "messages": messages}
    with ServerProcess(policy_file, log_path=tmp_path / "grace.log", env=env) as stopping:
        stopping.wait_ready()
        lines: list[str] = []
        async with httpx.AsyncClient(base_url=stopping.url, timeout=CLOSED_WITHIN_S) as c:
            whole = asyncio.create_task(
                c.post("/v1/chat/completions", json={"model": "slow", "messages": messages})
            )
            async with c.stream("POST", "/v1/chat/completions", json=stream_body) as response:
                assert response.status_code == 200
                received = response.aiter_lines()
                while not any("word" in line for line in lines):
                    lines.append(await anext(received))
                stopping.signal(signal.SIGTERM)
                async for line in received:
                    lines.append(line)
            answered = await whole
        assert stopping.wait(CLOSED_WITHIN_S) == 0
        log = stopping.log()
    events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] != "[DONE]"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "server_shutdown"
    assert "shutting down" in error["message"]
    assert error["type"] == "server_error"
    assert answered.status_code == 503
    assert answered.json()["error"]["code"] == "server_shutdown"
    assert re.search(
        r'"POST /v1/chat/completions" 503 .*task=default .*outcome=server_shutdown', log
    )
    assert re.search(r'"POST /v1/chat/completions" 503 .*task=slow .*outcome=server_shutdown', log)
    assert "client_closed" not in log
    assert "Traceback" not in log
    assert "Exception in ASGI application" not in log


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_HEADER_TIMEOUT_S", "0"),
        ("GATEWAY_BODY_TIMEOUT_S", "soon"),
        ("GATEWAY_KEEP_ALIVE_S", "-1"),
        ("GATEWAY_MAX_CONNECTIONS", "0"),
    ],
)
def test_bad_connection_settings_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name} is '{value}'"):
        ServerSettings.from_env({name: value})


def test_connection_settings_defaults_and_overrides() -> None:
    defaults = ServerSettings.from_env({})
    assert (defaults.header_timeout_s, defaults.body_timeout_s) == (10.0, 30.0)
    assert (defaults.keep_alive_s, defaults.max_connections) == (75.0, 1000)
    settings = ServerSettings.from_env(
        {
            "GATEWAY_HEADER_TIMEOUT_S": "2.5",
            "GATEWAY_BODY_TIMEOUT_S": "4",
            "GATEWAY_KEEP_ALIVE_S": "0",
            "GATEWAY_MAX_CONNECTIONS": "7",
        }
    )
    assert (settings.header_timeout_s, settings.body_timeout_s) == (2.5, 4.0)
    assert (settings.keep_alive_s, settings.max_connections) == (0.0, 7)


@ASYNC
async def test_the_grace_ends_blocks_in_flight_and_reset_restores_the_clock() -> None:
    async def never_disconnects() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    try:
        SHUTDOWN.begin(0.05)
        with pytest.raises(ServerShutdown), CancelOnDisconnect(never_disconnects):
            await asyncio.sleep(30)
        assert SHUTDOWN.expired
        # Work that takes the cancellation and ends by itself (as a stream's source does)
        # ends the block without the exception, and the task is not left cancelled.
        with CancelOnDisconnect(never_disconnects), contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        await asyncio.sleep(0)
    finally:
        SHUTDOWN.reset()
    assert not SHUTDOWN.expired
    with CancelOnDisconnect(never_disconnects):
        await asyncio.sleep(0.01)
