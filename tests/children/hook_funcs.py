"""Python callables used as hooks by tests/integration/test_hooks.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def record() -> None:
    """Append what the hook was told to $HOOK_FILE."""
    with Path(os.environ["HOOK_FILE"]).open("a") as f:
        f.write(f"{os.environ['SUPERVISE_HOOK']} {os.environ['SUPERVISE_SERVICE']} pid={os.environ['SUPERVISE_PID']}\n")


async def not_ready() -> bool:
    """An async check that says no."""
    await asyncio.sleep(0.01)
    print("dependency not reachable")
    return False
