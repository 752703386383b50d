"""The orphan guard: a tiny helper process that kills the workers if the supervisor dies.

The supervisor starts one guard at start-up, in its own session, with a pipe on
its stdin. For every worker it writes `+PGID`, and `-PGID` once the worker is
reaped. When the pipe reaches EOF without a final `bye` line, the supervisor was
killed (even with SIGKILL): the guard sends SIGTERM to every registered process
group, waits `grace` seconds, sends SIGKILL to what is left, and exits. This
covers command workers, which cannot use PR_SET_PDEATHSIG without `preexec_fn`,
and the grandchildren of every worker.

Cluster mode adds fencing deadlines (docs/cluster.md), for a singleton's workers and
for each leased command run's process group: `=PGID DEADLINE` (seconds
on CLOCK_MONOTONIC, shared by every process of the host) means the group must be
dead by then unless a later line moves the deadline (`=PGID 0` clears it). The
supervisor moves it after every lease renewal; if it cannot (the database is
gone, or the supervisor itself is frozen by SIGSTOP), the guard sends SIGKILL
to the group when the deadline passes, before the lease can expire for another node.

Run as `python -m supervise.supervisor.daemon.guard GRACE_SECONDS`; it imports nothing
but the standard library so it starts fast.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def _signal_groups(groups: set[int], sig: int) -> set[int]:
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
            alive.add(pgid)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass  # no longer ours (the group is gone and the id was reused by someone else)
    return alive


def _fence(deadlines: dict[int, float], groups: set[int]) -> None:
    """SIGKILL every group whose fencing deadline has passed."""
    now = time.monotonic()
    for pgid, deadline in list(deadlines.items()):
        if deadline <= now:
            del deadlines[pgid]
            _signal_groups({pgid}, signal.SIGKILL)
            sys.stderr.write(f"supervise guard: fencing deadline passed; SIGKILL to process group {pgid}\n")


def run(grace_s: float) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the supervisor's business
    groups: set[int] = set()
    deadlines: dict[int, float] = {}  # pgid -> CLOCK_MONOTONIC time by which it must be dead
    clean = False
    buffer = b""
    while True:
        if deadlines:
            wait = max(0.0, min(deadlines.values()) - time.monotonic())
            if not select.select([0], [], [], wait)[0]:
                _fence(deadlines, groups)
                continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line == b"bye":
                clean = True
            elif line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
                deadlines.pop(int(line[1:]), None)
            elif line[:1] == b"=":
                pgid, _, at = line[1:].partition(b" ")
                if float(at) > 0:
                    deadlines[int(pgid)] = float(at)
                else:
                    deadlines.pop(int(pgid), None)
        _fence(deadlines, groups)
    if clean or not groups:
        return 0
    alive = _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        _fence(deadlines, groups)  # a fencing deadline sooner than the grace still holds
        alive = _signal_groups(alive, 0)
    _signal_groups(alive, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0))
