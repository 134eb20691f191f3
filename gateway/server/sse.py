"""Server-Sent Events: framing, and a response that always closes its source.

Starlette cancels a streaming body when the client disconnects, but a generator suspended at
a `yield` is then left for the garbage collector; here it is closed at once, shielded from the
cancellation, so the upstream call it holds is cancelled and its connection released.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anyio
from pydantic_core import to_json
from starlette.responses import StreamingResponse
from starlette.types import Send

DONE = b"data: [DONE]\n\n"

STREAM_HEADERS = {
    "cache-control": "no-cache",
    # Tell nginx-style proxies not to buffer: each event must reach the client as it is sent.
    "x-accel-buffering": "no",
}


def event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + to_json(payload) + b"\n\n"


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncGenerator[bytes, None], *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(events, headers={**STREAM_HEADERS, **(headers or {})})
        self._events = events

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()
