"""Shared test configuration: hypothesis profiles for these shared, noisy machines."""

import os

from hypothesis import HealthCheck, settings

# No deadlines: machines are shared and timing is noisy. CI replays a fixed set of
# examples (derandomize) so a red CI run is reproducible on a developer's machine.
settings.register_profile(
    "dev", deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, max_examples=60, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
