"""The version of supervise: its one source (pyproject.toml reads it from here)."""

from __future__ import annotations

VERSION = "0.1.0"

__all__ = ["VERSION"]
