"""`MemoryState`: every breaker lives in this process only (the default, needs no server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway._outcomes import BreakerState
from gateway._resilience import Breaker

if TYPE_CHECKING:
    from gateway.policy import ProviderSpec, StateSpec

BACKEND = "memory"


class MemoryState:
    backend = BACKEND

    def __init__(self, spec: StateSpec) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        return "MemoryState()"

    def breaker_factory(
        self, on_state_change: Callable[[str, BreakerState], None] | None = None
    ) -> Callable[[ProviderSpec], Breaker]:
        def build(spec: ProviderSpec) -> Breaker:
            return Breaker(spec.name, spec.breaker, on_state_change=on_state_change)

        return build

    async def aclose(self) -> None:
        return None
