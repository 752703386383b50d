"""The same workload for every system: N services of one kind, one process each."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# A tiny Python loop for the peers (they have no worker protocol): sleeps 1 s at a time.
PEER_LOOP = "import time\nwhile True:\n    time.sleep(1)\n"

# The same loop as a supervise target: the runtime heartbeats at heartbeat_interval.
SUPERVISE_TARGET = '''"""Bench worker: idles until cancelled."""


def loop(ctx):
    while not ctx.wait(1.0):
        pass
'''


@dataclass(frozen=True)
class Workload:
    """`n` services named w000.. of one `kind`.

    sleep:  `sleep 100000`, runs until killed
    crash:  `sleep 0.5`, exits 0 every half second (restart always, no backoff, no limits)
    python: a tiny Python loop (supervise: a target heartbeating at 1 Hz)
    """

    n: int
    kind: str = "sleep"

    @property
    def names(self) -> list[str]:
        return [f"w{i:03d}" for i in range(self.n)]

    def argv(self, workdir: Path) -> list[str]:
        """The worker's command line, for systems that run commands (the peers; supervise for sleep/crash)."""
        if self.kind == "sleep":
            return ["sleep", "100000"]
        if self.kind == "crash":
            return ["sleep", "0.5"]
        loop = workdir / "peer_loop.py"
        loop.write_text(PEER_LOOP)
        return [sys.executable, str(loop)]

    @property
    def worker_comm(self) -> str | None:
        """What /proc/PID/comm shows once the worker has exec'd (None: don't check)."""
        return "sleep" if self.kind in ("sleep", "crash") else None
