"""The chain walk: for one request, try a task's candidates in order until one answers.

One `Walk` is one request, whole or streamed, for a chat answer or for embeddings. It owns
what the request has seen (attempts, deadline, time upstream, cost) and the rules both modes
share: which candidates are skipped and why, each move to the next candidate, retries on one
candidate, billing, and the events reported to the hooks. Every call a breaker admits runs
inside its `Ticket`, which settles the admission exactly once whatever is raised.

Each candidate is guarded by its breaker (skipped when open), its concurrency limit (skipped
when saturated) and a context-size pre-check; each call is bounded by the provider's
`timeout_s` and the request's `deadline_s`, and retried on the same candidate for the kinds in
`retry.on`. A stream may be retried or left for the next candidate until its first delta;
`first_token_timeout_s` bounds that wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from typing import Any, Protocol, TypeVar

from gateway._outcomes import REQUEST_FAULTS, Attempt, AttemptOutcome, ErrorKind, RequestOutcome
from gateway._resilience import BreakerOpen, RetryAborted, Sleep, Ticket, call_with_retries
from gateway._runtime import Candidate, Runtime, Step, prompt_tokens
from gateway.errors import (
    AllProvidersFailed,
    DeadlineExceeded,
    InvalidRequestError,
    ProviderError,
    ProviderSaturated,
    RequestRefused,
    RoutingError,
    StreamInterrupted,
)
from gateway.hooks import UNRESOLVED_TASK, HookSet
from gateway.policy import TaskSpec, shortens_vectors
from gateway.providers import LLMService
from gateway.request import check_embedding_inputs, check_request_fields, needed_capabilities
from gateway.types import (
    ChatStream,
    Completion,
    Conversation,
    Embeddings,
    Message,
    StreamPiece,
    Usage,
    check_max_tokens,
    validate_messages,
)

log = logging.getLogger("gateway")

_NO_TIMER = nullcontext()

T = TypeVar("T")
P = TypeVar("P")


class Answer(Protocol):
    """What the walk reads of a whole answer, chat or embeddings: who answered, and usage."""

    @property
    def model(self) -> str: ...
    @property
    def usage(self) -> Usage: ...
    @property
    def finish_reason(self) -> str | None: ...


A = TypeVar("A", bound=Answer)

Check = Callable[[Completion, str], Any]
"""Validates a whole answer for one provider (e.g. as JSON); raises `ProviderError` to reject."""

Operation = Callable[[LLMService, P, float, dict[str, Any]], Awaitable[A]]
"""One call of a candidate's client for a whole answer: (client, what is sent, timeout_s,
params) -> the answer. `complete` and `embed` are the two."""


def chat_operation(
    client: LLMService, messages: Conversation, timeout_s: float, params: dict[str, Any]
) -> Awaitable[Completion]:
    """The chat operation: one whole completion."""
    return client.complete(messages, timeout_s=timeout_s, **params)


def embed_operation(
    client: LLMService, inputs: tuple[str, ...], timeout_s: float, params: dict[str, Any]
) -> Awaitable[Embeddings]:
    """The embedding operation: one vector per input, all in one call."""
    return client.embed(inputs, timeout_s=timeout_s, **params)


class CandidateFailed(Exception):
    """One candidate is done without an answer; `outcome` says why (and `error`, or for a
    failure that is not the provider's, `reason`)."""

    def __init__(
        self,
        outcome: AttemptOutcome,
        error: ProviderError | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.error = error
        self.reason = reason


class Walker:
    """What every request's walk shares: the hooks, the backoff sleep, and the router's
    view of its current runtime."""

    def __init__(
        self,
        hooks: HookSet,
        sleep: Sleep,
        runtime: Callable[[], Runtime],
        before_request: Callable[[], None],
    ) -> None:
        self.hooks = hooks
        self.sleep = sleep
        self._runtime = runtime
        self._before_request = before_request
        self._unpriced_warned: set[tuple[str, str]] = set()

    def request(self, task_name: str) -> Walk:
        """A request for `task_name`, to be used as `async with walker.request(task) as walk`."""
        self._before_request()
        return Walk(self, self._runtime(), task_name)

    def warn_unpriced(self, candidate: Candidate, model: str) -> None:
        key = (candidate.name, model)
        if key not in self._unpriced_warned:
            self._unpriced_warned.add(key)
            log.warning(
                "no price for model %r (provider %s): its cost counts as 0; add it under "
                "`prices:` in the policy",
                model,
                candidate.name,
            )


class Walk:
    """One request on its way through a task's chain.

    As an async context manager it holds the runtime it started on (a reload does not close
    clients under it) and, on the way out, reports the request's outcome, read from how it
    ended.
    """

    # Slots: one is held for every request in flight, and every open stream.
    __slots__ = (
        "_conversation",
        "_left_behind",
        "_output_tokens",
        "_redirected",
        "_streamed",
        "attempts",
        "billed",
        "cost_usd",
        "deadline",
        "hooks",
        "needs",
        "outcome",
        "redirects",
        "rules",
        "runtime",
        "started",
        "task",
        "task_name",
        "upstream_s",
        "waited_s",
        "walker",
    )

    def __init__(self, walker: Walker, runtime: Runtime, task_name: str) -> None:
        self.walker = walker
        self.hooks = walker.hooks
        self.runtime = runtime
        self.task_name = task_name
        self.task: TaskSpec | None = None
        self.started = time.perf_counter()
        self.deadline: float | None = None
        self.attempts: list[Attempt] = []
        self.upstream_s = 0.0
        self.waited_s = 0.0
        self.cost_usd = 0.0
        self.billed = Usage()
        self.outcome: RequestOutcome | None = None
        """Set by the caller where the exception alone does not say how the request ended."""
        self._left_behind: tuple[str, AttemptOutcome] | None = None
        self.needs: frozenset[str] = frozenset()
        """What the request needs of a model (`needed_capabilities`)."""
        self.rules: TaskSpec | None = None
        """The task whose stop_on and redirect rules apply now: the request's own, or the
        one a redirect handed it to."""
        self.redirects: list[tuple[ErrorKind, str]] = []
        """Each redirect taken: (the error kind, the task whose chain took over)."""
        self._redirected: Sequence[Step] | None = None
        self._conversation: Sequence[Message] = ()
        self._output_tokens: int | None = None
        self._streamed = False

    async def __aenter__(self) -> Walk:
        self.runtime.in_flight += 1
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            outcome = self.outcome or _request_outcome(exc)
            duration = time.perf_counter() - self.started
            overhead = max(0.0, duration - self.upstream_s - self.waited_s)
            self.hooks.on_request(
                # Before the policy resolved it, the name is only the caller's string: one
                # fixed value keeps each made-up name from becoming a label of its own.
                task=self.task.name if self.task is not None else UNRESOLVED_TASK,
                outcome=outcome,
                duration_s=duration,
                overhead_s=overhead,
            )
        finally:
            await self.runtime.release()

    # --- the chain ---------------------------------------------------------------------

    def begin(
        self, messages: Sequence[Message], params: Mapping[str, Any], *, stream: bool
    ) -> tuple[Conversation, Sequence[Step]]:
        """Resolve the task and check the request: the conversation and the steps to try."""
        task = self.task = self.runtime.policy.task(self.task_name)
        if task.kind != "chat":
            raise _wrong_kind(task, "a chat completion")
        if task.deadline_s:
            self.deadline = self.started + task.deadline_s
        check_max_tokens(params.get("max_tokens"))
        check_max_tokens(params.get("max_completion_tokens"), "max_completion_tokens")
        checked = validate_messages(messages)
        check_request_fields(params, stream=stream)
        self.needs = needed_capabilities(params, checked)
        self.rules = task
        output_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
        self._conversation, self._output_tokens, self._streamed = checked, output_tokens, stream
        self.hooks.on_request_start(task=task.name)
        return checked, self.runtime.ordered(task, checked, output_tokens, stream=stream)

    def begin_embedding(self, inputs: Any) -> tuple[tuple[str, ...], Sequence[Step]]:
        """Resolve an embedding request's task and check its inputs: the texts and the
        steps to try."""
        task = self.task = self.runtime.policy.task(self.task_name)
        if task.kind != "embedding":
            raise _wrong_kind(task, "embeddings")
        if task.deadline_s:
            self.deadline = self.started + task.deadline_s
        texts = check_embedding_inputs(inputs)
        self.rules = task
        self.hooks.on_request_start(task=task.name, operation="embeddings")
        # `cheapest` ranks on the inputs' size; a context window bounds each input, not
        # their sum, so the walk's own pre-check is left out (`eligible(steps, ())`).
        sized = [{"content": text} for text in texts]
        return texts, self.runtime.ordered(task, sized, 0)

    def embedding_params(self, step: Step, dimensions: int | None) -> dict[str, Any] | None:
        """What this step's embed call adds to the request's parameters: `dimensions` for a
        model that takes it, and the vector length its answer must have. None when it cannot
        answer with `dimensions` numbers: it is then recorded as `unsupported` and the walk
        goes on."""
        candidate = step.candidate
        if dimensions is None:
            return {"expected_dimensions": step.dimensions}
        if shortens_vectors(candidate.model):
            return {"dimensions": dimensions}
        if step.dimensions == dimensions:
            return {"expected_dimensions": dimensions}
        native = f"{step.dimensions}" if step.dimensions else "a length the policy does not know"
        self.record(
            candidate,
            AttemptOutcome.UNSUPPORTED,
            None,
            error=f"dimensions={dimensions}: model {candidate.model!r} answers vectors of "
            f"{native} and takes no dimensions parameter",
        )
        self._left_behind = (candidate.name, AttemptOutcome.UNSUPPORTED)
        return None

    def eligible(self, steps: Sequence[Step], messages: Sequence[Message]) -> Iterator[Step]:
        """The chain's steps worth calling, in order. Skipped candidates are recorded, each
        move to the next candidate is reported (after `left()`), and a deadline that runs out
        between candidates raises `DeadlineExceeded`. A redirect (`left()`, or a prompt too
        long for a candidate, under the task's `redirect:` rules) goes on with the other
        task's chain instead of the rest of this one."""
        task = self.spec
        input_tokens = prompt_tokens(messages)
        queue = iter(steps)
        while True:
            if self._redirected is not None:
                queue, self._redirected = iter(self._redirected), None
            step = next(queue, None)
            if step is None:
                return
            candidate = step.candidate
            if self._left_behind is not None:
                left_name, why = self._left_behind
                self._left_behind = None
                self.hooks.on_fallback(
                    task=task.name, from_provider=left_name, to_provider=candidate.name, kind=why
                )
            left = self.remaining()
            if left is not None and left <= 0:
                raise self.deadline_exceeded(candidate)
            skipped = self._skip_reason(candidate, input_tokens)
            if skipped is not None:
                reason = None
                if skipped is AttemptOutcome.UNAVAILABLE:
                    reason = _shown_reason(candidate.unavailable_reason)
                elif skipped is AttemptOutcome.UNSUPPORTED:
                    lacking = ", ".join(sorted(self.needs & candidate.spec.lacks))
                    reason = f"the request needs {lacking}, which the policy says it lacks"
                self.record(candidate, skipped, None, error=reason)
                self._left_behind = (candidate.name, skipped)
                if skipped is AttemptOutcome.SKIPPED_CONTEXT:
                    self._follow_rules(ErrorKind.CONTEXT_LENGTH)
                continue
            yield step

    def left(self, candidate: Candidate, failed: CandidateFailed) -> None:
        """`candidate` gave no answer. A deadline ends the request here, and so does a kind
        the task stops on; a kind it redirects hands the request to another task's chain."""
        if failed.outcome is AttemptOutcome.DEADLINE:
            raise self.deadline_exceeded(None) from failed.error
        self._left_behind = (candidate.name, failed.outcome)
        kind = _failure_kind(failed.outcome)
        if kind is not None:
            self._follow_rules(kind)

    def _follow_rules(self, kind: ErrorKind) -> None:
        """The current task's `stop_on` and `redirect` for a failure of `kind`."""
        rules = self.rules or self.spec
        if kind in rules.stop_on:
            raise self.stopped(kind)
        target = rules.redirect_for(kind)
        if target is not None:
            spec = self.runtime.policy.task(target)
            self.rules = spec
            self.redirects.append((kind, spec.name))
            self._redirected = self.runtime.ordered(
                spec, self._conversation, self._output_tokens, stream=self._streamed
            )

    def stopped(self, kind: ErrorKind) -> AllProvidersFailed:
        """The request ends at a failure of a kind its task stops on (`stop_on`)."""
        task = self.spec.name
        return self._given_up(
            f"task {task!r} stops on {kind.value} (stop_on), so no further provider was tried: "
            + summary(task, self.attempts, header=False)
        )

    def _skip_reason(self, candidate: Candidate, input_tokens: int) -> AttemptOutcome | None:
        if candidate.client is None:
            return AttemptOutcome.UNAVAILABLE
        if self.needs and self.needs & candidate.spec.lacks:
            return AttemptOutcome.UNSUPPORTED
        if candidate.saturated:
            return AttemptOutcome.SATURATED
        window = self.runtime.context_window(candidate)
        if window is not None and input_tokens > window:
            return AttemptOutcome.SKIPPED_CONTEXT
        if candidate.breaker.refusing():
            return AttemptOutcome.BREAKER_OPEN
        return None

    @property
    def spec(self) -> TaskSpec:
        assert self.task is not None, "begin() resolves the task"
        return self.task

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - time.perf_counter()

    def attempt_timeout(self, candidate: Candidate) -> tuple[float, bool]:
        """The bound for one call, and whether it is the deadline (not timeout_s) that binds."""
        timeout = candidate.spec.timeout_s
        left = self.remaining()
        if left is not None and left < timeout:
            return max(left, 0.0), True
        return timeout, False

    async def first_answer(
        self,
        steps: Sequence[Step],
        sized: Sequence[Message],
        operation: Operation[P, A],
        payload: P,
        params: dict[str, Any],
        check: Callable[[A, str], Any] | None,
        fit: Callable[[Step], dict[str, Any] | None] | None = None,
    ) -> tuple[Step, A, Any]:
        """The chain's first whole answer: each eligible step (`eligible(steps, sized)`) is
        called in turn until one answers, as (step, answer, what `check` made of it). `fit`
        adds a step's own parameters, or skips it (None, having recorded why). When none
        answers, the walk's error is raised."""
        for step in self.eligible(steps, sized):
            call_params = params
            if fit is not None:
                fitted = fit(step)
                if fitted is None:
                    continue
                call_params = {**params, **fitted}
            try:
                answer, parsed = await self.call(step, operation, payload, call_params, check)
            except CandidateFailed as failed:
                self.left(step.candidate, failed)
                continue
            return step, answer, parsed
        raise self.exhausted()

    # --- one candidate, whole ----------------------------------------------------------

    async def call(
        self,
        step: Step,
        operation: Operation[P, A],
        payload: P,
        params: dict[str, Any],
        check: Callable[[A, str], Any] | None,
    ) -> tuple[A, Any]:
        """One candidate's whole answer to `operation(client, payload, ...)` (`complete`
        or `embed`), with retries; `CandidateFailed` when it gives none."""
        candidate = step.candidate
        client = candidate.client
        assert client is not None
        call_params = {**step.params, **params}
        tries = _Tries(self, candidate)
        bounded = client.bounds_calls

        async def attempt() -> tuple[A, Any]:
            timeout, deadline_binds = self.attempt_timeout(candidate)
            # The provider's timeout_s starts once a pooled connection is held: the wait for
            # one (at most pool_wait_s, then `saturated`) is ours, not the provider's.
            slack = 0.0 if deadline_binds else client.pool_wait_s
            ticket = tries.admit()
            candidate.in_flight += 1
            began = time.perf_counter()
            with ticket:
                try:
                    # A provider that bounds its own calls needs no second timer, one fewer
                    # on the loop's heap a call; a deadline still gets one, as it bounds the
                    # wait for a connection too.
                    own_timer = deadline_binds or not bounded
                    async with asyncio.timeout(timeout + slack) if own_timer else _NO_TIMER:
                        completion = await operation(client, payload, timeout, call_params)
                except TimeoutError as exc:
                    if deadline_binds:
                        # The caller's deadline, not the provider's timeout_s: the call may
                        # have been healthy, so its breaker is not told of a failure.
                        ticket.release()
                        raise CandidateFailed(AttemptOutcome.DEADLINE) from exc
                    ticket.fail(ErrorKind.TIMEOUT)
                    raise ProviderError(
                        f"no answer within timeout_s={timeout:g}",
                        kind=ErrorKind.TIMEOUT,
                        provider=candidate.name,
                    ) from exc
                except ProviderError as exc:
                    # The provider's own clock may run out a moment before ours: when the
                    # bound was the request's deadline, that is still the deadline.
                    if deadline_binds and exc.kind is ErrorKind.TIMEOUT:
                        ticket.release()
                        raise CandidateFailed(AttemptOutcome.DEADLINE, exc) from exc
                    raise
                except ProviderSaturated as exc:
                    ticket.release()  # our own pool was full: the provider was never reached
                    raise CandidateFailed(AttemptOutcome.SATURATED, reason=str(exc)) from exc
                except InvalidRequestError as exc:
                    # The request passed the router's checks, so this provider alone cannot
                    # honour it (e.g. Ollama and image URLs): the next candidate may.
                    ticket.release()
                    raise unsupported(exc, candidate.name) from exc
                finally:
                    elapsed = time.perf_counter() - began
                    tries.latency_s += elapsed
                    self.upstream_s += elapsed
                    candidate.in_flight -= 1
                self.bill(candidate, completion.model, completion.usage)
                parsed = None
                if check is not None:
                    try:
                        parsed = check(completion, candidate.name)
                    except ProviderError:
                        # The provider answered; only this caller cannot use the answer.
                        ticket.release()
                        raise
                ticket.succeed()
            candidate.observe_latency(elapsed)
            self.hooks.on_response(
                task=self.spec.name,
                provider=candidate.name,
                model=completion.model or candidate.model,
                finish_reason=completion.finish_reason,
            )
            return completion, parsed

        answer = await tries.run(attempt)
        self.record(candidate, AttemptOutcome.SUCCESS, tries.latency_s, retries=tries.retries)
        return answer

    # --- one candidate, streamed -------------------------------------------------------

    async def stream(
        self, step: Step, messages: list[dict[str, Any]], params: dict[str, Any], into: Streamed
    ) -> AsyncGenerator[list[StreamPiece], None]:
        """One candidate's events: text deltas and tool-call pieces, in the groups they
        arrived in. Retries happen only before its first group reaches the caller; after it,
        a failure raises `CandidateFailed` as any other."""
        candidate = step.candidate
        client = candidate.client
        assert client is not None
        call_params = {**step.params, **params}
        task = self.spec
        tries = _Tries(self, candidate)

        async def open_stream() -> tuple[ChatStream, list[StreamPiece] | None, Ticket, float]:
            timeout, deadline_binds = self.attempt_timeout(candidate)
            first_bound = timeout
            if task.first_token_timeout_s is not None and task.first_token_timeout_s < timeout:
                first_bound, deadline_binds = task.first_token_timeout_s, False
            ticket = tries.admit()
            with ticket:
                try:
                    stream = client.stream(messages, timeout_s=timeout, **call_params)
                except InvalidRequestError as exc:
                    ticket.release()  # refused before any call: nothing to say about health
                    raise unsupported(exc, candidate.name) from exc
                candidate.in_flight += 1
                began = time.perf_counter()
                slack = 0.0 if deadline_binds else client.pool_wait_s
                try:
                    async with asyncio.timeout(first_bound + slack):
                        first: list[StreamPiece] | None = await stream.next_group()
                except StopAsyncIteration:
                    first = None
                except BaseException as exc:
                    candidate.in_flight -= 1
                    tries.latency_s += time.perf_counter() - began
                    await _close_quietly(stream)
                    if isinstance(exc, ProviderSaturated):
                        ticket.release()  # our own pool was full: the provider was not reached
                        raise CandidateFailed(AttemptOutcome.SATURATED, reason=str(exc)) from exc
                    error = _as_error(exc, candidate, first_bound)
                    if error is None:
                        raise
                    if deadline_binds and error.kind is ErrorKind.TIMEOUT:
                        ticket.release()  # the caller's deadline: no verdict on the provider
                        raise CandidateFailed(AttemptOutcome.DEADLINE) from exc
                    ticket.fail(error.kind)
                    raise error from exc
            first_token_s = time.perf_counter() - began
            # The time to the first token is the provider's; the rest is paced by the reader.
            candidate.observe_first_token(first_token_s)
            self.hooks.on_first_token(
                provider=candidate.name,
                model=candidate.model,
                seconds=first_token_s,
            )
            return stream, first, ticket, began

        stream, first, ticket, began = await tries.run(open_stream)
        outcome = AttemptOutcome.CANCELLED
        # From its first delta on, this candidate is the one answering (until a `resume`).
        into.provider = candidate.name
        into.model = stream.model or candidate.model
        idle = _GapTimer()
        try:
            with ticket:
                if first is not None:
                    yield first
                    first = None  # not held for the stream's life
                    while True:
                        timeout, deadline_binds = self.attempt_timeout(candidate)
                        try:
                            group = await idle.next_within(stream, timeout)
                        except StopAsyncIteration:
                            break
                        except BaseException as exc:
                            failure = _as_error(exc, candidate, timeout)
                            if failure is None:
                                raise
                            if deadline_binds and failure.kind is ErrorKind.TIMEOUT:
                                ticket.release()  # the caller's deadline, not the provider's
                                outcome = AttemptOutcome.DEADLINE
                            else:
                                ticket.fail(failure.kind)
                                outcome = AttemptOutcome.failed(failure.kind)
                            raise CandidateFailed(outcome, failure) from exc
                        yield group
                        del group  # not held while the next is awaited
                ticket.succeed()
                outcome = AttemptOutcome.SUCCESS
        finally:
            ticket.release()  # a no-op once settled; here so no path leaves it open
            idle.close()
            candidate.in_flight -= 1
            elapsed = time.perf_counter() - began
            self.upstream_s += elapsed
            await _close_quietly(stream)
            if outcome is AttemptOutcome.SUCCESS:
                into.provider = candidate.name
                into.model = stream.model or candidate.model
                into.finish_reason = stream.finish_reason
                into.refusal = stream.refusal
                self.hooks.on_response(
                    task=task.name,
                    provider=candidate.name,
                    model=into.model,
                    finish_reason=stream.finish_reason,
                )
            if stream.usage is not None:
                into.usage = stream.usage
                self.bill(candidate, stream.model, stream.usage)
            self.record(candidate, outcome, elapsed + tries.latency_s, retries=tries.retries)

    # --- book-keeping ------------------------------------------------------------------

    def bill(self, candidate: Candidate, model: str, usage: Usage) -> None:
        model = model or candidate.model
        cost = self.runtime.prices.cost(model, usage, candidate.spec.type)
        if cost is None:
            self.walker.warn_unpriced(candidate, model)
        self.cost_usd += cost or 0.0
        self.billed = self.billed + usage
        self.hooks.on_usage(
            task=self.spec.name,
            provider=candidate.name,
            model=candidate.model,
            usage=usage,
            cost_usd=cost,
        )

    def record(
        self,
        candidate: Candidate,
        outcome: AttemptOutcome,
        latency: float | None,
        *,
        retries: int = 0,
        error: str | None = None,
        status: int | None = None,
    ) -> None:
        self.attempts.append(
            Attempt(
                candidate.name, candidate.model, outcome, retries, latency or 0.0, error, status
            )
        )
        self.hooks.on_attempt(
            task=self.spec.name,
            provider=candidate.name,
            model=candidate.model,
            outcome=outcome,
            duration_s=latency,
        )

    def deadline_exceeded(self, candidate: Candidate | None) -> DeadlineExceeded:
        task = self.spec
        if candidate is not None:
            # Listed and counted like any skipped candidate, so metrics match `attempts`.
            self.record(candidate, AttemptOutcome.DEADLINE, None)
        return DeadlineExceeded(
            f"task {task.name!r}: deadline_s={task.deadline_s:g} ran out; "
            + summary(task.name, self.attempts, header=False),
            task=task.name,
            attempts=self.attempts,
        )

    def exhausted(self) -> AllProvidersFailed:
        """Every candidate is done without an answer."""
        task = self.spec.name
        if self._refused_as_sent():
            return self._given_up(
                f"no provider for task {task!r} could serve this request as sent: "
                + summary(task, self.attempts, header=False)
            )
        return self._given_up(summary(task, self.attempts))

    def _refused_as_sent(self) -> bool:
        return bool(self.attempts) and all(a.outcome in REQUEST_FAULTS for a in self.attempts)

    def _given_up(self, message: str) -> AllProvidersFailed:
        """`RequestRefused` when each candidate refused the request itself (sending it again
        cannot help), with the first upstream's own status; else `AllProvidersFailed`."""
        task, attempts = self.spec.name, self.attempts
        if self._refused_as_sent():
            statuses = [a.status for a in attempts if a.status in REFUSAL_STATUSES]
            return RequestRefused(
                message, task=task, attempts=attempts, status=statuses[0] if statuses else 400
            )
        return AllProvidersFailed(message, task=task, attempts=attempts)

    def interrupted(self, partial: str) -> StreamInterrupted:
        task = self.spec.name
        return StreamInterrupted(
            f"stream for task {task!r} failed after {len(partial)} characters reached the "
            "caller; " + summary(task, self.attempts, header=False),
            task=task,
            attempts=self.attempts,
            partial_text=partial,
        )


class Streamed:
    """What a streamed walk tells its reader as it goes: the candidate answering, and once
    the stream has ended, its usage, finish reason and refusal."""

    __slots__ = ("finish_reason", "model", "provider", "refusal", "usage")

    provider: str | None
    model: str | None
    usage: Usage
    finish_reason: str | None
    refusal: str | None

    def __init__(self) -> None:
        self.provider = self.model = self.finish_reason = self.refusal = None
        self.usage = Usage()


class _Tries:
    """One candidate's calls for one request: admission, retries, and how they ended."""

    __slots__ = ("candidate", "last_error", "latency_s", "retries", "walk")

    def __init__(self, walk: Walk, candidate: Candidate) -> None:
        self.walk = walk
        self.candidate = candidate
        self.retries = 0
        self.latency_s = 0.0
        self.last_error: ProviderError | None = None

    def admit(self) -> Ticket:
        try:
            return self.candidate.breaker.admitted()
        except BreakerOpen:
            raise CandidateFailed(AttemptOutcome.BREAKER_OPEN) from None

    def on_retry(self, error: ProviderError, wait_s: float) -> None:
        self.retries += 1
        self.walk.waited_s += wait_s
        self.walk.hooks.on_retry(
            provider=self.candidate.name, model=self.candidate.model, kind=error.kind
        )

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` under the candidate's retry policy. Every way it can end without an
        answer is recorded and raised as `CandidateFailed`."""
        walk, candidate = self.walk, self.candidate
        walk.hooks.on_attempt_start(
            task=walk.spec.name, provider=candidate.name, model=candidate.model
        )
        try:
            return await call_with_retries(
                self._noting(attempt),
                candidate.spec.retry,
                remaining_s=walk.remaining,
                on_retry=self.on_retry,
                sleep=walk.walker.sleep,
            )
        except CandidateFailed as failed:
            if failed.outcome is AttemptOutcome.BREAKER_OPEN and self.last_error is not None:
                # The breaker opened between our own retries: the real cause is the last error.
                failed = CandidateFailed(
                    AttemptOutcome.failed(self.last_error.kind), self.last_error
                )
            self.fail(failed.outcome, failed.error, failed.reason)
            raise failed from None
        except (RetryAborted, ProviderError) as exc:
            error = exc.error if isinstance(exc, RetryAborted) else exc
            error.provider = error.provider or candidate.name
            outcome = AttemptOutcome.failed(error.kind)
            self.fail(outcome, error)
            raise CandidateFailed(outcome, error) from None
        except asyncio.CancelledError:
            self.fail(AttemptOutcome.CANCELLED, None)
            raise

    def _noting(self, attempt: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        async def noted() -> T:
            try:
                return await attempt()
            except ProviderError as error:
                self.last_error = error
                raise

        return noted

    def fail(
        self, outcome: AttemptOutcome, error: ProviderError | None, reason: str | None = None
    ) -> None:
        self.walk.record(
            self.candidate,
            outcome,
            self.latency_s or None,
            retries=self.retries,
            error=str(error) if error is not None else reason,
            status=error.status if error is not None else None,
        )


def _wrong_kind(task: TaskSpec, asked: str) -> InvalidRequestError:
    other = "router.embed or POST /v1/embeddings" if task.kind == "embedding" else "a chat call"
    return InvalidRequestError(
        f"task {task.name!r} is of kind {task.kind} and cannot serve {asked}: send it {other}, "
        "or name a task of the right kind"
    )


def _failure_kind(outcome: AttemptOutcome) -> ErrorKind | None:
    """The error kind a failed attempt's outcome stands for (None for skips, deadlines...)."""
    try:
        return ErrorKind(outcome.value)
    except ValueError:
        return None


def _request_outcome(exc: BaseException | None) -> RequestOutcome:
    if exc is None:
        return RequestOutcome.SUCCESS
    if isinstance(exc, DeadlineExceeded):
        return RequestOutcome.DEADLINE
    if isinstance(exc, RoutingError):
        return RequestOutcome.EXHAUSTED
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return RequestOutcome.CANCELLED
    return RequestOutcome.REJECTED


UNAVAILABLE_REASON_MAX_CHARS = 200


def _shown_reason(reason: str | None) -> str | None:
    """Why a candidate is unavailable, as an attempt's `error`: clients see it (the 502 body),
    so it is one line and short. The runtime has already masked credentials in it."""
    if not reason:
        return None
    line = reason.strip().splitlines()[0] if reason.strip() else ""
    if len(line) > UNAVAILABLE_REASON_MAX_CHARS:
        line = line[: UNAVAILABLE_REASON_MAX_CHARS - 1] + "…"
    return line or None


REFUSAL_STATUSES = frozenset({400, 404, 413, 422})
"""Upstream statuses that say the request itself was refused, passed on to the caller once
no candidate could serve it."""


def unsupported(exc: InvalidRequestError, provider: str) -> CandidateFailed:
    """A provider cannot honour something the request asks for: the candidate is skipped
    (`unsupported`) with the provider's reason, and the next one may."""
    return CandidateFailed(
        AttemptOutcome.UNSUPPORTED,
        ProviderError(str(exc), kind=ErrorKind.BAD_REQUEST, provider=provider),
    )


def summary(task: str, attempts: Sequence[Attempt], *, header: bool = True) -> str:
    parts = []
    for a in attempts:
        detail = f": {a.error}" if a.error else ""
        retried = f" after {a.retries} retr{'y' if a.retries == 1 else 'ies'}" if a.retries else ""
        parts.append(f"{a.provider} ({a.model}) {a.outcome}{retried}{detail}")
    listing = "; ".join(parts) or "no candidates"
    return f"every provider for task {task!r} failed: {listing}" if header else listing


class _GapTimer:
    """Bounds each wait for a stream's next group of deltas, without a new timer per wait.

    `asyncio.timeout()` around every `__anext__` pushes a timer on the loop's heap and cancels
    it again for every chunk. Here one timer stays armed for the whole stream: a wait only
    notes when it must end, and the timer, when it fires, either finds the current wait
    overdue (and cancels the waiting task, which the wait turns into `TimeoutError`, as
    `asyncio.timeout` does) or re-arms itself for the current wait's end. Time the caller
    spends between waits counts for nothing.
    """

    __slots__ = ("_fired", "_handle", "_loop", "_until", "_waiter")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Task[Any] | None = None
        self._until: float | None = None
        self._fired = False

    async def next_within(self, stream: ChatStream, timeout_s: float) -> list[StreamPiece]:
        """`stream`'s next group of pieces, or `TimeoutError` after `timeout_s` without one."""
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
            return await stream.next_group()
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
    return None


async def _close_quietly(stream: ChatStream) -> None:
    with suppress(Exception):
        await stream.aclose()
