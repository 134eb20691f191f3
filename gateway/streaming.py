"""`RoutedStream`: the chain walk for streamed answers.

A candidate may be retried or left for the next one until its first delta reaches the caller;
`first_token_timeout_s` bounds that wait. After it, a failure raises `StreamInterrupted` with
the partial text, or, with `on_midstream_failure: resume`, the next candidate is asked to
continue from the partial text (sent as an assistant prefix) and the caller's iterator goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING, Any

from gateway._attempts import (
    BREAKER_OPEN,
    CANCELLED,
    DEADLINE,
    SUCCESS,
    CandidateFailed,
    RequestState,
    refused,
    summary,
)
from gateway.errors import (
    AllProvidersFailed,
    DeadlineExceeded,
    ErrorKind,
    InvalidRequestError,
    ProviderError,
    StreamInterrupted,
)
from gateway.resilience import Admission, RetryAborted, call_with_retries
from gateway.runtime import Candidate, prompt_tokens
from gateway.types import Attempt, ChatStream, Message, Usage, validate_messages

if TYPE_CHECKING:
    from gateway.router import Router


class RoutedStream:
    """Async iterator of text deltas. `provider` and `model` name the candidate answering
    from the first delta on; once it is exhausted, `usage`, `cost_usd`, `attempts` and
    `latency_s` describe how the answer was obtained."""

    def __init__(
        self, router: Router, messages: Sequence[Message], task: str, params: dict[str, Any]
    ) -> None:
        self._router = router
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
        router = self._router
        router._ensure_watcher()
        started = time.perf_counter()
        runtime = router._runtime
        runtime.in_flight += 1
        request: RequestState | None = None
        outcome = "rejected"
        sent: list[str] = []
        try:
            task = runtime.policy.task(self._task)
            messages = validate_messages(self._messages)
            request = RequestState(
                task, started, started + task.deadline_s if task.deadline_s else None
            )
            self.attempts = request.attempts
            steps = runtime.ordered(task, messages, self._params.get("max_tokens"))
            for step in router._eligible(runtime, request, steps, prompt_tokens(messages)):
                candidate = step.candidate
                conversation: list[dict[str, Any]] = messages
                if sent:
                    conversation = [*messages, {"role": "assistant", "content": "".join(sent)}]
                params = {**step.params, **self._params}
                try:
                    async with aclosing(
                        self._candidate(request, candidate, conversation, params)
                    ) as deltas:
                        async for delta in deltas:
                            sent.append(delta)
                            yield delta
                except CandidateFailed as failed:
                    if failed.outcome == DEADLINE:
                        raise router._deadline(request, None) from failed.error
                    if sent and task.on_midstream_failure != "resume":
                        raise self._interrupted(request, sent) from failed.error
                    request.left_behind = (candidate.name, failed.outcome)
                    continue
                outcome = SUCCESS
                self.text = "".join(sent)
                self.latency_s = time.perf_counter() - started
                self.cost_usd = request.cost_usd
                return
            if sent:
                raise self._interrupted(request, sent)
            raise AllProvidersFailed(
                summary(task.name, request.attempts), task=task.name, attempts=request.attempts
            )
        except StreamInterrupted:
            outcome = "exhausted"
            raise
        except DeadlineExceeded as exc:
            outcome = DEADLINE
            if sent:
                raise StreamInterrupted(
                    str(exc), task=exc.task, attempts=exc.attempts, partial_text="".join(sent)
                ) from exc
            raise
        except AllProvidersFailed:
            outcome = "exhausted"
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = CANCELLED
            raise
        finally:
            if request is not None:
                # Whatever was billed counts, even when the stream did not finish.
                self.cost_usd = request.cost_usd
            router._finish(self._task, request, started, outcome)
            await runtime.release()

    def _interrupted(self, request: RequestState, sent: list[str]) -> StreamInterrupted:
        partial = "".join(sent)
        return StreamInterrupted(
            f"stream for task {request.task.name!r} failed after {len(partial)} characters "
            "reached the caller; " + summary(request.task.name, request.attempts, header=False),
            task=request.task.name,
            attempts=request.attempts,
            partial_text=partial,
        )

    async def _candidate(
        self,
        request: RequestState,
        candidate: Candidate,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
    ) -> AsyncGenerator[str, None]:
        """One candidate's deltas. Retries happen only before its first delta."""
        router = self._router
        client = candidate.client
        assert client is not None
        task = request.task
        retries = 0
        upstream = 0.0
        last_error: ProviderError | None = None

        async def open_stream() -> tuple[ChatStream, str | None, Admission, float]:
            nonlocal last_error, upstream
            timeout, deadline_binds = request.attempt_timeout(candidate)
            first_bound = timeout
            if task.first_token_timeout_s is not None and task.first_token_timeout_s < timeout:
                first_bound, deadline_binds = task.first_token_timeout_s, False
            admission = candidate.breaker.admit()
            if admission is Admission.REJECT:
                raise CandidateFailed(BREAKER_OPEN)
            try:
                stream = client.stream(messages, timeout_s=timeout, **params)
            except BaseException as exc:
                # Refused before any call (e.g. a bad parameter): nothing to say about health.
                candidate.breaker.release(admission)
                if isinstance(exc, InvalidRequestError):
                    raise refused(exc, candidate.name) from exc
                raise
            candidate.in_flight += 1
            began = time.perf_counter()
            try:
                async with asyncio.timeout(first_bound):
                    first: str | None = await stream.__anext__()
            except StopAsyncIteration:
                first = None
            except BaseException as exc:
                candidate.in_flight -= 1
                upstream += time.perf_counter() - began
                await _close_quietly(stream)
                error = _as_error(exc, candidate, first_bound)
                if error is None:
                    candidate.breaker.release(admission)
                    raise
                candidate.breaker.failure(admission, error.kind)
                if isinstance(exc, TimeoutError) and deadline_binds:
                    raise CandidateFailed(DEADLINE) from exc
                last_error = error
                raise error from exc
            router._emit(
                "on_first_token",
                provider=candidate.name,
                model=candidate.model,
                seconds=time.perf_counter() - began,
            )
            return stream, first, admission, began

        def on_retry(error: ProviderError, wait_s: float) -> None:
            nonlocal retries
            retries += 1
            request.waited_s += wait_s
            router._emit(
                "on_retry", provider=candidate.name, model=candidate.model, kind=error.kind.value
            )

        try:
            stream, first, admission, began = await call_with_retries(
                open_stream,
                candidate.spec.retry,
                remaining_s=request.remaining,
                on_retry=on_retry,
                sleep=router._sleep,
            )
        except CandidateFailed as failed:
            if failed.outcome == BREAKER_OPEN and last_error is not None:
                failed = CandidateFailed(last_error.kind.value, last_error)
            router._record(
                request,
                candidate,
                failed.outcome,
                upstream or None,
                retries=retries,
                error=str(failed.error) if failed.error else None,
            )
            raise failed from None
        except (RetryAborted, ProviderError) as exc:
            error = exc.error if isinstance(exc, RetryAborted) else exc
            router._record(
                request, candidate, error.kind.value, upstream, retries=retries, error=str(error)
            )
            raise CandidateFailed(error.kind.value, error) from None

        outcome = CANCELLED
        # From its first delta on, this candidate is the one answering (until a `resume`).
        self.provider = candidate.name
        self.model = stream.model or candidate.model
        idle = _GapTimer()
        try:
            if first is not None:
                yield first
                while True:
                    timeout, deadline_binds = request.attempt_timeout(candidate)
                    try:
                        delta = await idle.next_within(stream, timeout)
                    except StopAsyncIteration:
                        break
                    except BaseException as exc:
                        failure = _as_error(exc, candidate, timeout)
                        if failure is None:
                            raise
                        candidate.breaker.failure(admission, failure.kind)
                        admission = Admission.CALL  # recorded: do not release again below
                        outcome = (
                            DEADLINE
                            if (isinstance(exc, TimeoutError) and deadline_binds)
                            else failure.kind.value
                        )
                        raise CandidateFailed(outcome, failure) from exc
                    yield delta
            outcome = SUCCESS
        finally:
            idle.close()
            candidate.in_flight -= 1
            elapsed = time.perf_counter() - began
            request.upstream_s += elapsed
            await _close_quietly(stream)
            if outcome == SUCCESS:
                candidate.breaker.success(admission)
                candidate.observe_latency(elapsed)
                self.provider = candidate.name
                self.model = stream.model or candidate.model
                self.finish_reason = stream.finish_reason
            elif outcome == CANCELLED:
                candidate.breaker.release(admission)
            if stream.usage is not None:
                usage = stream.usage
                self.usage = usage
                router._bill(request, candidate, stream.model, usage)
            router._record(request, candidate, outcome, elapsed + upstream, retries=retries)


class _GapTimer:
    """Bounds each wait for a stream's next delta, without a new timer per delta.

    `asyncio.timeout()` around every `__anext__` pushes a timer on the loop's heap and cancels
    it again for every chunk (about half of the router's cost per chunk). Here one timer
    stays armed for the whole stream: a wait only notes when it must end, and the timer, when
    it fires, either finds the current wait overdue (and cancels the waiting task, which the
    wait turns into `TimeoutError`, as `asyncio.timeout` does) or re-arms itself for the
    current wait's end. Time the caller spends between waits counts for nothing.
    """

    __slots__ = ("_fired", "_handle", "_loop", "_until", "_waiter")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Task[Any] | None = None
        self._until: float | None = None
        self._fired = False

    async def next_within(self, stream: ChatStream, timeout_s: float) -> str:
        """`stream`'s next delta, or `TimeoutError` after `timeout_s` without one."""
        task = asyncio.current_task()
        assert task is not None
        until = self._loop.time() + timeout_s
        if self._handle is None or self._handle.when() > until:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(until, self._check)
        cancelling = task.cancelling()
        self._waiter, self._until = task, until
        try:
            return await stream.__anext__()
        except asyncio.CancelledError:
            if self._fired:
                self._fired = False
                if task.uncancel() <= cancelling:
                    raise TimeoutError from None
            raise
        finally:
            self._waiter = self._until = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._waiter is None or self._until is None:
            return  # between waits: the next wait arms the timer again
        if self._loop.time() >= self._until:
            self._fired = True
            self._waiter.cancel()
        else:
            self._handle = self._loop.call_at(self._until, self._check)


def _as_error(exc: BaseException, candidate: Candidate, bound: float) -> ProviderError | None:
    if isinstance(exc, ProviderError):
        exc.provider = exc.provider or candidate.name
        return exc
    if isinstance(exc, TimeoutError):
        return ProviderError(
            f"no data within {bound:g}s", kind=ErrorKind.TIMEOUT, provider=candidate.name
        )
    if isinstance(exc, InvalidRequestError):
        return refused(exc, candidate.name)
    return None


async def _close_quietly(stream: ChatStream) -> None:
    with suppress(Exception):
        await stream.aclose()
