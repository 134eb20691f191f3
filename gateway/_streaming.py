"""`RoutedStream`: a routed request answered as a stream of text deltas (and tool calls).

A candidate may be retried or left for the next one until its first delta reaches the caller;
`first_token_timeout_s` bounds that wait. After it, a failure raises `StreamInterrupted` with
the partial text, or, with `on_midstream_failure: resume`, the next candidate is asked to
continue from the partial text (sent as an assistant prefix) and the caller's iterator goes on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from contextlib import aclosing
from typing import Any

from gateway._outcomes import Attempt, AttemptOutcome, RequestOutcome
from gateway._walk import CandidateFailed, Streamed, Walker
from gateway.errors import DeadlineExceeded, StreamInterrupted
from gateway.types import (
    Message,
    StreamEvent,
    StreamPiece,
    TextDelta,
    ToolCall,
    ToolCallAssembler,
)


class RoutedStream(Streamed):
    """Async iterator of text deltas. `provider` and `model` name the candidate answering
    from the first event on; once it is exhausted, `usage`, `cost_usd`, `attempts`,
    `latency_s`, `text` and `tool_calls` describe the answer and how it was obtained.

    `async for delta in stream` gives the text alone; tool calls are gathered into
    `tool_calls`. `async for event in stream.events()` gives every piece as it comes, typed:
    `TextDelta` and `ToolCallDelta` (use one way or the other on one stream).
    """

    # Slots: one is held for every open stream.
    __slots__ = (
        "_messages",
        "_params",
        "_source",
        "_task",
        "_tools",
        "_unread",
        "_walker",
        "attempts",
        "cost_usd",
        "latency_s",
        "text",
    )

    def __init__(
        self, walker: Walker, messages: Sequence[Message], task: str, params: dict[str, Any]
    ) -> None:
        self._walker = walker
        self._messages = messages
        self._task = task
        self._params = {k: v for k, v in params.items() if v is not None}
        self._source: AsyncGenerator[list[StreamPiece], None] | None = None
        self._unread: list[StreamPiece] | None = None
        """What `__anext__` has still to give of the last group, last piece first."""
        self._tools = ToolCallAssembler()
        super().__init__()  # provider, model, usage, finish_reason and refusal
        self.cost_usd = 0.0
        self.attempts: list[Attempt] = []
        self.latency_s: float | None = None
        self.text = ""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls the answer made (so far, while it is still streaming)."""
        return self._tools.calls()

    def __aiter__(self) -> RoutedStream:
        return self

    async def __anext__(self) -> str:
        while True:
            unread = self._unread
            if not unread:
                unread = self._unread = (await self._next_group())[::-1]
            piece = unread.pop()
            if not unread:
                self._unread = None
            if type(piece) is str:
                return piece

    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        """Text and tool-call pieces, typed, as they arrive. Leaving early (or
        closing this iterator) closes the stream."""
        async with aclosing(self.piece_groups()) as groups:
            async for group in groups:
                for piece in group:
                    yield TextDelta(piece) if type(piece) is str else piece  # type: ignore[misc]

    async def piece_groups(self) -> AsyncGenerator[list[StreamPiece], None]:
        """Text deltas (`str`) and tool-call pieces in the groups they arrived in (what one
        read of the upstream brought), for a consumer that passes them on: one write per
        group instead of one per piece. Leaving early (or closing this iterator) closes the
        stream."""
        try:
            while True:
                try:
                    group = await self._next_group()
                except StopAsyncIteration:
                    return
                yield group
                del group  # nothing of it held while the next is awaited
        finally:
            await self.aclose()

    def _next_group(self) -> Awaitable[list[StreamPiece]]:
        if self._source is None:
            self._source = self._run()
        return self._source.__anext__()

    async def aclose(self) -> None:
        """Stop early: the upstream call is cancelled and its connection closed."""
        if self._source is not None:
            await self._source.aclose()

    async def __aenter__(self) -> RoutedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[list[StreamPiece], None]:
        sent: list[str] = []
        tool_sent = False
        async with self._walker.request(self._task) as walk:
            self.attempts = walk.attempts
            try:
                messages, steps = walk.begin(self._messages, self._params, stream=True)
                resume = walk.spec.on_midstream_failure == "resume"
                for step in walk.eligible(steps, messages):
                    conversation: list[dict[str, Any]] = messages
                    if sent:
                        conversation = [*messages, {"role": "assistant", "content": "".join(sent)}]
                    try:
                        async with aclosing(
                            walk.stream(step, conversation, self._params, self)
                        ) as groups:
                            async for group in groups:
                                texts = [piece for piece in group if type(piece) is str]
                                sent += texts
                                if len(texts) < len(group):
                                    tool_sent = True
                                    for piece in group:
                                        if type(piece) is not str:
                                            self._tools.add(piece)  # type: ignore[arg-type]
                                yield group
                                del group
                    except CandidateFailed as failed:
                        # Text can be continued by another model; a half-sent tool call cannot.
                        continuable = resume and not tool_sent
                        if (
                            (sent or tool_sent)
                            and not continuable
                            and failed.outcome is not AttemptOutcome.DEADLINE
                        ):
                            raise walk.interrupted("".join(sent)) from failed.error
                        walk.left(step.candidate, failed)
                        continue
                    self.text = "".join(sent)
                    self.latency_s = time.perf_counter() - walk.started
                    return
                if sent or tool_sent:
                    raise walk.interrupted("".join(sent))
                raise walk.exhausted()
            except DeadlineExceeded as exc:
                if sent or tool_sent:
                    walk.outcome = RequestOutcome.DEADLINE
                    raise StreamInterrupted(
                        str(exc), task=exc.task, attempts=exc.attempts, partial_text="".join(sent)
                    ) from exc
                raise
            finally:
                # Whatever was billed counts, even when the stream did not finish.
                self.cost_usd = walk.cost_usd
