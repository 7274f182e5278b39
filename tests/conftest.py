"""Puts tests/ on sys.path (pytest's rootdir conftest), so test modules can import factories;
makes the property tests deterministic."""
import os
import sys

from hypothesis import settings

# Every run draws the same examples (seeded from each test's source), so a statistical
# tolerance that one draw in thousands misses cannot fail a landing at random;
# HYPOTHESIS_PROFILE=explore draws new ones (a search for counterexamples, run on demand).
settings.register_profile("hispec", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, max_examples=200)
# (another project's HYPOTHESIS_PROFILE in the environment is not ours: the default then)
settings.load_profile("explore" if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else "hispec")


def pytest_runtest_setup(item):
    """One torch thread per test once torch is loaded (by a test module, or by an earlier
    test that ran the executor): two xdist workers on two cores, and a partial run
    (`tests/profiles`) no slower on a loaded machine. torch is not imported for it: the
    simulator's tests run without torch."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Slow tests first (a stable sort: otherwise collection order), so that under
    `-n 2` the long ones (the README flow, the chi-square tests) overlap with the many
    short ones instead of leaving one worker alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
