"""What the console knows of every worker: recent requests, in-flight counts, breaker states,
and the operator actions every worker must apply.

Each worker records its requests in a `RecentRequests` ring (fed by the router's hooks) and,
when several workers share a Prometheus multiprocess directory, writes a small status file
there (`gateway-console-<pid>.json`: its ring, in-flight counts and breakers) every
`SYNC_INTERVAL_S`, replaced atomically. Whichever worker answers the console merges the files
of every worker. Operator actions (drain or reset a breaker, reload the policy) are appended to
one shared log in the same directory; each worker applies the ones it has not applied yet, so
an action taken through any worker reaches all of them. The prompt and the answer never reach
the ring or the files: a request is recorded by its task, attempts, outcome and cost only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway._outcomes import AttemptOutcome, BreakerState, RequestOutcome
from gateway._router import Router
from gateway.hooks import BaseHooks
from gateway.metrics import MULTIPROC_ENV
from gateway.server._console_figures import SAMPLE_INTERVAL_S, Figures
from gateway.types import Usage

log = logging.getLogger("gateway.server")

RING_SIZE = 200
"""Requests each worker keeps for the console."""
SYNC_INTERVAL_S = 0.5
STATUS_PREFIX = "gateway-console-"
ACTIONS_FILE = "gateway-console-actions.jsonl"


@dataclass
class _Pending:
    task: str
    started_at: float
    operation: str = "chat"
    attempts: list[dict[str, Any]] = field(default_factory=list)
    provider: str | None = None
    cost_usd: float | None = None


_current: ContextVar[_Pending | None] = ContextVar("gateway_console_request", default=None)


class RecentRequests(BaseHooks):
    """The last `size` requests of this worker, from the router's events.

    A request's events come in its own asyncio task, from `on_request_start` to `on_request`,
    so the request being recorded is kept in a ContextVar: concurrent requests never mix.
    """

    def __init__(self, size: int = RING_SIZE) -> None:
        self.ring: deque[dict[str, Any]] = deque(maxlen=size)
        self.count = 0
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"RecentRequests({len(self.ring)}/{self.ring.maxlen})"

    # `operation` is typed wider than the hook's Literal on purpose: any value is kept as is.
    def on_request_start(self, *, task: str, operation: str = "chat") -> None:
        _current.set(_Pending(task, time.time(), operation))

    def on_attempt(
        self,
        *,
        task: str,
        provider: str,
        model: str,
        outcome: AttemptOutcome,
        duration_s: float | None,
    ) -> None:
        pending = _current.get()
        if pending is not None:
            latency = None if duration_s is None else round(duration_s, 4)
            outcome_name = str(outcome)
            pending.attempts.append(
                {
                    "provider": provider,
                    "model": model,
                    "outcome": outcome_name,
                    "latency_s": latency,
                }
            )

    def on_response(
        self, *, task: str, provider: str, model: str, finish_reason: str | None
    ) -> None:
        pending = _current.get()
        if pending is not None:
            pending.provider = provider

    def on_usage(
        self, *, task: str, provider: str, model: str, usage: Usage, cost_usd: float | None
    ) -> None:
        pending = _current.get()
        if pending is not None and cost_usd is not None:
            pending.cost_usd = (pending.cost_usd or 0.0) + cost_usd

    def on_request(
        self, *, task: str, outcome: RequestOutcome, duration_s: float, overhead_s: float
    ) -> None:
        pending = _current.get()
        _current.set(None)
        if pending is None:  # refused before its walk began (an unknown task)
            pending = _Pending(task, time.time() - duration_s)
        self.count += 1
        self.ring.append(
            {
                "id": f"{self._pid}-{self.count}",
                "worker": self._pid,
                "at": round(pending.started_at, 3),
                "task": task,
                "operation": pending.operation,
                "outcome": str(outcome),
                "duration_s": round(duration_s, 4),
                "provider": pending.provider,
                "cost_usd": pending.cost_usd,
                "attempts": pending.attempts,
            }
        )


def worker_status(router: Router) -> dict[str, dict[str, Any]]:
    """This worker's view of each provider: in flight, its limit, its breaker."""
    providers = {}
    for name, candidate in router.candidates.items():
        breaker = candidate.breaker
        wait = breaker.seconds_until_probe()
        providers[name] = {
            "in_flight": candidate.in_flight,
            "max_concurrency": candidate.spec.max_concurrency,
            "breaker": str(breaker.state),
            "forced": breaker.forced,
            "failure_count": breaker.failure_count,
            "seconds_until_probe": None if wait is None else round(wait, 3),
        }
    return providers


_SEVERITY = {str(BreakerState.CLOSED): 0, str(BreakerState.HALF_OPEN): 1, str(BreakerState.OPEN): 2}


def merge_providers(views: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Every live worker's provider views as one: in-flight counts summed, the worst breaker
    state (as the `gateway_circuit_state` gauge aggregates), the soonest probe among the
    workers that show it open, and how many workers hold it drained (`forced_workers`: a
    drain reaches each worker within a sync interval, not all at once)."""
    merged: dict[str, dict[str, Any]] = {}
    for view in views:
        for name, row in view.items():
            seen = merged.get(name)
            if seen is None:
                merged[name] = {**row, "workers": 1, "forced_workers": int(row["forced"])}
                continue
            seen["workers"] += 1
            seen["forced_workers"] += int(row["forced"])
            seen["in_flight"] += row["in_flight"]
            seen["forced"] = seen["forced"] or row["forced"]
            seen["failure_count"] = max(seen["failure_count"], row["failure_count"])
            if _SEVERITY.get(row["breaker"], 0) > _SEVERITY.get(seen["breaker"], 0):
                seen["breaker"] = row["breaker"]
                seen["seconds_until_probe"] = row["seconds_until_probe"]
            elif row["breaker"] == seen["breaker"] and row["seconds_until_probe"] is not None:
                waits = [w for w in (seen["seconds_until_probe"], row["seconds_until_probe"]) if w]
                seen["seconds_until_probe"] = min(waits) if waits else 0.0
    return merged


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


Action = dict[str, Any]
"""{"action": "force_open" | "reset" | "reload", "provider": str | None, "by": pid}"""


class ConsoleFeed:
    """This worker's part of the console: its ring, its status file, the shared action log."""

    def __init__(
        self,
        router: Router,
        *,
        recent: RecentRequests,
        apply_action: Callable[[Action], Awaitable[None]],
        directory: str | None = None,
    ) -> None:
        self.router = router
        self.recent = recent
        self.figures = Figures()
        self.pid = os.getpid()
        self._apply_action = apply_action
        found = directory if directory is not None else os.environ.get(MULTIPROC_ENV)
        self.directory = Path(found) if found else None
        self._actions_read = 0  # bytes of the action log already applied
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"ConsoleFeed(pid={self.pid}, directory={self.directory})"

    @property
    def shared(self) -> bool:
        """Several workers: figures are merged from every worker's status file."""
        return self.directory is not None

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        """Sample the figures; with several workers, also write this worker's status and
        apply the others' actions; while the app runs."""
        self.figures.sample()
        await self.sync()  # actions taken before this worker started (a drained provider)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="gateway-console")
        try:
            yield self
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            if self.directory is not None:
                with contextlib.suppress(OSError):
                    self._status_path(self.pid).unlink()

    async def _loop(self) -> None:
        next_sample = time.monotonic() + SAMPLE_INTERVAL_S
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                if time.monotonic() >= next_sample:
                    next_sample += SAMPLE_INTERVAL_S
                    self.figures.sample()
                await self.sync()
            except Exception:  # the console must never take the worker down
                log.exception("console: could not share this worker's status")

    async def sync(self) -> None:
        """Apply new actions from other workers, then write this worker's status file."""
        for action in self._new_actions():
            if action.get("by") != self.pid:
                await self._apply_action(action)
        if self.directory is not None:
            body = json.dumps(
                {
                    "pid": self.pid,
                    "written_at": time.time(),
                    "policy_sha256": self.router.policy.sha256,
                    "providers": worker_status(self.router),
                    "requests": list(self.recent.ring),
                }
            )
            await asyncio.to_thread(_write_atomically, self._status_path(self.pid), body)

    def record_action(self, action: Action) -> None:
        """Tell every other worker of an action this worker has just applied."""
        if self.directory is None:
            return
        line = json.dumps({**action, "by": self.pid}) + "\n"
        # One O_APPEND write per action: lines from several workers never interleave.
        fd = os.open(self.directory / ACTIONS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _new_actions(self) -> Iterator[Action]:
        if self.directory is None:
            return
        try:
            with open(self.directory / ACTIONS_FILE, "rb") as log_file:
                log_file.seek(self._actions_read)
                data = log_file.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self._actions_read += len(complete)
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                action = json.loads(line)
                if isinstance(action, dict):
                    yield action

    def _status_path(self, pid: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{STATUS_PREFIX}{pid}.json"

    def _statuses(self) -> list[dict[str, Any]]:
        """Every worker's last status file (this worker's own state is read live instead)."""
        if self.directory is None:
            return []
        found = []
        for path in self.directory.glob(f"{STATUS_PREFIX}*.json"):
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced or removed while read
            if isinstance(status, dict) and status.get("pid") != self.pid:
                found.append(status)
        return found

    def providers(self) -> tuple[dict[str, dict[str, Any]], list[int]]:
        """Every live worker's providers, merged, and the live workers' pids."""
        views = [worker_status(self.router)]
        pids = [self.pid]
        for status in self._statuses():
            if _alive(int(status["pid"])):
                views.append(status["providers"])
                pids.append(int(status["pid"]))
        return merge_providers(views), sorted(pids)

    def requests(self) -> list[dict[str, Any]]:
        """Every worker's recent requests, newest first (those of a worker that has exited
        stay until its file is gone: they are still what happened)."""
        rows = list(self.recent.ring)
        for status in self._statuses():
            rows.extend(status.get("requests", []))
        rows.sort(key=lambda row: row["at"], reverse=True)
        return rows


def _write_atomically(path: Path, body: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(body)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
