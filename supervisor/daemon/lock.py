"""The state directory: created private (0700) and held with an exclusive `flock`.

A second supervisor on the same state directory fails here, before it binds any
ipc:// socket (binding would silently steal the first one's endpoint) or touches
any file of the first one.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from supervise.supervisor.core.errors import AlreadyRunning, ConfigError, ConfigProblem

LOCK_NAME = "supervise.lock"


def prepare_state_dir(state_dir: Path) -> None:
    """Create `state_dir` with mode 0700, or refuse one that others can write to."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = state_dir.stat()
    if st.st_uid != os.geteuid():
        raise ConfigError(
            str(state_dir),
            [ConfigProblem("supervisor.state_dir", f"directory {state_dir} belongs to uid {st.st_uid}, not to us")],
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            str(state_dir),
            [
                ConfigProblem(
                    "supervisor.state_dir",
                    f"directory {state_dir} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                    "use a private 0700 directory",
                )
            ],
        )


class StateDirLock:
    """An exclusive, non-blocking `flock` on `<state_dir>/supervise.lock`, holding our pid."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(
                f"another supervise (pid {holder}) holds {self.path}; stop it first "
                "('supervise shutdown -c CONFIG') or use another state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays, harmlessly
            self._fd = None
