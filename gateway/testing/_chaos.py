"""Seeded random faults for soak tests: each request draws one fault kind (or none) by rate."""

from __future__ import annotations

import random
from collections.abc import Mapping

from gateway.testing._faults import FAULT_KINDS, STATUS_SHORTCUTS, Fault

CHAOS_KINDS = sorted(FAULT_KINDS - {"ok", "status"})


class Chaos:
    def __init__(
        self,
        seed: int | str | None,
        rates: Mapping[str, float],
        retry_after: float | None,
        hang_s: float | None,
    ) -> None:
        for kind, rate in rates.items():
            if kind not in CHAOS_KINDS:
                raise ValueError(
                    f"chaos rates: unknown fault kind {kind!r}; use one of {CHAOS_KINDS}"
                )
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise ValueError(f"chaos rates[{kind!r}] is {rate!r}; use a number in [0, 1]")
        total = sum(rates.values())
        if total > 1:
            raise ValueError(f"chaos rates add up to {total:.3f}; keep the sum at or below 1")
        self._rng = random.Random(seed)
        self._faults = [
            (rate, _fault_for(kind, retry_after, hang_s)) for kind, rate in rates.items()
        ]

    def pick(self) -> Fault | None:
        roll = self._rng.random()
        for rate, fault in self._faults:
            if roll < rate:
                return fault
            roll -= rate
        return None


def _fault_for(kind: str, retry_after: float | None, hang_s: float | None) -> Fault:
    if kind in {"rate_limit", "overloaded", "unavailable"}:
        return Fault(kind, code=STATUS_SHORTCUTS[kind], retry_after=retry_after)
    if kind in STATUS_SHORTCUTS:
        return Fault(kind, code=STATUS_SHORTCUTS[kind])
    if kind == "hang":
        return Fault.hang(hang_s)
    if kind == "slow_first_byte":
        return Fault.slow_first_byte(hang_s if hang_s is not None else 1.0)
    if kind == "stall":
        return Fault.stall(1, hang_s)
    if kind == "cut_stream":
        return Fault.cut_stream(1)
    if kind == "midstream_error":
        return Fault.midstream_error(1)
    return Fault(kind)
