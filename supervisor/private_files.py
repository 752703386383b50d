"""Files only the supervisor's user may touch: the state directory, `logs/`, and what is in them.

- The state directory is owned by the supervisor's user and exactly 0700: created
  so (whatever the umask), refused otherwise. A state-dir path that is a symlink
  is followed only if the supervisor's user owns the link.
- `logs/` is created 0700 and refused if another user owns it or group or others
  may write to it.
- Files are opened relative to a descriptor of their directory with `O_NOFOLLOW`:
  a symlink planted as `logs/NAME.log` is never followed, and a path that names
  something other than a regular file is refused.
- Files the supervisor creates (the history database and its WAL and SHM, the
  lock) are 0600 whatever the umask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from supervise.supervisor.core.errors import ConfigError, ConfigProblem

PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class UnsafePath(PermissionError):
    """A path that is not private to the supervisor's user; the message names it and what to do."""


def prepare_state_dir(state_dir: Path) -> None:
    """Create `state_dir` (0700) and its `logs/`, or refuse them when they are not private.

    Raises:
        ConfigError: naming the path, its owner or mode, and the fix (exit 78).
    """
    try:
        ensure_private_dir(state_dir, exact=True)
        ensure_private_dir(state_dir / "logs", exact=False)
    except UnsafePath as e:
        raise ConfigError(str(state_dir), [ConfigProblem("supervisor.state_dir", str(e))]) from None


def ensure_private_dir(path: Path, *, exact: bool) -> None:
    """Create `path` 0700 if missing; refuse it if it is not the supervisor user's own.

    Args:
        exact: require mode 0700 exactly (the state dir); otherwise only no group or
            other write bits (`logs/`).

    Raises:
        UnsafePath: a symlink owned by another user, a directory owned by another user,
            or a mode that lets others in.
    """
    me = os.geteuid()
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        _create(path)
        link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode) and link.st_uid != me:
        raise UnsafePath(
            f"{path} is a symlink owned by uid {link.st_uid}, not by the supervisor's user (uid {me}); "
            "it could point anywhere: replace it with a directory of your own"
        )
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory")
    if st.st_uid != me:
        raise UnsafePath(f"directory {path} belongs to uid {st.st_uid}, not to the supervisor's user (uid {me})")
    mode = stat.S_IMODE(st.st_mode)
    if exact and mode != PRIVATE_DIR_MODE:
        raise UnsafePath(f"directory {path} has mode {mode:04o}; it must be 0700 (run: chmod 700 {path})")
    if not exact and mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(f"directory {path} is writable by others (mode {mode:04o}); run: chmod 700 {path}")


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        return  # made by someone else meanwhile: the checks that follow decide
    os.chmod(path, PRIVATE_DIR_MODE, follow_symlinks=False)  # the umask may have taken bits away


@contextmanager
def directory(path: Path) -> Iterator[int]:
    """A descriptor of directory `path`, closed on exit (check it with `ensure_private_dir` first)."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def open_in(dir_fd: int, name: str, flags: int, mode: int = PRIVATE_FILE_MODE) -> int:
    """Open `name` in the directory `dir_fd` without following a symlink; a regular file only.

    Raises:
        OSError: ELOOP for a symlink, UnsafePath for anything but a regular file.
    """
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{name} is not a regular file")
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # what the umask made of a new file, or an old file's mode
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path, flags: int, mode: int = PRIVATE_FILE_MODE) -> int:
    """Open `path` relative to its directory, without following a symlink in its last component."""
    with directory(path.parent) as dir_fd:
        return open_in(dir_fd, path.name, flags, mode)


def make_private(path: Path) -> None:
    """Create `path` 0600 if missing, or set an existing regular file of ours to 0600 (umask aside)."""
    os.close(open_private(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE))


def make_database_private(path: Path) -> None:
    """Make an SQLite database 0600 before SQLite opens it: SQLite creates a new one 0644, and
    gives its `-wal` and `-shm` files the database file's mode; existing ones are set too."""
    make_private(path)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if os.path.lexists(side):
            make_private(side)
