"""Misbehaving Python targets for the fault-injection tests (tests/faults/).

Each one fails in exactly one way. Paths they write to come from the environment,
so a test knows where to look. `FAULTY_IMPORT_DELAY_S`, if set, makes importing
this module slow: the worker says hello only after importing its target, so this
is how a test gets a slow start (reliability.md F-05).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from supervise.workers import JobContext

_delay = os.environ.get("FAULTY_IMPORT_DELAY_S")
if _delay:
    time.sleep(float(_delay))


def _mark(text: str = "") -> None:
    """Write `text` to $FAULTY_MARK (atomically: the test polls for the file)."""
    target = Path(os.environ["FAULTY_MARK"])
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(target)


def patient(ctx: JobContext) -> None:
    """Well behaved and quiet: returns when cancelled (used after a slow import)."""
    while not ctx.wait(0.05):
        pass


def stubborn(ctx: JobContext) -> None:
    """Ignores SIGTERM and the stop message: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.05)


def grandchildren_then_crash(ctx: JobContext) -> None:
    """Starts two `sleep` grandchildren in its own process group, reports their pids, and crashes."""
    kids = [subprocess.Popen(["sleep", "1000"]) for _ in range(2)]
    _mark(" ".join(str(k.pid) for k in kids))
    ctx.wait(0.3)
    raise RuntimeError("leaving my children behind")


def close_stdio(ctx: JobContext) -> None:
    """Closes its stdout and stderr (EOF on the supervisor's pipe) and keeps running."""
    os.close(1)
    os.close(2)
    _mark(str(os.getpid()))
    while not ctx.wait(0.05):
        pass
