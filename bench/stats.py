"""Summary statistics the benchmarks print."""

from __future__ import annotations


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank value below which ``fraction`` of ``values`` lie."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
