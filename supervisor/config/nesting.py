"""How deeply a config's values may nest: a limit stated, checked without recursion.

Python's TOML parser recurses once per level of nested arrays and inline tables,
and so do the config's own walks (interpolation, validation). Past a few hundred
levels that is a `RecursionError`, so the config loader refuses any document
nested deeper than `MAX_CONFIG_DEPTH` with a config error that names the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

MAX_CONFIG_DEPTH: Final = 32
"""Levels of tables, arrays and inline tables a config value may have, the top-level table counted."""


def too_deep(data: object, limit: int = MAX_CONFIG_DEPTH) -> tuple[str, ...] | None:
    """The key path of the first value nested deeper than `limit`, or None (iterative, any depth)."""
    stack: list[tuple[object, tuple[str, ...], int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, Mapping):
            items = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            continue
        if depth > limit:
            return path
        stack.extend((v, (*path, k), depth + 1) for k, v in items)
    return None


def depth_problem() -> str:
    return f"values are nested more than {MAX_CONFIG_DEPTH} levels deep (tables, arrays, inline tables); flatten them"
