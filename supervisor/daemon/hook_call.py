"""Run a Python callable as a hook: `python -m supervise.supervisor.daemon.hook_call pkg.mod:func`.

A hook written as `{ target = "pkg.mod:func" }` runs in a process of its own,
like a command hook (the supervisor's event loop never runs hook code). The
callable is imported (from the service's cwd, then `PYTHONPATH`) and called with
no arguments; it reads `SUPERVISE_SERVICE`, `SUPERVISE_PID`, ... from
`os.environ`. A coroutine function is run to completion. It succeeds (exit 0)
when it returns anything but `False`; `False` exits 1, an exception prints its
traceback (into the service's log) and exits 1, an `int` is the exit status.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import traceback


def main(argv: list[str]) -> int:
    """Import and call `argv[0]` ("pkg.mod:attr"); the hook's exit status."""
    sys.path.insert(0, os.getcwd())
    module_name, _, attr = argv[0].partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        if not callable(target):
            raise TypeError(f"{argv[0]} is not callable")
        result = target()
        if inspect.isawaitable(result):
            result = asyncio.run(_wait(result))
    except Exception:
        traceback.print_exc()
        return 1
    if result is False:
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


async def _wait(awaitable: object) -> object:
    return await awaitable  # type: ignore[misc]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
