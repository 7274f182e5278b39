"""Puts tests/ on sys.path (pytest's rootdir conftest), so test modules can import factories."""


def pytest_collection_modifyitems(items):
    """Slow tests first (a stable sort: otherwise collection order), so that under
    `-n 2` the long ones (the README flow, the chi-square tests) overlap with the many
    short ones instead of leaving one worker alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
