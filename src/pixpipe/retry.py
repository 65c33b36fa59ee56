"""The retry schedule: how long to wait before attempt N+1, with jitter."""

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
