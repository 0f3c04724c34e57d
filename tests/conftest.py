"""Hypothesis profiles for the whole suite.

``ci`` (the default, what ``make test`` runs): derandomized, so a green run means
the same examples passed as last time, and no example database, so nothing a
previous run found changes what this one tries. No deadline and no too_slow
health check either: both depend on how loaded the machine is, and the suite
runs in parallel (pytest-xdist). A failure prints the blob that reproduces it
(``@reproduce_failure``).

``fuzz`` (``make fuzz``, or ``HYPOTHESIS_PROFILE=fuzz``): random seeds, ten
times the examples, and the example database (``.hypothesis/``), so a failure
found once is tried first on the next run.

Tests that want more or fewer examples than the profile's ``max_examples`` say
so relative to it (``max_examples=3 * settings.default.max_examples``), so the
fuzz profile scales them too; a hard-coded count would win over any profile.
This file is imported before the test modules, so ``settings.default`` is
already the chosen profile when their decorators run.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

#: Examples per test in CI (per-test settings are multiples of it): Hypothesis' own default.
CI_EXAMPLES = 100

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=CI_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    derandomize=False,
    max_examples=10 * CI_EXAMPLES,
    # Generous: only an example that is slow on every try (a slow path in a parser) fails.
    deadline=timedelta(seconds=2),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
