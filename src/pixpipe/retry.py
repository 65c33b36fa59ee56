"""How long to wait before trying again: a configured schedule with jitter, or doubling."""

from __future__ import annotations

import random
from collections.abc import Sequence


def retry_delay(schedule: Sequence[float], attempts_so_far: int, *, jitter: float = 0.2,
                rng: random.Random | None = None) -> float:
    """Delay after ``attempts_so_far`` failed attempts; the last step repeats.

    Jitter spreads retries of many jobs that failed together (±``jitter`` of the step).
    """
    if not schedule:
        return 0.0
    step = schedule[min(max(attempts_so_far, 1), len(schedule)) - 1]
    spread = step * jitter
    return max(0.0, step + (rng or random).uniform(-spread, spread))


def doubling_delay(failures_so_far: int, *, first: float, cap: float) -> float:
    """``first`` after the first failure, twice as long after each next one, at most ``cap``:
    the pause of a loop that waits for something to come back (a broker, a peer's work)."""
    return min(cap, first * 2.0 ** max(0, failures_so_far - 1))
