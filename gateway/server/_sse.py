"""Server-Sent Events: framing, and a response that always closes its source.

The response sends what its source yields, each as one body message, and the source's
`LastEvents` together with the end of the body. A client that disconnects cancels the source
where it waits (see `CancelOnDisconnect`: one watcher task, not Starlette's task group per
stream). A source suspended at a `yield` would be left for the garbage collector; it is closed
at once, shielded from cancellation, so the upstream call it holds is cancelled and its
connection released.

When the server's shutdown grace runs out, the source is cancelled where it waits, as on a
disconnect; it ends with its own last events (an error event naming the shutdown), which are
sent as any ending is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import anyio
from pydantic_core import PydanticSerializationError, to_json
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.server._disconnect import CancelOnDisconnect, ClientGone, ServerShutdown

DONE = b"data: [DONE]\n\n"

STREAM_HEADERS = {
    "cache-control": "no-cache",
    # Tell nginx-style proxies not to buffer: each event must reach the client as it is sent.
    "x-accel-buffering": "no",
}


def json_bytes(payload: Mapping[str, Any]) -> bytes:
    """`payload` as UTF-8 JSON. Text with a lone surrogate (an upstream may send `"\\ud800"`,
    which is valid JSON) has no UTF-8 form: it is sent escaped, as the upstream sent it."""
    try:
        return to_json(payload)
    except PydanticSerializationError:
        return json.dumps(payload, separators=(",", ":")).encode()


def event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json_bytes(payload) + b"\n\n"


def json_string(text: str) -> bytes:
    """`text` as a JSON string, escaped as `json_bytes` escapes it inside an object."""
    try:
        return to_json(text)
    except PydanticSerializationError:
        return json.dumps(text).encode()


class EventTemplate:
    """Events that differ in one string alone, encoded once: each event is the bytes of the
    template around that string's JSON. A stream's content chunks repeat their id, model,
    timestamp and field names, and differ only in the text; encoding them whole would
    serialise the same dozen fields again for every chunk.

    `payload(text)` builds the event's payload. It is called once with a marker no real field
    holds; should the marker come out anywhere but once (a field echoing it), every event is
    built and encoded whole instead.
    """

    _MARK = "\x00gateway-template-slot\x00"

    __slots__ = ("_after", "_before", "_payload")

    def __init__(self, payload: Callable[[str], Mapping[str, Any]]) -> None:
        self._payload = payload
        whole = event(payload(self._MARK))
        slot = json_string(self._MARK)
        before, found, after = whole.partition(slot)
        self._before: bytes | None = before if found and slot not in after else None
        self._after = after

    def __call__(self, text: str) -> bytes:
        if self._before is None:
            return event(self._payload(text))
        return self._before + json_string(text) + self._after


class LastEvents(bytes):
    """The events that end a stream, sent together with the end of the response body."""


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncGenerator[bytes, None], *, headers: Mapping[str, str] | None = None
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({**STREAM_HEADERS, **(headers or {})})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers, self.raw_headers = self.raw_headers, []  # not held for the stream's life
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            del headers
            last = b""
            with CancelOnDisconnect(receive):
                async for chunk in self._events:
                    if isinstance(chunk, LastEvents):
                        last = chunk
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    del chunk  # not held while the next event is awaited
            await send({"type": "http.response.body", "body": bytes(last), "more_body": False})
        except (ClientGone, ServerShutdown):
            # The source has recorded it as it was cancelled. A shutdown lands here only if it
            # came while an event was being sent (to a client not reading): nothing more can be.
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()
