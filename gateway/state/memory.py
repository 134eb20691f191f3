"""`MemoryState`: every breaker lives in this process only (the default, needs no server)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway._outcomes import BreakerState
from gateway._resilience import Breaker, Clock, TripReason

if TYPE_CHECKING:
    from gateway.policy import ProviderSpec, StateSpec

BACKEND = "memory"


class MemoryState:
    backend = BACKEND

    def __init__(self, spec: StateSpec, *, clock: Clock = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock  # times the breakers' failure-rate windows

    def __repr__(self) -> str:
        return "MemoryState()"

    def breaker_factory(
        self,
        on_state_change: Callable[[str, BreakerState], None] | None = None,
        *,
        on_trip: Callable[[str, TripReason], None] | None = None,
    ) -> Callable[[ProviderSpec], Breaker]:
        def build(spec: ProviderSpec) -> Breaker:
            return Breaker(
                spec.name,
                spec.breaker,
                on_state_change=on_state_change,
                on_trip=on_trip,
                clock=self._clock,
            )

        return build

    async def aclose(self) -> None:
        return None
