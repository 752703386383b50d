"""The installed version of supervise: one source, the package metadata (pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION: str = version("supervise")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"

__all__ = ["VERSION"]
