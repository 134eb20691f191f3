"""`python -m bench.floor_server --port N`: the least a server in `gateway serve`'s place can do.

A bare ASGI app on the same uvicorn, event loop and HTTP parser as `gateway serve`, that passes
each chat request on to the upstream (${BENCH_UPSTREAM_URL}) with aiohttp, the `openai_http`
provider's client, and passes the answer back as it came. No routing, retries, breakers,
metrics, validation or access log. It is not a contender: measured beside `gateway serve` in
the same run, it shows how much of the server's added latency any Python server on this stack
would add on this machine, and so how much is the gateway's own.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import aiohttp
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from bench.scenarios import BENCH_KEY, MODEL, UPSTREAM_ENV
from gateway.server._config import DEFAULT_KEEP_ALIVE_S
from gateway.server._process import event_loop_and_parser


class Forwarder:
    def __init__(self, upstream_url: str) -> None:
        self.url = upstream_url.rstrip("/") + "/v1/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"] == "/healthz":
            await _answer(send, 200, b"application/json", b'{"status":"ok"}')
        else:
            await self._forward(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(
                    headers={"authorization": f"Bearer {BENCH_KEY}"}
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, receive: Receive, send: Send) -> None:
        assert self.session is not None
        chunks = []
        while True:
            message: Message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        # The client names a gateway task as its model; the upstream wants the model itself.
        request = json.loads(b"".join(chunks))
        request["model"] = MODEL
        payload = json.dumps(request).encode()
        headers = {"content-type": "application/json"}
        async with self.session.post(self.url, data=payload, headers=headers) as response:
            content_type = response.headers.get("content-type", "application/json").encode()
            if not request.get("stream"):
                await _answer(send, response.status, content_type, await response.read())
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(b"content-type", content_type)],
                }
            )
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _answer(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    loop, http = event_loop_and_parser()  # what `gateway serve` runs on
    uvicorn.run(
        Forwarder(os.environ[UPSTREAM_ENV]),
        host="127.0.0.1",
        port=args.port,
        loop=loop,
        http=http,
        access_log=False,
        log_level="warning",
        timeout_keep_alive=math.ceil(DEFAULT_KEEP_ALIVE_S),  # as `gateway serve`'s default
    )


if __name__ == "__main__":
    main()
