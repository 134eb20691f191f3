"""`Router`: the public face of the gateway in-process, and the policy's lifecycle.

A router holds the live policy (its `Runtime`: one client and breaker per provider), applies
reloads, and hands each request to the chain walk in `_walk`. What happened to every candidate
is returned in `attempts` (or carried by the error).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway._outcomes import Attempt, BreakerState, PolicyOutcome
from gateway._policy_files import read_policy_file
from gateway._resilience import Sleep, TripReason
from gateway._runtime import Candidate, Runtime, build_runtime, close_runtime
from gateway._streaming import RoutedStream
from gateway._walk import Check, Walker, chat_operation, embed_operation
from gateway.errors import (
    ErrorKind,
    GatewayError,
    InvalidRequestError,
    PolicyError,
    ProviderError,
)
from gateway.hooks import HookSet, RouterHooks
from gateway.policy import Policy
from gateway.providers import parse_json_object
from gateway.request import json_schema_format
from gateway.state import StateBackend, open_state_backend
from gateway.types import Choice, Completion, Message, ToolCall, Usage

log = logging.getLogger("gateway")

M = TypeVar("M", bound=BaseModel)


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
    """For `complete_json`: the JSON object, or the validated schema instance (None when the
    model called tools or refused instead)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The functions the model asks the caller to run (`finish_reason` is then
    `tool_calls`). Append `message` to the history, then one `tool` message per call."""
    refusal: str | None = None
    """The model's refusal message, when it declined (OpenAI models)."""
    extra: Mapping[str, Any] | None = None
    """Other fields of the model's message, as the provider sent them (`annotations`,
    `audio`, and `logprobs`)."""
    other_choices: tuple[Choice, ...] = ()
    """Choices 1 to n-1 when the request asked for `n` > 1."""

    @property
    def choices(self) -> tuple[Choice, ...]:
        """Every choice, this answer's first one included."""
        first = Choice(0, self.text, self.finish_reason, self.tool_calls, self.refusal, self.extra)
        return (first, *self.other_choices)

    @property
    def message(self) -> dict[str, Any]:
        """The answer as an assistant message in OpenAI's shape, to append to the history."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        return message


@dataclass(frozen=True, slots=True)
class RoutedEmbeddings:
    """The vectors for one routed embedding request, and how they were obtained. Every
    vector comes from one call to one provider's `model`, in the order of the inputs."""

    vectors: list[list[float]]
    task: str
    provider: str
    model: str
    usage: Usage
    cost_usd: float
    latency_s: float
    attempts: list[Attempt]

    @property
    def dimensions(self) -> int:
        """The length of every vector."""
        return len(self.vectors[0]) if self.vectors else 0


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
            # Only when no hooks are given: a router with its own hooks never loads metrics.
            from gateway.metrics import default_metrics

            hooks = [default_metrics()]
        self._hooks = HookSet(hooks)
        self._walker = Walker(self._hooks, sleep, self._current_runtime, self._ensure_watcher)
        self._breaker_seen: dict[str, BreakerState] = {}
        # Where breaker state lives (policy `state:`); `state=` overrides it, for tests.
        if state is None:
            state = open_state_backend(policy.state, on_error=self._state_error)
        self._state = state
        self._new_breaker = self._state.breaker_factory(
            self._breaker_changed, on_trip=self._breaker_tripped
        )
        self._runtime = build_runtime(
            policy, on_breaker_state=self._breaker_changed, breaker_factory=self._new_breaker
        )
        self._policy_path = Path(policy_path) if policy_path is not None else None
        self._watch_interval_s = watch_interval_s
        self._watcher: asyncio.Task[None] | None = None
        # What the file looked like when the policy was read: the watcher starts only with the
        # first request, and a change made before then must still count as a change.
        self._watch_baseline = _fingerprint(self._policy_path) if self._policy_path else None
        self._closed = False
        self._hooks.on_policy(
            outcome=PolicyOutcome.APPLIED, version=policy.version, sha256=policy.sha256
        )

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
        seen = _fingerprint(Path(path))  # before reading: a write during the read is then new
        policy = read_policy_file(path)
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
            if completion.tool_calls or completion.refusal:
                return None  # an answer of another kind, for the caller to handle
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
        if schema is not None and params.get("response_format") is None:
            # Tell the model the shape, not only check it afterwards.
            params["response_format"] = json_schema_format(
                schema.__name__, schema.model_json_schema()
            )
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
            self._walker,
            messages,
            task,
            dict(params, temperature=temperature, max_tokens=max_tokens),
        )

    async def embed(
        self,
        inputs: str | Sequence[str],
        *,
        task: str = "default",
        dimensions: int | None = None,
        **params: Any,
    ) -> RoutedEmbeddings:
        """One vector per input (a string, or a list of strings) from the first candidate of
        the embedding task's chain that answers: all of them from that one candidate, in one
        call. `dimensions` asks for vectors that long: a model that takes the parameter
        (OpenAI's text-embedding-3) is passed it, one whose own length is that is called as
        it is, any other is skipped as `unsupported`. Other `params` (`user`, a vendor's own
        fields) go to each provider, which forwards or refuses them."""
        if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
            raise InvalidRequestError(
                f"dimensions is {dimensions!r}; use a whole number >= 1, or None for the "
                "model's own length"
            )
        async with self._walker.request(task) as walk:
            texts, steps = walk.begin_embedding(inputs)
            step, answer, _ = await walk.first_answer(
                steps,
                (),
                embed_operation,
                texts,
                params,
                None,
                fit=lambda step: walk.embedding_params(step, dimensions),
            )
            return RoutedEmbeddings(
                vectors=answer.vectors,
                task=walk.spec.name,
                provider=step.candidate.name,
                model=answer.model or step.candidate.model,
                usage=answer.usage,
                cost_usd=walk.cost_usd,
                latency_s=time.perf_counter() - walk.started,
                attempts=walk.attempts,
            )

    async def reload(self) -> bool:
        """Re-read the policy file now. Returns True if a changed policy was applied.

        An invalid file raises `PolicyError` (and is counted) while the old policy keeps serving.
        """
        if self._policy_path is None:
            raise GatewayError("this router was not built from a file: use apply_policy()")
        try:
            policy = await asyncio.to_thread(read_policy_file, self._policy_path)
        except PolicyError:
            current = self._runtime.policy
            self._hooks.on_policy(
                outcome=PolicyOutcome.REJECTED, version=current.version, sha256=current.sha256
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
            self._hooks.on_provider_removed(provider=name)
        self._hooks.on_policy(
            outcome=PolicyOutcome.APPLIED, version=policy.version, sha256=policy.sha256
        )
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
        # preview: the order without a random draw or an idle re-try used up by looking.
        for step in runtime.ordered(spec, messages, None, preview=True):
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
                    "first_token_s": c.first_token_s,
                    "ramp_share": c.ramp_share,
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
        check: Check | None,
    ) -> RoutedCompletion:
        async with self._walker.request(task_name) as walk:
            call_params = {k: v for k, v in params.items() if v is not None}
            checked, steps = walk.begin(messages, call_params, stream=False)
            step, completion, parsed = await walk.first_answer(
                steps, checked, chat_operation, checked, call_params, check
            )
            return RoutedCompletion(
                text=completion.text,
                task=walk.spec.name,
                provider=step.candidate.name,
                model=completion.model or step.candidate.model,
                usage=completion.usage,
                cost_usd=walk.cost_usd,
                latency_s=time.perf_counter() - walk.started,
                attempts=walk.attempts,
                finish_reason=completion.finish_reason,
                response_id=completion.response_id,
                parsed=parsed,
                tool_calls=completion.tool_calls,
                refusal=completion.refusal,
                extra=completion.extra,
                other_choices=completion.other_choices,
            )

    def _current_runtime(self) -> Runtime:
        return self._runtime

    def _breaker_changed(self, provider: str, state: BreakerState) -> None:
        self._hooks.on_breaker_state(provider=provider, state=state)
        before = self._breaker_seen.get(provider)
        self._breaker_seen[provider] = state
        if before is None or before == state:
            return  # a new breaker reporting in, not a change worth a log line
        if state is BreakerState.OPEN:
            log.warning("circuit breaker for %s opened", provider)
        else:
            log.info("circuit breaker for %s: %s -> %s", provider, before, state)

    def _breaker_tripped(self, provider: str, reason: TripReason) -> None:
        # Reported by the replica that decided the opening: each trip is counted once.
        self._hooks.on_breaker_trip(provider=provider, reason=reason)

    def _state_error(self, backend: str) -> None:
        self._hooks.on_state_backend_error(backend=backend)

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
            # Off the loop: it reads the file, and a slow volume must not stall requests.
            seen = await asyncio.to_thread(_fingerprint, self._policy_path)
            if seen == last_seen:
                continue
            last_seen = seen
            try:
                await self.reload()
            except PolicyError as exc:
                log.error("policy change rejected, the previous policy keeps serving: %s", exc)
            except Exception:
                log.exception("policy reload failed, the previous policy keeps serving")


FileSeen = tuple[int, int, int, int, str]
"""The policy file as the watcher last saw it: device, inode, size, mtime (ns), sha256."""


def _fingerprint(path: Path) -> FileSeen | None:
    """Which file `path` leads to and what it holds; None while it cannot be read.

    Size and mtime alone miss an atomic swap to a file of the same size and mtime (a Kubernetes
    ConfigMap's `..data` link moved to a new directory, a Nix store path, files unpacked from a
    tarball): the device and inode of the file reached through every symlink tell those apart.
    A rewrite in place can keep all four (mtime restored by `cp -p` or `rsync -t`, or a write
    within the filesystem's timestamp granularity), so the bytes are hashed too, at every poll:
    a policy is a few kilobytes, and comparing the hash costs less than deciding when to skip it.
    Identity and bytes come from one open file, so they always describe the same file.
    """
    try:
        with path.open("rb") as file:
            st = os.fstat(file.fileno())
            digest = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest)
