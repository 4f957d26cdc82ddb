"""Suite-wide settings. The suite gives the same verdict on any x86-64 machine on any day."""

from __future__ import annotations

import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the test extra brings hypothesis; without it those tests skip
    pass
else:
    # Property tests draw the same examples on every run (`derandomize`) and have no per-example
    # deadline: a busy 2-core machine is slow, not wrong. HYPOTHESIS_PROFILE=explore draws new
    # examples each run, for hunting bugs rather than gating a change.
    settings.register_profile(
        "suite",
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("explore", deadline=None, max_examples=2000)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
