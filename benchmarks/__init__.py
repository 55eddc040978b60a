"""Benchmark suites (pytest-benchmark); never part of the default test run. See compare.py."""
