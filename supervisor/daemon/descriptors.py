"""File descriptors: a higher limit for the daemon, the workers' own limit, and a watch on what is left.

Every connection to a listening port costs the supervisor a descriptor. If they
run out, libzmq aborts the process on its next ipc:// accept ("Too many open
files (src/ipc_listener.cpp:...)"), and a supervisor that dies takes its
services with it. So:

- `raise_open_files_limit` lifts the soft `RLIMIT_NOFILE` to the hard limit when
  the daemon starts (`supervise start`); a worker is given back the soft limit
  the supervisor was started with (`restore_worker_limit`), as systemd does;
- `DescriptorWatch` counts the open descriptors twice a second; when fewer than a
  reserve (`RESERVE_FRACTION` of the limit) are left it stops accepting on the
  tcp:// endpoints, logging once a second, and resumes once enough are free.
  The HTTP endpoint caps its own connections (http_guard.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger("supervise")

RESERVE_FRACTION: Final = 0.15  # pause tcp:// accepts when fewer than this share of descriptors is free
RESUME_FRACTION: Final = 0.30  # and resume once this share is free again
CHECK_INTERVAL_S: Final = 0.5

_started_soft: int | None = None  # the soft limit before raise_open_files_limit, if it raised it


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (before, after)."""
    global _started_soft
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.warning("could not raise the open files limit from %d to %d: %s", soft, target, e)
        return soft, soft
    _started_soft = soft
    return soft, target


def restore_worker_limit(pid: int) -> None:
    """Give a just-started worker the soft limit the supervisor itself was started with."""
    if _started_soft is None:
        return
    try:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_started_soft, hard))
    except (ProcessLookupError, PermissionError, OSError, ValueError):
        pass  # already gone, or another user's process we may not change: it keeps the raised limit


class _Spare:
    """One descriptor held in reserve, let go for a moment when a listing of /proc/self/fd needs one."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def take(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.fd = None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_spare = _Spare()


def open_descriptors() -> int:
    """How many descriptors this process has open, its own spare included (0 where /proc is missing).

    Works when none are left: the spare is closed for the listing's own descriptor.
    """
    _spare.release()
    try:
        return len(os.listdir("/proc/self/fd"))  # the listing's own descriptor stands for the spare
    except OSError:
        return 0
    finally:
        _spare.take()


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


class DescriptorWatch:
    """Calls `pause()` when descriptors run short and `resume()` when they are back; never raises."""

    def __init__(
        self,
        pause: Callable[[], None],
        resume: Callable[[], None],
        *,
        count: Callable[[], int] = open_descriptors,
        limit: Callable[[], int] = lambda: resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    ) -> None:
        self._pause = pause
        self._resume = resume
        self._count = count
        self._limit = limit
        self.paused = False
        self.pauses = 0
        self._logged_at = 0.0

    def check(self) -> None:
        """One look: pause or resume as the count says (also called directly by tests)."""
        used, limit = self._count(), self._limit()
        free = limit - used
        if not self.paused and free < limit * RESERVE_FRACTION:
            self.paused = True
            self.pauses += 1
            self._pause()
        elif self.paused and free >= limit * RESUME_FRACTION:
            self.paused = False
            self._resume()
            log.warning("descriptors: %d of %d in use; accepting tcp:// connections again", used, limit)
            return
        if self.paused and time.monotonic() - self._logged_at >= 1.0:
            self._logged_at = time.monotonic()
            log.warning(
                "descriptors running out: %d of %d in use; not accepting new tcp:// connections until %d are free",
                used,
                limit,
                int(limit * RESUME_FRACTION),
            )

    async def run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # the watch must never take the supervisor down
                log.exception("descriptor watch failed")
            await asyncio.sleep(CHECK_INTERVAL_S)
