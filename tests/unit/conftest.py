"""Hypothesis profiles for the property tests in tests/unit.

The default profile keeps CI fast (each fuzz test sets its own bounded example
count). `--hypothesis-profile=long` runs every property test with many more
examples, e.g. before a release (see docs/faults.md):

    python -m pytest -q -p no:cacheprovider tests/unit/test_dispatch_fuzz.py \
        --hypothesis-profile=long --timeout=0 -o faulthandler_timeout=0

The profile is registered here, in a conftest that pytest loads before the
Hypothesis plugin reads `--hypothesis-profile`, whenever the command line names
tests/unit or a file in it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
