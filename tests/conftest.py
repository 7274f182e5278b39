"""Puts tests/ on sys.path (pytest's rootdir conftest), so test modules can import factories;
makes the property tests deterministic."""
import os

from hypothesis import settings

# Every run draws the same examples (seeded from each test's source), so a statistical
# tolerance that one draw in thousands misses cannot fail a landing at random;
# HYPOTHESIS_PROFILE=explore draws new ones (a search for counterexamples, run on demand).
settings.register_profile("hispec", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hispec"))


def pytest_collection_modifyitems(items):
    """Slow tests first (a stable sort: otherwise collection order), so that under
    `-n 2` the long ones (the README flow, the chi-square tests) overlap with the many
    short ones instead of leaving one worker alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
