"""Shared pytest configuration: hypothesis profiles."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # CI must be reproducible: the same commit explores the same examples. Random
    # exploration happens in the dev and long profiles; findings become explicit tests.
    derandomize=True,
)
settings.register_profile("long", max_examples=100_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# tests/mpy/ holds plain modules for the MicroPython port (run by test_micropython_port.py),
# not pytest modules; their names also clash with tests/protocol/.
collect_ignore = ["mpy"]
