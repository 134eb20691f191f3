"""The default transport goes through the proxy the environment names, as the SDKs do."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.providers import OpenAIService
from gateway.providers._transport import EnvironmentProxies

REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "via proxy"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


async def test_http_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        body = json.dumps(REPLY).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with (
        server,
        OpenAIService(
            model="gpt-4o-mini", api_key="test-key", base_url="http://upstream.example/v1"
        ) as provider,
    ):
        completion = await provider.complete([{"role": "user", "content": "hi"}])

    assert completion.text == "via proxy"
    assert seen == [b"POST http://upstream.example/v1/chat/completions HTTP/1.1"]


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxied"),
    [
        ("", "http://upstream.example/v1", True),
        ("upstream.example", "http://upstream.example/v1", False),
        (".example", "http://api.upstream.example/v1", False),
        ("other.example,localhost", "http://upstream.example/v1", True),
        ("upstream.example:8080", "http://upstream.example:8080/v1", False),
        ("upstream.example:8080", "http://upstream.example:9090/v1", True),
        ("*", "http://upstream.example/v1", False),
    ],
)
def test_no_proxy_is_honoured(
    monkeypatch: pytest.MonkeyPatch, no_proxy: str, url: str, proxied: bool
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    proxies = EnvironmentProxies()
    assert proxies.for_url(url) == ("http://proxy.internal:3128" if proxied else None)
