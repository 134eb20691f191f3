"""Plain data shared by providers, the router and the server."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway._outcomes import Attempt
from gateway.errors import InvalidRequestError

__all__ = [
    "Attempt",
    "ChatStream",
    "Choice",
    "Completion",
    "Conversation",
    "Embeddings",
    "Message",
    "StreamEnd",
    "StreamEvent",
    "StreamPiece",
    "StreamSourceItem",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "content_text",
    "validate_messages",
]

Message = Mapping[str, Any]
"""An OpenAI-style chat message: `{"role": "user", "content": "..."}`."""

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
"""`developer` is OpenAI's newer name for `system`: sent as is to OpenAI, as system elsewhere."""


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    """Input tokens served from the provider's prompt cache (a subset of `input_tokens`)."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
        )


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the model asks the caller to run: OpenAI's `tool_calls[i]`, whatever the
    provider's own shape was."""

    id: str
    name: str
    arguments: str
    """The arguments as the model wrote them: JSON text, normally an object."""

    def parsed_arguments(self) -> Any:
        """`arguments` decoded (a dict for a well-behaved model); `ValueError` if it is not
        JSON, or is nested too deep to decode."""
        if not self.arguments:
            return {}
        try:
            return json.loads(self.arguments)
        except RecursionError as exc:
            raise ValueError("tool call arguments are nested too deep to decode") from exc

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI wire shape, e.g. to append the assistant's turn to a history."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Choice:
    """One of the answers a call with `n` > 1 asked for (choice 0 is the `Completion` itself)."""

    index: int
    text: str
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None
    extra: Mapping[str, Any] | None = None
    """Fields of the provider's message the gateway carries as given (OpenAI's `annotations`,
    `audio`, and the choice's `logprobs`)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One provider's whole answer to one call: its first choice, and any others."""

    text: str
    model: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    response_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None
    """The model's refusal message (OpenAI's `message.refusal`), when it declined."""
    extra: Mapping[str, Any] | None = None
    """See `Choice.extra`."""
    other_choices: tuple[Choice, ...] = ()
    """Choices 1 to n-1 of a call with `n` > 1."""

    @property
    def choices(self) -> tuple[Choice, ...]:
        """Every choice, this answer's first one included."""
        first = Choice(0, self.text, self.finish_reason, self.tool_calls, self.refusal, self.extra)
        return (first, *self.other_choices)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call. The call's first piece carries its `id` and `name`;
    the `arguments` pieces, joined in order, are the call's JSON arguments."""

    index: int
    """Which tool call of the answer this piece belongs to (0, 1, ...)."""
    id: str | None = None
    name: str | None = None
    arguments: str = ""


StreamEvent = TextDelta | ToolCallDelta
"""What `events()` of a stream yields."""


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event a provider's stream source yields: what is known once text is done."""

    usage: Usage | None = None
    finish_reason: str | None = None
    model: str | None = None
    response_id: str | None = None
    refusal: str | None = None


StreamPiece = str | ToolCallDelta
"""A piece of a provider's stream: a text delta, or a piece of a tool call."""

StreamSourceItem = StreamPiece | list[StreamPiece] | StreamEnd
"""What a provider's stream source yields: a piece; or the pieces one read of the upstream
brought, as a list, so that they travel on together (to the client as one write); and, last,
one `StreamEnd`."""


class ToolCallAssembler:
    """Joins a stream's `ToolCallDelta`s into whole `ToolCall`s."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[Any]] = {}

    def add(self, delta: ToolCallDelta) -> None:
        entry = self._calls.get(delta.index)
        if entry is None:
            entry = self._calls[delta.index] = [delta.id or "", delta.name or "", []]
        else:
            entry[0] = entry[0] or delta.id or ""
            entry[1] = entry[1] or delta.name or ""
        if delta.arguments:
            entry[2].append(delta.arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id=entry[0], name=entry[1], arguments="".join(entry[2]))
            for _, entry in sorted(self._calls.items())
        )

    def __bool__(self) -> bool:
        return bool(self._calls)


class ChatStream:
    """An async iterator of text deltas; once exhausted, `usage`, `finish_reason` and
    `tool_calls` are final.

    `async for delta in stream` gives the text alone (tool calls are gathered into
    `tool_calls`); `stream.events()` gives `TextDelta` and `ToolCallDelta` events as they come.
    Providers build one from an async generator of `StreamSourceItem`s: `str` deltas and
    `ToolCallDelta`s, alone or in lists of those that arrived together, and one `StreamEnd`
    last. Nothing is sent upstream until the first event is awaited, so the caller can bound
    the wait for the first token around that call.
    """

    # Slots: one is held for every open stream.
    __slots__ = (
        "_source",
        "_tools",
        "_unread",
        "done",
        "finish_reason",
        "model",
        "refusal",
        "response_id",
        "usage",
    )

    def __init__(self, source: AsyncIterator[StreamSourceItem], *, model: str) -> None:
        self._source = source
        self.model = model
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.response_id: str | None = None
        self.refusal: str | None = None
        self.done = False
        self._tools = ToolCallAssembler()
        self._unread: list[StreamPiece] | None = None
        """What `next_event` has still to give of the last group, last piece first."""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls streamed so far (all of them, once the stream is exhausted)."""
        return self._tools.calls()

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> str:
        while True:
            event = await self.next_event()
            if type(event) is str:
                return event

    async def next_event(self) -> StreamPiece:
        """The next text delta (a `str`) or tool-call piece; `StopAsyncIteration` at the end."""
        unread = self._unread
        if not unread:
            unread = self._unread = (await self.next_group())[::-1]
        piece = unread.pop()
        if not unread:
            self._unread = None
        return piece

    async def next_group(self) -> list[StreamPiece]:
        """The next pieces that arrived together (one read of the upstream, never empty);
        `StopAsyncIteration` at the end. A consumer that passes pieces on writes a group at
        once; the rest reads `next_event`."""
        if self._unread:
            unread, self._unread = self._unread, None
            return unread[::-1]
        while True:
            try:
                item = await self._source.__anext__()
            except StopAsyncIteration:
                self.done = True
                raise
            if type(item) is list:
                # Text (most pieces) is kept unless empty, without a call for each.
                group = [
                    piece for piece in item if (piece if type(piece) is str else self._kept(piece))
                ]
                if group:
                    return group
            elif self._kept(item):  # type: ignore[arg-type]
                return [item]  # type: ignore[list-item]

    def _kept(self, item: StreamPiece | StreamEnd) -> bool:
        """Whether `item` is a piece to pass on: a text delta that is not empty, or a piece
        of a tool call (noted for `tool_calls`). A `StreamEnd` is noted instead."""
        if type(item) is str:
            return bool(item)
        if isinstance(item, ToolCallDelta):
            self._tools.add(item)
            return True
        if isinstance(item, StreamEnd):
            self.usage = item.usage or self.usage
            self.finish_reason = item.finish_reason or self.finish_reason
            self.model = item.model or self.model
            self.response_id = item.response_id or self.response_id
            self.refusal = item.refusal or self.refusal
        return False

    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        """Text and tool-call pieces, typed, as they arrive. Leaving early (or
        closing this iterator) closes the stream."""
        try:
            while True:
                try:
                    event = await self.next_event()
                except StopAsyncIteration:
                    return
                yield TextDelta(event) if type(event) is str else event  # type: ignore[misc]
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop early and release the upstream connection."""
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Conversation(list[dict[str, Any]]):
    """Messages that passed `validate_messages`. Checking them again returns them as they are,
    so the router validates a request once and the provider it reaches does not repeat it."""

    __slots__ = ()


MAX_TOKENS_LIMIT = 10_000_000
"""The most `max_tokens` a request may ask for: far past any model's output window, so only an
absurd value (1e30) is refused here; the upstream judges the rest against its own limit."""


def check_max_tokens(value: object, field: str = "max_tokens") -> None:
    """Refuse a `max_tokens` no upstream could take: not a whole number from 1 to
    `MAX_TOKENS_LIMIT` (None means the provider's default and passes)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"{field} must be a whole number from 1 to {MAX_TOKENS_LIMIT}, "
            f"got {type(value).__name__}"
        )
    if not 1 <= value <= MAX_TOKENS_LIMIT:
        shown = value if abs(value) < 10**12 else f"{value:.3g}"
        raise InvalidRequestError(
            f"{field} must be a whole number from 1 to {MAX_TOKENS_LIMIT}, got {shown}"
        )


def validate_messages(messages: Sequence[Message]) -> Conversation:
    """Check the shape every provider relies on; raise `InvalidRequestError` naming the fix."""
    if type(messages) is Conversation:
        return messages
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidRequestError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    if not messages:
        raise InvalidRequestError(
            "messages is empty: pass at least one {'role': 'user', 'content': '...'}"
        )
    checked = Conversation()
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(
                f"messages[{i}] must be a dict with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role is {role!r}; use one of {sorted(ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            _check_encodable(content, i, "content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or "type" not in part:
                    raise InvalidRequestError(
                        f"messages[{i}].content[{j}] must be a content part dict with a 'type' "
                        "(e.g. {'type': 'text', 'text': '...'})"
                    )
                text = part.get("text")
                if isinstance(text, str):
                    _check_encodable(text, i, f"content[{j}].text")
        elif not (content is None and role in {"assistant", "tool"}):
            raise InvalidRequestError(
                f"messages[{i}].content must be a string or a list of content parts, "
                f"got {type(content).__name__}"
            )
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise InvalidRequestError(
                    f"messages[{i}].name must be a string, got {type(name).__name__}"
                )
            _check_encodable(name, i, "name")
        _check_tool_fields(message, i)
        checked.append(dict(message))
    return checked


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, where: str) -> None:
    """Refuse a lone UTF-16 surrogate (`"\\ud800"` in JSON) in `text`, naming `where`: it has
    no UTF-8 form, so an SDK fails to encode the request and an upstream would refuse or mangle
    it. One place refuses it by name, for every field, provider and client alike, rather than a
    raw UnicodeEncodeError."""
    # isascii() is O(1) on CPython's compact strings: most text never reaches the search.
    if not text.isascii() and _LONE_SURROGATE.search(text):
        raise InvalidRequestError(
            f"{where} holds a lone UTF-16 surrogate, which is not valid Unicode text: send the "
            "character whole, or drop it"
        )


def _check_encodable(text: str, i: int, field: str) -> None:
    check_text(text, f"messages[{i}].{field}")


_TOOL_CALL_SHAPE = (
    "{'id': 'call_1', 'type': 'function', "
    "'function': {'name': 'weather', 'arguments': '{\"city\": \"Paris\"}'}}"
)


def _check_tool_fields(message: Mapping[str, Any], i: int) -> None:
    """OpenAI's `tool_calls` / `tool_call_id` shapes, which the providers convert."""
    tool_call_id = message.get("tool_call_id")
    if tool_call_id is not None and not isinstance(tool_call_id, str):
        raise InvalidRequestError(
            f"messages[{i}].tool_call_id must be a string (the id of the tool call it answers), "
            f"got {type(tool_call_id).__name__}"
        )
    calls = message.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise InvalidRequestError(
            f"messages[{i}].tool_calls must be a list of {_TOOL_CALL_SHAPE}, "
            f"got {type(calls).__name__}"
        )
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not (isinstance(call, Mapping) and isinstance(call.get("id"), str) and call["id"]):
            raise InvalidRequestError(
                f"messages[{i}].tool_calls[{j}] needs a string 'id': write {_TOOL_CALL_SHAPE}"
            )
        if not (isinstance(function, Mapping) and isinstance(name, str) and name):
            raise InvalidRequestError(
                f"messages[{i}].tool_calls[{j}].function needs a string 'name': "
                f"write {_TOOL_CALL_SHAPE}"
            )
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str | Mapping):
            raise InvalidRequestError(
                f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object "
                f"string, got {type(arguments).__name__}"
            )
        if isinstance(arguments, str):
            _check_encodable(arguments, i, f"tool_calls[{j}].function.arguments")


def content_text(content: Any) -> str:
    """The text of a message's content, whether a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        str(part.get("text", "")) for part in content if part.get("type") in {"text", "input_text"}
    )


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One provider's whole answer to an embedding call: a vector per input, in input order,
    every one from `model`."""

    vectors: list[list[float]]
    model: str
    usage: Usage

    @property
    def finish_reason(self) -> None:
        """An embedding has no finish reason (the hooks' `on_response` reports None)."""
        return None
