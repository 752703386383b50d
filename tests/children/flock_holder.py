"""A singleton's stand-in: holds an exclusive flock on a shared file while it runs.

argv: LOCK_FILE EVENTS_FILE. Appends `start <ppid> <time>` once it holds the lock,
`conflict <ppid> <time>` (and exits 3) if another process holds it: two copies of a
singleton at once. Sleeps until killed.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time


def record(events: str, what: str) -> None:
    with open(events, "a") as f:
        f.write(f"{what} {os.getppid()} {time.time():.3f}\n")


def main() -> int:
    lock_path, events = sys.argv[1], sys.argv[2]
    lock = open(lock_path, "w")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        record(events, "conflict")
        return 3
    record(events, "start")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
