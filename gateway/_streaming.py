"""`RoutedStream`: a routed request answered as a stream of text deltas.

A candidate may be retried or left for the next one until its first delta reaches the caller;
`first_token_timeout_s` bounds that wait. After it, a failure raises `StreamInterrupted` with
the partial text, or, with `on_midstream_failure: resume`, the next candidate is asked to
continue from the partial text (sent as an assistant prefix) and the caller's iterator goes on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

from gateway._outcomes import Attempt, AttemptOutcome, RequestOutcome
from gateway._walk import CandidateFailed, Streamed, Walker
from gateway.errors import DeadlineExceeded, StreamInterrupted
from gateway.types import Message, Usage


class RoutedStream(Streamed):
    """Async iterator of text deltas. `provider` and `model` name the candidate answering
    from the first delta on; once it is exhausted, `usage`, `cost_usd`, `attempts` and
    `latency_s` describe how the answer was obtained."""

    def __init__(
        self, walker: Walker, messages: Sequence[Message], task: str, params: dict[str, Any]
    ) -> None:
        self._walker = walker
        self._messages = messages
        self._task = task
        self._params = {k: v for k, v in params.items() if v is not None}
        self._deltas: AsyncGenerator[str, None] | None = None
        self.provider: str | None = None
        self.model: str | None = None
        self.usage = Usage()
        self.cost_usd = 0.0
        self.attempts: list[Attempt] = []
        self.latency_s: float | None = None
        self.finish_reason: str | None = None
        self.text = ""

    def __aiter__(self) -> RoutedStream:
        return self

    async def __anext__(self) -> str:
        if self._deltas is None:
            self._deltas = self._run()
        return await self._deltas.__anext__()

    async def aclose(self) -> None:
        """Stop early: the upstream call is cancelled and its connection closed."""
        if self._deltas is not None:
            await self._deltas.aclose()

    async def __aenter__(self) -> RoutedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        sent: list[str] = []
        async with self._walker.request(self._task) as walk:
            self.attempts = walk.attempts
            try:
                messages, steps = walk.begin(self._messages, self._params.get("max_tokens"))
                resume = walk.spec.on_midstream_failure == "resume"
                for step in walk.eligible(steps, messages):
                    conversation: list[dict[str, Any]] = messages
                    if sent:
                        conversation = [*messages, {"role": "assistant", "content": "".join(sent)}]
                    try:
                        async with aclosing(
                            walk.stream(step, conversation, self._params, self)
                        ) as deltas:
                            async for delta in deltas:
                                sent.append(delta)
                                yield delta
                    except CandidateFailed as failed:
                        if sent and not resume and failed.outcome is not AttemptOutcome.DEADLINE:
                            raise walk.interrupted("".join(sent)) from failed.error
                        walk.left(step.candidate, failed)
                        continue
                    self.text = "".join(sent)
                    self.latency_s = time.perf_counter() - walk.started
                    return
                if sent:
                    raise walk.interrupted("".join(sent))
                raise walk.exhausted()
            except DeadlineExceeded as exc:
                if sent:
                    walk.outcome = RequestOutcome.DEADLINE
                    raise StreamInterrupted(
                        str(exc), task=exc.task, attempts=exc.attempts, partial_text="".join(sent)
                    ) from exc
                raise
            finally:
                # Whatever was billed counts, even when the stream did not finish.
                self.cost_usd = walk.cost_usd
