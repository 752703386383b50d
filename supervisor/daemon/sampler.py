"""Sampling of every worker's process tree, and of the supervisor itself.

Each process costs one read of `/proc/PID/stat` (CPU times, threads, RSS, start
time), one stat() of `/proc/PID/fd` (its size is the fd count on Linux 6.2+; a
listing before) and one read of `/proc/PID/task/TID/children` per thread (a
single-threaded process needs no task listing). That is a few syscalls per worker, where psutil's
per-attribute reads took several files each and a walk of the whole process
table: with 200 workers sampled every second the difference is most of the
supervisor's idle CPU. The stat and main-thread children files stay open between
passes while descriptors allow (`_ProcFiles`), and a tree's figures are summed in
locals: a pass over 2 000 workers costs about 60 % of what opening each file did.
CPU percent is measured between two samples of the same process; a pid that now
belongs to another process (a different start time) starts afresh. It blocks on
/proc reads, so the shell runs it on a thread.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping

from supervise.supervisor.core.metrics import ProcessStats

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Reads CPU, memory, threads, fds and children of process trees; keeps CPU baselines."""

    def __init__(self, *, keep_open: int | None = None) -> None:
        """
        Args:
            keep_open: how many processes' /proc files may stay open between passes (two
                descriptors each). By default as many as keep all the daemon's descriptors
                under half the open-files limit (a pass closes the excess), so the descriptor
                watch's reserve is never taken by the sampler.
        """
        # pid -> (start_ticks, cpu_seconds, monotonic time) of the previous sample
        self._previous: dict[int, tuple[int, float, float]] = {}
        self._keep_open = keep_open
        self._files = _ProcFiles(0)

    def sample(self, roots: Mapping[str, int]) -> tuple[dict[str, ProcessStats], ProcessStats]:
        """Sample each root pid's tree (the root and its descendants) and the supervisor.

        Args:
            roots: service name -> the pid of its worker.

        Returns:
            The figures of each service whose worker still exists, and the supervisor's own.
        """
        now = time.monotonic()
        self._files.keep(self._keep_open if self._keep_open is not None else _keep_open_now(len(self._files)))
        seen: set[int] = set()
        out: dict[str, ProcessStats] = {}
        for name, root in roots.items():
            total = self._sample_tree(root, now, seen)
            if total is not None:
                out[name] = total
        me = os.getpid()
        seen.add(me)
        for pid in list(self._previous):
            if pid not in seen:
                del self._previous[pid]
        self._files.retain(seen)
        own = self._read(me, now, root=False, keep=False)
        if own is None:
            return out, ProcessStats()
        percent, cpu_seconds, rss_bytes, threads = own
        return out, ProcessStats(percent, cpu_seconds, rss_bytes, threads, _count_fds(me), 0, 1)

    def _sample_tree(self, root: int, now: float, seen: set[int]) -> ProcessStats | None:
        """The summed figures of `root` and its descendants; None if `root` is gone.

        Sums in locals and builds one `ProcessStats` per tree: a pass over thousands of
        workers is mostly this loop, so no object is made per process.
        """
        read = self._read(root, now, root=True)
        if read is None:
            return None  # the worker itself is gone: nothing to say about this service
        percent, cpu_seconds, rss_bytes, threads = read
        fds = _count_fds(root)
        processes = 1
        seen.add(root)
        tree = self._children_of(root, threads)
        visited = {root}
        for pid in tree:  # breadth-first; the list grows as it is walked
            if pid in visited:
                continue
            visited.add(pid)
            seen.add(pid)
            read = self._read(pid, now, root=False)
            if read is None:
                continue  # exited between its parent's listing and this read
            percent += read[0]
            cpu_seconds += read[1]
            rss_bytes += read[2]
            threads += read[3]
            fds += _count_fds(pid)
            processes += 1
            tree += self._children_of(pid, read[3])
        return ProcessStats(percent, cpu_seconds, rss_bytes, threads, fds, processes - 1, processes)

    def _read(self, pid: int, now: float, *, root: bool, keep: bool = True) -> tuple[float, float, int, int] | None:
        """(CPU percent, CPU seconds, RSS bytes, threads) of one process; None if it is gone (or a zombie).

        A root's CPU seconds include the children it reaped (they are billed to the worker).
        `keep`: its stat file may stay open for the next pass.
        """
        data = self._files.read(pid, _STAT) if keep else _read_proc(_path(pid, _STAT), _STAT)
        # The command name is in parentheses and may itself contain spaces or ")".
        fields: list[bytes] = data[data.rfind(b")") + 2 :].split() if data is not None else []
        if len(fields) < 22 or fields[0] == b"Z":  # gone, or a zombie (an exited process)
            self._previous.pop(pid, None)
            self._files.forget(pid)
            return None
        start_ticks = int(fields[19])
        cpu_seconds = (int(fields[11]) + int(fields[12])) / _TICKS
        previous = self._previous.get(pid)
        percent = 0.0  # the first sample of a process is the baseline for the next
        if previous is not None and previous[0] == start_ticks and now > previous[2]:
            percent = max(0.0, 100 * (cpu_seconds - previous[1]) / (now - previous[2]))
        self._previous[pid] = (start_ticks, cpu_seconds, now)
        if root:
            cpu_seconds += (int(fields[13]) + int(fields[14])) / _TICKS
        return percent, cpu_seconds, int(fields[21]) * _PAGE, int(fields[17])

    def _children_of(self, pid: int, threads: int) -> list[int]:
        """Child pids, from /proc/PID/task/TID/children: one read per thread (one thread: no listing)."""
        found: list[int] = []
        data = self._files.read(pid, _CHILDREN)  # the main thread's
        if data:
            found += [int(child) for child in data.split()]
        if threads == 1:
            return found
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return found  # gone
        me = str(pid)
        for tid in tids:
            if tid != me:
                data = _read_proc(f"/proc/{pid}/task/{tid}/children", _CHILDREN)
                if data:  # None: a thread that exited between the listing and the read
                    found += [int(child) for child in data.split()]
        return found


_STAT = 0
_CHILDREN = 1


class _ProcFiles:
    """`/proc/PID/stat` and the main thread's `children` of sampled processes, kept open between
    passes and read with pread: half the cost of opening them each time, for two descriptors
    per process, up to `keep` processes (the rest are opened per read). A kept descriptor
    belongs to its process, not to its pid: once the process is gone, reads fail, even if the
    pid was given to another process meanwhile, and the files are then opened afresh."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._open: dict[int, tuple[int, int]] = {}  # pid -> (stat fd, children fd)

    def __len__(self) -> int:
        return len(self._open)

    def keep(self, processes: int) -> None:
        """Keep at most this many processes' files open from now on (closes the excess)."""
        self._keep = processes
        for pid in list(self._open)[processes:]:
            self.forget(pid)

    def read(self, pid: int, which: int) -> bytes | None:
        """The file's bytes; None if the process is gone."""
        fds = self._open.get(pid)
        if fds is not None:
            try:
                return _pread_all(fds[which], which)
            except OSError:
                self.forget(pid)  # that process is gone; its pid may be another's now
        if len(self._open) < self._keep:
            fds = self._open_files(pid)
            if fds is not None:
                self._open[pid] = fds
                try:
                    return _pread_all(fds[which], which)
                except OSError:
                    self.forget(pid)
                    return None
        return _read_proc(_path(pid, which), which)

    def forget(self, pid: int) -> None:
        fds = self._open.pop(pid, None)
        if fds is not None:
            os.close(fds[0])
            os.close(fds[1])

    def retain(self, pids: set[int]) -> None:
        """Close the files of processes not sampled in this pass."""
        for pid in [p for p in self._open if p not in pids]:
            self.forget(pid)

    @staticmethod
    def _open_files(pid: int) -> tuple[int, int] | None:
        try:
            stat = os.open(_path(pid, _STAT), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return stat, os.open(_path(pid, _CHILDREN), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(stat)
            return None


def _path(pid: int, which: int) -> str:
    return f"/proc/{pid}/stat" if which == _STAT else f"/proc/{pid}/task/{pid}/children"


def _pread_all(fd: int, which: int) -> bytes:
    """A /proc file's bytes from its start: one read for stat (it fits a page), to the end
    for a children list (it can be longer)."""
    data = os.pread(fd, 4096, 0)
    if which == _CHILDREN and data:
        while chunk := os.pread(fd, 65536, len(data)):
            data += chunk
    return data


def _keep_open_now(kept: int) -> int:
    """Processes whose files may stay open (two descriptors each): as many as keep the daemon's
    other descriptors and these under half the open-files limit. `kept`: processes whose files
    are open now (their descriptors are not counted against them), so the budget does not swing
    from pass to pass."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 0
    try:
        used = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
    others = used - 2 * kept
    return max(0, (soft // 2 - others) // 2)


def _read_proc(path: str, which: int) -> bytes | None:
    """A /proc file's bytes without a buffered file object, or None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _pread_all(fd, which)
    except OSError:
        return None
    finally:
        os.close(fd)


def _count_fds(pid: int) -> int:
    """Open fds of `pid`: the size Linux 6.2+ reports for /proc/PID/fd, else a listing of it."""
    try:
        size = os.stat(f"/proc/{pid}/fd").st_size
        return size if size > 0 else len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0
