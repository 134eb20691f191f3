"""What a wire codec is: one chat protocol, independent of how its bytes travel.

A codec builds a call's request (path, body), reads a whole answer into a `Completion`, reads
stream events into text deltas, tool-call pieces and a final `StreamEnd`, and says what an
error response or an in-stream error means as a `ProviderError`. A transport
(`gateway.providers._transport`) moves the request and hands back parsed JSON; the two meet in
`WireService`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from gateway.errors import InvalidRequestError, ProviderError
from gateway.providers._base import Call
from gateway.types import Completion, StreamEnd, StreamPiece

Framing = Literal["sse", "ndjson"]


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One request as a codec built it and the provider addressed it."""

    url: str
    """Where an HTTP transport sends it: the provider's base URL and the codec's path."""
    path: str
    """The codec's path alone, for an SDK client that owns its base URL."""
    body: dict[str, Any]
    headers: Mapping[str, str]
    """Every header: the provider's own (auth, content type) and the call's extras."""
    extra_headers: Mapping[str, str] | None
    """The call's extra headers alone, for an SDK client that adds its own auth."""
    query: Mapping[str, Any] | None
    timeout_s: float
    framing: Framing


@dataclass(slots=True)  # not frozen: one is made per stream event, and frozen costs twice as much
class WireEvent:
    """One stream event: its SSE event name (None for none, or NDJSON) and its parsed data."""

    event: str | None
    data: Any


class StreamReader(ABC):
    """What one stream has said so far. Feed each event to `read` for its text; once the
    events run out, `end` says how the stream ended (or raises if it was cut)."""

    done: bool = False
    """Set once the protocol said the stream is complete: nothing after it is read."""

    @abstractmethod
    def read(self, event: WireEvent) -> Iterable[StreamPiece]:
        """The event's text deltas and tool-call pieces. An in-stream error raises its
        `ProviderError`."""

    def read_group(self, events: Iterable[WireEvent]) -> tuple[list[StreamPiece], Exception | None]:
        """The pieces of events that arrived together, in order, none from an event after
        the one that completed the stream; and the error of an event that could not be read
        (an in-stream error, a malformed event), if one could not: it ends the group, and the
        pieces before it are the caller's to pass on before it raises it."""
        pieces: list[StreamPiece] = []
        try:
            for event in events:
                pieces.extend(self.read(event))
                if self.done:
                    break
        except Exception as exc:
            return pieces, exc
        return pieces, None

    @abstractmethod
    def end(self) -> StreamEnd:
        """The stream's last event; a stream that never said it finished was cut."""


class WireCodec(ABC):
    """One chat wire protocol. Stateless: one instance may serve any number of calls."""

    framing: ClassVar[Framing] = "sse"
    """How the protocol's streams are framed: server-sent events or JSON lines."""

    def headers(self, api_key: str | None) -> dict[str, str]:
        """The headers every request of this protocol carries, its auth included."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    @abstractmethod
    def path(self, call: Call) -> str:
        """The request's path below the provider's base URL."""

    @abstractmethod
    def body(self, call: Call, model: str) -> dict[str, Any]:
        """The JSON body for `call`, naming `model` (the wire's name for it)."""

    @abstractmethod
    def completion(self, data: Any, call: Call) -> Completion:
        """A whole answer from its parsed JSON. A reply of the wrong shape is an
        INVALID_RESPONSE `ProviderError`, never a crash."""

    @abstractmethod
    def reader(self, call: Call) -> StreamReader:
        """A reader for one stream of this protocol."""

    @abstractmethod
    def status_error(
        self, status: int, body: bytes, headers: Mapping[str, str], call: Call
    ) -> ProviderError:
        """The error an HTTP error response means, its upstream text redacted by the call's
        `redact`."""


_ASKED_WHEN_TRUE = frozenset({"frequency_penalty", "presence_penalty", "logprobs", "logit_bias"})


def asks_for(field: str, value: Any) -> bool:
    """Whether a request field's value asks for something: left out, or set to what changes
    nothing (`n: 1`, `modalities: ["text"]`, a zero penalty, an empty bias), it does not."""
    if value is None:
        return False
    if field == "n":
        return bool(value > 1)
    if field == "modalities":
        return list(value) != ["text"]
    if field in _ASKED_WHEN_TRUE:
        return bool(value)
    return True


def refuse_unhonoured(params: Mapping[str, Any], cannot: Mapping[str, str]) -> None:
    """`InvalidRequestError` for the first field of `cannot` (field -> why this provider cannot
    honour it) the request asks for, naming the field and its value."""
    for field, why in cannot.items():
        value = params.get(field)
        if asks_for(field, value):
            raise InvalidRequestError(f"{field}={shown_value(value)}: {why}")


def shown_value(value: Any) -> str:
    """A request value quoted in an error, as JSON, at most 80 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
