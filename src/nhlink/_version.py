# A literal, not importlib.metadata (that import alone took ~70 ms at start-up).
# tests/packaging/test_version.py checks it against pyproject.toml and the installed metadata.
__version__ = "0.1.0.dev0"
