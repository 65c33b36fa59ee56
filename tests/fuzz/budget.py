"""How long each fuzz test runs: PIXPIPE_FUZZ_EXAMPLES examples (make fuzz sets it)."""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

# Applied per test rather than as a loaded profile, so other Hypothesis users in the same
# session (schemathesis) keep their own settings. With CI set, Hypothesis' own "ci" profile
# supplies the rest: derandomized, so CI replays the same examples and a red run reproduces;
# new ground is for make fuzz on a workstation.
fuzz_budget = settings(
    max_examples=int(os.environ.get("PIXPIPE_FUZZ_EXAMPLES", "200")),
    deadline=timedelta(seconds=5),  # anything this slow on one small input is a near-hang
    # A mutated seed photo is a large example by Hypothesis' measure, and decoding one is
    # slow next to a unit test; neither is a fault in the test.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,  # a failure prints the line that replays it
)
