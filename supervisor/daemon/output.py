"""Capture of a worker's stdout/stderr into a size-rotated log file.

The supervisor reads the pipe from its event loop as soon as it is readable, so
a child writing fast never blocks on a full pipe. If the log file cannot be
written (disk full, deleted directory), the bytes are dropped and counted; the
pipe is still drained. A log file deleted or replaced under us (by hand, or by
an outside logrotate) is noticed within a second and opened afresh, as
`logging.handlers.WatchedFileHandler` does, instead of writing on into an
unlinked inode until the next rotation.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from supervise.supervisor.private_files import directory, ensure_private_dir, open_in

_READ_CHUNK = 65536
_WATCH_INTERVAL_S = 1.0  # how often a write checks that the path still names the open file


class RotatingLog:
    """An append-only log file that rotates to `.1`, `.2`, ... past `max_bytes`."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.dropped_bytes = 0
        self.write_errors = 0
        self._fd: int | None = None
        self._size = 0
        self._checked_at = 0.0

    def write(self, data: bytes) -> None:
        try:
            if self._fd is not None and self._replaced():
                self.close()
            if self._fd is None:
                self._open()
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
            assert self._fd is not None
            os.write(self._fd, data)
            self._size += len(data)
        except OSError:
            self.write_errors += 1
            self.dropped_bytes += len(data)
            self.close()  # reopen on the next write: the file may have been deleted

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def _replaced(self) -> bool:
        """True when the path no longer names the open file (checked at most once a second)."""
        now = time.monotonic()
        if now - self._checked_at < _WATCH_INTERVAL_S:
            return False
        self._checked_at = now
        assert self._fd is not None
        try:
            st = os.lstat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return True  # deleted, or its folder is gone or is a file now: reopen (and fail, and count)
        except OSError:
            return False  # cannot look (EACCES...): keep the file we have
        opened = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) != (opened.st_dev, opened.st_ino)

    def _open(self) -> None:
        # The folder must be private, and the file is opened relative to it without
        # following a symlink: a link planted as NAME.log makes the open fail (and count).
        ensure_private_dir(self.path.parent, exact=False)
        with directory(self.path.parent) as dir_fd:
            self._fd = open_in(dir_fd, self.path.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._checked_at = time.monotonic()

    def _rotate(self) -> None:
        self.close()
        name = self.path.name
        with directory(self.path.parent) as dir_fd:  # renames act on names, never through a symlink
            if self.backups > 0:
                for i in range(self.backups - 1, 0, -1):
                    try:
                        os.replace(f"{name}.{i}", f"{name}.{i + 1}", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    except FileNotFoundError:
                        pass
                os.replace(name, f"{name}.1", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
        self._open()


class PipeReader:
    """Drains one pipe fd into a `RotatingLog` from the event loop until EOF.

    It outlives the worker's exit when a grandchild still holds the pipe, and closes
    itself at EOF; `on_eof` is called then.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        log: RotatingLog,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._log = log
        self._on_eof = on_eof
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    @property
    def open(self) -> bool:
        return self._fd >= 0

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO and friends: treat as EOF; closing gives the writer EPIPE, not a hang
        if data:
            self._log.write(data)
            return
        self.close()

    def drain(self) -> None:
        """Read what is buffered now (the worker has exited); stop at EAGAIN or EOF."""
        while self._fd >= 0:
            try:
                data = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self._log.write(data)

    def close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._on_eof is not None:
            self._on_eof()
