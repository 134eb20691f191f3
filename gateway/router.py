"""The chain walk: for one request, try a task's candidates in order until one answers.

Each candidate is guarded by its breaker (skip when open), its concurrency limit (skip when
saturated) and a context-size pre-check; each call is bounded by the provider's `timeout_s`
and the request's `deadline_s`, and retried on the same candidate for the kinds in `retry.on`.
What happened to every candidate is returned in `attempts` (or carried by the error).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway._attempts import (
    BREAKER_OPEN,
    CANCELLED,
    DEADLINE,
    SATURATED,
    SKIPPED_CONTEXT,
    SUCCESS,
    UNAVAILABLE,
    CandidateFailed,
    RequestState,
    refused,
    summary,
)
from gateway.errors import (
    AllProvidersFailed,
    DeadlineExceeded,
    ErrorKind,
    GatewayError,
    InvalidRequestError,
    PolicyError,
    ProviderError,
)
from gateway.hooks import RouterHooks, deliver
from gateway.policy import Policy, load_policy
from gateway.providers.base import parse_json_object
from gateway.resilience import Admission, RetryAborted, Sleep, call_with_retries
from gateway.runtime import Candidate, Runtime, Step, build_runtime, close_runtime, prompt_tokens
from gateway.state import StateBackend, open_state_backend
from gateway.streaming import RoutedStream
from gateway.types import Attempt, Completion, Message, Usage, validate_messages

log = logging.getLogger("gateway")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RoutedCompletion:
    """The answer to one routed request, and how it was obtained."""

    text: str
    task: str
    provider: str
    model: str
    usage: Usage
    cost_usd: float
    latency_s: float
    attempts: list[Attempt]
    finish_reason: str | None = None
    response_id: str | None = None
    parsed: Any = None
    """For `complete_json`: the JSON object, or the validated schema instance."""


class Router:
    """Routes requests for named tasks through the policy's fallback chains.

    Build one per process with `Router.from_yaml(path)` (it watches the file and applies valid
    changes live) or `Router(policy)`, share it, and `await router.aclose()` at shutdown.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        hooks: Sequence[RouterHooks] | None = None,
        sleep: Sleep = asyncio.sleep,
        policy_path: str | os.PathLike[str] | None = None,
        watch_interval_s: float | None = 1.0,
        state: StateBackend | None = None,
    ) -> None:
        if hooks is None:
            from gateway.metrics import default_metrics

            hooks = [default_metrics()]
        self._hooks = list(hooks)
        self._sleep = sleep
        self._unpriced_warned: set[tuple[str, str]] = set()
        self._breaker_seen: dict[str, str] = {}
        # Where breaker state lives (policy `state:`); `state=` overrides it, for tests.
        if state is None:
            state = open_state_backend(policy.state, on_error=self._state_error)
        self._state = state
        self._new_breaker = self._state.breaker_factory(self._breaker_changed)
        self._runtime = build_runtime(
            policy, on_breaker_state=self._breaker_changed, breaker_factory=self._new_breaker
        )
        self._policy_path = Path(policy_path) if policy_path is not None else None
        self._watch_interval_s = watch_interval_s
        self._watcher: asyncio.Task[None] | None = None
        # What the file looked like when the policy was read: the watcher starts only with the
        # first request, and a change made before then must still count as a change.
        self._watch_baseline = _stat(self._policy_path) if self._policy_path else None
        self._closed = False
        self._emit("on_policy", outcome="applied", version=policy.version, sha256=policy.sha256)

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike[str] = "routing.yaml",
        *,
        watch: bool = True,
        watch_interval_s: float = 1.0,
        **kwargs: Any,
    ) -> Router:
        """Load a policy file; with `watch`, poll it and apply valid changes while running."""
        seen = _stat(Path(path))  # before reading, so a write during the read is seen as new
        policy = load_policy(path)
        router = cls(
            policy,
            policy_path=path,
            watch_interval_s=watch_interval_s if watch else None,
            **kwargs,
        )
        router._watch_baseline = seen
        return router

    # --- public API ------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._runtime.policy

    @property
    def candidates(self) -> dict[str, Candidate]:
        return self._runtime.candidates

    async def generate(
        self,
        messages: Sequence[Message],
        *,
        task: str = "default",
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: Any,
    ) -> RoutedCompletion:
        """One answer from the first candidate of the task's chain that gives one."""
        return await self._route(
            messages, task, dict(params, temperature=temperature, max_tokens=max_tokens), None
        )

    async def generate_json(
        self,
        messages: Sequence[Message],
        *,
        task: str = "default",
        schema: type[M] | None = None,
        **params: Any,
    ) -> Any:
        """A JSON object (or a validated `schema` instance). A reply that is not valid JSON, or
        does not validate, counts as `invalid_response` for that candidate and falls through."""
        routed = await self.complete_json(messages, task=task, schema=schema, **params)
        return routed.parsed

    async def complete_json(
        self,
        messages: Sequence[Message],
        *,
        task: str = "default",
        schema: type[M] | None = None,
        **params: Any,
    ) -> RoutedCompletion:
        """`generate_json` with the whole routed answer: `.parsed` holds the data."""

        def check(completion: Completion, provider: str) -> Any:
            data = parse_json_object(completion.text, provider=provider)
            if schema is None:
                return data
            try:
                return schema.model_validate(data)
            except ValidationError as exc:
                raise ProviderError(
                    f"reply does not match {schema.__name__}: {exc.error_count()} error(s)",
                    kind=ErrorKind.INVALID_RESPONSE,
                    provider=provider,
                ) from exc

        params["json_mode"] = True
        return await self._route(messages, task, params, check)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        task: str = "default",
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: Any,
    ) -> RoutedStream:
        """Text deltas from the first candidate that starts answering.

        Falls through while nothing has reached the caller; after that a failure raises
        `StreamInterrupted` (or, with `on_midstream_failure: resume`, the next candidate
        continues from the partial text).
        """
        return RoutedStream(
            self, messages, task, dict(params, temperature=temperature, max_tokens=max_tokens)
        )

    async def reload(self) -> bool:
        """Re-read the policy file now. Returns True if a changed policy was applied.

        An invalid file raises `PolicyError` (and is counted) while the old policy keeps serving.
        """
        if self._policy_path is None:
            raise GatewayError("this router was not built from a file: use apply_policy()")
        try:
            policy = await asyncio.to_thread(load_policy, self._policy_path)
        except PolicyError:
            current = self._runtime.policy
            self._emit(
                "on_policy", outcome="rejected", version=current.version, sha256=current.sha256
            )
            raise
        if policy.sha256 == self._runtime.policy.sha256:
            return False
        await self.apply_policy(policy)
        return True

    async def apply_policy(self, policy: Policy) -> None:
        """Swap in a new policy atomically: requests in flight finish on the one they started
        with; providers whose settings are unchanged keep their client and breaker."""
        old = self._runtime
        if policy.state != old.policy.state:
            log.warning("the policy's `state:` changed; it takes effect when the gateway restarts")
        self._runtime = build_runtime(
            policy,
            previous=old,
            on_breaker_state=self._breaker_changed,
            breaker_factory=self._new_breaker,
        )
        old.retired = True
        if old.in_flight == 0:
            await old.close_dropped()
        for name in old.candidates.keys() - self._runtime.candidates.keys():
            # Its breaker is gone: a state reported for it would otherwise stay as last seen
            # (an `open` gauge would keep an alert firing for a provider no longer used).
            self._breaker_seen.pop(name, None)
            self._emit("on_provider_removed", provider=name)
        self._emit("on_policy", outcome="applied", version=policy.version, sha256=policy.sha256)
        log.info("policy applied (sha256 %s)", policy.sha256[:12])

    async def aclose(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await close_runtime(self._runtime)
        await self._state.aclose()

    async def __aenter__(self) -> Router:
        self._ensure_watcher()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def explain(self, task: str, messages: Sequence[Message] = ()) -> list[dict[str, Any]]:
        """The order a request for `task` would take now, with each candidate's state."""
        runtime = self._runtime
        spec = runtime.policy.task(task)
        rows = []
        for step in runtime.ordered(spec, messages, None):
            c = step.candidate
            price = runtime.prices.price(c.model, c.spec.type)
            rows.append(
                {
                    "provider": c.name,
                    "type": c.spec.type,
                    "model": c.model,
                    "available": c.client is not None,
                    "unavailable_reason": c.unavailable_reason,
                    "breaker": c.breaker.state,
                    "in_flight": c.in_flight,
                    "latency_ewma_s": c.latency_ewma_s,
                    "input_usd_per_mtok": None if price is None else price.input_per_token * 1e6,
                    "output_usd_per_mtok": None if price is None else price.output_per_token * 1e6,
                }
            )
        return rows

    # --- the chain walk --------------------------------------------------------------------

    async def _route(
        self,
        messages: Sequence[Message],
        task_name: str,
        params: dict[str, Any],
        check: Callable[[Completion, str], Any] | None,
    ) -> RoutedCompletion:
        self._ensure_watcher()
        started = time.perf_counter()
        runtime = self._runtime
        runtime.in_flight += 1
        request: RequestState | None = None
        outcome = "rejected"
        try:
            task = runtime.policy.task(task_name)
            checked = validate_messages(messages)
            request = RequestState(
                task, started, started + task.deadline_s if task.deadline_s else None
            )
            call_params = {k: v for k, v in params.items() if v is not None}
            steps = runtime.ordered(task, checked, call_params.get("max_tokens"))
            result = await self._walk(runtime, request, steps, checked, call_params, check)
            outcome = SUCCESS
            return result
        except DeadlineExceeded:
            outcome = DEADLINE
            raise
        except AllProvidersFailed:
            outcome = "exhausted"
            raise
        except asyncio.CancelledError:
            outcome = CANCELLED
            raise
        finally:
            self._finish(task_name, request, started, outcome)
            await runtime.release()

    async def _walk(
        self,
        runtime: Runtime,
        request: RequestState,
        steps: Sequence[Step],
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        check: Callable[[Completion, str], Any] | None,
    ) -> RoutedCompletion:
        task = request.task
        for step in self._eligible(runtime, request, steps, prompt_tokens(messages)):
            candidate = step.candidate
            call_params = {**step.params, **params}
            try:
                completion, parsed, retries, latency = await self._call_candidate(
                    request, candidate, messages, call_params, check
                )
            except CandidateFailed as failed:
                if failed.outcome == DEADLINE:
                    raise self._deadline(request, None) from failed.error
                request.left_behind = (candidate.name, failed.outcome)
                continue
            self._record(request, candidate, SUCCESS, latency, retries=retries)
            routed = RoutedCompletion(
                text=completion.text,
                task=task.name,
                provider=candidate.name,
                model=completion.model or candidate.model,
                usage=completion.usage,
                cost_usd=request.cost_usd,
                latency_s=time.perf_counter() - request.started,
                attempts=request.attempts,
                finish_reason=completion.finish_reason,
                response_id=completion.response_id,
                parsed=parsed,
            )
            return routed
        raise AllProvidersFailed(
            summary(task.name, request.attempts), task=task.name, attempts=request.attempts
        )

    def _eligible(
        self, runtime: Runtime, request: RequestState, steps: Sequence[Step], input_tokens: int
    ) -> Iterator[Step]:
        """The chain's steps worth calling, in order. Skipped candidates are recorded, each move
        to the next candidate is reported (the caller sets `request.left_behind` when a call
        fails), and a deadline that runs out between candidates raises `DeadlineExceeded`."""
        for step in steps:
            candidate = step.candidate
            if request.left_behind is not None:
                left_name, kind = request.left_behind
                self._emit(
                    "on_fallback",
                    task=request.task.name,
                    from_provider=left_name,
                    to_provider=candidate.name,
                    kind=kind,
                )
                request.left_behind = None
            left = request.remaining()
            if left is not None and left <= 0:
                raise self._deadline(request, candidate)
            skipped = self._skip_reason(runtime, candidate, input_tokens)
            if skipped is not None:
                self._record(request, candidate, skipped, None)
                request.left_behind = (candidate.name, skipped)
                continue
            yield step

    def _skip_reason(self, runtime: Runtime, candidate: Candidate, input_tokens: int) -> str | None:
        if candidate.client is None:
            return UNAVAILABLE
        if candidate.saturated:
            return SATURATED
        window = runtime.context_window(candidate)
        if window is not None and input_tokens > window:
            return SKIPPED_CONTEXT
        if candidate.breaker.refusing():
            return BREAKER_OPEN
        return None

    async def _call_candidate(
        self,
        request: RequestState,
        candidate: Candidate,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        check: Callable[[Completion, str], Any] | None,
    ) -> tuple[Completion, Any, int, float]:
        """Call one candidate with retries. Returns (completion, parsed, retries, latency)."""
        client = candidate.client
        assert client is not None
        retries = 0
        total_latency = 0.0
        last_error: ProviderError | None = None

        async def attempt() -> tuple[Completion, Any]:
            nonlocal total_latency
            timeout, deadline_binds = request.attempt_timeout(candidate)
            admission = candidate.breaker.admit()
            if admission is Admission.REJECT:
                raise CandidateFailed(BREAKER_OPEN)
            candidate.in_flight += 1
            began = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    completion = await client.complete(messages, timeout_s=timeout, **params)
            except TimeoutError as exc:
                candidate.breaker.failure(admission, ErrorKind.TIMEOUT)
                if deadline_binds:
                    raise CandidateFailed(DEADLINE) from exc
                raise ProviderError(
                    f"no answer within timeout_s={timeout:g}",
                    kind=ErrorKind.TIMEOUT,
                    provider=candidate.name,
                ) from exc
            except ProviderError as exc:
                nonlocal last_error
                last_error = exc
                candidate.breaker.failure(admission, exc.kind)
                exc.provider = exc.provider or candidate.name
                raise
            except InvalidRequestError as exc:
                # The messages passed the router's checks, so this provider alone cannot take
                # them (e.g. Ollama and image URLs): the next candidate may.
                candidate.breaker.release(admission)
                raise refused(exc, candidate.name) from exc
            except BaseException:
                # Cancellation, or a bug below us: neither says the provider is unhealthy.
                candidate.breaker.release(admission)
                raise
            finally:
                elapsed = time.perf_counter() - began
                total_latency += elapsed
                request.upstream_s += elapsed
                candidate.in_flight -= 1
            self._bill(request, candidate, completion.model, completion.usage)
            parsed = None
            if check is not None:
                try:
                    parsed = check(completion, candidate.name)
                except ProviderError:
                    candidate.breaker.release(admission)
                    raise
            candidate.breaker.success(admission)
            candidate.observe_latency(elapsed)
            return completion, parsed

        def on_retry(error: ProviderError, wait_s: float) -> None:
            nonlocal retries
            retries += 1
            request.waited_s += wait_s
            self._emit(
                "on_retry", provider=candidate.name, model=candidate.model, kind=error.kind.value
            )

        try:
            completion, parsed = await call_with_retries(
                attempt,
                candidate.spec.retry,
                remaining_s=request.remaining,
                on_retry=on_retry,
                sleep=self._sleep,
            )
        except CandidateFailed as failed:
            if failed.outcome == BREAKER_OPEN and last_error is not None:
                # The breaker opened between our own retries: the real cause is the last error.
                self._fail(request, candidate, last_error, total_latency, retries)
            self._record(request, candidate, failed.outcome, total_latency or None, retries=retries)
            raise
        except RetryAborted as aborted:
            self._fail(request, candidate, aborted.error, total_latency, retries)
        except ProviderError as error:
            self._fail(request, candidate, error, total_latency, retries)
        except asyncio.CancelledError:
            self._record(request, candidate, CANCELLED, total_latency, retries=retries)
            raise
        return completion, parsed, retries, total_latency

    def _fail(
        self,
        request: RequestState,
        candidate: Candidate,
        error: ProviderError,
        latency: float,
        retries: int,
    ) -> None:
        self._record(
            request, candidate, error.kind.value, latency, retries=retries, error=str(error)
        )
        raise CandidateFailed(error.kind.value, error)

    # --- book-keeping -----------------------------------------------------------------------

    def _bill(self, request: RequestState, candidate: Candidate, model: str, usage: Usage) -> None:
        model = model or candidate.model
        cost = self._runtime.prices.cost(model, usage, candidate.spec.type)
        if cost is None:
            key = (candidate.name, model)
            if key not in self._unpriced_warned:
                self._unpriced_warned.add(key)
                log.warning(
                    "no price for model %r (provider %s): its cost counts as 0; add it under "
                    "`prices:` in the policy",
                    model,
                    candidate.name,
                )
        request.cost_usd += cost or 0.0
        request.billed = request.billed + usage
        self._emit(
            "on_usage",
            task=request.task.name,
            provider=candidate.name,
            model=candidate.model,
            usage=usage,
            cost_usd=cost,
        )

    def _record(
        self,
        request: RequestState,
        candidate: Candidate,
        outcome: str,
        latency: float | None,
        *,
        retries: int = 0,
        error: str | None = None,
    ) -> None:
        request.attempts.append(
            Attempt(candidate.name, candidate.model, outcome, retries, latency or 0.0, error)
        )
        self._emit(
            "on_attempt",
            task=request.task.name,
            provider=candidate.name,
            model=candidate.model,
            outcome=outcome,
            duration_s=latency,
        )

    def _deadline(self, request: RequestState, candidate: Candidate | None) -> DeadlineExceeded:
        if candidate is not None:
            # Listed and counted like any skipped candidate, so metrics match `attempts`.
            self._record(request, candidate, DEADLINE, None)
        return DeadlineExceeded(
            f"task {request.task.name!r}: deadline_s={request.task.deadline_s:g} ran out; "
            + summary(request.task.name, request.attempts, header=False),
            task=request.task.name,
            attempts=request.attempts,
        )

    def _finish(
        self, task_name: str, request: RequestState | None, started: float, outcome: str
    ) -> None:
        duration = time.perf_counter() - started
        overhead = duration
        if request is not None:
            task_name = request.task.name
            overhead = max(0.0, duration - request.upstream_s - request.waited_s)
        self._emit(
            "on_request", task=task_name, outcome=outcome, duration_s=duration, overhead_s=overhead
        )

    def _breaker_changed(self, provider: str, state: str) -> None:
        self._emit("on_breaker_state", provider=provider, state=state)
        before = self._breaker_seen.get(provider)
        self._breaker_seen[provider] = state
        if before is None or before == state:
            return  # a new breaker reporting in, not a change worth a log line
        if state == "open":
            log.warning("circuit breaker for %s opened", provider)
        else:
            log.info("circuit breaker for %s: %s -> %s", provider, before, state)

    def _state_error(self, backend: str) -> None:
        self._emit("on_state_backend_error", backend=backend)

    def _emit(self, event: str, **kwargs: Any) -> None:
        deliver(self._hooks, event, kwargs)

    # --- live reload ------------------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        if (
            self._watcher is None
            and not self._closed
            and self._policy_path is not None
            and self._watch_interval_s
        ):
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(self._watch_interval_s), name="gateway-policy-watch"
            )

    async def _watch(self, interval_s: float) -> None:
        assert self._policy_path is not None
        last_seen = self._watch_baseline
        while True:
            await asyncio.sleep(interval_s)
            seen = _stat(self._policy_path)
            if seen == last_seen:
                continue
            last_seen = seen
            try:
                await self.reload()
            except PolicyError as exc:
                log.error("policy change rejected, the previous policy keeps serving: %s", exc)
            except Exception:
                log.exception("policy reload failed, the previous policy keeps serving")


def _stat(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size)
