"""Reading a service's captured output: the last lines across rotated files, and following.

The files are the ones `output.RotatingLog` writes: `NAME.log`, then `NAME.log.1`
(newer) … `NAME.log.N` (older). `tail` reads backwards from the newest until it
has enough lines; `Follower` reads what is appended and notices a rotation (the
path names another inode, or the file shrank) to carry on in the new file.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

_BLOCK = 65536
MAX_TAIL_BYTES = 8 * 1024 * 1024
"""`tail` reads at most this much, however long the lines."""


def rotated_files(path: Path, backups: int) -> list[Path]:
    """The existing files of a log, newest first."""
    candidates = [path, *(path.with_name(f"{path.name}.{i}") for i in range(1, backups + 1))]
    return [p for p in candidates if p.exists()]


def open_log(path: Path) -> int:
    """Open a log file for reading; a symlink or anything but a regular file is refused (OSError).

    A link planted in the logs folder must not make `supervise logs` print the file it points to.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return fd


@dataclass(frozen=True, slots=True)
class Tail:
    """The last lines of a log, and where they end in the live file (to follow from there)."""

    lines: list[str]
    inode: int | None
    offset: int


def tail(path: Path, lines: int, *, backups: int = 10) -> Tail:
    """The last `lines` lines of a log and its rotated files, oldest first."""
    chunks: list[bytes] = []
    newlines = 0
    budget = MAX_TAIL_BYTES
    inode: int | None = None
    offset = 0
    for file in rotated_files(path, backups):
        try:
            with os.fdopen(open_log(file), "rb") as f:
                end = f.seek(0, os.SEEK_END)
                if file == path:
                    inode, offset = os.fstat(f.fileno()).st_ino, end
                if lines <= 0:
                    break
                while end > 0 and newlines <= lines and budget > 0:
                    start = max(0, end - min(_BLOCK, budget))
                    f.seek(start)
                    block = f.read(end - start)
                    chunks.append(block)
                    newlines += block.count(b"\n")
                    budget -= len(block)
                    end = start
        except OSError:
            continue
        if newlines > lines or budget <= 0:
            break
    text = b"".join(reversed(chunks)).decode(errors="replace")
    return Tail(text.splitlines()[-lines:] if lines > 0 else [], inode, offset)


class Follower:
    """Reads what is appended to a log file, following it across rotation.

    Args:
        path: the live log file (it may not exist yet).
        offset: where to start in the current file (default: its end).
        inode: the inode `offset` refers to; if the path now names another file, start at 0.
    """

    def __init__(self, path: Path, *, offset: int | None = None, inode: int | None = None) -> None:
        self.path = path
        self._fd: int | None = None
        self._ino: int | None = None
        self._open(offset, inode)

    def _open(self, offset: int | None, inode: int | None) -> None:
        try:
            fd = open_log(self.path)
        except OSError:
            return
        st = os.fstat(fd)
        if inode is not None and st.st_ino != inode:
            offset = 0  # rotated since the offset was taken: all of the new file is new
        os.lseek(fd, min(offset, st.st_size) if offset is not None else st.st_size, os.SEEK_SET)
        self._fd, self._ino = fd, st.st_ino

    def read(self) -> bytes:
        """What was written since the last call (possibly from the old and the new file)."""
        if self._fd is None:
            self._open(0, None)
            if self._fd is None:
                return b""
        data = self._drain()
        try:
            st = os.lstat(self.path)
        except OSError:
            return data  # rotated away and not recreated yet
        pos = os.lseek(self._fd, 0, os.SEEK_CUR)
        if st.st_ino != self._ino or st.st_size < pos:
            data += self._drain()
            self.close()
            self._open(0, None)
            if self._fd is not None:
                data += self._drain()
        return data

    def _drain(self) -> bytes:
        assert self._fd is not None
        parts = []
        while block := os.read(self._fd, _BLOCK):
            parts.append(block)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
