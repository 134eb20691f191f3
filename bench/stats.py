"""Percentiles and the summary of a list of timings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of `values` fall (nearest-rank on sorted values)."""
    if not values:
        raise ValueError("percentile of no values: the measurement produced no samples")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction is {fraction!r}; use a number between 0 and 1")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    """Timings in seconds, summarised."""

    count: int
    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(
            count=len(values),
            p50=percentile(values, 0.50),
            p99=percentile(values, 0.99),
            mean=sum(values) / len(values),
        )
