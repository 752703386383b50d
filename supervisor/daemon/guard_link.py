"""The supervisor's end of the orphan guard (`supervise.supervisor.daemon.guard`): start it, tell it, stop it."""

from __future__ import annotations

import logging
import os
import subprocess  # nosec B404 # the guard is started from a fixed argv, never through a shell
import sys

log = logging.getLogger("supervise")

GRACE_S = 1.0  # SIGTERM to the orphaned groups, then SIGKILL after this long


class GuardLink:
    """Registers every worker's process group with the guard over a pipe; `bye` at a clean exit."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._names: dict[int, str] = {}  # pgid -> the service instance it runs
        self._fences: dict[str, float] = {}  # service instance -> CLOCK_MONOTONIC kill deadline

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self._process = subprocess.Popen(  # nosec B603 # argv is sys.executable and a module of this package, no shell
                [sys.executable, "-m", "supervise.supervisor.daemon.guard", str(GRACE_S)],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(read_fd)
        self._fd = write_fd

    def watch(self, pgid: int, name: str | None = None) -> None:
        """A worker (the leader of process group `pgid`) of instance `name` was spawned."""
        self._tell(f"+{pgid}")
        if name is not None:
            self._names[pgid] = name
            if name in self._fences:
                self._tell(f"={pgid} {self._fences[name]:.6f}")

    def forget(self, pgid: int) -> None:
        """The worker was reaped: its group is no longer the guard's to kill."""
        self._names.pop(pgid, None)
        self._tell(f"-{pgid}")

    def fence(self, names: list[str], deadline: float | None) -> None:
        """The workers of these instances must be dead by `deadline` (time.monotonic()) unless it is
        moved again; None lifts it. The guard enforces it even if this process is frozen."""
        for name in names:
            if deadline is None:
                self._fences.pop(name, None)
            else:
                self._fences[name] = deadline
        wanted = set(names)
        for pgid, name in self._names.items():
            if name in wanted:
                self._tell(f"={pgid} {deadline or 0:.6f}")

    def fence_group(self, pgid: int, deadline: float | None) -> None:
        """Process group `pgid` (a leased command run) must be dead by `deadline` (time.monotonic())
        unless it is moved again; None lifts it. Forgotten with the group (`forget`)."""
        self._tell(f"={pgid} {deadline or 0:.6f}")

    def stop(self) -> None:
        """A clean exit: `bye`, then wait for the guard (killed after 5 s)."""
        self._tell("bye")
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _tell(self, line: str) -> None:
        if self._fd is not None:
            try:
                os.write(self._fd, f"{line}\n".encode())
            except OSError as e:
                log.error("the orphan guard is gone (%s); workers would survive a crash of supervise", e)
                os.close(self._fd)
                self._fd = None
