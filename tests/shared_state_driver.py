"""One gateway replica for tests/test_shared_state.py: a Router in its own process.

    python tests/shared_state_driver.py POLICY.yaml

Reads one JSON command per line on stdin and answers each with one JSON line on stdout:

    {"op": "send", "n": 10, "concurrency": 2}        N requests; what served them
    {"op": "traffic", "seconds": 2, "concurrency": 2} requests back to back for that long
    {"op": "status"}                                   breakers, shared mode, backend errors
    {"op": "quit"}

A request summary counts requests by the provider that answered (`served`), by error type
(`failed`), and the calls made to each provider (`calls`: attempts that reached it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any, cast

from gateway import Router
from gateway.errors import GatewayError
from gateway.hooks import RouterHooks
from gateway.state.redis import RedisState

SKIPPED = frozenset({"breaker_open", "saturated", "skipped_context", "unavailable"})


class Recorder:
    """Hooks that keep what the tests ask about (the router skips events a hook lacks)."""

    def __init__(self) -> None:
        self.backend_errors = 0
        self.transitions: list[tuple[str, str]] = []
        self.trips: list[tuple[str, str]] = []

    def on_state_backend_error(self, *, backend: str) -> None:
        self.backend_errors += 1

    def on_breaker_state(self, *, provider: str, state: str) -> None:
        self.transitions.append((provider, state))

    def on_breaker_trip(self, *, provider: str, reason: str) -> None:
        self.trips.append((provider, str(reason)))


class Summary:
    def __init__(self) -> None:
        self.served: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    async def one(self, router: Router) -> None:
        try:
            routed = await router.generate([{"role": "user", "content": "hello"}])
        except GatewayError as exc:
            self.failed[type(exc).__name__] += 1
            self._count_calls(getattr(exc, "attempts", []))
        except Exception as exc:  # a request the gateway lost: exactly what tests look for
            self.failed[type(exc).__name__] += 1
        else:
            self.served[routed.provider] += 1
            self._count_calls(routed.attempts)

    def _count_calls(self, attempts: list[Any]) -> None:
        for attempt in attempts:
            if attempt.outcome not in SKIPPED:
                self.calls[attempt.provider] += 1 + attempt.retries

    def as_dict(self) -> dict[str, Any]:
        return {"served": self.served, "failed": self.failed, "calls": self.calls}


async def send(router: Router, n: int, concurrency: int) -> dict[str, Any]:
    summary = Summary()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await summary.one(router)

    await asyncio.gather(*(one() for _ in range(n)))
    return summary.as_dict()


async def traffic(router: Router, seconds: float, concurrency: int) -> dict[str, Any]:
    summary = Summary()
    stop_at = time.monotonic() + seconds

    async def lane() -> None:
        while time.monotonic() < stop_at:
            await summary.one(router)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return summary.as_dict()


def status(router: Router, recorder: Recorder, state: RedisState) -> dict[str, Any]:
    return {
        "breakers": {
            name: {
                "state": c.breaker.state,
                "failures": c.breaker.failure_count,
                "last_trip": c.breaker.last_trip,
            }
            for name, c in router.candidates.items()
        },
        "shared": state.shared,
        "backend_errors": recorder.backend_errors,
        "transitions": recorder.transitions,
        "trips": recorder.trips,
    }


async def main(policy_path: str) -> None:
    from gateway.policy import load_policy

    policy = load_policy(policy_path)
    recorder = Recorder()
    # The router opens the backend the policy names, as in production; the driver only peeks
    # at it to report whether it is in shared or local mode.
    router = Router(policy, hooks=[cast(RouterHooks, recorder)], watch_interval_s=None)
    state = router._state
    assert isinstance(state, RedisState), f"the policy's state backend is {state.backend}"
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        op = command["op"]
        if op == "send":
            reply = await send(router, command["n"], command.get("concurrency", 1))
        elif op == "traffic":
            reply = await traffic(router, command["seconds"], command.get("concurrency", 1))
        elif op == "status":
            reply = status(router, recorder, state)
        elif op == "quit":
            break
        else:
            reply = {"error": f"unknown op {op!r}"}
        print(json.dumps(reply), flush=True)
    await router.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
