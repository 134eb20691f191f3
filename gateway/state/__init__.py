"""Where breaker state lives: in this process (`memory`) or shared by replicas (`redis`).

The policy's `state:` block picks the backend; the router builds every breaker through the
backend's `breaker_factory` and closes the backend with itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway._outcomes import BreakerState

if TYPE_CHECKING:
    from gateway._resilience import Breaker, TripReason
    from gateway.policy import ProviderSpec, StateSpec

__all__ = ["StateBackend", "open_state_backend"]


class StateBackend(Protocol):
    backend: str
    spec: StateSpec

    def breaker_factory(
        self,
        on_state_change: Callable[[str, BreakerState], None] | None = None,
        *,
        on_trip: Callable[[str, TripReason], None] | None = None,
    ) -> Callable[[ProviderSpec], Breaker]:
        """Builds one provider's breaker; `on_state_change(provider, state)` hears its moves,
        `on_trip(provider, reason)` each opening this process decided (with shared state, the
        replica whose reported outcome opened it), and why."""

    async def aclose(self) -> None:
        """Stop background work and close connections."""


def open_state_backend(
    spec: StateSpec, *, on_error: Callable[[str], None] | None = None
) -> StateBackend:
    """The backend `spec` names. Never blocks: a Redis backend connects in the background.

    `on_error(backend)` is told of every failed round trip to shared storage.
    """
    if spec.backend == "redis":
        from gateway.state.redis import RedisState

        return RedisState(spec, on_error=on_error)
    from gateway.state.memory import MemoryState

    return MemoryState(spec)
