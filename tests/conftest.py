"""Puts tests/ on sys.path (pytest's rootdir conftest), so test modules can import factories."""
