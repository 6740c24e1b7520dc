"""Hypothesis profiles for the property tests of tests/fuzz/.

`default` keeps the whole directory to a few seconds; HYPOTHESIS_PROFILE=long
runs a hundred times more examples per property (minutes), for a soak before a
release or after changing a parser."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=75,
    deadline=None,  # a loaded 2-core machine makes per-example timing meaningless
    database=None,  # nothing written into the worktree; failures print their @example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
