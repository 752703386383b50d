"""Tiny Python targets that integration tests run as real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from supervise.workers import JobContext


def forever(ctx: JobContext) -> None:
    """A well-behaved long-running service: returns promptly when cancelled."""
    print(f"forever started pid={os.getpid()}", flush=True)
    while not ctx.wait(0.05):
        pass
    print("forever stopping", flush=True)


def crash(ctx: JobContext) -> None:
    """Fails at once with a traceback."""
    raise ValueError("boom: the database is on fire")


def ignore_term(ctx: JobContext) -> None:
    """Ignores SIGTERM and the stop message: only SIGKILL ends it. Spawns a grandchild first."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen(["sleep", "1000"])
    Path(os.environ["GRANDCHILD_PID_FILE"]).write_text(str(grandchild.pid))
    while True:
        time.sleep(0.05)


def spin(ctx: JobContext) -> None:
    """CPU-heavy: burns a core until cancelled."""
    n = 0
    while not ctx.cancelled:
        for i in range(100_000):
            n += i * i
        ctx.count("loops")


def watched(ctx: JobContext) -> None:
    """Calls ctx.heartbeat() while $STUCK_FILE is absent; once it exists, its code 'hangs'."""
    stuck = Path(os.environ["STUCK_FILE"])
    while not ctx.wait(0.05):
        if not stuck.exists():
            ctx.heartbeat()
