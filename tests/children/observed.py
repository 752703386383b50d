"""Python targets for the observability tests: memory hogs, chatty printers, flaky starters."""

from __future__ import annotations

import os
from pathlib import Path

from supervise.workers import JobContext


def hog(ctx: JobContext) -> None:
    """Holds about 120 MB of resident memory (bytes really written, so really resident)."""
    ballast = b"x" * (120 * 1024 * 1024)
    print(f"hog holding {len(ballast)} bytes", flush=True)
    while not ctx.wait(0.05):
        pass


def chatty(ctx: JobContext) -> None:
    """Prints a numbered line every few milliseconds, for following logs across rotation."""
    n = 0
    while not ctx.wait(0.005):
        n += 1
        print(f"chatty line {n:08d}", flush=True)


def needs_flag(ctx: JobContext) -> None:
    """Fails at once until the file named by $FLAG_FILE exists; then runs like `forever`."""
    if not Path(os.environ["FLAG_FILE"]).exists():
        raise RuntimeError("the flag file is missing")
    while not ctx.wait(0.05):
        pass


def counting(ctx: JobContext) -> None:
    """Counts what it 'processes' and reports a queue gauge."""
    while not ctx.wait(0.02):
        ctx.count("processed", 2)
        ctx.gauge("queue", 7)
